"""A transport over a :class:`requests.Session`, for hosts that configure their own.

Hand in a session whose adapters carry what your egress needs (mounted adapters, client
certificates, a pool size of your choosing)::

    session = requests.Session()
    session.cert = ("/etc/gateway/client.pem", "/etc/gateway/client.key")
    transport = RequestsTransport(session)

Only the parts of the session that say *how to connect* are used: its mounted adapters (and
their pools and ``max_retries``), ``verify`` (a CA bundle path; ``False`` is refused, TLS is
always verified) and ``cert``. A session with ``proxies`` is refused (:class:`ValueError`): the
connections urllib3 makes through a proxy would not keep the guarantees below. What makes
requests a browser-like client is bypassed without touching the session: the request is
prepared here and handed to the adapter directly, so the session's default headers
(``User-Agent``, ``Accept``, ``Accept-Encoding``, ``Connection``), ``auth``, ``cookies``
(responses never fill its jar), ``hooks``, redirects and everything ``trust_env`` would read
(``HTTP_PROXY``, ``.netrc``, ``REQUESTS_CA_BUNDLE``) play no part. The path and query are sent
as given, never re-quoted.

Repeated request header fields are sent as separate fields; response fields come back with
repeats kept, grouped by name in order of first appearance (urllib3 keeps them that way),
except a ``Content-Length`` that ``Transfer-Encoding`` overrides (RFC 9112 §6.3), which
urllib3 would take for the body's length.

The guarantees :mod:`http.client` and urllib3 do not give are added on the connection, so
that they hold as in :class:`~invoke_middleware.transport.http.HTTPTransport`
(docs/contract.md §8, §11.2): the response head goes through the same parser, interim ``1xx``
heads are skipped and count with the final one against the same 256 KiB limit; every receive
and every send waits at most the read timeout and never past the total; over TLS, a body
delimited by the close is whole only when the close carries ``close_notify``. With
``pool_block=True`` on an adapter, the wait for a pooled connection counts against the total
too.

Connections are never shared between tenants (see :mod:`invoke_middleware.transport.base`):
each tenant sends through a twin of the session's adapter with a connection pool of its own,
made the way requests copies an adapter (``__getstate__``/``__setstate__``, so a subclass
that lists its settings in ``__attrs__`` keeps them). A twin's connections are checked before
reuse for bytes the TLS layer or http.client's buffer already holds past the last response,
which urllib3's own check does not see; such a connection is closed, not reused. An
adapter that is not an :class:`~requests.adapters.HTTPAdapter` is used as it is: it must keep
tenants apart itself.
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

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
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from ..headers import UNSAFE_TARGET_PATTERN, Headers
from ._origin import split_url
from ._response import CHUNK_PAUSE, MAX_HEAD, MAX_INTERIM, ResponseHead, parse_head
from ._tls import PEER_CLOSED, TLS_RECORD, CABundle
from .base import Closeable, Timeouts, UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["RequestsTransport"]

_READ_SIZE = 65536
#: urllib3 hands out a chunked body chunk by chunk, about 4 µs of Python each (five times
#: what ``HTTPTransport`` spends on one), and each is a write to the client: a piece smaller
#: than ``_PACED_BELOW`` makes the relay wait up to five ``CHUNK_PAUSE`` (less as it nears
#: that size, so that no chunk size is a cliff), waited in turns of ``_PAUSE_TURN`` (a sleep
#: is a system call and a wake-up, which cost more than so short a wait). A stream's events
#: are far apart: a hundred of them owe half a millisecond.
_PACED_BELOW = 512
_PIECE_PAUSE = 5 * CHUNK_PAUSE
_PAUSE_TURN = 0.001

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


def _translate(exc: BaseException, *, reading_body: bool = False) -> GatewayError:
    """The one place where requests, urllib3 and socket errors become the gateway's errors."""
    causes = list(_chain(exc))
    if any(isinstance(c, urllib3.exceptions.NewConnectionError) for c in causes):
        # Checked first: urllib3 derives "could not connect" from its connect-timeout class.
        return UpstreamUnreachableError()
    # EmptyPoolError: the total ran out waiting for a pooled connection (pool_block=True).
    timeouts = (
        TimeoutError,
        urllib3.exceptions.TimeoutError,
        urllib3.exceptions.EmptyPoolError,
        requests.Timeout,
    )
    if any(isinstance(c, timeouts) for c in causes):
        return UpstreamTimeoutError()
    ended_early: tuple[type[Exception], ...] = (http.client.IncompleteRead,)
    if reading_body:
        # RFC 9112 §9.8: a TLS close without close_notify (SSLEOFError) may be a cut anyone on
        # the path can make, as HTTPTransport reads it; before the body it is a connection
        # that failed.
        ended_early += (ssl.SSLEOFError,)
    if any(isinstance(c, ended_early) for c in causes):
        return UpstreamError("The service's response ended early.")
    # requests' own exceptions derive from OSError too; only the underlying ones count.
    if any(isinstance(c, OSError) and not isinstance(c, requests.RequestException) for c in causes):
        # Refused, reset, DNS failure, TLS handshake or verification failure.
        return UpstreamUnreachableError()
    return UpstreamError()


