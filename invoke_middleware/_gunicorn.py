"""The gateway as a gunicorn application: the pre-fork engine of ``invoke-middleware serve``.

Imported only when that engine runs (gunicorn is the optional ``serve`` extra). See
:mod:`invoke_middleware._server` for what each engine guarantees.
"""

from __future__ import annotations

import errno
import importlib.util
import selectors
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.glogging import Logger  # type: ignore[import-untyped]
from gunicorn.workers.gthread import TConn, ThreadWorker  # type: ignore[import-untyped]

from invoke_middleware._server import (
    LOG_FORMAT,
    EscapingFormatter,
    ServerPlan,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class EscapingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing the gateway's line format with control characters escaped."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(EscapingFormatter(LOG_FORMAT))


class _Conn(TConn):  # type: ignore[misc]
    """A connection and the bytes of the request head it has sent so far."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.head = bytearray()


class HeadFirstWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, except that a connection gets a thread only once its request head is whole.

    gunicorn's gthread worker gives a connection a thread as soon as it has a byte to read;
    the thread then waits, blocked, for the rest of the head. A client that sends half a
    head and stops (or trickles it) would hold that thread, and ``threads`` such clients
    hold the whole process. Here the head is gathered in the worker's event loop, like
    waitress does, and must be complete within ``keepalive`` (``[server] idle_timeout``)
    seconds of the connection's start; a silent or slow client costs a socket, not a thread.
    Bodies are still read by the thread, as they stream.
    """

    def accept(self, listener: Any) -> None:
        if self.cfg.is_ssl:  # TLS is negotiated by the thread; `serve` does not use it
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._await_head(_Conn(self.cfg, client, address, listener.getsockname()))

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        if not isinstance(conn, _Conn):
            super().on_client_socket_readable(conn, client)
            return
        # A kept-alive connection starts its next request: its head is gathered the same way.
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def _await_head(self, conn: _Conn) -> None:
        conn.head.clear()
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)  # closed by murder_pending() once past its timeout
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))

    def _on_head_bytes(self, conn: _Conn, client: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        start = max(0, len(conn.head) - 3)
        conn.head += data
        whole = conn.head.find(b"\r\n\r\n", start) >= 0
        # A head past the cap goes to gunicorn's parser too, which refuses it (431/400).
        if not whole and len(conn.head) <= self.cfg.limit_request_field_size + 8192:
            return
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        conn.init()  # plain HTTP: makes the parser; the socket is blocking from here on
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head.clear()
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop(self, conn: _Conn) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()


class BodyCapGuard:
    """Refuses (413) a request whose declared body is larger than ``max_bytes``.

    waitress applies ``max_request_body_bytes`` itself; gunicorn streams bodies and has no
    such cap, so this one applies it to a declared ``Content-Length`` before the gateway
    reads anything (a chunked body is capped by the gateway as it streams).
    """

    def __init__(self, app: WSGIApplication, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        declared = environ.get("CONTENT_LENGTH") or "0"
        if declared.isdigit() and int(declared) > self.max_bytes:
            body = b'{"error_message": "Request body too large."}'
            start_response(
                "413 Content Too Large",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return self.app(environ, start_response)


class GatewayApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's arbiter and gthread workers around the gateway ``build`` makes, per worker."""

    def __init__(
        self,
        plan: ServerPlan,
        build: Callable[[], tuple[WSGIApplication, Callable[[], None]]],
        *,
        options: dict[str, Any],
        on_ready: Callable[[], None],
        process_safe_metrics: bool,
    ) -> None:
        self._plan = plan
        self._build = build
        self._options = options
        self._on_ready = on_ready
        self._process_safe_metrics = process_safe_metrics
        self._close: Callable[[], None] | None = None
        super().__init__()

    def load_config(self) -> None:
        options = dict(self._options)
        options.update(
            logger_class=EscapingLogger,
            when_ready=self._when_ready,
            worker_exit=self._worker_exit,
            child_exit=self._child_exit,
        )
        for name, value in options.items():
            self.cfg.set(name, value)

    def load(self) -> WSGIApplication:
        # In the worker, after the fork: its own store connections and upstream pools.
        app, self._close = self._build()
        return BodyCapGuard(app, max_bytes=self._plan.max_request_body_bytes)

    def _when_ready(self, server: Any) -> None:
        self._on_ready()

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self._close is not None:
            self._close()

    def _child_exit(self, server: Any, worker: Any) -> None:
        if self._process_safe_metrics and importlib.util.find_spec("prometheus_client"):
            # A dead worker's live gauges (in-flight relays) must not count any more.
            from invoke_middleware.metrics import mark_process_dead  # noqa: PLC0415

            mark_process_dead(worker.pid)
