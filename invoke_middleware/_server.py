"""How ``invoke-middleware serve`` runs the standalone gateway: the server, its limits, its logs.

Two engines (the README's "Standalone gateway" section):

- **gunicorn** (the ``serve`` extra): a pre-fork server, ``workers`` processes of ``threads``
  threads each (gthread workers), so the gateway uses every core. It hands the application
  the request body as it arrives (never spooled), so an upload is refused, or relayed, as it
  streams. Every worker builds its own gateway after the fork: nothing but the listening
  socket is shared, and state shared between processes lives in the store.
- **waitress**: one process, portable (no ``fork`` needed). It reads each request whole
  before calling the application: a body up to ``max_request_body_bytes`` is buffered (in
  memory, then in a temporary file past 512 KiB) before the gateway sees it. What the
  gateway sends back goes through a small output buffer per connection (see
  :data:`WAITRESS_OUTBUF_HIGH_WATERMARK`): a streamed download costs a few hundred KiB of
  memory, whatever its size, and an event is written as soon as the upstream sends it. A
  client that stops reading it is disconnected once nothing was sent to it for
  ``idle_timeout`` seconds (:class:`_DrainTimeoutServer`), which frees the thread and the
  gateway's concurrency slot.

The default is gunicorn where it is installed and the platform can fork, else waitress.

Every line either server writes goes through :class:`EscapingFormatter`: a control
character in a logged value (a decoded path with CR/LF) is written escaped, so one record is
one line and no caller can forge another.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, cast

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from invoke_middleware._toml_config import StandaloneConfig
from invoke_middleware.config import ConfigError
from invoke_middleware.errors import (
    GatewayError,
    HeadersTooLargeError,
    InvalidRequestError,
    PayloadTooLargeError,
    RenderedError,
    reason_phrase,
    render_error,
)
from invoke_middleware.headers import choose_request_id
from invoke_middleware.logging_hook import escape_control
from invoke_middleware.pipeline import PipelineSettings

if TYPE_CHECKING:
    from typing import TypeAlias

    from _typeshed.wsgi import WSGIApplication
    from waitress.parser import HTTPRequestParser

    #: What makes a process's application and its ``close``.
    Builder: TypeAlias = Callable[[], tuple[WSGIApplication, Callable[[], None]]]
    #: gunicorn's ``SIGHUP``: what the workers restart with, or ``None`` to keep what they had.
    Reread: TypeAlias = Callable[[], tuple[Builder, "ServerPlan"] | None]

__all__ = [
    "GUNICORN",
    "WAITRESS",
    "EscapingFormatter",
    "ServerPlan",
    "configure_logging",
    "gunicorn_available",
    "plan_server",
    "run_server",
    "with_caps_of",
]

logger = logging.getLogger("invoke_middleware.cli")

GUNICORN = "gunicorn"
WAITRESS = "waitress"

#: Room for the request line (method, target, version) above the gateway's header cap.
REQUEST_LINE_ALLOWANCE = 8192
#: gunicorn refuses a request line or a header field above this (its hard ceiling).
_GUNICORN_MAX_FIELD = 8190
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# waitress copies what the application yields into an output buffer per connection, which its
# event loop drains to the socket; the task thread pauses while more than the high watermark
# waits there. The buffer is not compacted as it drains: a new one starts only once the
# watermark's worth went through it. At waitress's default (16 MiB) every streamed download
# grew a 16 MiB buffer, which the C allocator kept in the arena of the thread that served it
# (one per thread: up to threads x 16 MiB kept, for good). The kernel's send buffer (tuned up
# to several MiB per connection) is what keeps a fast client busy, so a small buffer in front
# of it costs no throughput; 256 KiB is four of the relay's 64 KiB chunks. 64 KiB was too
# small: the task thread then waited for the event loop after nearly every chunk.
#: Bytes waiting to be sent before the application's thread pauses (waitress's default: 16 MiB).
WAITRESS_OUTBUF_HIGH_WATERMARK = 256 * 1024
# Output not yet sent past this moves to a temporary file. Above the watermark plus a chunk,
# a streamed relay stays in memory (the watermark bounds it) rather than costing a file and a
# descriptor per slow client; only a single write larger than this (a big invoke envelope)
# goes to disk. waitress's own default, written here because it must stay above the watermark.
WAITRESS_OUTBUF_OVERFLOW = 1024 * 1024
# The event loop reads request bytes this many at a time (waitress's default: 8 KiB). It is one
# thread for every connection, and an upload spooled 8 KiB per turn cost it twice the CPU.
WAITRESS_RECV_BYTES = 64 * 1024
# Left at waitress's defaults, on purpose: send_bytes (1: every write is flushed at once, so a
# server-sent event is never held back), inbuf_overflow (a request body past 512 KiB is spooled
# to a temporary file) and channel_request_lookahead (0: no pipelined request is read while one
# is being answered).
#: The environment variable prometheus_client reads for its multi-process mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# -- log lines -------------------------------------------------------------------------------


class EscapingFormatter(logging.Formatter):
    """A formatter whose every record is exactly one line: control characters are escaped.

    A traceback is kept, on the same line, with its newlines written ``\\n``.
    """

    def format(self, record: logging.LogRecord) -> str:
        return escape_control(super().format(record))


def configure_logging(log_format: str = "text") -> None:
    """Send every record of this process to standard error, one line each: escaped text, or
    with ``log_format="json"`` one JSON object
    (:class:`~invoke_middleware.log_format.JSONFormatter`)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from invoke_middleware.log_format import JSONFormatter  # noqa: PLC0415

        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


