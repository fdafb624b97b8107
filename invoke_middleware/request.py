"""The framework-free request the relay pipeline works on.

The WSGI adapter (:mod:`invoke_middleware.middleware`) builds a :class:`PipelineRequest` from the
environ; nothing past it ever sees WSGI. Auth resolvers receive the same object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from invoke_middleware.headers import Headers

#: The environ key under which a server adapter may put a callable telling whether the caller
#: has gone (the ASGI adapter does): a request that waited for a concurrency slot is then not
#: relayed for nobody.
CLIENT_GONE_KEY = "invoke_middleware.client_gone"


class BodyReader(Protocol):
    """A readable request body (a WSGI ``wsgi.input`` satisfies it)."""

    def read(self, size: int = -1, /) -> bytes: ...


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
