"""The transport contract: send one upstream request, get a streamed response back.

A transport is one method, :meth:`Transport.send`, plus :meth:`Transport.close`. Every
implementation honours the same contract, which the gateway relies on:

- the request goes exactly where ``request.url`` says; redirects are returned, never followed;
  proxy settings and ``.netrc`` from the environment are never used;
- the headers sent are exactly ``request.headers`` plus ``Host`` and the body framing
  (:attr:`UpstreamRequest.wire_content_length` when known, else chunked); no
  ``Accept-Encoding`` or ``User-Agent`` of the transport's own;
- the body is sent as it is produced, never read whole first;
- the response's status, reason and header fields come back in order with repeats kept (one
  :class:`~invoke_middleware.headers.Headers`); body bytes come back undecoded
  (``Content-Encoding`` untouched), chunk by chunk as they arrive;
- connection failures raise :class:`~invoke_middleware.errors.UpstreamUnreachableError`,
  timeouts :class:`~invoke_middleware.errors.UpstreamTimeoutError`, malformed responses
  :class:`~invoke_middleware.errors.UpstreamError`, both from ``send`` and from iterating the
  body; a body that ends early raises instead of ending cleanly;
- a :class:`~invoke_middleware.errors.GatewayError` raised while reading ``request.body``
  (the caller's body was too large, say) propagates unchanged;
- a connection is never shared between two :attr:`UpstreamRequest.tenant` values: a transport
  that keeps connections pools them per tenant *and* origin, so bytes an upstream sends past
  the end of one tenant's response can never be read as another tenant's. A pooled
  connection is reused only when its last response ended exactly at its framing, with nothing
  buffered or readable after it. A transport without a pool (one connection per request, or
  no connection at all) has nothing to do for this.

Lifecycles follow httpx: the bundled transports and every :class:`UpstreamResponse` are
context managers whose exit calls ``close()``, so a host or a test can write::

    with HTTPTransport() as transport, transport.send(request) as response:
        body = b"".join(response)

A transport of your own only needs ``send`` and ``close``; derive it from :class:`Closeable`
to get the ``with`` form too.

This module imports nothing beyond the standard library and the package's light modules, so
implementing or type-checking against the contract loads no HTTP client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, Self, cast

from invoke_middleware.errors import InvalidRequestError, RequestTimeoutError
from invoke_middleware.headers import Headers

#: Methods whose request defines a meaning for content: without a body they still announce
#: ``Content-Length: 0`` (RFC 9110 §8.6).
_METHODS_WITH_CONTENT = frozenset({"POST", "PUT", "PATCH"})

#: RFC 9110 §9.2.2.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class Closeable:
    """``with`` support for anything with a ``close()``: leaving the block calls it."""

    __slots__ = ()

    def close(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Upstream time limits in seconds; ``None`` means "not set here".

    ``connect`` bounds opening the connection, ``read`` bounds each wait for bytes, and
    ``total`` bounds the whole exchange from the first byte sent to the last byte received.
    Per-service values are merged over the gateway's with :meth:`merged_over`.
    """

    connect: float | None = None
    read: float | None = None
    total: float | None = None

    def merged_over(self, base: Timeouts) -> Timeouts:
        """These timeouts, with unset fields taken from ``base``."""
        if self.connect is None and self.read is None and self.total is None:
            return base  # the common case: a service that sets none of its own
        return Timeouts(
            connect=self.connect if self.connect is not None else base.connect,
            read=self.read if self.read is not None else base.read,
            total=self.total if self.total is not None else base.total,
        )


DEFAULT_TIMEOUTS = Timeouts(connect=5.0, read=60.0, total=300.0)


@dataclass(frozen=True)
class FileRegion:
    """Where a streamed body lies whole in a regular file: ``length`` bytes of the file open as
    ``fd``, from ``offset``.

    A transport may send them from there (``os.sendfile``: the kernel copies the file to the
    socket, never through Python's memory) instead of iterating the body, and then calls
    ``taken`` with each count of bytes sent, in order, so that the body knows how far it was
    read. A file that ends before ``length`` bytes is a body cut short.
    """

    fd: int
    offset: int
    length: int
    taken: Callable[[int], None] = field(repr=False, compare=False)


class SpooledBody(Protocol):
    """A streamed body that may lie whole in a file (a server may spool a request's body to
    one before the application runs: waitress does, past its in-memory limit)."""

    def file_region(self) -> FileRegion | None:
        """Where the body lies when it is in a regular file and none of it has been read;
        ``None`` otherwise (then it is read by iterating it)."""