# -- what to run -----------------------------------------------------------------------------


def gunicorn_available() -> bool:
    """Whether gunicorn is installed and the platform has ``fork`` (gunicorn needs both)."""
    return hasattr(os, "fork") and importlib.util.find_spec("gunicorn") is not None


@dataclass(frozen=True, kw_only=True)
class ServerPlan:
    """The server ``serve`` runs, with every limit resolved."""

    engine: str
    host: str
    port: int
    workers: int
    threads: int
    connection_limit: int
    idle_timeout: int
    max_request_header_bytes: int
    max_request_body_bytes: int
    #: The gateway's own header count cap, which gunicorn applies too.
    max_header_count: int
    #: ``[server] log_format``: the server's own log lines are written this way too.
    log_format: str = "text"

    def describe(self) -> str:
        """``gunicorn, 2 processes x 8 threads`` or ``waitress, 8 threads``."""
        if self.engine == WAITRESS:
            return f"waitress, {self.threads} threads"
        noun = "process" if self.workers == 1 else "processes"
        return f"gunicorn, {self.workers} {noun} x {self.threads} threads"


def plan_server(
    config: StandaloneConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    threads: int | None = None,
    workers: int | None = None,
) -> ServerPlan:
    """Resolve ``[server]`` (and the command line's overrides) into a :class:`ServerPlan`.

    Raises :class:`ConfigError` naming the key when the choice cannot run here.
    """
    server = config.server
    engine = server.engine or (GUNICORN if gunicorn_available() else WAITRESS)
    if engine == GUNICORN and not gunicorn_available():
        raise ConfigError(
            "[server] engine",
            "gunicorn is not available here (install the serve extra: "
            "pip install 'invoke_middleware[serve]'; it needs a platform with fork)",
        )
    workers = workers or server.workers
    if engine == WAITRESS:
        if workers is not None and workers > 1:
            raise ConfigError(
                "[server] workers", 'waitress runs one process: set engine = "gunicorn" for more'
            )
        workers = 1
    elif workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        workers = workers or os.cpu_count() or 1
    return ServerPlan(
        engine=engine,
        host=host or server.host,
        port=server.port if port is None else port,
        workers=workers,
        threads=threads or server.threads,
        connection_limit=server.connection_limit,
        idle_timeout=server.idle_timeout,
        log_format=server.log_format,
        **_caps(config),
    )


def with_caps_of(plan: ServerPlan, config: StandaloneConfig) -> ServerPlan:
    """``plan`` with the header and body caps of ``config`` (its ``[server]`` overrides, else
    what its gateway admits): what a re-read file changes in a running server."""
    caps = _caps(config)
    return dataclasses.replace(
        plan,
        max_request_header_bytes=caps["max_request_header_bytes"],
        max_request_body_bytes=caps["max_request_body_bytes"],
        max_header_count=caps["max_header_count"],
    )


def _caps(config: StandaloneConfig) -> dict[str, int]:
    """The server's header and body caps for ``config``: the ``[server]`` table's, or room for
    what the gateway admits (its own caps, read from ``[gateway]``)."""
    names = ("max_invoke_body_bytes", "max_relay_body_bytes", "max_header_count")
    values = config.gateway.values
    gateway = PipelineSettings(
        **{name: values[name] for name in (*names, "max_header_bytes") if name in values}
    )
    server = config.server
    return {
        "max_request_header_bytes": server.max_request_header_bytes
        or gateway.max_header_bytes + REQUEST_LINE_ALLOWANCE,
        "max_request_body_bytes": server.max_request_body_bytes
        or max(gateway.max_relay_body_bytes, gateway.max_envelope_bytes),
        "max_header_count": gateway.max_header_count,
    }


