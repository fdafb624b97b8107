"""Helpers for testing an application that embeds the gateway.

Tokens and credentials::

    from invoke_middleware.testing import generate_keypair, issue_test_credential, mint_jwt

    token = mint_jwt(secret_or_private_key=SECRET, sub="user-1")            # HS256
    pair = generate_keypair("RS256")
    token = mint_jwt(secret_or_private_key=pair.private_pem, sub="user-1", algorithm="RS256")
    key = issue_test_credential(credentials, CredentialKind.INTEGRATION, team_id)   # "sk-..."

Upstreams without a network, in the style of ``httpx.MockTransport``::

    def container(request: UpstreamRequest) -> UpstreamResponse:
        return make_response(201, headers=[("Content-Type", "application/json")], body=b"{}")

    transport = RecordingTransport(MockTransport(container))
    ...  # drive the middleware
    assert transport.requests[0].body == b'{"name": "x"}'
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.auth.stores import CredentialStore
from invoke_middleware.errors import reason_phrase
from invoke_middleware.transport.base import (
    Closeable,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)

__all__ = [
    "KeyPair",
    "MockTransport",
    "RecordingTransport",
    "generate_keypair",
    "generate_rsa_keypair",
    "issue_test_credential",
    "jwk_set",
    "make_response",
    "mint_jwt",
    "read_body",
]

# --- tokens and credentials ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    """A signing key pair in PEM, for one JWT ``algorithm``. The private half never prints."""

    algorithm: str
    private_pem: bytes = field(repr=False)
    public_pem: bytes

    def public_jwk(self, kid: str) -> dict[str, Any]:
        """The public key as a JWK (RFC 7517) with ``kid``, ``alg`` and ``use``."""
        algorithm = jwt.algorithms.get_default_algorithms()[self.algorithm]
        public_key = algorithm.prepare_key(self.public_pem)
        jwk: dict[str, Any] = algorithm.to_jwk(public_key, as_dict=True)
        return {**jwk, "kid": kid, "alg": self.algorithm, "use": "sig"}


def generate_keypair(algorithm: str = "RS256") -> KeyPair:
    """A fresh key pair for ``algorithm``: RS*/PS* (RSA 2048), ES256/ES384/ES512 or EdDSA."""
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if algorithm[:2] in ("RS", "PS"):
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm in _CURVES:
        private_key = ec.generate_private_key(_CURVES[algorithm])
    elif algorithm == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"no key pair for {algorithm!r}")
    return KeyPair(
        algorithm=algorithm,
        private_pem=private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


_CURVES: dict[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}


def generate_rsa_keypair() -> KeyPair:
    """A fresh RSA 2048 key pair for RS256."""
    return generate_keypair("RS256")


def jwk_set(keys: Mapping[str, KeyPair]) -> dict[str, Any]:
    """A JWKS document (RFC 7517 §5) publishing each pair's public key under its ``kid``.

    Serve it as JSON at the ``jwks_url`` a :class:`~invoke_middleware.auth.JWTResolver` reads.
    """
    return {"keys": [pair.public_jwk(kid) for kid, pair in keys.items()]}


def mint_jwt(
    *,
    secret_or_private_key: str | bytes,
    sub: str | None,
    algorithm: str = "HS256",
    expires_in: float | None = 300,
    kid: str | None = None,
    **claims: Any,
) -> str:
    """A signed JWT for ``sub`` that expires in ``expires_in`` seconds.

    ``sub=None`` or ``expires_in=None`` leave that claim out; ``claims`` are added last and
    may override ``iat``/``exp``; ``kid`` goes in the header.
    """
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now}
    if sub is not None:
        payload["sub"] = sub
    if expires_in is not None:
        payload["exp"] = now + expires_in
    payload.update(claims)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, secret_or_private_key, algorithm=algorithm, headers=headers)


def issue_test_credential(
    store: CredentialStore,
    kind: CredentialKind,
    team_id: uuid.UUID,
    user_id: str | None = None,
    *,
    name: str = "test",
) -> str:
    """Issue a credential of ``kind`` into ``store`` and return its raw key."""
    return store.issue(kind, team_id=team_id, user_id=user_id, name=name).key


# --- transports -----------------------------------------------------------------------------


def read_body(request: UpstreamRequest) -> bytes:
    """The whole body of ``request``; consumes it when it is an iterable of chunks."""
    stream = request.body_stream
    if stream is None:
        return request.body_bytes or b""
    return b"".join(stream)


def make_response(
    status: int = 200,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    chunks: Iterable[bytes | Exception] | None = None,
    reason: str | None = None,
) -> UpstreamResponse:
    """An :class:`UpstreamResponse` whose body is ``body``, or ``chunks`` one by one.

    An exception among ``chunks`` is raised when iteration reaches it, to play an upstream
    that fails mid-body (raise an :class:`~invoke_middleware.errors.UpstreamError` there to
    honour the transport contract). ``content_length`` is read from a ``Content-Length``
    header, as a real transport would.
    """
    fields = tuple(headers)
    content_length = None
    for name, value in fields:
        if name.lower() == "content-length" and value.isdigit():
            content_length = int(value)
    if reason is None:
        reason = reason_phrase(status)
    stream = _MockBody([body] if chunks is None else chunks)
    return UpstreamResponse(
        status=status,
        reason=reason,
        headers=fields,
        chunks=stream,
        close=stream.close,
        content_length=content_length,
    )


class _MockBody:
    """Yields the chunks in order, empty ones skipped; nothing more once closed."""

    def __init__(self, chunks: Iterable[bytes | Exception]) -> None:
        self._chunks = iter(chunks)
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        while not self.closed:
            chunk = next(self._chunks)
            if isinstance(chunk, Exception):
                self.closed = True
                raise chunk
            if chunk:
                return chunk
        raise StopIteration

    def close(self) -> None:
        self.closed = True


class MockTransport(Closeable):
    """A transport that answers every request with ``handler(request)``.

    The request body is read first, as a real transport would send it, so errors raised
    while reading it propagate from :meth:`send`; ``handler`` receives the request with its
    body as ``bytes``.
    """

    def __init__(self, handler: Callable[[UpstreamRequest], UpstreamResponse]) -> None:
        self._handler = handler
        self.closed = False

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.closed:
            raise RuntimeError("the transport is closed")
        return self._handler(replace(request, body=read_body(request)))

    def close(self) -> None:
        self.closed = True


class RecordingTransport(Closeable):
    """Records every request (body read into ``bytes``) and passes it on to ``inner``.

    ``requests`` lists them in the order they were sent; an empty list proves that nothing
    reached the upstream.
    """

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.requests: list[UpstreamRequest] = []

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        recorded = replace(request, body=read_body(request))
        with self._lock:
            self.requests.append(recorded)
        return self._inner.send(recorded)

    def close(self) -> None:
        self._inner.close()
