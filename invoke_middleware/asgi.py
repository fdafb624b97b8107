"""ASGI hosts (FastAPI, Starlette): :class:`InvokeASGIMiddleware` serves the runtime routes.

The gateway is a WSGI application; this module runs it inside an ASGI server with
`a2wsgi <https://pypi.org/project/a2wsgi/>`_ (the ``asgi`` extra). Runtime requests go to
:class:`~invoke_middleware.middleware.InvokeMiddleware` on a bounded pool of threads; every
other request (and every WebSocket or lifespan event) goes to the ASGI app untouched, on the
event loop, never on a thread. Usage::

    from fastapi import FastAPI
    from invoke_middleware import InvokeMiddleware
    from invoke_middleware.asgi import InvokeASGIMiddleware, no_wsgi_host

    gateway = InvokeMiddleware(no_wsgi_host, registry=registry, prefix="/api/v1")
    app = FastAPI()
    app.add_middleware(InvokeASGIMiddleware, gateway=gateway)

What it adds to a plain ``a2wsgi.WSGIMiddleware`` mount, so that the gateway keeps the
guarantees it has under a WSGI server (see "ASGI hosts" in the README):

- the request target as the client spelled it (``REQUEST_URI``, from the ASGI ``raw_path``):
  an encoded ``/`` or an invalid escape is refused, not decoded away by the server;
- ``wsgi.input_terminated``: the ASGI server de-chunks request bodies and signals their end,
  so a chunked upload streams instead of being refused with 411;
- a client that goes away is noticed: an upload that ends early fails instead of looking
  complete to the upstream, and a streamed response stops at its next chunk, closing the
  upstream connection and freeing the thread (a2wsgi alone keeps reading the upstream to its
  end, as the server drops what it is sent for a closed connection);
- a client that stalls is let go: a2wsgi's threads wait for the next piece of the body, and
  for room to hand a response chunk to the event loop, without a bound; here each wait ends
  after ``client_timeout`` seconds of silence, so a silent upload fails (400) and a response
  the client stops reading ends as if the client had gone away;
- a request task that the host cancels (a timeout middleware, a cancel scope, the server's
  graceful-shutdown timeout) lets its thread go: the thread sees a client that went away and
  finishes in the background instead of blocking for ever on a queue nobody drains;
- a request that waits for a thread holds only what the server buffered: its body is read
  from the server once a thread has taken it.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes

from a2wsgi import WSGIMiddleware

from invoke_middleware._bodies import close_body
from invoke_middleware.errors import InvalidRequestError
from invoke_middleware.limits import Limiter, fair_share, warn_unfair
from invoke_middleware.middleware import InvokeMiddleware
from invoke_middleware.request import CLIENT_GONE_KEY, WRITTEN_BY_CLOSE_KEY

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from invoke_middleware.otel import TracingMiddleware

__all__ = [
    "DEFAULT_CLIENT_TIMEOUT",
    "DEFAULT_SEND_QUEUE_SIZE",
    "DEFAULT_WORKERS",
    "ASGIApp",
    "InvokeASGIMiddleware",
    "no_wsgi_host",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Threads that run runtime requests. A streamed relay holds one for as long as it streams;
#: requests beyond this wait for a free thread (holding only their socket).
DEFAULT_WORKERS = 32
#: Response chunks (up to 64 KiB each) queued between a thread and the event loop, per
#: request. A thread that gets ahead of a slow client waits: memory stays bounded.
DEFAULT_SEND_QUEUE_SIZE = 4
#: Seconds a client may stay silent while the gateway waits for more of its body, or leave
#: a response chunk unread, before its request is let go (the standalone server closes a
#: silent connection after the same ``idle_timeout``, see "Standalone gateway" in the README).
DEFAULT_CLIENT_TIMEOUT = 30.0

# Where the per-request client state rides from the event loop to the thread: a2wsgi puts
# the ASGI scope in the WSGI environ as "asgi.scope".
_CLIENT_KEY = "invoke_middleware.client"


def no_wsgi_host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI host to give an :class:`InvokeMiddleware` served under an ASGI app.

    :class:`InvokeASGIMiddleware` only hands it the runtime routes, so this app is never
    reached there; should the gateway be called directly with another path, it answers 404.
    """
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"Not Found"]