# -- running it ------------------------------------------------------------------------------


def run_server(
    plan: ServerPlan,
    build: Builder,
    *,
    on_ready: Callable[[list[tuple[str, int]]], None],
    requires: Mapping[str, str] | None = None,
    reread: Reread | None = None,
) -> None:
    """Listen as ``plan`` says and serve until SIGINT or SIGTERM.

    ``build`` makes the application and its ``close`` (called once per process that built
    it: under gunicorn, once in each worker, after the fork). ``on_ready`` gets the bound
    addresses, once the socket listens. ``requires`` maps modules that ``build`` imports to
    the setting that needs them (``{"prometheus_client": "[server] metrics"}``): each is
    imported here first, before any worker starts, and one that cannot be imported raises
    :class:`ConfigError` naming that setting. Raises :class:`OSError` when the address cannot
    be bound.

    Under gunicorn, each worker is a fork of the caller and ends by raising
    :class:`SystemExit` with its status from this call, in its own process: the caller must
    let it through unchanged (the arbiter reads that status: 3 means the worker could not
    boot, and stops the server), and skip what only the starting process should do.

    ``reread`` (gunicorn only) is called on ``SIGHUP``, before the workers restart: the
    ``build`` they restart with and the plan whose header and body caps they apply (see
    :func:`with_caps_of`), or ``None`` to keep what they had.
    """
    if plan.engine == WAITRESS:
        _import_required(requires or {})
        _run_waitress(plan, build, on_ready)
    else:
        _run_gunicorn(plan, build, on_ready, requires or {}, reread)


def _import_required(requires: Mapping[str, str]) -> None:
    for module, setting in requires.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                setting, f"needs {module}, which cannot be imported ({exc})"
            ) from None


