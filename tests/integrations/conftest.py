"""Fixtures: a small real upstream on loopback, in a thread.

Every path echoes the request as JSON (method, target, headers, body), except:

- ``/events``: a chunked ``text/event-stream`` that sends one event, then holds the second
  until the test sets :attr:`LoopbackUpstream.release` (bounded wait), so a test can prove
  the first event reached it while the upstream was still sending;
- ``/redirect``: a 302 with a relative ``Location``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

#: Longest time the upstream holds a stream open waiting for the test.
MAX_HOLD = 5.0


@dataclass(frozen=True, kw_only=True)
class LoopbackUpstream:
    """A running upstream: its base URL and the events that pace ``/events``."""

    url: str
    release: threading.Event = field(default_factory=threading.Event)
    second_event_sent: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/events":
            self._events()
        elif self.path == "/redirect":
            self._send(302, b"", [("Location", "/elsewhere"), ("Content-Type", "text/plain")])
        else:
            echo = {
                "method": self.command,
                "target": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "body": body.decode("latin-1"),
            }
            self._send(
                200,
                json.dumps(echo).encode(),
                [("Content-Type", "application/json"), ("X-Upstream", "loopback")],
            )

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(b"data: first\n\n")
        self.server.upstream.release.wait(MAX_HOLD)
        self._chunk(b"data: second\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.server.upstream.second_event_sent.set()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    upstream: LoopbackUpstream


@contextmanager
def serve_upstream() -> Iterator[LoopbackUpstream]:
    """Run the upstream on ``127.0.0.1`` and an OS-chosen port until the block ends."""
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    upstream = LoopbackUpstream(url=f"http://{host!s}:{port}")
    server.upstream = upstream
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield upstream
    finally:
        upstream.release.set()
        server.shutdown()
        server.server_close()
        thread.join(MAX_HOLD)


@pytest.fixture
def upstream() -> Iterator[LoopbackUpstream]:
    """A running loopback upstream, stopped after the test."""
    with serve_upstream() as running:
        yield running
