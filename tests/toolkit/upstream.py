"""The recording upstream: a loopback HTTP/1.1 server that records exactly what reached it.

Every request is recorded as a :class:`Received` (request line, header fields in order, body
bytes as received, with a chunked body de-chunked), so a test can assert what the gateway
forwarded, and that a refused request forwarded nothing. Paths choose the answer:

- ``/status/<code>``: that status with a small JSON body;
- ``/cookies`` (and any path ending so): two ``Set-Cookie`` fields, ``a=1; Path=/`` and
  ``b=2``; with ``?set=`` values in the query (percent-encoded), one field of each instead;
- ``/fields?Name=value&...``: ``200`` carrying those response fields (percent-encoded), and
  ``Content-Type: text/plain`` unless they name one or hold ``X-Untyped=`` (then none);
- ``/gzip``: a gzip body with ``Content-Encoding: gzip``;
- ``/redirect``: ``302`` to the relative ``/elsewhere``;
- ``/bytes/<n>``: :func:`repeating_bytes` ``(n)``;
- ``/hop``: a response carrying hop-by-hop fields and a fake gateway error marker;
- ``/events``: a chunked ``text/event-stream`` that sends one event, then holds the second
  until the test sets :attr:`RecordingUpstream.release` (bounded wait), so a test can prove
  the first event reached it while the upstream was still sending;
- anything else: ``200`` with ``X-Upstream: loopback`` and the request echoed as JSON, in the
  shape :meth:`Received.to_json` writes and :meth:`Received.from_json` reads.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl

from tests.toolkit.servers import serving

#: Longest time ``/events`` holds its stream open waiting for the test.
MAX_HOLD = 5.0


def repeating_bytes(size: int) -> bytes:
    """``size`` bytes: every byte value from 0 to 255, repeated (what downloads send)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@dataclass(frozen=True, kw_only=True)
class Received:
    """One request as the upstream saw it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of the field ``name`` (any case), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}

    def to_json(self) -> bytes:
        """The echo: ``method``, ``target``, ``headers`` (name/value pairs), ``body_base64``."""
        return json.dumps(
            {
                "method": self.method,
                "target": self.target,
                "headers": self.headers,
                "body_base64": base64.b64encode(self.body).decode(),
            }
        ).encode()

    @classmethod
    def from_json(cls, echo: bytes | str) -> Received:
        """Read an echo written by :meth:`to_json` (a response body from the upstream)."""
        fields = json.loads(echo)
        return cls(
            method=fields["method"],
            target=fields["target"],
            headers=[(name, value) for name, value in fields["headers"]],
            body=base64.b64decode(fields["body_base64"]),
        )


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
        received = Received(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=self._read_body(),
        )
        self.server.received.append(received)
        path = self.path.partition("?")[0]
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            self._send(status, [("Content-Type", "application/json")], b'{"status":true}')
        elif path.endswith("/cookies"):
            chosen = parse_qs(self.path.partition("?")[2]).get("set", ["a=1; Path=/", "b=2"])
            self._send(
                200,
                [("Content-Type", "text/plain"), *(("Set-Cookie", value) for value in chosen)],
                b"",
            )
        elif path == "/fields":
            chosen = parse_qsl(self.path.partition("?")[2], keep_blank_values=True)
            typed = any(name.lower() == "content-type" for name, _ in chosen)
            untyped = ("X-Untyped", "") in chosen  # ask for an answer without Content-Type
            default = [] if typed or untyped else [("Content-Type", "text/plain")]
            self._send(200, [*default, *chosen], b"")
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
            self._send(200, [("Content-Type", "application/octet-stream")], repeating_bytes(size))
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
        elif path == "/events":
            self._events()
        else:
            headers = [("Content-Type", "application/json"), ("X-Upstream", "loopback")]
            self._send(200, headers, received.to_json())

    def _events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(b"data: first\n\n")
        self.server.release.wait(MAX_HOLD)
        self._chunk(b"data: second\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.server.second_event_sent.set()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog (5) overflows under dozens of concurrent connects:
    # the kernel drops them, and the gateway rightly answers 502.
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.release = threading.Event()
        self.second_event_sent = threading.Event()


@dataclass(frozen=True, kw_only=True)
class RecordingUpstream:
    """A running recording upstream: its base URL, what it received, and ``/events``' pacing."""

    url: str
    server: _Server = field(repr=False)

    @property
    def received(self) -> list[Received]:
        """Every request so far, in order (clear it to forget them)."""
        return self.server.received

    @property
    def release(self) -> threading.Event:
        """Set it to let ``/events`` send its second event."""
        return self.server.release

    @property
    def second_event_sent(self) -> threading.Event:
        """Set once ``/events`` has sent its second event and ended the stream."""
        return self.server.second_event_sent

    def last(self) -> Received:
        """The latest request (the upstream must have received one)."""
        assert self.server.received, "the upstream received nothing"
        return self.server.received[-1]


@contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    """Serve a :class:`RecordingUpstream` on 127.0.0.1 for the duration of the block."""
    server = _Server()
    with serving(server) as url:
        try:
            yield RecordingUpstream(url=url, server=server)
        finally:
            # A stream still held open ends before the server stops.
            server.release.set()
