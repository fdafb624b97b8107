"""A real JWKS endpoint on loopback, served from a thread."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import responses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.toolkit.servers import JOIN_TIMEOUT, serving


class JWKSServer:
    """Serves ``document`` as JSON at ``/jwks.json``; counts the fetches.

    It plays an identity provider in trouble too: ``status`` answers with that status (and
    ``location`` adds a ``Location`` field), ``body`` is sent instead of the document, ``drip``
    sends the response a byte every that many seconds, and :meth:`hold` makes each fetch wait
    unanswered until :meth:`release`, when its connection closes. Leaving :meth:`running`
    releases everything. With ``tls`` (a server context), it serves HTTPS.
    """

    def __init__(self, document: dict[str, Any], *, tls: ssl.SSLContext | None = None) -> None:
        self.document = document
        self.status = 200
        self.location: str | None = None
        self.body: bytes | None = None
        self.drip: float | None = None
        self.fetches = 0
        self._arrived = threading.Condition()
        self._holding = False
        self._released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._arrived:
                    server.fetches += 1
                    server._arrived.notify_all()
                    holding = server._holding
                if holding:
                    server._released.wait(JOIN_TIMEOUT)
                    self.close_connection = True
                    return
                self.close_connection = True
                answer = server._answer()
                if server.drip is None:
                    self.wfile.write(answer)
                    return
                for index in range(len(answer)):
                    if server._released.wait(server.drip):
                        return
                    try:
                        self.wfile.write(answer[index : index + 1])
                    except OSError:  # the client gave up
                        return

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"

    def hold(self) -> None:
        """Leave every fetch from now on unanswered until :meth:`release`."""
        with self._arrived:
            self._released.clear()
            self._holding = True

    def release(self) -> None:
        """Close the held fetches' connections; stop dripping; answer fetches again."""
        with self._arrived:
            self._holding = False
            self._released.set()

    def wait_for_fetches(self, count: int, timeout: float = JOIN_TIMEOUT) -> bool:
        """Wait until ``count`` fetches arrived in all; whether they did within ``timeout``."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.fetches >= count, timeout)

    def _answer(self) -> bytes:
        body = self.body if self.body is not None else json.dumps(self.document).encode()
        fields = [
            f"HTTP/1.1 {self.status} {responses.get(self.status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if self.location is not None:
            fields.append(f"Location: {self.location}")
        return "\r\n".join([*fields, "", ""]).encode() + body

    @contextmanager
    def running(self) -> Iterator[JWKSServer]:
        with serving(self._httpd):
            try:
                yield self
            finally:
                self.release()
