"""An upstream whose server-sent events the test sends one at a time.

``GET /events`` answers a chunked ``text/event-stream`` and then sends event ``n`` only when
the test calls :meth:`PacedUpstream.send_next`, recording when it went out. Between events it
watches its socket, so :attr:`PacedUpstream.closed` tells when the gateway closed the
connection. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import queue
import select
import socket
import threading
import time
from collections.abc import Iterator

#: Longest wait for the test's next step, so a broken test cannot hang the run.
MAX_WAIT = 15.0


def read_event(response: http.client.HTTPResponse) -> bytes:
    """Read up to the end of one event (``read1`` returns what has arrived, never waits for
    more once it has some)."""
    data = b""
    while not data.endswith(b"\n\n"):
        piece = response.read1(65536)
        assert piece, "the stream ended"
        data += piece
    return data


def event(number: int) -> bytes:
    """The bytes of event ``number``."""
    return f"id: {number}\ndata: event {number}\n\n".encode()


class PacedUpstream:
    """One connection at a time; ``sent_at[n]`` is when event ``n`` left (monotonic)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent_at: list[float] = []
        self.closed = threading.Event()
        self._releases: queue.Queue[bool] = queue.Queue()
        self._thread = threading.Thread(target=self._serve)

    def send_next(self) -> None:
        """Let the upstream send its next event."""
        self._releases.put(True)

    def end(self) -> None:
        """Let the upstream end the stream (its last chunk)."""
        self._releases.put(False)

    def _serve(self) -> None:
        self._listener.settimeout(MAX_WAIT)
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(MAX_WAIT)
            request = b""
            while b"\r\n\r\n" not in request:
                piece = sock.recv(65536)
                if not piece:
                    return
                request += piece
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            sock.sendall(head)
            number = 0
            while True:
                if self._peer_closed(sock):
                    self.closed.set()
                    return
                try:
                    stop = not self._releases.get(timeout=0.02)
                except queue.Empty:
                    continue
                if stop:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"0\r\n\r\n")  # the stream's clean end
                    return
                data = event(number)
                self.sent_at.append(time.monotonic())  # before: the reader may be quicker
                try:
                    sock.sendall(b"%X\r\n%b\r\n" % (len(data), data))
                except OSError:
                    self.closed.set()
                    return
                number += 1

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


@contextlib.contextmanager
def serve_paced() -> Iterator[PacedUpstream]:
    """Run a :class:`PacedUpstream` until the block ends."""
    upstream = PacedUpstream()
    upstream._thread.start()
    try:
        yield upstream
    finally:
        upstream._releases.put(False)
        upstream._listener.close()
        upstream._thread.join(MAX_WAIT + 1)
