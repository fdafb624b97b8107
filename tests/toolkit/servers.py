"""Run a server from a thread for the length of a ``with`` block.

Every loopback server of the tests (``http.server``, werkzeug, wsgiref, waitress) runs the same
way: served from a thread, then shut down, its sockets closed and its thread joined (bounded)
when the block ends, so that no test leaves a thread or a listening socket behind.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
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
        for channel in list(server._map.values()):  # the listener and any open connection
            channel.close()
        thread.join(JOIN_TIMEOUT)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the length of the block: bound, so no
    other server takes it meanwhile, and never listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]
