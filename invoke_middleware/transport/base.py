"""The transport contract: send one upstream request, get a streamed response back.

A transport is one method, :meth:`Transport.send`, plus :meth:`Transport.close`. Every
implementation honours the same contract, which the gateway relies on:

- the request goes exactly where ``request.url`` says; redirects are returned, never followed;
  proxy settings and ``.netrc`` from the environment are never used;
- the headers sent are exactly ``request.headers`` plus ``Host`` and the body framing
  (``Content-Length`` when ``request.content_length`` is known, else chunked); no
  ``Accept-Encoding`` or ``User-Agent`` of the transport's own;
- the body is sent as it is produced, never read whole first;
- the response's status, reason and header fields come back in order with repeats kept; body
  bytes come back undecoded (``Content-Encoding`` untouched), chunk by chunk as they arrive;
- connection failures raise :class:`~invoke_middleware.errors.UpstreamUnreachableError`,
  timeouts :class:`~invoke_middleware.errors.UpstreamTimeoutError`, malformed responses
  :class:`~invoke_middleware.errors.UpstreamError`, both from ``send`` and from iterating the
  body; a body that ends early raises instead of ending cleanly;
- a :class:`~invoke_middleware.errors.GatewayError` raised while reading ``request.body``
  (the caller's body was too large, say) propagates unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


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
        return Timeouts(
            connect=self.connect if self.connect is not None else base.connect,
            read=self.read if self.read is not None else base.read,
            total=self.total if self.total is not None else base.total,
        )


DEFAULT_TIMEOUTS = Timeouts(connect=5.0, read=60.0, total=300.0)


@dataclass(frozen=True, kw_only=True)
class UpstreamRequest:
    """One request to send upstream.

    ``url`` is absolute and already checked (see :mod:`invoke_middleware.target`); ``body`` is
    ``None``, bytes, or an iterable of byte chunks; ``content_length`` is its size when known
    (``None`` with an iterable body means chunked transfer coding).
    """

    method: str
    url: str
    # Not in the repr: it carries the external service's secret and the caller's cookies.
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes | Iterable[bytes] | None = field(default=None, repr=False)
    content_length: int | None = None
    timeouts: Timeouts = DEFAULT_TIMEOUTS


class UpstreamResponse:
    """A response whose body has not been read yet.

    Iterate it to get the body chunk by chunk; :meth:`close` releases the connection (back to
    the pool when the body was read to its end, otherwise it is discarded). Iterating after a
    failure or after :meth:`close` yields nothing more.
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
        self.headers = tuple(headers)
        self.content_length = content_length
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
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
