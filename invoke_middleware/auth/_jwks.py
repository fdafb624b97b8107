"""The identity provider's signing keys, fetched from its JWKS URL (RFC 7517 §5) and cached.

:class:`~invoke_middleware.auth.jwt.JWTResolver` asks for a key by the token's ``kid`` on every
request, and the caller chooses the ``kid``: what a lookup costs must not depend on it. So:

- A key in the held key set is handed out at once, whatever fetch is under way: no lock is
  held across network I/O.
- At most one fetch runs at a time, in a thread of its own, through the gateway's own
  :class:`~invoke_middleware.transport.http.HTTPTransport`, within ``timeout`` seconds in all
  (connecting, the TLS handshake, the request and the whole response; only the host name's
  lookup is the system resolver's to bound) and :data:`MAX_JWKS_BYTES`. A request that needs
  its outcome (no key set yet, the set past its lifetime, a ``kid`` not in it) waits for it
  until that deadline, whatever the fetch does; only :data:`MAX_WAITERS` wait at once, the
  rest are refused at once.
- A ``kid`` the held set lacks starts a fetch only if none started in the last ``cooldown``
  seconds: a key the identity provider rotated in is found, a made-up one costs nothing. A
  failed fetch, whatever failed, is logged once and not tried again for
  :data:`RETRY_AFTER_FAILURE` seconds (or the cooldown, when shorter); meanwhile a token
  whose key is not held is refused without network work.
- A key set is used for ``ttl`` seconds after it arrived. In the last tenth of that, the
  next request starts its refresh (and is answered from the held set), so a busy gateway
  never finds the set expired, and an identity provider that fails for a moment is tried
  again before any token is refused.

PyJWT's ``PyJWKClient`` is not used for this. It holds one lock across its fetch, so a token
whose key is cached waits behind every fetch; it starts its cooldown only after a successful
fetch, so a failing endpoint is asked again for every made-up ``kid``; its timeout bounds each
socket operation, not the fetch; and it reads a response of any size. Only its key parsing
(:class:`jwt.PyJWKSet`) is used here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from invoke_middleware.errors import GatewayError
from invoke_middleware.transport._origin import split_url
from invoke_middleware.transport._tls import create_ssl_context
from invoke_middleware.transport.base import Timeouts, UpstreamRequest
from invoke_middleware.transport.http import HTTPTransport

logger = logging.getLogger("invoke_middleware.auth")

#: The largest JWKS response read, head and body, in bytes; a larger one is a failed fetch.
#: Identity providers publish a handful of keys: a few KiB.
MAX_JWKS_BYTES = 1024 * 1024
#: Seconds before a failed fetch is tried again (the cooldown instead, when it is shorter).
RETRY_AFTER_FAILURE = 5.0
#: Requests that wait together for the fetch under way; more are refused without waiting.
MAX_WAITERS = 8

#: The last part of a key set's lifetime (a fraction of ``ttl``), in which a request that finds
#: its key there starts the set's refresh.
_REFRESH_AHEAD = 0.1
#: What may appear in the URL's host and target: they are written to the socket as they are.
_WIRE_TEXT = re.compile(r"[!-~]+")


# What a key set may give the gateway to verify with. A private or a symmetric key published
# by mistake is not a verification key: verifying with it fails in the key's own code, not
# with a refusal, and a symmetric one would let whoever read the key set sign tokens.
_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)


class UnknownKeyError(LookupError):
    """No key with the token's ``kid`` can be had now: the identity provider does not publish
    one, or its key set cannot be fetched now. The message never contains the ``kid``."""


class KeySetUnavailableError(UnknownKeyError):
    """No key set is held, and none could be had in time: the token cannot be checked at
    all (its ``kid`` may well be published)."""


class _FetchError(Exception):
    """A fetch that failed; the message is the line logged for the operator."""


class _Fetch:
    """One fetch under way: its deadline, then the key set it brought (``None``: it failed)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = threading.Event()
        self.keys: Mapping[str, jwt.PyJWK] | None = None


