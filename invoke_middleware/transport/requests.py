"""A transport over a :class:`requests.Session`, for hosts that configure their own.

Hand in a session whose adapters carry what your egress needs (mounted adapters, client
certificates, a pool size of your choosing)::

    session = requests.Session()
    session.cert = ("/etc/gateway/client.pem", "/etc/gateway/client.key")
    transport = RequestsTransport(session)

Only the parts of the session that say *how to connect* are used: its mounted adapters (and
their pools and ``max_retries``), ``verify`` (a CA bundle path; ``False`` is refused, TLS is
always verified), ``cert`` and an explicit ``proxies`` mapping. What makes requests a browser-like
client is bypassed without touching the session: the request is prepared here and handed to
the adapter directly, so the session's default headers (``User-Agent``, ``Accept``,
``Accept-Encoding``, ``Connection``), ``auth``, ``cookies`` (responses never fill its jar),
``hooks``, redirects and everything ``trust_env`` would read (``HTTP_PROXY``, ``.netrc``,
``REQUESTS_CA_BUNDLE``) play no part. The path and query are sent as given, never re-quoted.

Repeated request header fields are sent as separate fields; response fields come back with
repeats kept, grouped by name in order of first appearance (urllib3 keeps them that way).

Connections are never shared between tenants (see :mod:`invoke_middleware.transport.base`):
each tenant sends through a twin of the session's adapter with a connection pool of its own,
made the way requests copies an adapter (``__getstate__``/``__setstate__``, so a subclass
that lists its settings in ``__attrs__`` keeps them). A twin's connections are checked before
reuse for bytes the TLS layer already holds, which urllib3's own check does not see. An
adapter that is not an :class:`~requests.adapters.HTTPAdapter` is used as it is: it must keep
tenants apart itself.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, cast

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.poolmanager
from urllib3.util import SKIP_HEADER

from ..errors import (
    GatewayError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from ..headers import Headers
from ._origin import split_url
from ._tls import CABundle
from .base import Closeable, UpstreamRequest, UpstreamResponse

__all__ = ["RequestsTransport"]

_READ_SIZE = 65536

#: How many tenants' adapter twins are kept; the least recently used one is closed beyond.
_MAX_TENANTS = 256

#: What the adapter and urllib3 raise; everything else (the caller's body failing with a
#: GatewayError, say) propagates unchanged.
_FOREIGN_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (requests and urllib3 nest them in ``args``)."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
        pending.append(current.__cause__)
        pending.append(current.__context__)


def _translate(exc: BaseException) -> GatewayError:
    """The one place where requests, urllib3 and socket errors become the gateway's errors."""
    causes = list(_chain(exc))
    if any(isinstance(c, urllib3.exceptions.NewConnectionError) for c in causes):
        # Checked first: urllib3 derives "could not connect" from its connect-timeout class.
        return UpstreamUnreachableError()
    timeouts = (TimeoutError, urllib3.exceptions.TimeoutError, requests.Timeout)
    if any(isinstance(c, timeouts) for c in causes):
        return UpstreamTimeoutError()
    if any(isinstance(c, http.client.IncompleteRead) for c in causes):
        return UpstreamError("The service's response ended early.")
    # requests' own exceptions derive from OSError too; only the underlying ones count.
    if any(isinstance(c, OSError) and not isinstance(c, requests.RequestException) for c in causes):
        # Refused, reset, DNS failure, TLS handshake or verification failure.
        return UpstreamUnreachableError()
    return UpstreamError()


def _peer_closed_before_answering(exc: BaseException) -> bool:
    return any(
        isinstance(c, ConnectionError) and not isinstance(c, ConnectionRefusedError)
        for c in _chain(exc)
    ) and not any(isinstance(c, TimeoutError) for c in _chain(exc))