@dataclass(frozen=True, kw_only=True)
class UpstreamRequest:
    """One request to send upstream.

    ``url`` is absolute and already checked (see :mod:`invoke_middleware.target`); ``body`` is
    ``None``, bytes, or an iterable of byte chunks; ``content_length`` is its size when known
    (``None`` with an iterable body means chunked transfer coding). The properties below say
    how the body goes on the wire, so that every transport frames it the same way.

    ``tenant`` names who the request is sent for (the gateway sets the caller: its team, and
    its user or key):
    connections are pooled per tenant, never shared between two (see the module docstring).
    ``None`` is a tenant of its own, for requests sent outside the gateway. ``share`` names
    whose share of a transport's idle connections the request's connection counts in, when
    that is wider than its tenant (the gateway sets the caller's team, so that a team of many
    callers holds no more idle connections than a team of one); ``None``: its tenant's.
    """

    method: str
    # Not in the repr, like a Service's URLs: a webhook's path or the caller's query string
    # may carry a secret.
    url: str = field(repr=False)
    # Not in the repr: it carries the external service's secret and the caller's cookies.
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes | Iterable[bytes] | None = field(default=None, repr=False)
    content_length: int | None = None
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    tenant: str | None = None
    share: str | None = None

    @property
    def body_stream(self) -> Iterable[bytes] | None:
        """The body when it is an iterable of chunks (sent as produced, readable only once);
        ``None`` when there is no body or it is held in memory."""
        body = self.body
        # bytearray and memoryview are iterable too, but of ints: they are bodies in memory.
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            return None
        return body

    @property
    def body_bytes(self) -> bytes | None:
        """The body when it is held in memory; ``None`` when there is none or it is streamed."""
        return None if self.body_stream is not None else cast(bytes | None, self.body)

    @property
    def wire_content_length(self) -> int | None:
        """The ``Content-Length`` to send (RFC 9112 §6); ``None`` means none is sent.

        A body in memory is framed by its length, a streamed one by ``content_length`` when
        the caller knows it, else it goes chunked (:attr:`is_chunked`). Without a body, the
        methods that define a meaning for content still announce ``0``.
        """
        if self.body is None:
            return 0 if self.method in _METHODS_WITH_CONTENT else None
        body = self.body_bytes
        return len(body) if body is not None else self.content_length

    @property
    def is_chunked(self) -> bool:
        """Whether the body goes with ``Transfer-Encoding: chunked`` (streamed, size unknown)."""
        return self.body_stream is not None and self.content_length is None

    @property
    def may_retry_after_close(self) -> bool:
        """Whether the request may be sent again after a reused keep-alive connection closed
        before any response byte.

        A server may close an idle connection at the moment a request is written to it
        (RFC 9112 §9.3.1). The request is retried once, on a fresh connection, only when the
        server cannot have acted on it twice: an idempotent method (RFC 9110 §9.2.2) and a
        body that can be sent again (none, or in memory).
        """
        return self.method in IDEMPOTENT_METHODS and self.body_stream is None

    @property
    def file_region(self) -> FileRegion | None:
        """Where the streamed body lies in a file (:class:`SpooledBody`), when it does and
        its length is the declared one; ``None`` otherwise: iterate :meth:`checked_stream`."""
        region_of = getattr(self.body_stream, "file_region", None)
        if region_of is None or self.content_length is None:
            return None
        region = cast("FileRegion | None", region_of())
        return region if region is not None and region.length == self.content_length else None

    def checked_stream(self, deadline: float | None = None) -> Iterator[bytes]:
        """The streamed body's chunks (none when it is not streamed), checked against
        ``content_length`` when that is declared, and against ``deadline`` (a
        :func:`time.monotonic` instant, the exchange's total) when given.

        Raises :class:`~invoke_middleware.errors.InvalidRequestError` as soon as the body
        runs past the declared length, or when it ends short of it: the framing already sent
        would otherwise be a lie the upstream reads as the start of another request. Raises
        :class:`~invoke_middleware.errors.RequestTimeoutError` (408) when a chunk comes after
        ``deadline``: the caller is slower than the total, which is not the service's fault
        (a transport would otherwise report the time out at its next send, as the
        service's).
        """
        stream = self.body_stream or ()
        expected = self.content_length
        sent = 0
        for chunk in stream:
            if deadline is not None and time.monotonic() >= deadline:
                raise RequestTimeoutError(
                    "The request body did not arrive within the gateway's total timeout."
                )
            sent += len(chunk)
            if expected is not None and sent > expected:
                raise length_mismatch()
            yield chunk
        if expected is not None and sent != expected:
            raise length_mismatch()


def unreadable_body() -> InvalidRequestError:
    """The caller's body could not be read: the server's reader or its file failed (400)."""
    return InvalidRequestError("The request body could not be read.")


def length_mismatch() -> InvalidRequestError:
    """The caller's body ran past, or ended short of, its declared length (400)."""
    return InvalidRequestError("The request body does not match its declared length.")


class UpstreamResponse(Closeable):
    """A response whose body has not been read yet.

    Iterate it to get the body chunk by chunk; :meth:`close` (or leaving a ``with`` block)
    releases the connection: back to the pool when the body was read to its end, otherwise
    it is discarded. Iterating after a failure or after :meth:`close` yields nothing more.
    ``headers`` is the response's header fields, taken as they are when the transport hands
    in a :class:`~invoke_middleware.headers.Headers` already.
    """

    __slots__ = ("_chunks", "_close", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        *,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]],
        chunks: Iterator[bytes],
        close: Callable[[], None] = lambda: None,
        content_length: int | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.content_length = content_length
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """Release the connection; the body cannot be read afterwards."""
        self._close()

    def __repr__(self) -> str:
        return f"<UpstreamResponse [{self.status}]>"


class Transport(Protocol):
    """Sends one request upstream. Must be safe to call from many threads at once."""

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request`` and return once the response's status and headers arrived."""
        ...

    def close(self) -> None:
        """Release pooled connections. The transport may not be used afterwards."""
        ...
