"""The gateway as a gunicorn application: the pre-fork engine of ``invoke-middleware serve``.

Imported only when that engine runs (gunicorn is the optional ``serve`` extra). See
:mod:`invoke_middleware._server` for what each engine guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.glogging import Logger  # type: ignore[import-untyped]
from gunicorn.http.body import LengthReader  # type: ignore[import-untyped]
from gunicorn.workers.gthread import TConn, ThreadWorker  # type: ignore[import-untyped]

from invoke_middleware._server import (
    LOG_FORMAT,
    EscapingFormatter,
    ServerPlan,
    gunicorn_caps,
    server_refusal,
)
from invoke_middleware.errors import reason_phrase
from invoke_middleware.log_format import JSONFormatter

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from invoke_middleware._server import Builder, Reread


class EscapingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing the gateway's line format with control characters escaped."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(self.line_formatter())

    def line_formatter(self) -> logging.Formatter:
        """The formatter of every line this logger writes."""
        return EscapingFormatter(LOG_FORMAT)


class JSONLogger(EscapingLogger):
    """gunicorn's logger for ``[server] log_format = "json"``: one JSON object per line, like
    the gateway's own lines."""

    def line_formatter(self) -> logging.Formatter:
        return JSONFormatter()


class _Conn(TConn):  # type: ignore[misc]
    """A connection and the bytes of the request head it has sent so far."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.head = bytearray()


class HeadFirstWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, except that a connection gets a thread only once its request head is whole,
    and no socket operation of that thread waits longer than ``keepalive``.

    gunicorn's gthread worker gives a connection a thread as soon as it has a byte to read;
    the thread then waits, blocked, for the rest of the head. A client that sends half a
    head and stops (or trickles it) would hold that thread, and ``threads`` such clients
    hold the whole process. Here the head is gathered in the worker's event loop, like
    waitress does, and must be complete within ``keepalive`` (``[server] idle_timeout``)
    seconds of the connection's start (or of the end of the previous response); a silent or
    slow client costs a socket, not a thread. A head larger than ``[server]
    max_request_header_bytes`` is refused there (431), as waitress refuses it.

    Bodies are still read by the thread, as they stream, and responses written by it; each
    read or write of the socket then gives up after ``keepalive`` seconds. A stalled upload
    fails as a body the gateway cannot read (400), and a client that stops reading a
    response is treated as gone, so neither holds a thread or a concurrency slot for longer.
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

    def finish_request(self, conn: Any, fs: Any) -> None:
        if not isinstance(conn, _Conn):
            super().finish_request(conn, fs)
            return
        if not _kept_alive(fs):
            # gunicorn closes "gracefully" here, in the event loop: up to 2 s waiting for the
            # client to close first, during which no other connection of the process moves.
            self._linger(conn)
            return
        received = conn.parser.unreader.take_buffered()
        if not received:
            super().finish_request(conn, fs)
            return
        # The client sent more than its request (the start of its next head came in the same
        # packet). gunicorn would hand the connection straight back to a thread, which would
        # then wait, with no deadline, for the rest of that head: it is gathered here instead.
        conn.sock.setblocking(False)
        self._await_head(conn, received)

    def handle_request(self, req: Any, conn: Any) -> bool:
        # Runs in the thread once the head is parsed. gunicorn has just made the socket
        # blocking, without a timeout: body reads and response writes would wait forever.
        conn.sock.settimeout(self.cfg.keepalive)
        try:
            return bool(super().handle_request(req, conn))
        except TimeoutError:
            # A write that made no progress: the client stopped reading. The relay has been
            # closed (its slot released) on the way out; the connection is closed now.
            self.log.info("closing a connection that stopped reading its response")
            return False

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        # Before a kept-alive connection takes its next request, gunicorn drains the body the
        # application left unread (a request refused before its upload was read: 401, 413),
        # bounded only between reads of 1 KiB, each of which waits for the socket again: a
        # client sending a byte a second held the thread for 17 minutes, and no credentials
        # are needed to be refused. Only what has already arrived is drained here (at most
        # 64 KiB); a body still on its way closes the connection instead, in the event loop
        # (finish_request, _linger).
        if not keepalive or self.cfg.is_ssl or not isinstance(conn, _Conn):
            return bool(super()._keepalive_after(conn, keepalive))
        reader = getattr(getattr(conn.parser.mesg, "body", None), "reader", None)
        if isinstance(reader, LengthReader) and reader.length == 0:
            # Read whole (a request without a body, an upload relayed): nothing is left to
            # drain, and the socket's mode is not changed twice for nothing (each change is a
            # system call that lets go of the interpreter lock).
            return True
        conn.sock.setblocking(False)
        try:
            # gunicorn gives up once it has drained max_bytes: one more lets exactly that many.
            return bool(conn.parser.finish_body(max_bytes=_DRAINED_AT_MOST + 1))
        except (BlockingIOError, InterruptedError):
            return False

    def _await_head(self, conn: _Conn, received: bytes = b"") -> None:
        """Gather ``conn``'s next request head in the event loop, starting with ``received``
        (bytes the client already sent behind its previous request)."""
        conn.head[:] = received
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)  # closed by murder_pending() once past its timeout
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))
        if received:
            self._check_head(conn, 0)

    def _on_head_bytes(self, conn: _Conn, client: Any) -> None:
        data = _received(conn)
        if data is None:
            return
        if not data:
            self._drop(conn)
            return
        start = max(0, len(conn.head) - 3)
        conn.head += data
        self._check_head(conn, start)

    def _check_head(self, conn: _Conn, start: int) -> None:
        """Hand ``conn`` to a thread once its head is whole, refuse it once it is too long,
        else keep gathering. ``start``: where the end of the head may begin."""
        end = conn.head.find(b"\r\n\r\n", start)
        size = len(conn.head) if end < 0 else end + 4
        if size > self.app.plan.max_request_header_bytes:
            self._refuse_head(conn)
        elif end >= 0:
            self._hand_over(conn)

    def _hand_over(self, conn: _Conn) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        conn.init()  # plain HTTP: makes the parser; the socket is blocking from here on
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head.clear()
        conn.data_ready = True
        self.enqueue_req(conn)

    def _refuse_head(self, conn: _Conn) -> None:
        # Never to a thread: its parser would wait, blocked, for the rest of the head.
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        conn.head.clear()
        # Small enough for an empty send buffer; a client that filled its own by not reading
        # just does not get it.
        with contextlib.suppress(OSError):
            conn.sock.send(_head_too_large())
        self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        """Close ``conn`` once the client has its answer, without waiting for it.

        Closing with bytes from the client unread resets the connection, which can destroy
        the answer before the client reads it (RFC 9112 section 9.6): the sending side is shut
        and what still arrives is dropped, in the event loop, until the client closes or
        ``keepalive`` seconds pass.
        """
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)  # closed by murder_pending() once past its timeout
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_late_bytes, conn))

    def _on_late_bytes(self, conn: _Conn, client: Any) -> None:
        if _received(conn) == b"":
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()


#: What a connection's unread request body may hold, already received, for the connection to
#: be kept alive (gunicorn's own cap on a drain).
_DRAINED_AT_MOST = 64 * 1024


def _received(conn: _Conn) -> bytes | None:
    """What the client sent (``b""``: it closed, or the connection failed); ``None`` when
    there is nothing to read after all."""
    try:
        data: bytes = conn.sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    return data


def _kept_alive(fs: Any) -> bool:
    """Whether the thread's work on a connection ended with the connection kept alive."""
    return bool(not fs.cancelled() and fs.exception() is None and fs.result() is True)


