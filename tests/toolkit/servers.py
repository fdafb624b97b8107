"""Run a server from a thread for the length of a ``with`` block.

Every loopback server of the tests (``http.server``, werkzeug, wsgiref, waitress) runs the same
way: served from a thread, then shut down, its sockets closed and its thread joined (bounded)
when the block ends, so that no test leaves a thread or a listening socket behind.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast
from wsgiref.simple_server import WSGIRequestHandler as WsgirefHandler
from wsgiref.simple_server import WSGIServer
from wsgiref.simple_server import make_server as make_wsgiref_server

import waitress.server
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler
from werkzeug.serving import make_server as make_werkzeug_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

#: Upper bound for joining a server's thread, so a broken test cannot hang the run.
JOIN_TIMEOUT = 30.0


@contextlib.contextmanager
def serving(server: socketserver.BaseServer, *, scheme: str = "http") -> Iterator[str]:
    """Serve ``server`` from a thread until the block ends; yield its base URL.

    The URL has no trailing slash. The server must already be bound (to ``127.0.0.1``).
    """
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]  # type: ignore[misc]
        yield f"{scheme}://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(JOIN_TIMEOUT)


class _QuietWerkzeugHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        """Silence the access log."""


class _QuietWsgirefHandler(WsgirefHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Silence the access log."""


@contextlib.contextmanager
def serve_wsgi(app: WSGIApplication, *, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``app`` with werkzeug's threaded server; yield its base URL (no trailing slash).

    The URL is ``https`` when an ``ssl_context`` is given.
    """
    server: BaseWSGIServer = make_werkzeug_server(
        "127.0.0.1",
        0,
        app,
        threaded=True,
        request_handler=_QuietWerkzeugHandler,
        ssl_context=ssl_context,
    )
    with serving(server, scheme="http" if ssl_context is None else "https") as url:
        yield url


@contextlib.contextmanager
def serve_wsgiref(app: WSGIApplication) -> Iterator[str]:
    """Serve ``app`` with the standard library's single-threaded wsgiref server.

    wsgiref hands the raw socket to the app as ``wsgi.input`` and never sets
    ``wsgi.input_terminated``: a chunked request body cannot be read to its end (PEP 3333),
    which is what some tests need.
    """
    server: WSGIServer = make_wsgiref_server(
        "127.0.0.1", 0, app, handler_class=_QuietWsgirefHandler
    )
    with serving(server) as url:
        yield url


@contextlib.contextmanager
def serve_waitress(app: WSGIApplication) -> Iterator[str]:
    """Serve ``app`` with waitress (the standalone gateway's server) from a thread; yield its
    base URL. waitress reads a request's body whole before calling the app, into a temporary
    file past 512 KiB (its ``inbuf_overflow``)."""
    server = waitress.server.create_server(app, host="127.0.0.1", port=0, threads=2)
    assert isinstance(server, waitress.server.TcpWSGIServer)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.task_dispatcher.shutdown()

        def close_all() -> None:
            for channel in list(server._map.values()):  # the listener, connections, trigger
                channel.close()

        # Closed on the server's own thread, between two polls: closed from here, a socket
        # could go while its loop waits on it, which fails that thread (EBADF in select).
        server.trigger.pull_trigger(close_all)
        thread.join(JOIN_TIMEOUT)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the length of the block: bound, so no
    other server takes it meanwhile, and never listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


class StallingForwarder:
    """Forwards loopback TCP connections to ``127.0.0.1:target_port`` until :meth:`stall`.

    Stalled, it passes no byte either way and holds every connection open, new ones included
    (accepted, never forwarded): what a client sees of a stopped server, whose kernel still
    accepts and acknowledges, or of a connection pooler queueing its queries.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stalled = threading.Event()
        self._holding = threading.Event()  # the thread has seen the stall
        self._closed = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._forward, daemon=True)
        self._thread.start()

    def stall(self) -> None:
        """Stop passing bytes; returns once no more will pass."""
        self._stalled.set()
        self._holding.wait(JOIN_TIMEOUT)

    def resume(self) -> None:
        self._holding.clear()
        self._stalled.clear()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(JOIN_TIMEOUT)
        for held in [*self._peers, *self._held, self._listener]:
            held.close()
        self._selector.close()

    def _forward(self) -> None:
        while not self._closed.is_set():
            if self._stalled.is_set():
                self._holding.set()
                ready, _, _ = select.select([self._listener], [], [], 0.05)
                if ready and self._stalled.is_set():  # else the forwarding loop accepts it
                    self._held.append(self._listener.accept()[0])
                continue
            for key, _ in self._selector.select(0.05):
                if key.fileobj is self._listener:
                    self._pair(self._listener.accept()[0])
                else:
                    self._pass_on(cast(socket.socket, key.fileobj))

    def _pair(self, client: socket.socket) -> None:
        server = socket.create_connection(self._target, timeout=JOIN_TIMEOUT)
        for one, other in ((client, server), (server, client)):
            self._peers[one] = other
            self._selector.register(one, selectors.EVENT_READ)

    def _pass_on(self, source: socket.socket) -> None:
        peer = self._peers.get(source)
        if peer is None:  # closed with its peer earlier in the same round
            return
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):
                peer.sendall(data)
            return
        for one in (source, peer):  # one side ended: end the other
            self._selector.unregister(one)
            del self._peers[one]
            one.close()


@contextlib.contextmanager
def stalling_forwarder(target_port: int) -> Iterator[StallingForwarder]:
    """A :class:`StallingForwarder` to ``target_port`` for the length of the block."""
    forwarder = StallingForwarder(target_port)
    try:
        yield forwarder
    finally:
        forwarder.close()
