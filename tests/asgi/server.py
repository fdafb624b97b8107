"""A FastAPI host with the gateway, served by a real uvicorn on loopback.

- :func:`host_app` builds the FastAPI app (its own routes ``/hello`` and ``/api/v1/profile``)
  with :class:`~invoke_middleware.asgi.InvokeASGIMiddleware` in front, prefix ``/api/v1``;
- :func:`serve_uvicorn` runs any ASGI app with uvicorn in a thread, on an OS-chosen port;
- :class:`CancellingHost` cancels each request task after a while, as a host's request
  timeout middleware does; :class:`ReceiveCounter` counts the body bytes an app takes;
- ``python -m tests.asgi.server UPSTREAM_URL`` runs the host in a process of its own (for
  memory measurements) with one service ``svc`` at ``UPSTREAM_URL``, and prints one JSON line
  once it listens, as :mod:`tests.integration.gateway_process` does; :func:`start_process`
  starts it and yields a :class:`~tests.integration.gateway_process.GatewayProcess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from invoke_middleware import (
    CredentialKind,
    InMemoryServiceRegistry,
    InvokeMiddleware,
    Service,
    ServiceStatus,
    ServiceType,
)
from invoke_middleware.asgi import (
    ASGIApp,
    InvokeASGIMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    no_wsgi_host,
)
from tests.integration.gateway_process import GatewayProcess

PREFIX = "/api/v1"
#: Upper bound for the server to start or stop, so a broken test cannot hang the run.
START_TIMEOUT = 30.0
_REPO = Path(__file__).resolve().parents[2]


def host_app(gateway: InvokeMiddleware, **options: Any) -> FastAPI:
    """A FastAPI app with routes of its own, one under the runtime prefix, and the gateway."""
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"host": "fastapi"}

    @app.get(PREFIX + "/profile")
    def profile() -> dict[str, str]:
        return {"user": "ada"}

    app.add_middleware(InvokeASGIMiddleware, gateway=gateway, **options)
    return app


class CancellingHost:
    """Cancels each HTTP request task of ``app`` after ``seconds``, as a host's request
    timeout middleware (``asyncio.wait_for``, an anyio cancel scope) does."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.app(scope, receive, send), self.seconds)


class ReceiveCounter:
    """Counts the body bytes an app takes from the server (``taken``), over all requests."""

    def __init__(self) -> None:
        self.taken = 0

    def around(self, app: ASGIApp) -> ASGIApp:
        """``app``, with the body bytes it takes counted here."""

        async def counting(scope: Scope, receive: Receive, send: Send) -> None:
            async def counted() -> Message:
                message = await receive()
                self.taken += len(message.get("body", b""))
                return message

            await app(scope, counted, send)

        return counting


def make_gateway(upstream_url: str, **options: Any) -> tuple[InvokeMiddleware, str]:
    """A gateway with one running service ``svc`` at ``upstream_url``; and a key for it."""
    team = uuid.uuid4()
    registry = InMemoryServiceRegistry()
    registry.add(
        Service(
            id=uuid.uuid4(),
            team_id=team,
            slug="svc",
            display_name="Service",
            service_type=ServiceType.DEPLOYED,
            service_status=ServiceStatus.RUNNING,
            upstream_url=upstream_url,
        )
    )
    gateway = InvokeMiddleware(no_wsgi_host, registry=registry, prefix=PREFIX, **options)
    key = gateway.credentials.issue(CredentialKind.INTEGRATION, team_id=team).key
    return gateway, key


def _listening_socket() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def _config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")


@contextlib.contextmanager
def serve_uvicorn(app: Any) -> Iterator[int]:
    """Serve ``app`` with uvicorn in a thread until the block ends; yield its port."""
    sock = _listening_socket()
    server = uvicorn.Server(_config(app))
    # uvicorn installs signal handlers only in the main thread; in a thread it runs as is.
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        for _ in range(int(START_TIMEOUT / 0.01)):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)
        sock.close()


@contextlib.contextmanager
def serve_hypercorn(app: Any) -> Iterator[int]:
    """Serve ``app`` with hypercorn in a thread until the block ends; yield its port. It
    speaks HTTP/1.1 and HTTP/2 over cleartext (a client with prior knowledge), as a host
    behind a proxy that talks HTTP/2 to it would see."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = _listening_socket()
    port: int = sock.getsockname()[1]
    sock.close()  # hypercorn binds the address itself
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    stop = threading.Event()
    started = threading.Event()

    async def run() -> None:
        async def shutdown() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.02)

        task = asyncio.ensure_future(serve(app, config, shutdown_trigger=shutdown))
        started.set()
        await task

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    try:
        assert started.wait(START_TIMEOUT), "hypercorn did not start"
        for _ in range(int(START_TIMEOUT / 0.01)):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            threading.Event().wait(0.01)
        yield port
    finally:
        stop.set()
        thread.join(START_TIMEOUT)


def main(upstream_url: str) -> None:
    gateway, key = make_gateway(upstream_url)
    sock = _listening_socket()
    print(json.dumps({"port": sock.getsockname()[1], "key": key, "pid": os.getpid()}), flush=True)

    def exit_when_stdin_closes() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    uvicorn.Server(_config(host_app(gateway))).run(sockets=[sock])


@contextlib.contextmanager
def start_process(upstream_url: str) -> Iterator[GatewayProcess]:
    """Run ``python -m tests.asgi.server UPSTREAM_URL`` until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", __name__, upstream_url],
        cwd=_REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        assert ready, "the uvicorn process did not start"
        info = json.loads(process.stdout.readline())
        yield GatewayProcess(port=info["port"], key=info["key"], pid=info["pid"])
    finally:
        process.terminate()
        process.wait(START_TIMEOUT)
        process.stdin.close()
        process.stdout.close()


if __name__ == "__main__":
    main(sys.argv[1])
