"""The framework-free request the relay pipeline works on.

The WSGI adapter (:mod:`invoke_middleware.middleware`) builds a :class:`PipelineRequest` from the
environ; nothing past it ever sees WSGI. Auth resolvers receive the same object.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from invoke_middleware.headers import Headers
from invoke_middleware.transport.base import Timeouts

#: The environ key under which a server adapter may put a callable telling whether the caller
#: has gone (the ASGI adapter does): a request that waited for a concurrency slot is then not
#: relayed for nobody.
CLIENT_GONE_KEY = "invoke_middleware.client_gone"
#: The environ key under which a server adapter says (``True``) that what it takes from a
#: response body is not written yet when it asks for the next piece, only once it calls the
#: body's ``close()``: the ASGI adapter, whose thread queues pieces for the event loop. A
#: concurrency slot is then held until ``close()``, so that a client that reads slowly holds
#: its request's slot as long as it holds the thread.
WRITTEN_BY_CLOSE_KEY = "invoke_middleware.written_by_close"


class BodyReader(Protocol):
    """A readable request body (a WSGI ``wsgi.input`` satisfies it)."""

    def read(self, size: int = -1, /) -> bytes: ...


class SharedAllowance:
    """What the invokes made for one caller's request share, when it makes several (an MCP
    request's tool calls, a batch's too): ``limit`` bytes of the services' responses read in
    all (heads and bodies, returned or not), and one ``deadline`` on the ``clock`` for every
    exchange. So that the request costs no more than one invoke could, however many calls it
    makes: each call may read only what is left, and its total timeout ends at the deadline.
    """

    __slots__ = ("clock", "deadline", "limit", "used")

    def __init__(
        self, limit: int, seconds: float | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.used = 0
        self.clock = clock
        self.deadline = None if seconds is None else clock() + seconds

    @property
    def bytes_left(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def bytes_spent(self) -> bool:
        """Whether no more bytes may be read."""
        return self.used >= self.limit

    @property
    def spent(self) -> bool:
        """Whether no more bytes may be read, or no more time is left."""
        return self.bytes_spent or self.seconds_left() == 0

    def seconds_left(self) -> float | None:
        """``None`` without a deadline; otherwise what is left of it, never below 0."""
        return None if self.deadline is None else max(0.0, self.deadline - self.clock())

    def take(self, size: int) -> bool:
        """Count ``size`` bytes more; whether everything counted still fits."""
        self.used += size
        return self.used <= self.limit

    def bounded(self, timeouts: Timeouts) -> Timeouts:
        """``timeouts`` with the total ending at the deadline at the latest."""
        left = self.seconds_left()
        if left is None or (timeouts.total is not None and timeouts.total <= left):
            return timeouts
        return replace(timeouts, total=left)


@dataclass(frozen=True, kw_only=True)
class PipelineRequest:
    """One incoming request, as the pipeline sees it.

    ``path`` is the WSGI ``PATH_INFO``: decoded by the server (``%2F`` already a ``/``, each
    octet one Latin-1 character, PEP 3333), below the host's ``SCRIPT_NAME`` and with the
    gateway's prefix, e.g. ``/api/r/containers/echo/a b``. It is for resolvers and logs: the
    route was matched on it, and the catch-all sends the tail as the client spelled it.
    ``query`` is the raw query string without ``?``. ``content_length`` is ``None`` when the
    caller sent no ``Content-Length``; ``chunked`` says the body has no length to read (the
    server de-chunked it, or it came over HTTP/2 or HTTP/3 without one) and the server marks
    its end.
    """

    method: str
    path: str
    # Not in the repr: a query string may carry a token (``?access_token=``).
    query: str = field(repr=False)
    headers: Headers
    remote_addr: str
    scheme: str
    host: str
    body: BodyReader = field(repr=False)
    content_length: int | None = None
    chunked: bool = False
    #: Whether the caller has gone, when the server can tell (see :data:`CLIENT_GONE_KEY`).
    client_gone: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    #: Part of a request that holds the process's and the team's concurrency slots already
    #: (an MCP message's tool call, run on the message's thread): only the service's cap is
    #: taken for it (see :meth:`~invoke_middleware.limits.Limiter.admit`).
    within_caller: bool = False
    #: The server writes the response body by the time it calls ``close()``, not as it takes
    #: each piece (see :data:`WRITTEN_BY_CLOSE_KEY`).
    written_by_close: bool = False
    #: The bytes and time an invoke made for this request shares with the others made for
    #: the same caller's request (``None``: its own, as the settings give them).
    allowance: SharedAllowance | None = field(default=None, repr=False, compare=False)