class _Client:
    """The caller's side of one request: its body messages, its sends, whether it went away.

    A single task owns the server's ``receive``, so that a disconnect is seen even while the
    gateway is not reading the body (a GET whose response streams, say). It starts when a
    thread takes the request (:meth:`start`): a request waiting for a thread holds no more of
    its body than the server's own buffer.
    Body messages are handed over one at a time: the server stops reading the socket while
    one waits, so an upload is never buffered ahead of the upstream.

    Every wait on the client is bounded by ``timeout`` seconds, since a2wsgi's threads wait
    for the event loop without a bound (``Future.result()``): a body that stops arriving makes
    :meth:`receive` fail, and a send the server cannot finish marks the client as gone. Once
    it is gone, sends are dropped, so that a2wsgi's queue drains and the thread gets to the
    next chunk, where it stops (:class:`_UntilClientLeaves`).
    """

    def __init__(self, receive: Receive, send: Send, timeout: float) -> None:
        self._receive = receive
        self._send = send
        self._timeout = timeout
        self._messages: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)
        self._loop = asyncio.get_running_loop()
        self._pump: asyncio.Task[None] | None = None
        self._ended = False
        self.gone = threading.Event()

    def start(self) -> None:
        """Start reading from the server (called from the thread that took the request)."""
        self._loop.call_soon_threadsafe(self._start_pump)

    def watch(self) -> None:
        """Start reading from the server now, on the event loop: for a request without a
        body, which has nothing to hold back, so that a client that leaves while its request
        waits for a thread is known by the time one takes it."""
        self._start_pump()

    def _start_pump(self) -> None:
        if self._pump is None and not self._ended:
            self._pump = asyncio.create_task(self._pump_messages())

    async def _pump_messages(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                self.leave()
                return
            await self._messages.put(message)

    def leave(self) -> None:
        """Treat the client as gone, and wake a thread that waits for its body."""
        self.gone.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._messages.put_nowait({"type": "http.disconnect"})

    async def end(self) -> None:
        """Stop reading from the server: the request is over for the event loop."""
        self._ended = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def receive(self) -> Message:
        """The next body message; raises when the client left or stalled before its end."""
        if self.gone.is_set() and self._messages.empty():
            raise _client_left()
        try:
            async with asyncio.timeout(self._timeout):
                message = await self._messages.get()
        except TimeoutError:
            raise InvalidRequestError(
                f"The client sent none of the rest of the body for {self._timeout:g} s."
            ) from None
        if message["type"] != "http.request":
            raise _client_left()
        return message

    async def send(self, message: Message) -> None:
        """Send to the server, unless the client is gone; a stalled send makes it gone."""
        if self.gone.is_set():
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._send(message)
        except TimeoutError:
            # The client reads nothing: the response is cut short (the server closes the
            # connection, as the response never completes) and the thread is let go.
            self.gone.set()


def _client_left() -> InvalidRequestError:
    # Raised in the thread that reads the body: the relay fails and the upstream connection is
    # closed, so a truncated upload never reaches the container as a complete one.
    return InvalidRequestError("The client closed the connection before the body ended.")


#: The largest piece of a response handed to a2wsgi's queue: a buffered answer (an invoke's
#: base64, up to some 13 MiB) goes in pieces, so that a client that does not read holds the
#: thread, and the request's concurrency slot, instead of the whole answer waiting in the
#: server's buffer with neither held.
_PIECE = 64 * 1024


class _UntilClientLeaves:
    """The gateway's response body in pieces of at most :data:`_PIECE` bytes, cut short once
    the client has gone away."""

    __slots__ = ("_body", "_gone")

    def __init__(self, body: Iterable[bytes], gone: threading.Event) -> None:
        self._body = body
        self._gone = gone

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            for start in range(0, len(chunk), _PIECE):
                if self._gone.is_set():
                    return  # close() follows: it closes the upstream connection
                yield chunk[start : start + _PIECE]  # the chunk itself when it fits one piece

    def close(self) -> None:
        close_body(self._body)


def _share_workers(gateway: InvokeMiddleware, workers: int) -> None:
    """Keep one team from holding every worker, as the standalone server keeps it from
    holding every thread: a gateway without a limiter gets :func:`~invoke_middleware.limits.
    fair_share`'s caps for ``workers``; a limiter whose caps let one team hold them all is
    warned about."""
    pipeline = gateway.pipeline
    if pipeline.limiter is None:
        pipeline.limiter = Limiter(fair_share(None, workers))
    else:
        warn_unfair(pipeline.limiter.settings, workers)


# Every printable ASCII character stays as it is ('%' too, so escapes stay escapes): only the
# bytes outside ASCII, and controls, are encoded.
_QUERY_SAFE = string.punctuation


def _keep_to_wsgi_fields(scope: Scope) -> None:
    """Make ``scope`` one that a2wsgi turns into the environ a WSGI server would build.

    - A field name holding ``_`` is dropped, as gunicorn and waitress drop it: a2wsgi would
      join ``X_Forwarded_For`` into ``X-Forwarded-For`` (both are ``HTTP_X_FORWARDED_FOR``),
      letting a caller write into a field a trusted proxy in front set.
    - ``Cookie`` fields are joined into one with ``"; "``, not a2wsgi's ``","``.
    - A query's bytes outside ASCII (HTTP/2 servers pass them) are percent-encoded, as a
      browser sends them: a2wsgi decodes the query as ASCII and would fail with a 500.
    """
    headers = scope.get("headers")
    if headers and any(b"_" in name for name, _ in headers):
        scope["headers"] = headers = [(name, value) for name, value in headers if b"_" not in name]
    if headers and sum(name == b"cookie" for name, _ in headers) > 1:
        # HTTP/2 and HTTP/3 send cookies in fields of their own, which a2wsgi would join
        # with ",": one field, joined with "; " as RFC 9113 §8.2.3 says.
        cookies = b"; ".join(value for name, value in headers if name == b"cookie")
        scope["headers"] = [(name, value) for name, value in headers if name != b"cookie"]
        scope["headers"].append((b"cookie", cookies))
    query: bytes = scope.get("query_string", b"")
    if not query.isascii():
        scope["query_string"] = quote_from_bytes(query, safe=_QUERY_SAFE).encode("ascii")


def _without_body(scope: Scope) -> bool:
    """Whether the request surely has no body: HTTP/1.x without ``Content-Length`` (or with
    0) and without ``Transfer-Encoding`` (RFC 9112 §6.3). An HTTP/2 or HTTP/3 request may
    send data without announcing it, so it counts as one with a body unless it says 0."""
    declared: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            declared = value
    if declared is not None:
        return declared.strip() == b"0"
    return str(scope.get("http_version", "1.1")).startswith("1")


def _request_uri(scope: Scope) -> str | None:
    """The request target as sent (path still percent-encoded), or ``None`` if unknown."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return None
    path = raw.decode("latin-1")
    root = scope.get("root_path", "")
    if root and not unquote_to_bytes(path).decode("latin-1").startswith(root):
        # Some servers (uvicorn's --root-path) add root_path to "path" but not to "raw_path".
        path = quote(root.encode("utf-8"), safe="/") + path
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


class _GatewayWSGIApp:
    """Runs in a2wsgi's threads: completes the environ, then calls the gateway (or what wraps
    it: ``instrument()``'s tracing)."""

    def __init__(self, gateway: WSGIApplication) -> None:
        self.gateway = gateway

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        scope: Scope = environ["asgi.scope"]
        client: _Client = scope[_CLIENT_KEY]
        if client.gone.is_set():
            # The host cancelled the request while it waited for a thread: nobody is left to
            # answer, so it never reaches the upstream (the answer is dropped).
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return []
        client.start()
        environ["wsgi.input_terminated"] = True  # the ASGI server signals the body's end
        environ[CLIENT_GONE_KEY] = client.gone.is_set
        # a2wsgi queues what it takes for the event loop, and calls close() after its last
        # send: a slot is held until then, not given back while the answer waits unwritten.
        environ[WRITTEN_BY_CLOSE_KEY] = True
        request_uri = _request_uri(scope)
        if request_uri is not None:
            environ["REQUEST_URI"] = request_uri
        return _UntilClientLeaves(self.gateway(environ, start_response), client.gone)


class InvokeASGIMiddleware:
    """ASGI middleware: the gateway's runtime routes on threads, everything else to ``app``.

    ``gateway`` is an :class:`~invoke_middleware.middleware.InvokeMiddleware` (its own WSGI
    app is never called from here; give it :func:`no_wsgi_host`), or what
    :func:`~invoke_middleware.otel.instrument` made of one, for server spans. ``workers``
    bounds the threads that run runtime requests (see :data:`DEFAULT_WORKERS`);
    ``send_queue_size`` bounds the response chunks queued per request. ``client_timeout``
    (seconds, see :data:`DEFAULT_CLIENT_TIMEOUT`) bounds how long a thread waits on the
    client: for the next piece of a body (then the body read fails, 400) and for the server
    to take the next response chunk (then the response is cut short, as for a client that went
    away). A request task the host cancels ends at once; its thread notices a client that went
    away and finishes in the background. Works as
    ``app.add_middleware(InvokeASGIMiddleware, gateway=...)`` in FastAPI and Starlette.
    Call :meth:`close` at shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        gateway: InvokeMiddleware | TracingMiddleware,
        workers: int = DEFAULT_WORKERS,
        send_queue_size: int = DEFAULT_SEND_QUEUE_SIZE,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        if workers < 1 or send_queue_size < 1:
            raise ValueError("workers and send_queue_size must be at least 1.")
        if not client_timeout > 0:
            raise ValueError("client_timeout must be more than 0 seconds.")
        served: WSGIApplication = gateway
        if not isinstance(gateway, InvokeMiddleware):
            inner = getattr(gateway, "app", None)
            if not isinstance(inner, InvokeMiddleware):
                raise TypeError("gateway must be an InvokeMiddleware, or instrument()'s wrapper")
            gateway = inner
        self.app = app
        self.gateway = gateway
        self.workers = workers
        self.client_timeout = client_timeout
        _share_workers(gateway, workers)
        # Calls whose request task the host cancelled, held until their thread finishes (the
        # event loop keeps only weak references to tasks).
        self._abandoned: set[asyncio.Task[None]] = set()
        self._wsgi = WSGIMiddleware(
            _GatewayWSGIApp(served),  # type: ignore[arg-type]  # a2wsgi's own WSGI types
            workers=workers,
            send_queue_size=send_queue_size,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_runtime(scope):
            await self.app(scope, receive, send)
            return
        client = _Client(receive, send, self.client_timeout)
        if _without_body(scope):
            # Without this, a flood of requests whose clients closed at once waited for the
            # threads like any other, and each was relayed, for nobody.
            client.watch()
        scope = {**scope, _CLIENT_KEY: client}
        _keep_to_wsgi_fields(scope)
        call = asyncio.ensure_future(
            self._wsgi(scope, client.receive, client.send)  # type: ignore[arg-type]
        )
        try:
            # Shielded: cancelling a2wsgi's call would stop the task that drains its queue
            # while the thread, which cannot be cancelled, goes on relaying into it.
            await asyncio.shield(call)
        except asyncio.CancelledError:
            if not call.done():
                client.leave()
                self._abandoned.add(call)
                call.add_done_callback(self._forget)
            raise
        finally:
            await client.end()

    def _forget(self, call: asyncio.Task[None]) -> None:
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: nobody is left to hear how it ended

    def _is_runtime(self, scope: Scope) -> bool:
        # The same PATH_INFO a2wsgi will build, so both sides agree on what is a runtime route.
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        path_info = path.encode("utf-8").decode("latin-1")
        return self.gateway.router.match(path_info or "/") is not None

    def close(self) -> None:
        """Stop the threads (after the requests they run) and close the gateway's transports."""
        self._wsgi.executor.shutdown(wait=False)
        self.gateway.close()