class _Exchange:
    """One response being read from urllib3: chunks as they arrive, then release."""

    __slots__ = ("_deadline", "_read", "_response", "_sock", "done")

    def __init__(
        self, response: requests.Response, *, read: float | None, deadline: float | None
    ) -> None:
        self._response = response
        self._read = read
        self._deadline = deadline
        self._sock = _socket_of(response.raw)
        self.done = False

    def chunks(self) -> Iterator[bytes]:
        raw = self._response.raw
        try:
            while not self.done:
                self._arm()
                chunk = raw.read1(_READ_SIZE, decode_content=False)
                if not chunk:
                    self.done = True
                    raw.release_conn()
                    return
                yield chunk
        except _FOREIGN_ERRORS as exc:
            raise _translate(exc) from exc
        finally:
            self.close()

    def _arm(self) -> None:
        if self._deadline is None:
            return
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeoutError()
        if self._sock is not None:
            read = self._read
            try:
                self._sock.settimeout(remaining if read is None or remaining < read else read)
            except OSError:
                # The rest of the body is already buffered and the socket gone; the
                # deadline is still checked before each chunk.
                self._sock = None

    def close(self) -> None:
        if not self.done:
            self.done = True
            self._response.close()


def _socket_of(raw: Any) -> socket.socket | None:
    """The socket under a urllib3 response, to bound each read by the total deadline."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        # http.client hands the socket to a response that closes the connection.
        reader = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


@functools.cache
def _checked_connection_class(
    base: type[urllib3.connection.HTTPConnection],
) -> type[urllib3.connection.HTTPConnection]:
    """``base``, whose idle-connection check also looks at bytes the TLS layer holds."""

    class CheckedConnection(base):  # type: ignore[valid-type,misc]
        @property
        def is_connected(self) -> bool:
            sock = self.sock
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                # Decrypted bytes past the last response: the socket looks idle, but the next
                # request would read them as its answer.
                return False
            return bool(super().is_connected)

    CheckedConnection.__name__ = CheckedConnection.__qualname__ = "Checked" + base.__name__
    return CheckedConnection


@functools.cache
def _checked_pool_class(
    base: type[urllib3.connectionpool.HTTPConnectionPool],
) -> type[urllib3.connectionpool.HTTPConnectionPool]:
    connection_class = _checked_connection_class(base.ConnectionCls)
    return type("Checked" + base.__name__, (base,), {"ConnectionCls": connection_class})


def _twin(adapter: requests.adapters.HTTPAdapter) -> requests.adapters.HTTPAdapter:
    """A copy of ``adapter`` with a connection pool of its own, checked before reuse."""
    twin = object.__new__(type(adapter))
    twin.__dict__.update(vars(adapter))
    # requests' own copy protocol: restores the settings and builds a new pool manager.
    cast(Any, twin).__setstate__(adapter.__getstate__())
    manager = twin.poolmanager
    if isinstance(manager, urllib3.poolmanager.PoolManager):
        manager.pool_classes_by_scheme = {
            scheme: _checked_pool_class(pool)
            for scheme, pool in manager.pool_classes_by_scheme.items()
        }
    return twin


class _TenantAdapters:
    """Per tenant, a twin of each of the session's adapters (bounded; least recent closed)."""

    def __init__(self) -> None:
        self._twins: OrderedDict[
            tuple[str | None, requests.adapters.BaseAdapter], requests.adapters.HTTPAdapter
        ] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, adapter: requests.adapters.BaseAdapter, tenant: str | None
    ) -> requests.adapters.BaseAdapter:
        if not isinstance(adapter, requests.adapters.HTTPAdapter):
            return adapter
        key = (tenant, adapter)
        with self._lock:
            twin = self._twins.get(key)
            if twin is not None:
                self._twins.move_to_end(key)
                return twin
            twin = self._twins[key] = _twin(adapter)
            evicted = (
                self._twins.popitem(last=False)[1] if len(self._twins) > _MAX_TENANTS else None
            )
        if evicted is not None:
            # Connections still reading a body close when they are released.
            evicted.close()
        return twin

    def close(self) -> None:
        with self._lock:
            twins, self._twins = list(self._twins.values()), OrderedDict()
        for twin in twins:
            twin.close()


