"""The gateway as a gunicorn application: the pre-fork engine of ``invoke-middleware serve``.

Imported only when that engine runs (gunicorn is the optional ``serve`` extra). See
:mod:`invoke_middleware._server` for what each engine guarantees.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from invoke_middleware._server import (
    LOG_FORMAT,
    EscapingFormatter,
    ServerPlan,
    gunicorn_options,
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
        listener: int,
        on_ready: Callable[[], None],
        process_safe_metrics: bool,
    ) -> None:
        self._plan = plan
        self._build = build
        self._listener = listener
        self._on_ready = on_ready
        self._process_safe_metrics = process_safe_metrics
        self._close: Callable[[], None] | None = None
        super().__init__()

    def load_config(self) -> None:
        options = gunicorn_options(self._plan, self._listener)
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
