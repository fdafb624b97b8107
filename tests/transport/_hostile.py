"""A loopback upstream that sends bytes nobody asked for, over plain TCP or TLS.

:class:`HostileUpstream` is the tests' :class:`~tests.upstreams.RawUpstream` with a few more
paths, each answering correctly and then planting :data:`PLANTED` (a complete response of its
own) on the connection, where a careless pool would read it as the next caller's answer:

- ``/say?word=W``: a well-behaved answer whose body is ``W``;
- ``/surplus?word=W``: ``W``, and the planted response in the same write;
- ``/surplus-split?word=W``: the head in one write, then ``W`` and the planted response in a
  second one (over TLS the planted bytes then wait in the TLS layer, not on the socket);
- ``/late?word=W``: ``W``, then the planted response 50 ms later (``late_sent`` is set once
  it went out);
- ``/head-body`` (``HEAD``): a head announcing a body, then that body anyway, which is the
  planted response (``?late=1``: 50 ms later, ``late_sent`` set after).

And one well-behaved answer that a pool must still finish before it reuses the connection:

- ``/bodyless?status=S``: a head without a body (``S`` 204 or 304 carries no
  ``Content-Length``; any other says ``Content-Length: 0``).

And two answers a WSGI server must never be handed as they are:

- ``/trailers``: ``hello`` with a ``Trailers`` field (which PEP 3333 servers refuse from an
  application) and a ``Connection``-named field;
- ``/switch``: ``101 Switching Protocols`` to a request that asked for no upgrade.

And six paths that act on a request as soon as its head is read, leaving its body unread,
each counted in ``heads_read`` and each closing the connection:

- ``/answer-early``: ``413`` with an 8-byte body (and no ``Connection: close``), then the
  close, which the unread body turns into a reset;
- ``/act-and-drop``: no answer, a reset (as an upstream that crashed after acting on it);
- ``/stall``: reads nothing more, for a few seconds at most;
- ``/silent-close?seconds=S``: reads nothing more, and closes without a byte after ``S``
  seconds (a few at most);
- ``/answer-early-and-stall``: ``413`` as ``/answer-early``, then reads nothing more and
  keeps the connection open, for a few seconds at most;
- ``/trickle?size=S&every=E``: reads ``S`` bytes of the body (8 KiB) every ``E`` seconds
  (0.05), for a few seconds at most.

And answers that a lenient client reads differently from the gateway's transports:

- ``/interim?status=S&count=N&padding=P``: ``N`` interim responses (default one) of status
  ``S``, each with ``P`` bytes of fields, then ``ok``;
- ``/large-head?padding=P``: ``ok`` under a head with ``P`` bytes of fields, each line
  within the 64 KiB that :mod:`http.client` allows one line;
- ``/until-close?notify=1``: ``hello``, delimited by the close; over TLS the close carries
  ``close_notify`` only with ``notify=1`` (Python's ``close()`` sends none).

And three answers that never end, each a few bytes every 50 ms, for a few seconds at most:

- ``/drip-head``: a status line, then one field after another;
- ``/drip-interim``: a ``103``, then a second interim head, one field after another;
- ``/drip-trailers``: a chunked ``ok``, then one trailer field after another.

Pass ``receive_buffer`` (bytes) to shrink the upstream's receive buffer, so that a body
waits on the sending side as soon as the upstream stops reading it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tests.upstreams import RawUpstream

if TYPE_CHECKING:
    from tests.upstreams import _Connection

#: What every hostile path plants after its answer: a response that is nobody's.
PLANTED = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nnot-your-answer"

_LATE = 0.05
#: How long ``/stall`` and ``/trickle`` hold a connection at most.
_HOLD = 5.0


class HostileUpstream(RawUpstream):
    """A :class:`~tests.upstreams.RawUpstream` with the hostile paths above; TLS when
    ``ssl_context`` (a server context) is given."""

    unread_body_paths = frozenset(
        {
            "/answer-early",
            "/answer-early-and-stall",
            "/act-and-drop",
            "/stall",
            "/silent-close",
            "/trickle",
        }
    )

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, receive_buffer: int | None = None
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        if receive_buffer is not None:
            # Set before any connection is accepted: each inherits it from the listener.
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        #: Set when a late path has sent its planted bytes.
        self.late_sent = threading.Event()
        #: Requests a path that leaves the body unread has acted on.
        self.heads_read = 0

    def _head(self, body_length: int) -> bytes:
        return (
            f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body_length}\r\n\r\n"
        ).encode()

    def _plant_later(self, connection: _Connection) -> None:
        if not self._stop.wait(_LATE):
            connection.sock.sendall(PLANTED)
            self.late_sent.set()

    def _handle_say(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        word = params["word"].encode()
        connection.sock.sendall(self._head(len(word)) + word)
        return True

    def _handle_surplus(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        word = params["word"].encode()
        connection.sock.sendall(self._head(len(word)) + word + PLANTED)
        return True

    def _handle_surplus_split(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        word = params["word"].encode()
        connection.sock.sendall(self._head(len(word)))
        connection.sock.sendall(word + PLANTED)
        return True

    def _handle_late(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        word = params["word"].encode()
        connection.sock.sendall(self._head(len(word)) + word)
        self._plant_later(connection)
        return True

    def _handle_head_body(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        if params.get("late") == "1":
            connection.sock.sendall(self._head(len(PLANTED)))
            self._plant_later(connection)
        else:
            connection.sock.sendall(self._head(len(PLANTED)) + PLANTED)
        return True

    def _handle_bodyless(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        status = params["status"]
        fields = [] if status in ("204", "304") else ["Content-Length: 0"]
        self._send_head(connection, f"{status} Bodyless", *fields)
        return True

    def _handle_trailers(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        fields = [("Content-Type", "text/plain"), ("Trailers", "X-Checksum")]
        fields += [("Connection", "X-Hop"), ("X-Hop", "1"), ("X-Kept", "yes")]
        return self._respond(connection, method, "200 OK", fields, b"hello")

    def _handle_switch(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        self._send_head(
            connection, "101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"
        )
        connection.sock.sendall(b"\x81\x05hello")  # a WebSocket frame, as if upgraded
        return False

    def _count_head(self) -> None:
        with self._lock:
            self.heads_read += 1

    def _handle_answer_early(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        return self._answer_early(connection, _LATE)  # the client keeps sending meanwhile

    def _handle_answer_early_and_stall(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        return self._answer_early(connection, _HOLD)

    def _answer_early(self, connection: _Connection, then_wait: float) -> bool:
        """Answer 413 with the body unread, then wait ``then_wait`` seconds before closing."""
        self._count_head()
        self._send_head(connection, "413 Content Too Large", "Content-Length: 8")
        connection.sock.sendall(b"too big!")
        self._stop.wait(then_wait)
        return False

    def _handle_act_and_drop(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        self._count_head()
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False

    def _handle_stall(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        self._count_head()
        self._stop.wait(_HOLD)
        return False

    def _handle_silent_close(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        self._count_head()
        self._stop.wait(min(float(params["seconds"]), _HOLD))
        return False

    def _handle_trickle(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        self._count_head()
        size, every = int(params.get("size", "8192")), float(params.get("every", "0.05"))
        until = time.monotonic() + _HOLD
        while time.monotonic() < until and not self._stop.wait(every):
            if not connection.reader.read1(size):
                break
        return False

    def _handle_interim(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        status = params.get("status", "103")
        interim = f"HTTP/1.1 {status} Interim\r\n".encode() + _padding(
            int(params.get("padding", "0"))
        )
        connection.sock.sendall((interim + b"\r\n") * int(params.get("count", "1")))
        return self._respond(connection, method, "200 OK", [], b"ok")

    def _handle_large_head(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        padding = _padding(int(params["padding"]))
        connection.sock.sendall(b"HTTP/1.1 200 OK\r\n" + padding + b"Content-Length: 2\r\n\r\nok")
        return True

    def _handle_until_close(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        sock = connection.sock
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello")
        if params.get("notify") == "1" and isinstance(sock, ssl.SSLSocket):
            # Sends close_notify, then waits for the client's, or for its close.
            with contextlib.suppress(OSError):
                sock.unwrap()
        return False

    def _drip(self, connection: _Connection, first: bytes, repeated: bytes) -> bool:
        connection.sock.sendall(first)
        until = time.monotonic() + _HOLD
        while time.monotonic() < until and not self._stop.wait(_LATE):
            connection.sock.sendall(repeated)
        return False

    def _handle_drip_head(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        return self._drip(connection, b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n")

    def _handle_drip_interim(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n"
        return self._drip(connection, interim, b"X-Drip: 1\r\n")

    def _handle_drip_trailers(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
        return self._drip(connection, head, b"X-Trailer: 1\r\n")


def _padding(size: int) -> bytes:
    """Header fields of ``size`` bytes in all, none of them over 60,000."""
    lines = []
    for number, start in enumerate(range(0, size, 60000)):
        name = b"X-Pad-%d: " % number
        lines.append(name + b"a" * max(min(size - start, 60000) - len(name) - 2, 0) + b"\r\n")
    return b"".join(lines)


@contextlib.contextmanager
def serve_hostile(
    ssl_context: ssl.SSLContext | None = None, *, receive_buffer: int | None = None
) -> Iterator[HostileUpstream]:
    """Run a :class:`HostileUpstream`; yield it (its base URL is ``.url``)."""
    with HostileUpstream(ssl_context=ssl_context, receive_buffer=receive_buffer) as upstream:
        yield upstream
