"""Credential keys: their format, how they are generated, stored and compared (SPEC §7).

A key is its kind prefix (``sk-``, ``dk-``, ``ak-``) followed by 43 URL-safe characters from 32
random bytes. Stores keep only the first :data:`PREFIX_LENGTH` characters (to find the record)
and the SHA-256 of the whole key (to check it); the raw key is shown once, when issued.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

PREFIX_LENGTH = 12
KEY_RANDOM_BYTES = 32


class KeyKind(StrEnum):
    """The kind of a credential key, spelled by its prefix."""

    INTEGRATION = "sk-"
    DEVICE = "dk-"
    AGENT = "ak-"

    @classmethod
    def of(cls, key: str) -> KeyKind | None:
        """The kind ``key`` claims by its prefix, or ``None`` when it is not a credential key."""
        for kind in cls:
            if key.startswith(kind.value):
                return kind
        return None


def generate_key(kind: KeyKind) -> str:
    """A new random key of ``kind``."""
    return kind.value + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def key_prefix(key: str) -> str:
    """The public part of ``key`` that stores index and lists show."""
    return key[:PREFIX_LENGTH]


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``, as stores keep it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    """Whether ``key`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_key(key), stored_hash)
