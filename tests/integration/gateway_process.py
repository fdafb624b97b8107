"""A gateway in a process of its own, so that its memory can be measured from outside.

:func:`start_gateway_process` starts one from a test and yields a :class:`GatewayProcess`.

``python -m tests.integration.gateway_process SERVER UPSTREAM_URL [LIMITS]`` serves a Flask
host wrapped by the middleware, with one service ``svc`` at ``UPSTREAM_URL``, and prints one JSON
line once it listens: ``{"port": ..., "key": ..., "pid": ...}`` where ``pid`` is the process
that handles requests. ``SERVER`` is ``werkzeug`` (threaded, in this process), ``gunicorn``
(one gthread worker, forked from this process after the app is built) or ``waitress`` (in this
process, configured as ``invoke-middleware serve`` configures it). ``LIMITS``, a JSON
object, gives the team (``"team"``, a UUID, so that several processes serve one team) and the
``limits.*`` settings of a limiter (``{"team": "...", "team_rate": "10/hour",
"storage_url": "redis://..."}``). It runs until it is terminated, or until its standard input
closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke_middleware import (
    CredentialKind,
)
from invoke_middleware.config import parse_settings
from invoke_middleware.limits import Limiter
from tests.integration.host import host_app
from tests.integration.sink import pattern_blocks
from tests.toolkit.world import make_service, wrap

#: Upper bound for any socket wait of a test client, and for the process to start.
_TIMEOUT = 30.0
#: What a download reads at a time.
_PIECE = 1024 * 1024
_REPO = Path(__file__).resolve().parents[2]

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def _build(upstream_url: str, limits: dict[str, Any] | None) -> tuple[WSGIApplication, str]:
    limits = dict(limits or {})
    team = uuid.UUID(limits.pop("team")) if "team" in limits else uuid.uuid4()
    options: dict[str, Any] = {}
    if limits:
        config = parse_settings({f"invoke.limits.{name}": value for name, value in limits.items()})
        assert config.limits is not None
        options["limiter"] = Limiter(config.limits)
    host = host_app()
    middleware = wrap(host, [make_service("svc", upstream_url, team=team)], **options)
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=team).key
    return host, key


def _announce(port: int, key: str, pid: int) -> None:
    print(json.dumps({"port": port, "key": key, "pid": pid}), flush=True)


def _exit_when_stdin_closes() -> None:
    def watch() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _serve_werkzeug(app: WSGIApplication, key: str) -> None:
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log(self, type: str, message: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    _announce(server.server_port, key, os.getpid())
    server.serve_forever(poll_interval=0.05)


def _serve_gunicorn(app: WSGIApplication, key: str) -> None:
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": 4,
                "loglevel": "warning",
                "post_worker_init": lambda worker: _announce(port, key, worker.pid),
            }
            for name, value in settings.items():
                self.cfg.set(name, value)

        def load(self) -> WSGIApplication:
            return app

    Server().run()


def _serve_waitress(app: WSGIApplication, key: str) -> None:
    # The standalone gateway's own waitress setup (its buffers, its limits), not waitress's
    # defaults: what is measured here is what `serve` runs.
    from invoke_middleware._server import WAITRESS, ServerPlan, run_server

    plan = ServerPlan(
        engine=WAITRESS,
        host="127.0.0.1",
        port=0,
        workers=1,
        threads=4,
        connection_limit=100,
        idle_timeout=30,
        max_request_header_bytes=72 * 1024,
        max_request_body_bytes=1024 * 1024 * 1024,
        max_header_count=100,
    )
    run_server(
        plan,
        lambda: (app, lambda: None),
        on_ready=lambda bound: _announce(bound[0][1], key, os.getpid()),
    )


def main(argv: list[str]) -> None:
    server, upstream_url, *rest = argv
    app, key = _build(upstream_url, json.loads(rest[0]) if rest else None)
    _exit_when_stdin_closes()
    if server == "werkzeug":
        _serve_werkzeug(app, key)
    elif server == "waitress":
        _serve_waitress(app, key)
    else:
        _serve_gunicorn(app, key)


@dataclass(frozen=True, kw_only=True)
class GatewayProcess:
    """A gateway running in a subprocess: where it listens and which process serves."""

    port: int
    key: str
    pid: int
    #: ``werkzeug``, ``gunicorn`` or ``waitress`` (``None``: a server started elsewhere).
    server: str | None = None

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=_TIMEOUT)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def upload(self, relay: str, size: int, *, chunked: bool) -> dict[str, object]:
        """PUT ``size`` bytes of the sink's pattern to ``relay + "/upload"``, framed by
        ``Content-Length`` or chunked; the sink's answer (its size and SHA-256 of the body)."""
        connection = self.connection()
        try:
            framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
            connection.request(
                "PUT",
                relay + "/upload",
                body=pattern_blocks(size),
                headers={**self.auth, **framing},
                encode_chunked=chunked,
            )
            response = connection.getresponse()
            assert response.status == 200
            answer: dict[str, object] = json.loads(response.read())
            return answer
        finally:
            connection.close()

    def download(self, relay: str, size: int, *, chunked: bool) -> tuple[int, str]:
        """GET ``size`` bytes of the sink's pattern from ``relay + "/download"``, hashed as
        they arrive (the test process never holds the body): bytes received and SHA-256."""
        connection = self.connection()
        try:
            query = f"size={size}" + ("&chunked=1" if chunked else "")
            connection.request("GET", f"{relay}/download?{query}", headers=self.auth)
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Length") == (None if chunked else str(size))
            digest = hashlib.sha256()
            received = 0
            while piece := response.read(_PIECE):
                digest.update(piece)
                received += len(piece)
            return received, digest.hexdigest()
        finally:
            connection.close()

    def memory(self, field: str) -> int:
        """``VmRSS`` or ``VmHWM`` of the serving process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise LookupError(field)

    def reset_peak(self) -> int:
        """Reset the peak to the current resident size (Linux ``clear_refs``); return it."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.memory("VmRSS")


@contextlib.contextmanager
def start_gateway_process(
    server: str, upstream_url: str, limits: dict[str, Any] | None = None
) -> Iterator[GatewayProcess]:
    """Run a gateway process (see the module docstring) until the block ends."""
    extra = [json.dumps(limits)] if limits is not None else []
    process = subprocess.Popen(
        [sys.executable, "-m", __name__, server, upstream_url, *extra],
        cwd=_REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], _TIMEOUT)
        assert ready, "the gateway process did not start"
        info = json.loads(process.stdout.readline())
        yield GatewayProcess(port=info["port"], key=info["key"], pid=info["pid"], server=server)
    finally:
        process.terminate()
        process.wait(_TIMEOUT)
        process.stdin.close()
        process.stdout.close()


if __name__ == "__main__":
    main(sys.argv[1:])