class JWKSCache:
    """The signing keys published at ``url``, fetched on demand and kept ``ttl`` seconds.

    ``timeout`` bounds each fetch in all; after one starts, a ``kid`` the held set lacks
    starts no other for ``cooldown`` seconds. No proxy from the environment is used and
    redirects are not followed: the configured URL is the key set's. Safe to share between
    threads.

    Raises :class:`ValueError` for a URL that is not ``http(s)://host...`` in plain ASCII, or
    for times that are not positive.
    """

    def __init__(self, url: str, *, ttl: float, timeout: float, cooldown: float) -> None:
        limits = (("jwks_cache_ttl", ttl), ("jwks_timeout", timeout), ("jwks_cooldown", cooldown))
        for name, value in limits:
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds")
        self._url = _checked_url(url)
        # The gateway's own transport: its deadline bounds the whole exchange (connecting, the
        # TLS handshake, the request and every read of the response), it takes no proxy
        # from the environment and follows no redirect. One connection is kept for the next
        # fetch.
        self._transport = HTTPTransport(
            pool_size_per_origin=1,
            max_idle_connections=1,
            ssl_context=create_ssl_context() if self._url.startswith("https") else None,
        )
        self._ttl = ttl
        self._timeout = timeout
        self._cooldown = cooldown
        self._retry_after_failure = min(cooldown, RETRY_AFTER_FAILURE)
        self._lock = threading.Lock()
        # Everything below is read and written with the lock held, which is never held while
        # waiting for the network.
        self._keys: Mapping[str, jwt.PyJWK] = {}
        self._expires_at = -math.inf  # the held set is used until then
        self._refresh_at = -math.inf  # from then on, a request starts the set's refresh
        self._lookup_at = -math.inf  # a kid the held set lacks starts no fetch before then
        self._retry_at = -math.inf  # after a failed fetch, no fetch starts before then
        self._fetch: _Fetch | None = None
        self._waiters = 0

    def signing_key(self, kid: str) -> jwt.PyJWK:
        """The published signing key whose ``kid`` is ``kid``.

        Raises :class:`UnknownKeyError` when there is none, or none can be had now.
        """
        now = time.monotonic()
        started: _Fetch | None = None  # a fetch this request starts, in a thread of its own
        waited: _Fetch | None = None  # the fetch whose outcome this request waits for
        with self._lock:
            fresh = now < self._expires_at
            key = self._keys.get(kid) if fresh else None
            if key is not None:
                if now >= self._refresh_at:
                    started = self._start_fetch(now)
            elif self._waiters < MAX_WAITERS:
                waited = self._fetch
                # Without a usable set any request may start a fetch; with one, only after
                # the cooldown, since the kid is whatever the caller wrote.
                if waited is None and (not fresh or now >= self._lookup_at):
                    waited = started = self._start_fetch(now)
                if waited is not None:
                    self._waiters += 1
        if started is not None:
            self._run_in_thread(started)
        if key is not None:
            return key
        if waited is None:
            if not fresh:
                raise KeySetUnavailableError("no key set is held, and none can be fetched now")
            raise UnknownKeyError("the key is not held, and the key set cannot be fetched now")
        return self._await(waited, kid, fresh=fresh)

    def _await(self, fetch: _Fetch, kid: str, *, fresh: bool) -> jwt.PyJWK:
        """The key from ``fetch``'s key set, once it ends or its deadline passes; ``fresh``
        says whether a key set was held when the request came."""
        try:
            fetch.done.wait(max(0.0, fetch.deadline - time.monotonic()))
        finally:
            with self._lock:
                self._waiters -= 1
        keys = fetch.keys
        if keys is None:
            if not fresh:
                raise KeySetUnavailableError("the key set could not be fetched in time")
            raise UnknownKeyError("the key set could not be fetched")
        key = keys.get(kid)
        if key is None:
            raise UnknownKeyError("no such key in the key set")
        return key

    def _start_fetch(self, now: float) -> _Fetch | None:
        """A new fetch, unless one is under way or a failed one is too recent (lock held)."""
        if self._fetch is not None or now < self._retry_at:
            return None
        self._fetch = _Fetch(now + self._timeout)
        self._lookup_at = now + self._cooldown
        return self._fetch

    def _run_in_thread(self, fetch: _Fetch) -> None:
        # A thread of its own, so that the request that started the fetch is no more tied to
        # it than any other: it waits only if it needs the outcome, and only until the
        # deadline, even when resolving the host name (which no socket timeout bounds) hangs.
        # The fetch stays the one under way until the thread ends: one thread per key set.
        thread = threading.Thread(
            target=self._run, args=(fetch,), name="invoke-jwks-fetch", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # the process cannot start another thread now
            logger.warning("JWKS fetch not started: no thread available")
            self._finish(fetch, None)

    def _run(self, fetch: _Fetch) -> None:
        keys = None
        try:
            keys = _fetch_keys(self._transport, self._url, fetch.deadline)
        except _FetchError as exc:
            # One line per failed fetch, and fetches are at least a retry interval apart.
            logger.warning("%s", exc)
        finally:
            self._finish(fetch, keys)

    def _finish(self, fetch: _Fetch, keys: Mapping[str, jwt.PyJWK] | None) -> None:
        now = time.monotonic()
        with self._lock:
            if keys is not None:
                self._keys = keys
                self._expires_at = now + self._ttl
                self._refresh_at = now + self._ttl * (1 - _REFRESH_AHEAD)
            else:
                self._retry_at = now + self._retry_after_failure
            fetch.keys = keys
            self._fetch = None
        fetch.done.set()


def _checked_url(url: str) -> str:
    """``url``, once it is one the transport can fetch: ``http(s)://host...`` in plain ASCII,
    without credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("the JWKS URL must be http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the JWKS URL must not carry credentials")
    if not parts.hostname:
        raise ValueError("the JWKS URL has no host")
    parts.port  # noqa: B018 - raises ValueError when it is not a port number
    if not _WIRE_TEXT.fullmatch(url):
        raise ValueError(
            "the JWKS URL must be ASCII without spaces (percent-encoded path, xn-- host name)"
        )
    split_url(url)  # what the transport would refuse (UnusableURLError is a ValueError)
    return url


def _fetch_keys(transport: HTTPTransport, url: str, deadline: float) -> dict[str, jwt.PyJWK]:
    """The signing keys by ``kid``; raises :class:`_FetchError` however the fetch fails."""
    try:
        status, body = _get(transport, url, deadline)
    except _TooLargeError as exc:
        raise _FetchError(f"JWKS endpoint sent no key set: {exc}") from exc
    except (GatewayError, TimeoutError) as exc:
        # Refused, reset, timed out, a TLS failure, a host name no lookup takes, a malformed
        # or truncated response: the transport's errors, each with its reason.
        # The transport's message is the one a caller may see; the operator's log gets the
        # cause under it too (a certificate that failed verification, say).
        reason = exc.message if isinstance(exc, GatewayError) else str(exc)
        if exc.__cause__ is not None:
            reason += f" ({exc.__cause__})"
        raise _FetchError(f"JWKS endpoint unreachable: {reason}") from exc
    if status != 200:
        # A redirect among them: the configured URL is the key set's, or there is none.
        raise _FetchError(f"JWKS endpoint unreachable: it answered {status}")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _FetchError("JWKS endpoint sent no key set: the body is not JSON") from exc
    if not isinstance(document, dict):
        raise _FetchError("JWKS endpoint sent no key set: the body is not a JSON object")
    try:
        published = jwt.PyJWKSet.from_dict(document).keys
    except Exception as exc:  # whatever the key parser trips on, there is no key set
        raise _FetchError(f"JWKS endpoint sent no key set: {type(exc).__name__}") from exc
    keys: dict[str, jwt.PyJWK] = {}
    for key in published:
        kid = key.key_id
        if not isinstance(key.key, _PUBLIC_KEY_TYPES):
            logger.warning("JWKS endpoint publishes a key that is not a public key: ignored")
            continue
        # As PyJWKClient: keys for signatures (or of no stated use) with a kid; the first of
        # a repeated kid is the one used.
        if key.public_key_use in ("sig", None) and isinstance(kid, str) and kid:
            keys.setdefault(kid, key)
    if not keys:
        raise _FetchError("JWKS endpoint sent no key set: no signing key with a kid")
    return keys


def _get(transport: HTTPTransport, url: str, deadline: float) -> tuple[int, bytes]:
    """The response's status and body (read only for a 200, at most :data:`MAX_JWKS_BYTES`),
    all before ``deadline``."""
    left = _left(deadline)
    response = transport.send(
        UpstreamRequest(
            method="GET",
            url=url,
            # No Accept-Encoding: the body comes unencoded (RFC 9110 §12.5.3).
            headers=(("Accept", "application/json"), ("User-Agent", "invoke-middleware")),
            timeouts=Timeouts(connect=left, read=left, total=left),
        )
    )
    try:
        if response.status != 200:
            return response.status, b""
        if response.content_length is not None and response.content_length > MAX_JWKS_BYTES:
            raise _TooLargeError
        parts: list[bytes] = []
        size = 0
        for chunk in response:
            size += len(chunk)
            if size > MAX_JWKS_BYTES:
                raise _TooLargeError
            parts.append(chunk)
        return 200, b"".join(parts)
    finally:
        response.close()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the fetch took longer than its timeout")
    return left


class _TooLargeError(Exception):
    def __init__(self) -> None:
        super().__init__(f"the response is larger than {MAX_JWKS_BYTES} bytes")
