"""The gateway under test: a Flask host wrapped by :class:`InvokeMiddleware`, on a real server.

:func:`serve_gateway` serves the wrapped host with werkzeug's threaded server on loopback (or
with wsgiref's, which does not de-chunk request bodies) and issues an integration key for
:data:`~tests.toolkit.world.TEAM`. :func:`exchange` sends a request exactly as written,
byte for byte, over a fresh socket and parses the answer with :mod:`http.client`, so that
no client library rewrites the request target.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from invoke_middleware import (
    CredentialKind,
    InvokeMiddleware,
    Service,
)
from tests.integration.host import host_app
from tests.toolkit.servers import serve_wsgi, serve_wsgiref
from tests.toolkit.world import TEAM, wrap

if TYPE_CHECKING:
    pass

#: Upper bound for any socket wait of a test client, so a broken gateway cannot hang the run.
CLIENT_TIMEOUT = 15.0


@dataclass(frozen=True, kw_only=True)
class RunningGateway:
    """A wrapped host being served: where it listens and the key that may call it."""

    url: str
    port: int
    key: str
    middleware: InvokeMiddleware

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def connection(self, timeout: float = CLIENT_TIMEOUT) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


@dataclass(frozen=True, kw_only=True)
class Reply:
    """A response read to its end: status, header fields in order (repeats kept), body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@contextlib.contextmanager
def serve_gateway(
    services: Iterable[Service], *, server: str = "werkzeug", **options: Any
) -> Iterator[RunningGateway]:
    """Serve a Flask host wrapped by the middleware (``options`` go to its constructor)."""
    host = host_app()
    middleware = wrap(host, services, **options)
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    serve = serve_wsgi if server == "werkzeug" else serve_wsgiref
    try:
        with serve(host) as url:
            port = int(url.rsplit(":", 1)[1])
            yield RunningGateway(url=url, port=port, key=key, middleware=middleware)
    finally:
        middleware.close()


def exchange(
    gateway: RunningGateway,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    auth: bool = True,
) -> Reply:
    """Send one request exactly as written (``Content-Length`` added for a bytes ``body``)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{gateway.port}"]
    if auth:
        lines.append(f"Authorization: Bearer {gateway.key}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None and not any(name.lower() == "transfer-encoding" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    return send_bytes(gateway.port, payload, method=method)


def send_bytes(port: int, payload: bytes, *, method: str = "GET") -> Reply:
    """Write ``payload`` on a fresh connection and read one response to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(payload)
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
            body = response.read()
            return Reply(status=response.status, headers=tuple(response.msg.items()), body=body)
        finally:
            response.close()