def _peer_closed_before_answering(exc: BaseException) -> bool:
    causes = list(_chain(exc))
    return any(
        isinstance(c, PEER_CLOSED) and not isinstance(c, ConnectionRefusedError) for c in causes
    ) and not any(isinstance(c, TimeoutError) for c in causes)


class _Wire(urllib3.Timeout):
    """One request's timeouts as urllib3 takes them, with what urllib3 has no setting for: the
    instant the total runs out (``deadline``), and the request target exactly as written.

    A :class:`urllib3.Timeout` because that is the one object requests and urllib3 hand down
    to the connection pool unchanged (urllib3 copies it with :meth:`clone`); the pool gives it
    to the connection for the length of the exchange (see :func:`_checked_pool_class`).
    """

    def __init__(self, timeouts: Timeouts, *, deadline: float | None, target: str) -> None:
        super().__init__(connect=timeouts.connect, read=timeouts.read)
        self.timeouts = timeouts
        self.deadline = deadline
        self.target = target

    def clone(self) -> _Wire:
        return _Wire(self.timeouts, deadline=self.deadline, target=self.target)

    def left(self) -> float | None:
        """Seconds left of the total (never below zero), or ``None`` without a total."""
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def arm(self, sock: socket.socket) -> None:
        """Set the timeout of the next wait on ``sock``: the read timeout, capped by what is
        left of the total; raise :class:`TimeoutError` once the total is spent.

        Called before every receive and send: urllib3 sets one timeout per phase, which
        bounds each wait but not their sum, so an upstream sending (or taking) a byte within
        each read timeout would hold the thread as long as it liked.
        """
        wait = self.timeouts.read
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if wait is None or left < wait:
                wait = left
        # settimeout is a system call; on a kept-alive connection the timeout is mostly set.
        if sock.gettimeout() != wait:
            sock.settimeout(wait)


class _TimedReader(io.RawIOBase):
    """The socket's bytes for one response, each wait for them bounded by the request's
    deadline (:meth:`_Wire.arm`)."""

    def __init__(self, sock: socket.socket, wire: _Wire) -> None:
        super().__init__()
        self._sock = sock
        # Through makefile(), which keeps the socket open until this file closes, even once
        # http.client has closed the connection (a response that ends at the close).
        self._file = sock.makefile("rb", buffering=0)
        self._wire = wire
        self._holding = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        if self._holding:
            return None  # "nothing available now", as a non-blocking stream says it
        self._wire.arm(self._sock)
        return self._file.readinto(buffer)

    def buffered(self, file: io.BufferedReader) -> bool:
        """Whether ``file`` (reading from this) holds bytes it has not handed out yet.

        io.BufferedReader does not tell; its peek() tells without waiting for the socket while
        this returns nothing new.
        """
        self._holding = True
        try:
            return bool(file.peek(1))
        finally:
            self._holding = False

    def close(self) -> None:
        self._file.close()
        super().close()