def _run_waitress(
    plan: ServerPlan,
    build: Builder,
    on_ready: Callable[[list[tuple[str, int]]], None],
) -> None:
    app, close = build()
    previous: dict[int, Any] = {}
    try:
        server, bound = _waitress_server(
            app,
            Adjustments(
                host=plan.host,
                port=plan.port,
                threads=plan.threads,
                connection_limit=plan.connection_limit,
                # Silent connections are closed at the first sweep past idle_timeout.
                channel_timeout=plan.idle_timeout,
                cleanup_interval=max(1, min(30, plan.idle_timeout // 2)),
                max_request_header_size=plan.max_request_header_bytes,
                max_request_body_size=plan.max_request_body_bytes,
                outbuf_high_watermark=WAITRESS_OUTBUF_HIGH_WATERMARK,
                outbuf_overflow=WAITRESS_OUTBUF_OVERFLOW,
                recv_bytes=WAITRESS_RECV_BYTES,
            ),
        )
        previous = _stop_on_signals()
        on_ready(bound)
        # waitress returns from run() on SystemExit or KeyboardInterrupt, after stopping
        # its worker threads and closing every socket.
        server.run()
    finally:
        try:
            close()
        finally:
            # As they were, once the clean-up is over (a second signal must not cut it short):
            # a later server of this process (a host or a test running serve again) must not
            # take the ignored signals of this one's clean-up for nohup's.
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# The refusals a server makes before the gateway sees a request, as the gateway's own errors:
# clients and logs tell a gateway's refusal from a container's by its marker and request id.
_SERVER_REFUSALS: dict[int, type[GatewayError]] = {
    400: InvalidRequestError,
    413: PayloadTooLargeError,
    431: HeadersTooLargeError,
}


def server_refusal(status: int, request_id: str | None) -> RenderedError | None:
    """A server's own refusal with ``status`` in the gateway's error format, keeping the
    caller's ``X-Request-ID`` when it is safe; ``None`` for a status the gateway has no error
    for (the server's answer stands)."""
    error = _SERVER_REFUSALS.get(status)
    if error is None:
        return None
    return render_error(error(), request_id=choose_request_id(request_id))


class _GatewayErrorTask(ErrorTask):
    """waitress's answer to a request it refuses itself (a body over
    ``max_request_body_bytes``, a head over its cap, a malformed request), in the gateway's
    error format."""

    def execute(self) -> None:
        # The stubs type a task's request as the error; it is the parser that holds one.
        request = cast("HTTPRequestParser", self.request)
        assert request.error is not None
        rendered = server_refusal(request.error.code, request.headers.get("X_REQUEST_ID"))
        if rendered is None:
            super().execute()
            return
        self.status = f"{rendered.status} {reason_phrase(rendered.status)}"
        cast("list[tuple[str, str]]", self.response_headers).extend(rendered.headers)
        self.set_close_on_finish()
        self.content_length = len(rendered.body)
        self.write(rendered.body)


class _GatewayChannel(HTTPChannel):
    error_task_class = _GatewayErrorTask


class _DrainTimeoutServer(TcpWSGIServer):
    """waitress's server, whose sweep also closes a connection that takes nothing it is sent.

    waitress's own sweep closes a connection after ``channel_timeout`` without activity, but
    only between requests. A client that stops reading a streamed response holds the
    request's thread for as long as it likes: the thread waits in ``write_soon`` for the
    output buffer to drain below its high watermark, and with it the gateway's concurrency
    slot. Here a connection with output waiting and no byte sent for ``channel_timeout``
    (``[server] idle_timeout``) is closed: the waiting thread then sees the client gone, the
    relay ends and its slot is released.
    """

    channel_class = _GatewayChannel

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # type: ignore[arg-type]  # time.time(); the stubs say int
        cutoff = now - self.adj.channel_timeout
        # The stubs type active_channels as one channel; it maps descriptors to channels.
        channels = cast("dict[int, HTTPChannel]", self.active_channels)
        stalled = [
            channel
            for channel in channels.values()
            if channel.total_outbufs_len and channel.last_activity < cutoff
        ]
        if stalled:
            # Closed by the event loop's thread, once its select() returns: this sweep runs
            # while the loop lists the sockets to wait on, which may still name one closed
            # here. The flag the base sweep sets (will_close) would not do: it is acted on
            # once the socket is writable, and the client keeps it from being writable.
            trigger = cast("_Trigger", self.trigger)  # the stubs type it as an int
            trigger.pull_trigger(partial(_close_stalled, stalled, cutoff))


class _Trigger(Protocol):
    """waitress's trigger: runs ``thunk`` on the event loop's thread, between two turns."""

    def pull_trigger(self, thunk: Callable[[], object]) -> None: ...


def _close_stalled(channels: list[HTTPChannel], cutoff: float) -> None:
    for channel in channels:
        if channel.total_outbufs_len and channel.last_activity < cutoff:  # still no byte sent
            # Wakes the task thread waiting for the buffer to drain: it sees the client gone.
            channel.handle_close()


def _waitress_server(
    app: WSGIApplication, adj: Adjustments
) -> tuple[MultiSocketServer, list[tuple[str, int]]]:
    """What ``waitress.create_server`` builds for ``adj`` (one listening server per address
    the host resolves to, one pool of threads), made of :class:`_DrainTimeoutServer`."""
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict[int, Any] = {}
    bound: list[tuple[str, int]] = []
    # The stubs type listen as strings; it holds getaddrinfo's (family, type, proto, address).
    for sockinfo in cast("list[tuple[int, int, int | None, Any]]", adj.listen):
        # Each server registers itself in socket_map, which run() serves.
        server = _DrainTimeoutServer(
            app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo
        )
        assert server.socket is not None
        bound.append(server.socket.getsockname()[:2])
    return MultiSocketServer(socket_map, adj, bound, dispatcher), bound


#: What stops the single-process server, gracefully. SIGHUP too: its default would end the
#: process at once, relays cut mid-body and the store left open, when the terminal of a
#: ``serve &`` closes.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


def _stop_on_signals() -> dict[int, Any]:
    """Stop on :data:`_STOP_SIGNALS`; the handlers they had, to put back afterwards."""
    previous: dict[int, Any] = {}
    for signum in _STOP_SIGNALS:
        # A signal ignored when serve started stays so: `nohup invoke-middleware serve &`
        # asks for the server to outlive its terminal.
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN:
            previous[signum] = handler
            signal.signal(signum, _stop)
    return previous


def _stop(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal during the clean-up would interrupt closing the store's
    # connections half-way.
    for handled in _STOP_SIGNALS:
        signal.signal(handled, signal.SIG_IGN)
    raise SystemExit(0)


def _bound(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to the first address ``host`` resolves to (``SO_REUSEADDR``, and
    ``SO_REUSEPORT`` when asked); a busy port raises :class:`OSError` here."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one clear error."""
    listener = _bound(host, port)
    try:
        listener.listen(2048)
    except BaseException:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to the address with ``SO_REUSEPORT``, never listening: it holds the port
    (learnt here when ``port`` is 0) for the workers' own listening sockets, and receives no
    connection itself. A port already in use is one clear error, as with :func:`_listen`."""
    # Bound first without SO_REUSEPORT: with it, a port held by another process of the same
    # user (a second gateway) would be shared silently instead of refused.
    with _bound(host, port) as probe:
        port = probe.getsockname()[1]
    return _bound(host, port, reuse_port=True)


def _run_gunicorn(
    plan: ServerPlan,
    build: Builder,
    on_ready: Callable[[list[tuple[str, int]]], None],
    requires: Mapping[str, str],
    reread: Reread | None,
) -> None:
    # gunicorn is optional (the serve extra): imported only when it runs.
    from invoke_middleware._gunicorn import GatewayApplication  # noqa: PLC0415

    holder = None
    if plan.workers > 1 and hasattr(socket, "SO_REUSEPORT"):
        # Each worker listens on a socket of its own and the kernel spreads new connections
        # over them. On one shared socket, whichever worker wakes first accepts: kept-alive
        # connections opened together often all land in one process, which then serves them
        # on one core while the others idle (half the throughput on 2 cores,
        # bench/results/relay.md).
        holder = _reserve(plan.host, plan.port)
        bound = [holder.getsockname()[:2]]
        options = gunicorn_options(plan, bind=_bind_address(*bound[0]), reuse_port=True)
    else:
        listener = _listen(plan.host, plan.port)
        bound = [listener.getsockname()[:2]]
        # gunicorn takes the descriptor over (and closes it when it stops).
        options = gunicorn_options(plan, bind=f"fd://{listener.detach()}")
    metrics_dir = None
    if MULTIPROC_ENV not in os.environ:
        # prometheus_client's multi-process mode: every worker writes its samples to files
        # in this private directory and /metrics adds them up. It must be set before any
        # worker imports prometheus_client, hence here, in the parent, before the fork; and
        # with one worker too, since gunicorn adds workers on SIGTTIN (and replaces one that
        # exits), after which a scrape would count the answering process's requests only.
        metrics_dir = tempfile.mkdtemp(prefix="invoke-middleware-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    arbiter = os.getpid()
    try:
        # Here, after the multi-process choice above (prometheus_client reads it when it is
        # imported), and in the arbiter, whose workers inherit what it imported: a worker
        # that could not import a module would only fail to boot.
        _import_required(requires)
        GatewayApplication(
            plan,
            build,
            options=options,
            on_ready=lambda: on_ready(bound),
            reread=reread,
            process_safe_metrics=metrics_dir is not None or MULTIPROC_ENV in os.environ,
        ).run()
    finally:
        # A worker is a fork of this frame: it ends by raising SystemExit, which unwinds
        # through here too. Only the arbiter, which made them, releases the port and the
        # metrics directory; the arbiter and the other workers still use both.
        if os.getpid() == arbiter:
            if holder is not None:
                holder.close()
            if metrics_dir is not None:
                os.environ.pop(MULTIPROC_ENV, None)
                shutil.rmtree(metrics_dir, ignore_errors=True)


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_caps(plan: ServerPlan) -> dict[str, int]:
    """gunicorn's own settings for ``plan``'s header caps (its parser applies them too)."""
    return {
        "limit_request_fields": min(plan.max_header_count, 32768),
        "limit_request_field_size": min(plan.max_request_header_bytes, _GUNICORN_MAX_FIELD * 8),
    }


def gunicorn_options(plan: ServerPlan, *, bind: str, reuse_port: bool = False) -> dict[str, Any]:
    """gunicorn's settings for ``plan``, serving on ``bind`` (``fd://N``: a descriptor already
    bound and listening; ``host:port`` with ``reuse_port``: each worker binds its own)."""
    return {
        "bind": [bind],
        "reuse_port": reuse_port,
        "worker_class": "invoke_middleware._gunicorn.HeadFirstWorker",
        "workers": plan.workers,
        "threads": plan.threads,
        "worker_connections": plan.connection_limit,
        "keepalive": plan.idle_timeout,
        "limit_request_line": _GUNICORN_MAX_FIELD,
        **gunicorn_caps(plan),
        # Relays may last minutes: the gthread heartbeat comes from the worker's main loop,
        # so this only catches a worker whose loop is stuck.
        "timeout": 60,
        "graceful_timeout": 10,
        # The gateway decides which proxies it trusts ([gateway] trusted_proxy_hops).
        "forwarded_allow_ips": "",
        "secure_scheme_headers": {},
        # gunicorn's control socket sits at one path per user ($HOME/.gunicorn/gunicorn.ctl):
        # two gateways of one user would take over each other's, and any process of the user
        # could add or retire workers. The server is managed by its signals instead.
        "control_socket_disable": True,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "invoke-middleware",
        "preload_app": False,
    }