class RequestsTransport(Closeable):
    """Sends upstream requests through a :class:`requests.Session`'s adapters.

    ``session`` defaults to a new one, closed by :meth:`close`; a session handed in is left
    open for its owner. ``ca_bundle`` overrides the session's ``verify``. Safe to share
    between threads (the adapters' connection pools are).
    """

    def __init__(
        self, session: requests.Session | None = None, *, ca_bundle: CABundle | None = None
    ) -> None:
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        verify = self._session.verify if ca_bundle is None else str(ca_bundle)
        if verify is False:
            raise ValueError("TLS verification cannot be switched off.")
        self._verify: bool | str = True if verify is None else verify
        self._adapters = _TenantAdapters()

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; return once the status and headers arrived."""
        started = time.monotonic()
        prepared = self._prepare(request)
        adapter = self._adapters.get(
            self._session.get_adapter(prepared.url or request.url), request.tenant
        )
        timeouts = request.timeouts
        read = timeouts.read
        if timeouts.total is not None and (read is None or timeouts.total < read):
            read = timeouts.total
        send_args: dict[str, Any] = {
            "stream": True,
            "timeout": (timeouts.connect, read),
            "verify": self._verify,
            "cert": self._session.cert,
            "proxies": dict(self._session.proxies),
        }
        pooled = _connections_opened(adapter, prepared, send_args)
        try:
            response = adapter.send(prepared, **send_args)
        except _FOREIGN_ERRORS as exc:
            reused = pooled is not None and pooled == _connections_opened(
                adapter, prepared, send_args
            )
            if not (
                reused and request.may_retry_after_close and _peer_closed_before_answering(exc)
            ):
                raise _translate(exc) from exc
            try:
                response = adapter.send(self._prepare(request), **send_args)
            except _FOREIGN_ERRORS as retry_exc:
                raise _translate(retry_exc) from retry_exc
        raw = response.raw
        if 100 <= raw.status < 200 and raw.status != 101:
            # urllib3 (like http.client) skips only 100 Continue: a 103 Early Hints would pass
            # for the final response, with the real one left on the pooled connection to
            # answer the next request. Closing discards that connection.
            response.close()
            raise UpstreamError("The service sent an interim response.")
        deadline = None if timeouts.total is None else started + timeouts.total
        exchange = _Exchange(response, read=timeouts.read, deadline=deadline)
        length = raw.length_remaining
        if length == 0:
            exchange.done = True
            raw.release_conn()
            chunks: Iterator[bytes] = iter(())
        else:
            chunks = exchange.chunks()
        return UpstreamResponse(
            status=raw.status,
            reason=raw.reason or "",
            headers=Headers(raw.headers.items()),
            chunks=chunks,
            close=exchange.close,
            content_length=length,
        )

    def close(self) -> None:
        """Close the tenants' connection pools, and the session if this transport created it."""
        self._adapters.close()
        if self._owns_session:
            self._session.close()

    def _prepare(self, request: UpstreamRequest) -> requests.PreparedRequest:
        origin, target = split_url(request.url)
        headers = urllib3.HTTPHeaderDict()
        headers.add("Host", origin.host_header)
        for name, value in request.headers:
            headers.add(name, value)
        # urllib3 adds these unless told to skip them; the contract adds nothing.
        for name in ("User-Agent", "Accept-Encoding"):
            if name not in headers:
                headers[name] = SKIP_HEADER
        body: bytes | Iterable[bytes] | None = request.body
        length = request.wire_content_length
        if length is not None:
            headers["Content-Length"] = str(length)
            if request.body_stream is not None:
                body = request.checked_stream()
        prepared = requests.PreparedRequest()
        prepared.method = request.method
        # Set directly: PreparedRequest.prepare_url() would re-quote the path. Rebuilt from
        # the origin, so that urllib3 looks up and checks in TLS the very name Host carries
        # (the A-label of an internationalised name) instead of encoding the name itself.
        prepared.url = f"{origin.scheme}://{origin.host_header}{target}"
        # Without Content-Length the adapter asks urllib3 for chunked coding.
        prepared.headers = cast(Any, headers)
        prepared.body = cast(Any, body)
        return prepared


def _connections_opened(
    adapter: requests.adapters.BaseAdapter,
    prepared: requests.PreparedRequest,
    send_args: dict[str, Any],
) -> int | None:
    """How many connections the adapter's pool for this URL has opened so far.

    Unchanged across a failed send means the request went out on a connection the pool
    already had: the only case where a retry is allowed. ``None`` for adapters without pools.
    """
    # get_connection_with_tls_context() is public since requests 2.32.2.
    pool_for = getattr(adapter, "get_connection_with_tls_context", None)
    if not isinstance(adapter, requests.adapters.HTTPAdapter) or pool_for is None:
        return None
    try:
        pool = pool_for(
            prepared, send_args["verify"], proxies=send_args["proxies"], cert=send_args["cert"]
        )
    except _FOREIGN_ERRORS:
        return None
    opened = getattr(pool, "num_connections", None)
    return opened if isinstance(opened, int) else None
