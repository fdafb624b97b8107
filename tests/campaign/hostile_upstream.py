"""A loopback upstream that misbehaves on request, over plain TCP or TLS.

:class:`HostileUpstream` serves HTTP/1.1 on kept-alive connections, one thread per
connection. Two kinds of request target:

- ``/own/<token>``: a well-formed ``200`` whose body is exactly ``<token>``, so that a caller
  can tell its own answer from anyone else's;
- ``/case/<name>``: the misbehaviour :data:`CASES` names, written byte for byte.

A case may also leave bytes for *later* (:attr:`Misbehaviour.later`): they are written on
the same connection the moment the next request's head has arrived on it, before its own
answer: the worst moment, after any check a client could make before reusing the connection.
Such bytes are always a complete forged response carrying :data:`LEFTOVER`, so a test can
tell them apart from a caller's own answer.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from tests.upstreams import RawUpstream, _Closed, _Connection

#: The body of every forged response: whoever reads it got bytes meant for someone else.
LEFTOVER = b"LEFTOVER-MEANT-FOR-ANOTHER-CALLER"
FORGED = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(LEFTOVER), LEFTOVER)

#: Upper bound for any wait of the server, so a broken test cannot hang the run.
_MAX_WAIT = 15.0


@dataclass(frozen=True, kw_only=True)
class Misbehaviour:
    """What the upstream writes for one case.

    ``parts`` are written in order, each as its own write (its own TLS record over TLS);
    ``then`` says what happens to the connection afterwards: ``keep`` it, ``close`` it
    cleanly (over TLS: without ``close_notify``, as Python's ``close()`` does), ``reset`` it
    (TCP RST), ``hold`` it open without writing until the client leaves, ``drip-interim``:
    send a ``103`` every 50 ms until the client leaves, or ``late``: 50 ms after the response,
    write a forged one and set :attr:`HostileUpstream.late_written`.
    ``later`` is written when the next request arrives on the connection (see the module doc).
    """

    parts: tuple[bytes, ...] = ()
    then: str = "keep"
    later: bytes = b""


def _response(body: bytes, *fields: str, status: str = "200 OK") -> bytes:
    head = "\r\n".join([f"HTTP/1.1 {status}", *fields])
    return head.encode("latin-1") + b"\r\n\r\n" + body


HELLO = b"hello"
_OK = _response(HELLO, "Content-Length: 5")

CASES: dict[str, Misbehaviour] = {
    "well-formed": Misbehaviour(parts=(_OK,)),
    "surplus-same-write": Misbehaviour(parts=(_OK + FORGED,)),
    "surplus-next-write": Misbehaviour(parts=(_OK, FORGED)),
    # Over TLS the body and the surplus share one record: reading exactly the body leaves the
    # surplus decrypted inside the TLS layer, where polling the socket cannot see it.
    "surplus-with-body": Misbehaviour(parts=(_response(b"", "Content-Length: 5"), HELLO + FORGED)),
    "late-bytes": Misbehaviour(parts=(_OK,), later=FORGED),
    "late-bytes-after-50ms": Misbehaviour(parts=(_OK,), then="late"),
    "head-body-same-write": Misbehaviour(parts=(_response(LEFTOVER, "Content-Length: 33"),)),
    "head-body-late": Misbehaviour(parts=(_response(b"", "Content-Length: 33"),), later=FORGED),
    "length-short": Misbehaviour(parts=(_response(HELLO + LEFTOVER, "Content-Length: 5"),)),
    "length-long-then-close": Misbehaviour(
        parts=(_response(HELLO, "Content-Length: 100"),), then="close"
    ),
    "length-long-then-hold": Misbehaviour(
        parts=(_response(HELLO, "Content-Length: 100"),), then="hold"
    ),
    "lengths-conflicting": Misbehaviour(
        parts=(_response(HELLO + b"!", "Content-Length: 5", "Content-Length: 6"),)
    ),
    "lengths-conflicting-in-one-field": Misbehaviour(
        parts=(_response(HELLO + b"!", "Content-Length: 5, 6"),)
    ),
    "length-and-chunked": Misbehaviour(
        parts=(
            _response(
                b"5\r\nhello\r\n0\r\n\r\n" + FORGED,
                "Content-Length: 5",
                "Transfer-Encoding: chunked",
            ),
        )
    ),
    "chunked-then-surplus": Misbehaviour(
        parts=(_response(b"5\r\nhello\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), FORGED)
    ),
    "interim-storm": Misbehaviour(
        parts=(
            b"HTTP/1.1 100 Continue\r\n\r\n" * 200
            + b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" * 200,
            _OK,
        )
    ),
    "interim-endless": Misbehaviour(then="drip-interim"),
    "reset-before-head": Misbehaviour(then="reset"),
    "reset-mid-head": Misbehaviour(parts=(b"HTTP/1.1 200 OK\r\nContent-Le",), then="reset"),
    "reset-mid-body": Misbehaviour(parts=(_response(HELLO, "Content-Length: 100"),), then="reset"),
    "reset-after-body": Misbehaviour(parts=(_OK,), then="reset"),
    # Over TLS, Python's close() sends no close_notify: these are the "missing close_notify"
    # variants (a framed response, then a body delimited by the close).
    "close-after-body": Misbehaviour(parts=(_OK,), then="close"),
    "close-delimited-body": Misbehaviour(
        parts=(_response(HELLO, "Content-Type: text/plain"),), then="close"
    ),
}


class HostileUpstream(RawUpstream):
    """The server: the tests' :class:`~tests.upstreams.RawUpstream` (its listener, threads,
    TLS and request reader) answering :data:`CASES` instead of its own paths. ``tls`` (a server
    context) makes it speak HTTPS. Use as a context manager.

    ``connections_accepted`` counts accepted connections; ``later_written`` counts the times
    bytes kept for later were actually written.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context=tls)
        self.later_written = 0
        self.late_written = threading.Event()
        #: Set once every part of a case has been written (handed to the kernel).
        self.case_written = threading.Event()

    def _serve(self, connection: _Connection) -> None:
        if not self._start_tls(connection):
            return
        sock = connection.sock
        try:
            later = b""
            while not self._stop.is_set():
                head, _, _, _ = self._read_request(connection)
                target = head.decode("latin-1").split(" ", 2)[1]
                if later:
                    sock.sendall(later)
                    later = b""
                    with self._lock:
                        self.later_written += 1
                if target.startswith("/own/"):
                    token = target.removeprefix("/own/").encode()
                    sock.sendall(_response(token, f"Content-Length: {len(token)}"))
                    continue
                case = CASES[target.removeprefix("/case/")]
                try:
                    for part in case.parts:
                        sock.sendall(part)
                finally:
                    # Written, or refused by a gateway that closed the connection before the
                    # end (too many interim responses): either way nothing more will come.
                    self.case_written.set()
                later = case.later
                if case.then == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if case.then == "close":
                    return
                if case.then == "hold":
                    self._hold(sock)
                    return
                if case.then == "late":
                    if not self._stop.wait(0.05):
                        sock.sendall(FORGED)
                        self.late_written.set()
                    continue
                if case.then == "drip-interim":
                    self._drip_interim(sock)
                    return
        except (_Closed, OSError, ValueError):
            return
        finally:
            with self._lock:
                self._open.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def _drip_interim(self, sock: socket.socket) -> None:
        """A ``103`` every 50 ms until the client leaves: a head that never ends."""
        interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        while not self._stop.wait(0.05):
            sock.sendall(interim)

    def _hold(self, sock: socket.socket) -> None:
        sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                if not sock.recv(1):
                    return
            except TimeoutError:
                continue


@contextlib.contextmanager
def serve_hostile(tls: ssl.SSLContext | None = None) -> Iterator[HostileUpstream]:
    """Run a :class:`HostileUpstream`; yield it (its base URL is ``.url``)."""
    with HostileUpstream(tls) as upstream:
        yield upstream
