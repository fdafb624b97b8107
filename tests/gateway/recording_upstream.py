"""A loopback HTTP/1.1 upstream that records exactly what reached it.

Every request is recorded (request line, header fields in order, body bytes as received,
with chunked bodies de-chunked) so tests can assert what the gateway forwarded, and that a
refused request forwarded nothing. Paths choose the answer:

- ``/status/<code>``: that status with a small JSON body;
- ``/cookies``: two ``Set-Cookie`` fields;
- ``/gzip``: a gzip body with ``Content-Encoding: gzip``;
- ``/redirect``: ``302`` to ``/elsewhere``;
- ``/bytes/<n>``: ``n`` bytes (a repeating 0..255 pattern);
- ``/hop``: a response carrying hop-by-hop fields and a fake gateway error marker;
- anything else: ``200`` echoing the request as JSON (``method``, ``target``, ``headers``,
  ``body_base64``).
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    """One request as the upstream saw it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}


def pattern(size: int) -> bytes:
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        body = self._read_body()
        received = Received(self.command, self.path, list(self.headers.items()), body)
        self.server.received.append(received)
        path = self.path.partition("?")[0]
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            self._send(status, [("Content-Type", "application/json")], b'{"status":true}')
        elif path == "/cookies":
            self._send(
                200,
                [
                    ("Content-Type", "text/plain"),
                    ("Set-Cookie", "a=1; Path=/"),
                    ("Set-Cookie", "b=2"),
                ],
                b"",
            )
        elif path == "/gzip":
            self._send(
                200,
                [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
                gzip.compress(b"compressed payload " * 20, mtime=0),
            )
        elif path == "/redirect":
            self._send(302, [("Location", "/elsewhere"), ("Content-Type", "text/plain")], b"moved")
        elif path.startswith("/bytes/"):
            size = int(path.rsplit("/", 1)[1])
            self._send(200, [("Content-Type", "application/octet-stream")], pattern(size))
        elif path == "/hop":
            self._send(
                200,
                [
                    ("Connection", "X-Private"),
                    ("X-Private", "secret"),
                    ("Keep-Alive", "timeout=5"),
                    ("X-Invoke-Error", "service_not_running"),
                    ("X-Kept", "yes"),
                    ("Content-Type", "text/plain"),
                ],
                b"ok",
            )
        else:
            echo = {
                "method": self.command,
                "target": self.path,
                "headers": list(self.headers.items()),
                "body_base64": base64.b64encode(body).decode(),
            }
            self._send(200, [("Content-Type", "application/json")], json.dumps(echo).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []


@dataclass
class RecordingUpstream:
    """A running upstream: its base URL and what it received."""

    url: str
    server: _Server

    @property
    def received(self) -> list[Received]:
        return self.server.received

    def last(self) -> Received:
        assert self.server.received, "the upstream received nothing"
        return self.server.received[-1]


@contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    """Serve a :class:`RecordingUpstream` on 127.0.0.1 for the duration of the block."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield RecordingUpstream(f"http://127.0.0.1:{server.server_address[1]}", server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