class _Response(http.client.HTTPResponse):
    """http.client's response, read within the request's deadline, its head read as
    HTTPTransport reads it (:func:`_read_final_head`).

    The fields urllib3 is given leave out a ``Content-Length`` that does not frame the body
    (one beside ``Transfer-Encoding``): urllib3 would stop reading there, or warn in the log
    on every such response.
    """

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        wire: _Wire | None,
        on_surplus: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        self._request_method = method or ""
        self._on_surplus = on_surplus
        self._timed: _TimedReader | None = None
        if wire is not None:
            # http.client's own file, replaced by one whose every read keeps the deadline.
            self.fp.close()
            self._timed = _TimedReader(sock, wire)
            self.fp = io.BufferedReader(self._timed)

    def _close_conn(self) -> None:
        # http.client calls this once the body ended, and drops its buffer with the file:
        # bytes read past the end would be lost unseen and the connection reused, though the
        # upstream may have meant them as the next request's answer (docs/contract.md §11.2).
        file = self.fp
        if self._timed is not None and file is not None and self._timed.buffered(file):
            self._on_surplus()
        super()._close_conn()  # type: ignore[misc]  # private

    def begin(self) -> None:
        if self.headers is not None:
            return  # already read (http.client guards this too)
        data, head = _read_final_head(self.fp, self._request_method)
        self.version = 10 if data.startswith(b"HTTP/1.0") else 11
        self.status = head.status
        self.reason = head.reason
        message = http.client.HTTPMessage()
        for name, value in head.fields:
            if head.length is not None or name.lower() != "content-length":
                message[name] = value
        self.headers = self.msg = message
        self.chunked = head.chunked
        self.chunk_left = None
        self.length = head.length
        self.will_close = head.will_close


def _read_final_head(file: io.BufferedReader, method: str) -> tuple[bytes, ResponseHead]:
    """The final response's head (its bytes and what they say), read from ``file``.

    Interim responses (1xx other than 101) are skipped (docs/contract.md §11.2): http.client
    skips only ``100``, so a ``103 Early Hints`` would pass for the answer. Every head read
    counts against ``MAX_HEAD`` together, and at most ``MAX_INTERIM`` interim ones are read,
    as in HTTPTransport: an upstream that streams interim responses, or a head of a hundred
    64 KiB lines (each within http.client's own limits), is refused.
    """
    left = MAX_HEAD
    for _ in range(MAX_INTERIM + 1):
        data, left = _read_head(file, left)
        head = parse_head(data, method)
        if not head.interim:
            return data, head
    raise UpstreamError("The service sent too many interim responses.")


def _read_head(file: io.BufferedReader, left: int) -> tuple[bytes, int]:
    """One head, up to the blank line that ends it (not included), and what is left of
    ``left`` bytes after it. A bare LF ends a line too (RFC 9112 §2.2)."""
    lines: list[bytes] = []
    while True:
        line = file.readline(left + 1)
        if not line:
            # Said as http.client says it, a ConnectionError: most often a kept-alive
            # connection the peer closed while idle, whose request may go again (see
            # _peer_closed_before_answering), as in HTTPTransport.
            raise http.client.RemoteDisconnected("The service closed the connection.")
        left -= len(line)
        if left < 0:
            raise UpstreamError("The service's response head is too large.")
        if lines and line in (b"\r\n", b"\n"):
            head = b"".join(lines)
            return head[: -2 if head.endswith(b"\r\n") else -1], left
        lines.append(line)


