"""Credential keys: their format, how they are generated, stored and compared.

A key is its kind's prefix (``sk-``, ``dk-``, ``ak-``: see
:attr:`~invoke_middleware.auth.principal.CredentialKind.key_prefix`) followed by 43 URL-safe
characters from 32 random bytes. Stores keep only the first :data:`PREFIX_LENGTH` characters
(the key's public prefix, to find the record) and the SHA-256 of the whole key (to check it);
the raw key is shown once, when issued.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import warnings

from invoke_middleware.auth.principal import CredentialKind

__all__ = [
    "KEY_RANDOM_BYTES",
    "PREFIX_LENGTH",
    "generate_key",
    "hash_key",
    "key_matches",
    "key_prefix",
]

PREFIX_LENGTH = 12
KEY_RANDOM_BYTES = 32


def __getattr__(name: str) -> object:
    # KeyKind is the former name of CredentialKind (its INTEGRATION, DEVICE and AGENT members
    # are the kinds of keys): existing imports keep working, with a warning.
    if name == "KeyKind":
        warnings.warn(
            "KeyKind is deprecated; use invoke_middleware.CredentialKind",
            DeprecationWarning,
            stacklevel=2,
        )
        return CredentialKind
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate_key(kind: CredentialKind) -> str:
    """A new random key of ``kind``; :class:`ValueError` for a kind that has no keys (JWT)."""
    prefix = CredentialKind(kind).key_prefix
    if prefix is None:
        raise ValueError(f"{kind} credentials are not keys")
    return prefix + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def key_prefix(key: str) -> str:
    """The public part of ``key`` (its first :data:`PREFIX_LENGTH` characters) that stores
    index and lists show."""
    return key[:PREFIX_LENGTH]


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``, as stores keep it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    """Whether ``key`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_key(key), stored_hash)