def _head_too_large() -> bytes:
    """The 431 answer to a head over the cap, in the gateway's error format."""
    rendered = server_refusal(431, None)
    assert rendered is not None
    head = [f"HTTP/1.1 {rendered.status} {reason_phrase(rendered.status)}"]
    head += [f"{name}: {value}" for name, value in rendered.headers]
    head += ["Connection: close", "", ""]
    return "\r\n".join(head).encode("latin-1") + rendered.body


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
            rendered = server_refusal(413, environ.get("HTTP_X_REQUEST_ID"))
            assert rendered is not None
            start_response(f"413 {reason_phrase(413)}", list(rendered.headers))
            return [rendered.body]
        return self.app(environ, start_response)


class GatewayApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's arbiter and gthread workers around the gateway ``build`` makes, per worker."""

    def __init__(
        self,
        plan: ServerPlan,
        build: Builder,
        *,
        options: dict[str, Any],
        on_ready: Callable[[], None],
        process_safe_metrics: bool,
        reread: Reread | None = None,
    ) -> None:
        #: What the workers serve; they read the head and body caps from it.
        self.plan = plan
        self._build = build
        self._reread = reread
        self._options = options
        self._on_ready = on_ready
        self._process_safe_metrics = process_safe_metrics
        self._close: Callable[[], None] | None = None
        super().__init__()

    def load_config(self) -> None:
        options = dict(self._options)
        options.update(
            logger_class=JSONLogger if self.plan.log_format == "json" else EscapingLogger,
            when_ready=self._when_ready,
            worker_exit=self._worker_exit,
            child_exit=self._child_exit,
        )
        for name, value in options.items():
            self.cfg.set(name, value)

    def reload(self) -> None:
        # gunicorn's SIGHUP, in the arbiter: the workers it starts next (each forked from
        # here) build the gateway with what reread made of the file as it is now, and apply
        # its header and body caps; when that fails (logged), what they had.
        fresh = None if self._reread is None else self._reread()
        if fresh is not None:
            self._build, self.plan = fresh
            self._options.update(gunicorn_caps(self.plan))
        super().reload()  # load_config() sets the options again

    def load(self) -> WSGIApplication:
        # In the worker, after the fork: its own store connections and upstream pools.
        app, self._close = self._build()
        return BodyCapGuard(app, max_bytes=self.plan.max_request_body_bytes)

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