class _Exchange:
    """One response being read from urllib3: chunks as they arrive, then release."""

    __slots__ = ("_response", "done")

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self.done = False

    def chunks(self) -> Iterator[bytes]:
        raw = self._response.raw
        owed = 0.0  # seconds of pause owed for small chunks, not yet waited
        try:
            while not self.done:
                chunk = raw.read1(_READ_SIZE, decode_content=False)
                if not chunk:
                    self.finish()
                    return
                if len(chunk) < _PACED_BELOW:
                    owed += _PIECE_PAUSE * (_PACED_BELOW - len(chunk)) / _PACED_BELOW
                    if owed >= _PAUSE_TURN:
                        time.sleep(owed)
                        owed = 0.0
                yield chunk
        except _FOREIGN_ERRORS as exc:
            raise _translate(exc, reading_body=True) from exc
        finally:
            self.close()

    def finish(self) -> None:
        """Hand the connection back to its pool, the body having been read to its end."""
        raw = self._response.raw
        self.done = True
        # Reading the end lets http.client close its response: until then the connection
        # refuses its next request (ResponseNotReady), once the upstream has acted on it.
        try:
            raw.read(decode_content=False)
        except _FOREIGN_ERRORS as exc:
            self._response.close()
            raise _translate(exc, reading_body=True) from exc
        raw.release_conn()

    def close(self) -> None:
        if not self.done:
            self.done = True
            self._response.close()


@functools.cache
def _checked_connection_class(
    base: type[urllib3.connection.HTTPConnection],
) -> type[urllib3.connection.HTTPConnection]:
    """``base``, whose idle-connection check also looks at bytes the TLS layer holds, and which
    sends and reads each request as its :class:`_Wire` says."""

    class CheckedConnection(base):  # type: ignore[valid-type,misc]
        #: The request under way, set by the pool for the length of its exchange.
        wire: _Wire | None = None
        #: Set when a response ended with bytes after it; cleared by a new connection.
        surplus = False

        @property
        def is_connected(self) -> bool:
            if self.surplus:
                return False
            sock = self.sock
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                # Decrypted bytes past the last response: the socket looks idle, but the next
                # request would read them as its answer.
                return False
            return bool(super().is_connected)

        @property
        def response_class(self) -> Callable[..., _Response]:
            # http.client makes the response as response_class(sock, method=...).
            return functools.partial(_Response, wire=self.wire, on_surplus=self._mark_surplus)

        def _mark_surplus(self) -> None:
            self.surplus = True

        def connect(self) -> None:
            self.surplus = False
            super().connect()
            sock = self.sock
            if isinstance(sock, ssl.SSLSocket):
                # RFC 9112 §9.8: a body delimited by the close is complete only if the close
                # carries TLS close_notify. urllib3 wraps with suppress_ragged_eofs, which
                # reads a bare TCP close as a clean end: a truncated body would pass for whole.
                # The socket reads the attribute on every read (typeshed does not list it).
                cast(Any, sock).suppress_ragged_eofs = False

        def putrequest(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
            # urllib3 re-quotes the target it is given (escapes upper-cased, " { } | ^ and
            # others encoded), which breaks a signed URL: the target goes out as written.
            wire = self.wire
            super().putrequest(method, url if wire is None else wire.target, *args, **kwargs)

        def send(self, data: ReadableBuffer) -> None:
            """Write ``data`` whole, re-arming the deadline before each send (``sendall``
            would let an upstream that takes a little within each timeout hold it)."""
            wire = self.wire
            if wire is None:
                super().send(data)
                return
            if self.sock is None:
                self.connect()  # as http.client's send does
            sock = self.sock
            view = memoryview(data)
            size = TLS_RECORD if isinstance(sock, ssl.SSLSocket) else len(view)
            while view:
                wire.arm(sock)
                view = view[sock.send(view[:size]) :]

    CheckedConnection.__name__ = CheckedConnection.__qualname__ = "Checked" + base.__name__
    return CheckedConnection


@functools.cache
def _checked_pool_class(
    base: type[urllib3.connectionpool.HTTPConnectionPool],
) -> type[urllib3.connectionpool.HTTPConnectionPool]:
    """``base``, whose connections are :func:`_checked_connection_class` and are told the
    :class:`_Wire` of the request they carry."""

    class CheckedPool(base):  # type: ignore[valid-type,misc]
        ConnectionCls = _checked_connection_class(base.ConnectionCls)

        def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            # requests passes no pool_timeout: with pool_block=True the wait for a pooled
            # connection would be unbounded. It waits at most what is left of the total.
            wire = kwargs.get("timeout")
            if isinstance(wire, _Wire) and kwargs.get("pool_timeout") is None:
                kwargs["pool_timeout"] = wire.left()
            return super().urlopen(method, url, *args, **kwargs)

        def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
            # Where urllib3 holds both the connection and the request's timeout, its _Wire.
            wire = kwargs.get("timeout")
            conn.wire = wire if isinstance(wire, _Wire) else None
            try:
                return super()._make_request(conn, *args, **kwargs)
            finally:
                # The response keeps its own (see CheckedConnection.response_class).
                conn.wire = None

    CheckedPool.__name__ = CheckedPool.__qualname__ = "Checked" + base.__name__
    return CheckedPool


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
        if self._session.proxies:
            # requests makes a proxy's pools itself, outside the tenants' checked ones.
            raise ValueError("A session with proxies cannot be used; unset session.proxies.")
        self._verify: bool | str = True if verify is None else verify
        self._adapters = _TenantAdapters()

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; return once the status and headers arrived."""
        started = time.monotonic()
        origin, target = split_url(request.url)
        # Sent as written (see CheckedConnection.putrequest): nothing that could split the
        # request may reach the wire, and http.client writes the request line in ASCII.
        if not target.isascii() or UNSAFE_TARGET_PATTERN.search(target):
            raise InvalidRequestError("The request cannot be sent.")
        timeouts = request.timeouts
        deadline = None if timeouts.total is None else started + timeouts.total
        prepared = self._prepare(request, origin.scheme, origin.host_header, target, deadline)
        adapter = self._adapters.get(
            self._session.get_adapter(prepared.url or request.url), request.tenant
        )
        send_args: dict[str, Any] = {
            "stream": True,
            "timeout": _Wire(timeouts, deadline=deadline, target=target),
            "verify": self._verify,
            "cert": self._session.cert,
            "proxies": {},
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
            prepared = self._prepare(request, origin.scheme, origin.host_header, target, deadline)
            try:
                response = adapter.send(prepared, **send_args)
            except _FOREIGN_ERRORS as retry_exc:
                raise _translate(retry_exc) from retry_exc
        raw = response.raw
        exchange = _Exchange(response)
        length = raw.length_remaining
        if length == 0:
            exchange.finish()
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

    def _prepare(
        self,
        request: UpstreamRequest,
        scheme: str,
        host_header: str,
        target: str,
        deadline: float | None,
    ) -> requests.PreparedRequest:
        headers = urllib3.HTTPHeaderDict()
        headers.add("Host", host_header)
        for name, value in request.headers:
            headers.add(name, value)
        # urllib3 adds these unless told to skip them; the contract adds nothing.
        for name in ("User-Agent", "Accept-Encoding"):
            if name not in headers:
                headers[name] = SKIP_HEADER
        body: bytes | Iterable[bytes] | None = request.body
        if request.body_stream is not None:
            # Checked against its length and the total (a caller slower than it is a 408).
            body = request.checked_stream(deadline)
        length = request.wire_content_length
        if length is not None:
            headers["Content-Length"] = str(length)
        prepared = requests.PreparedRequest()
        prepared.method = request.method
        # Set directly: PreparedRequest.prepare_url() would re-quote the path. Rebuilt from
        # the origin, so that urllib3 looks up and checks in TLS the very name Host carries
        # (the A-label of an internationalised name) instead of encoding the name itself.
        prepared.url = f"{scheme}://{host_header}{target}"
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
