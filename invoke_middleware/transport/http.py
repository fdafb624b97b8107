"""The default transport: HTTP/1.1 on kept-alive connections, read and written here.

:class:`HTTPTransport` keeps a few idle connections per tenant and origin and reuses them,
which is what makes a relayed request cheap. It speaks exactly the contract of
:mod:`invoke_middleware.transport.base`: nothing is added to the request but ``Host`` and the
body framing, nothing of the response is decoded, and every failure becomes one of the
gateway's own errors::

    transport = HTTPTransport(ca_bundle="/etc/ssl/internal-ca.pem")
    request = UpstreamRequest(method="GET", url="https://svc.internal/health",
                              headers=(("Accept", "application/json"),))
    with transport.send(request) as response:
        body = b"".join(response)

``request.headers`` must not carry ``Host``, ``Content-Length`` or ``Transfer-Encoding``
(the relay strips them, docs/contract.md §6); the transport writes those itself.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import (
    GatewayError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from ..headers import TOKEN_PATTERN, UNSAFE_TARGET_PATTERN, UNSAFE_VALUE_PATTERN, is_token
from ._origin import Origin, split_url
from ._response import (
    CHUNK_PAUSE,
    HEAD_END,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_INTERIM,
    MAX_LINE,
    ResponseHead,
    parse_head,
)
from ._tls import PEER_CLOSED, TLS_RECORD, CABundle, resolve_ssl_context
from .base import (
    Closeable,
    FileRegion,
    UpstreamRequest,
    UpstreamResponse,
    length_mismatch,
    unreadable_body,
)

__all__ = ["HTTPTransport"]

#: Connections are pooled per tenant and origin (scheme, host, port): never shared between two
#: tenants. The share they count in (see UpstreamRequest.share) comes first, where the cap on
#: idle connections looks. A plain tuple, hashed without calling into Python on every pool
#: look-up.
_PoolKey = tuple[str | None, str | None, str, str, int]

#: Largest piece handed out per read; a chunk is returned as soon as any bytes arrived.
_READ_SIZE = 65536
#: A chunk's size line (RFC 9112 §7.1): hex digits, then extensions, which are dropped.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")
_LINE_END = re.compile(rb"\n")
# The end of one chunk's data and the size line of the next, both whole (RFC 9112 §7.1): what
# _Exchange._join_buffered looks for to hand out chunks received together as one piece. The
# same grammar as _CHUNK_SIZE and the empty line _Exchange._chunked reads after each chunk.
_NEXT_CHUNK = re.compile(rb"\r?\n([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?\r?\n")
_BAD_CHUNK = "The service's response has a malformed chunk."
#: Whole chunks received together that are joined without a pause; past them, each chunk
#: joined makes the relay wait ``CHUNK_PAUSE`` (reading one costs about 0.6 µs here, and 1-byte
#: chunks cost 325 times the CPU of an ordinary body). A body of 1-byte chunks then goes at
#: about 1 MB/s on the wire, 64-byte chunks at 15 MB/s. A join holds at most 64 KiB of data,
#: so chunks of 512 bytes or more are never paced, nor are events of a stream, which arrive
#: apart.
_FREE_CHUNKS = 128
#: Framing a chunked body may carry past what its data pays for, as Go's ``net/http`` reads
#: it: each chunk's size line (extensions included) is allowed 16 bytes and twice its data,
#: and what goes beyond adds up; past 16 KiB the body is refused. Chunks of one byte with a
#: kilobyte of extensions each got past the pacing above (a receive holds few of them) and
#: cost the gateway 7 s of CPU per MiB of data.
_FRAMING_PER_CHUNK = 16
_MAX_EXCESS_FRAMING = 16 * 1024
_TOO_MUCH_FRAMING = "The service's response has far more chunk framing than data."
_HEAD_TOO_LARGE = "The service's response head is too large."
#: What ``sendfile`` fails with, having sent nothing, where the file cannot be sent from.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})

# Where an exchange failed, which decides whether it may be retried.
_WRITING_HEAD = 0  # no send has taken a byte of the request yet
_READING_BODY = 1  # pulling the next chunk from the caller's body: the caller's failure
_WRITING_BODY = 2  # some of the request was taken: the upstream may act on it
_AWAITING_RESPONSE = 3


def _translate(exc: OSError | ValueError) -> GatewayError:
    """The one place where socket, TLS and address errors become the gateway's errors (a
    malformed response is an :class:`UpstreamError` where it is found)."""
    if isinstance(exc, (TimeoutError, BlockingIOError)):
        # BlockingIOError: a send that outlasted the kernel's timeout (see _Deadline).
        return UpstreamTimeoutError()
    # Refused, reset, DNS failure, TLS handshake or verification failure; or (ValueError) a
    # URL no connection can be opened to: a port out of range, a name no lookup takes.
    return UpstreamUnreachableError()


class _Deadline:
    """Per-wait timeouts on one connection: the read timeout, capped by what is left of the
    total.

    On a plain TCP connection (Linux) the read timeout is the kernel's (``SO_RCVTIMEO`` and
    ``SO_SNDTIMEO`` on a blocking socket): CPython then waits in ``recv`` and ``send``
    themselves, where a socket timeout makes it poll before each, one system call and one
    hand-over of the interpreter lock more per wait. Over TLS, and once what is left of the
    total is less than the read timeout, Python's socket timeout applies.

    Either timeout bounds one ``recv`` or ``send`` call, never a loop of them such as
    ``sendall``: every wait re-arms the deadline first (see :meth:`_Exchange._send`).
    """

    __slots__ = ("_at", "_connection", "_read")

    def __init__(self, connection: _HTTPConnection, read: float | None, at: float | None):
        self._connection = connection
        self._read = read
        self._at = at  # when the total is spent (time.monotonic()), or None

    def arm(self) -> None:
        """Set the timeout of the next wait; raise once the total is spent."""
        if self._at is not None:
            self._wait(self.next_wait())

    def next_wait(self) -> float | None:
        """The timeout of the next wait, for a caller that waits itself (``None``: none);
        raise once the total is spent."""
        if self._at is None:
            return self._read
        remaining = self._at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining if self._read is None or remaining < self._read else self._read

    @property
    def at(self) -> float | None:
        """When the total runs out (:func:`time.monotonic`), if there is one."""
        return self._at

    def start(self) -> None:
        if self._at is None:
            self._wait(self._read)
        else:
            self.arm()

    def _wait(self, timeout: float | None) -> None:
        connection = self._connection
        sock = connection.sock
        if connection.kernel_waits and timeout == self._read and (timeout is None or timeout > 0):
            if connection.kernel_timeout != timeout:
                _set_kernel_timeout(sock, timeout)
                connection.kernel_timeout = timeout
            timeout = None  # a blocking socket: the kernel's timeout applies
        # settimeout is a system call (it switches the blocking mode); gettimeout is not, and
        # on a kept-alive connection the mode is mostly the one already set.
        if sock.gettimeout() != timeout:
            sock.settimeout(timeout)


class _AnsweredEarly(Exception):
    """The upstream stopped taking the request's body with bytes of an answer waiting."""


def _untaken(sock: socket.socket) -> int | None:
    """The bytes in ``sock``'s send queue that the peer has not acknowledged (``SIOCOUTQ``);
    ``None`` where the system does not say."""
    try:
        # Only on this slow path, and not on every system: imported here.
        import fcntl  # noqa: PLC0415
        import termios  # noqa: PLC0415

        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (ImportError, OSError, AttributeError):
        return None
    return int.from_bytes(queued, sys.byteorder, signed=True)


def _set_kernel_timeout(sock: socket.socket, timeout: float | None) -> None:
    """The kernel's timeout of each receive and send on ``sock`` (0: none)."""
    seconds = int(timeout or 0)
    microseconds = int(((timeout or 0) - seconds) * 1_000_000)
    if timeout and not seconds and not microseconds:
        microseconds = 1  # a zero timeval would mean no timeout at all
    value = struct.pack("ll", seconds, microseconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class _Exchange:
    """One request on one connection: writes it, reads the response's head, then hands out
    its body as it arrives.

    The response is read straight from the socket into one buffer: a small response (head and
    body in one segment) costs one receive, and its body is in hand with its head. Every
    receive first re-arms the deadline, so an upstream dripping its head or its chunk sizes
    a byte at a time still meets the total.
    """

    __slots__ = (
        "_buffer",
        "_connection",
        "_deadline",
        "_excess",
        "_head",
        "_host_header",
        "_key",
        "_offset",
        "_sock",
        "_transport",
        "done",
        "stage",
    )

    def __init__(
        self,
        *,
        transport: HTTPTransport,
        key: _PoolKey,
        host_header: str,
        connection: _HTTPConnection,
        deadline: _Deadline,
    ) -> None:
        self._transport = transport
        self._key = key
        self._host_header = host_header
        self._connection = connection
        self._sock: socket.socket = connection.sock
        self._deadline = deadline
        self._head: ResponseHead | None = None
        # Received and not yet handed out: _buffer[_offset:].
        self._buffer = b""
        self._offset = 0
        # Chunk framing received past what its data allows (see _MAX_EXCESS_FRAMING).
        self._excess = 0
        self.stage = _WRITING_HEAD
        self.done = False

    def write(self, request: UpstreamRequest, target: str) -> None:
        """Send the request line, headers and body.

        ``stage`` stays :data:`_WRITING_HEAD` until a send takes a byte: a failure before
        that leaves the request unseen by the upstream (see :func:`_may_retry`).
        """
        self._deadline.start()
        head = _request_head(request, target, self._host_header)
        stream = request.body_stream
        body = request.body_bytes if stream is None else None
        if body and len(body) <= _READ_SIZE:
            # One write for head and body: one system call, one packet.
            head, body = head + body, None
        # A head within one TLS record goes in one send on any connection. Only a longer one
        # needs the connection's send size: that look-up is measurable on every request.
        size = len(head)
        sent = self._sock.send(
            head if size <= TLS_RECORD else memoryview(head)[: self._connection.send_size]
        )
        if sent != size or body or stream is not None:
            self.stage = _WRITING_BODY
            if sent != size:
                self._send(memoryview(head)[sent:])
            if body:
                self._send(body)
            if stream is not None:
                region = request.file_region if self._connection.sends_files else None
                if region is None or not self._send_file(region):
                    # Checked against the total: a caller slower than it is told so (408),
                    # not blamed on the service at the next send.
                    self._write_stream(
                        request.checked_stream(self._deadline.at), chunked=request.is_chunked
                    )

    def _write_stream(self, chunks: Iterable[bytes], *, chunked: bool) -> None:
        self.stage = _READING_BODY
        for chunk in chunks:
            if chunk:  # an empty chunk would end a chunked body (RFC 9112 §7.1)
                self.stage = _WRITING_BODY
                self._send(b"%X\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.stage = _READING_BODY
        if chunked:
            self.stage = _WRITING_BODY
            self._send(b"0\r\n\r\n")

    def _send_file(self, region: FileRegion) -> bool:
        """Send a body that lies in a file from the file: the kernel copies it to the socket
        (``os.sendfile``), never through Python's memory. ``False`` when nothing could be
        sent from it (a file system that cannot): then it is read as any body is.

        The socket is non-blocking meanwhile, and each wait for it is a ``poll`` under the
        deadline, as :meth:`_send` waits in ``send``: a blocking ``sendfile`` waits again,
        with a fresh kernel timeout, after each part it sends, so an upstream taking a
        trickle would hold one call for many read timeouts, past the total.
        """
        self.stage = _WRITING_BODY
        sock, next_wait = self._sock, self._deadline.next_wait
        out, offset, left = sock.fileno(), region.offset, region.length
        writable = select.poll()
        writable.register(out, select.POLLOUT)
        stalled = None  # the bytes the upstream had not taken when a wait last timed out
        mode = sock.gettimeout()
        sock.setblocking(False)
        try:
            while left:
                wait = next_wait()  # raises once the total is spent
                try:
                    sent = os.sendfile(out, region.fd, offset, left)
                except BlockingIOError as error:
                    if not writable.poll(None if wait is None else wait * 1000):
                        stalled = self._stalled(error, stalled)
                    continue
                except (ConnectionError, TimeoutError):
                    raise  # the upstream's side of it
                except OSError as error:
                    if offset == region.offset and error.errno in _NO_SENDFILE:
                        return False
                    # The file failed: the caller's body, as when reading it fails.
                    raise unreadable_body() from error
                if not sent:
                    raise length_mismatch()  # the file ends before the declared length
                stalled = None
                offset += sent
                left -= sent
                region.taken(sent)
        finally:
            sock.settimeout(mode)
        return True

    def _send(self, data: bytes | memoryview) -> None:
        """Write ``data`` whole, re-arming the deadline before each send.

        Not ``sendall``: the kernel's send timeout bounds one ``send`` call, so an upstream
        that reads a trickle, a little within each read timeout, would hold a ``sendall``
        past the total. Over TLS each send is at most one record (``send_size``), whose
        write the socket timeout bounds.
        """
        sock, arm, size = self._sock, self._deadline.arm, self._connection.send_size
        view = memoryview(data)
        stalled = None  # the bytes the upstream had not taken when a send last timed out
        while view:
            arm()
            try:
                view = view[sock.send(view[:size]) :]
                stalled = None
            except (BlockingIOError, TimeoutError) as error:
                stalled = self._stalled(error, stalled)

    def _stalled(self, error: OSError, before: int | None) -> int:
        """A send took nothing within the read timeout (``error``): the bytes the upstream has
        not taken yet, to compare at the next such time out, when it is still reading; else
        raise ``error``, or :class:`_AnsweredEarly` when an answer waits.

        The kernel wakes a sender only once a third of its send buffer is free, so an upstream
        that reads steadily but slowly can leave it waiting longer than the timeout: it has
        been reading if the bytes it has not taken (``before``: at the last time out) went
        down.
        """
        untaken = _untaken(self._sock)
        if untaken is None or (before is not None and untaken >= before):
            if not self._connection.is_quiet():
                # It stopped taking the body with bytes for us waiting: an answer given
                # before the end of the request, which is the response.
                raise _AnsweredEarly from None
            raise error
        return untaken

    def _receive(self, size: int = _READ_SIZE) -> bytes:
        """At most ``size`` bytes as soon as any arrive; ``b""`` once the peer closed."""
        self._deadline.arm()
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            # The kernel's receive timeout (see _Deadline), never "no bytes yet".
            raise TimeoutError from None

    def read_head(self, method: str) -> ResponseHead:
        """Wait for the final response's status line and headers; interim ones are skipped
        (http.client skips only ``100``: a ``103 Early Hints`` would pass for the answer and
        leave the real one on the connection to answer the next request).

        The interim heads count against ``MAX_HEAD`` with the final one, and at most
        ``MAX_INTERIM`` of them are read: an upstream that streams ``100 Continue`` is
        refused, instead of keeping a thread parsing until the total deadline.
        """
        self.stage = _AWAITING_RESPONSE
        data, start = b"", 0  # received; where the next head starts in it
        limit = MAX_HEAD  # what is left of it for the heads still to come
        for _ in range(MAX_INTERIM + 1):
            end = HEAD_END.search(data, start)
            if end is None:
                received = self._receive_until(data[start:], HEAD_END, limit, _HEAD_TOO_LARGE)
                if received is None and not start:
                    # Before any byte, the usual end of a kept-alive connection the peer
                    # closed while idle: a ConnectionError, which _may_retry recognises.
                    raise ConnectionResetError("The service closed the connection.")
                if received is None:
                    # After an interim response the upstream has seen the request: it may have
                    # acted on it, so this is no idle close to retry (docs/contract.md §8).
                    raise UpstreamError("The service's response ended early.")
                (data, end), start = received, 0
            head = parse_head(data[start : end.start()], method)
            if not head.interim:
                self._buffer, self._offset = data, end.end()
                self._head = head
                return head
            limit -= end.end() - start
            if limit < 0:
                break
            start = end.end()
        raise UpstreamError("The service sent too many interim responses.")

    def _receive_until(
        self, data: bytes, end: re.Pattern[bytes], limit: int, too_long: str
    ) -> tuple[bytes, re.Match[bytes]] | None:
        """``data`` and what arrives after it, up to where ``end`` is found in them: the
        bytes and the match; ``None`` if the peer closes before sending anything (and ``data``
        is empty). Refused past ``limit``, and cut short once some bytes came.

        A peer that sends a byte at a time must not make each receive copy all the bytes
        before it: they are joined in a bytearray, which grows in place.
        """
        joined: bytes | bytearray = data
        while True:
            if len(joined) > limit:
                raise UpstreamError(too_long)
            more = self._receive()
            if not more:
                if joined:
                    raise UpstreamError("The service's response ended early.")
                return None
            searched = max(len(joined) - 3, 0)  # a CRLFCRLF may straddle the two
            if not joined:
                joined = more
            else:
                if isinstance(joined, bytes):
                    joined = bytearray(joined)
                joined += more
            found = end.search(joined, searched)
            if found is not None:
                if found.start() > limit:
                    # The last receive brought the end, but past the limit.
                    raise UpstreamError(too_long)
                return bytes(joined), found

    def buffered_body(self) -> bytes | None:
        """The whole body when it arrived with the head (and its length was given), else
        ``None``; once taken, the exchange is finished."""
        head = self._head
        assert head is not None
        length = head.length
        buffer, offset = self._buffer, self._offset
        if length is None or len(buffer) - offset < length:
            return None
        self._offset = offset + length
        body = buffer if offset == 0 and len(buffer) == length else buffer[offset : offset + length]
        self.finish()
        return body

    def chunks(self) -> Iterator[bytes]:
        """The body, chunk by chunk as it arrives; raises if it ends early. Nothing once the
        exchange was closed, also when that happened before the first piece was asked for."""
        if self.done:
            return
        head = self._head
        assert head is not None
        if head.chunked:
            pieces = self._chunked()
        elif head.length is None:
            pieces = self._until_close()
        else:
            pieces = self._sized(head.length)
        try:
            for piece in pieces:
                yield piece
                if self.done:
                    return  # closed while the caller held the piece
            self.finish()
        except ssl.SSLEOFError as exc:
            # The TLS connection closed without close_notify: the body may be truncated.
            raise UpstreamError("The service's response ended early.") from exc
        except OSError as exc:
            raise _translate(exc) from exc
        finally:
            if not self.done:
                self.close()

    def _take(self, size: int) -> bytes:
        """Up to ``size`` bytes, from the buffer if it holds any, else from one receive."""
        buffer, offset = self._buffer, self._offset
        if offset < len(buffer):
            piece = buffer[offset : offset + size]
            self._offset = offset + len(piece)
            return piece
        piece = self._receive(size)
        if not piece:
            # RFC 9112 §8: a message closed before its framing ended is incomplete.
            raise UpstreamError("The service's response ended early.")
        return piece

    def _sized(self, left: int) -> Iterator[bytes]:
        while left:
            piece = self._take(left if left < _READ_SIZE else _READ_SIZE)
            left -= len(piece)
            yield piece

    def _until_close(self) -> Iterator[bytes]:
        if self._offset < len(self._buffer):
            yield self._buffer[self._offset :]
            self._buffer = b""
        while piece := self._receive():
            yield piece

    def _chunked(self) -> Iterator[bytes]:
        """The data of a chunked body (RFC 9112 §7.1); extensions and trailers are dropped.

        Whole chunks received right behind one another go out as one piece (see
        :meth:`_join_buffered`), and a piece goes out as soon as it is in: nothing is waited
        for to join it with, so each server-sent event still leaves when it arrives.
        """
        while True:
            line = self._line()
            size_line = _CHUNK_SIZE.fullmatch(line)
            if size_line is None:
                raise UpstreamError(_BAD_CHUNK)
            left = int(size_line.group(1), 16)
            self._charge_framing(len(line) + 2, left)
            if not left:
                break
            while left:
                piece = self._take(left if left < _READ_SIZE else _READ_SIZE)
                left -= len(piece)
                if not left and self._offset < len(self._buffer):
                    piece = self._join_buffered(piece)
                yield piece
            if self._line():
                raise UpstreamError(_BAD_CHUNK)
        for _ in range(MAX_FIELDS + 1):
            if not self._line():
                return
        raise UpstreamError("The service's response has too many trailer fields.")

    def _join_buffered(self, piece: bytes) -> bytes:
        """``piece``, the end of a chunk's data, joined with the data of the whole chunks
        already in the buffer behind it, up to ``_READ_SIZE`` in all: a body of one-byte
        chunks must not cost one iteration and one write to the client per byte (and past
        :data:`_FREE_CHUNKS` chunks, a pause each, see there). The buffer
        is left at the line break that ends the last chunk joined; a chunk not wholly in
        it, the last chunk and anything malformed are left to :meth:`_chunked`."""
        buffer, offset = self._buffer, self._offset
        pieces, size = [piece], len(piece)
        match = _NEXT_CHUNK.match
        while (found := match(buffer, offset)) is not None:
            length = int(found.group(1), 16)
            start = found.end()
            if not length or size + length > _READ_SIZE or start + length > len(buffer):
                break
            self._charge_framing(start - found.start(), length)
            offset = start + length
            pieces.append(buffer[start:offset])
            size += length
        if len(pieces) == 1:
            return piece
        self._offset = offset
        if len(pieces) > _FREE_CHUNKS:
            time.sleep((len(pieces) - _FREE_CHUNKS) * CHUNK_PAUSE)
        return b"".join(pieces)

    def _charge_framing(self, framing: int, data: int) -> None:
        """Count a chunk's ``framing`` bytes against what its ``data`` allows; raise past
        :data:`_MAX_EXCESS_FRAMING`."""
        excess = self._excess + framing - _FRAMING_PER_CHUNK - 2 * data
        self._excess = excess if excess > 0 else 0
        if excess > _MAX_EXCESS_FRAMING:
            raise UpstreamError(_TOO_MUCH_FRAMING)

    def _line(self) -> bytes:
        """The next line of the body's framing, without its line break."""
        buffer, offset = self._buffer, self._offset
        end = buffer.find(b"\n", offset)
        if end < 0:
            received = self._receive_until(buffer[offset:], _LINE_END, MAX_LINE, _BAD_CHUNK)
            if received is None:
                raise UpstreamError("The service's response ended early.")
            (buffer, found), offset = received, 0
            end = found.start()
            self._buffer = buffer
        self._offset = end + 1
        line = buffer[offset:end]
        return line[:-1] if line.endswith(b"\r") else line

    def finish(self) -> None:
        """The body was read to its end: keep the connection if the response allows it and
        it ended exactly at its framing, with nothing received past it. Whether anything
        arrived after it is checked when the connection is taken out of the pool again
        (:meth:`_HTTPConnection.is_quiet`): bytes may still be on their way now.

        Bytes received past the framing are discarded with the connection (RFC 9112 §9.3: a
        response that ends elsewhere than its framing says leaves the connection in an
        unknown state)."""
        head = self._head
        assert head is not None
        self.done = True
        surplus = self._offset < len(self._buffer)
        self._buffer = b""
        if head.will_close or surplus:
            self._connection.close()
        else:
            self._transport._release(self._key, self._connection)

    def close(self) -> None:
        """Stop early: the connection is in an unknown state and is discarded."""
        if self.done:
            return
        self.done = True
        self._buffer = b""
        self._connection.close()


class HTTPTransport(Closeable):
    """The default transport: HTTP/1.1 with a small keep-alive pool per tenant and
    origin.

    Connections are pooled per :attr:`~invoke_middleware.transport.base.UpstreamRequest.tenant`
    and origin, so no connection ever carries two tenants' exchanges, and one goes back to its
    pool only when its response ended exactly at its framing with nothing buffered after it,
    and is reused only when nothing is readable on it either. ``pool_size_per_origin`` bounds
    how many *idle* connections are kept per tenant and origin (more may be open at once under
    load; extra ones are closed when released), ``max_idle_connections`` how many are kept in all
    (over it, the tenant holding the most idle connections has its longest idle one closed).
    TLS is always verified: against ``ca_bundle`` when given, else the system trust store; or
    pass a ready ``ssl_context`` (one with a client certificate, for mTLS). Safe to share
    between threads.
    """

    def __init__(
        self,
        *,
        pool_size_per_origin: int = 10,
        max_idle_connections: int = 256,
        ca_bundle: CABundle | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if pool_size_per_origin < 0 or max_idle_connections < 0:
            raise ValueError("Pool sizes must not be negative.")
        self._pool_size = pool_size_per_origin
        self._max_idle = max_idle_connections
        self._ssl_context = resolve_ssl_context(ca_bundle=ca_bundle, ssl_context=ssl_context)
        # Least recently released first: the end that gives up a connection over the cap.
        self._idle: OrderedDict[_PoolKey, list[_HTTPConnection]] = OrderedDict()
        self._idle_count = 0
        # Idle connections by share: over the cap, the share holding the most gives one up.
        self._idle_of: dict[str | None, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; return once the status and headers arrived."""
        if self._closed:
            raise RuntimeError("The transport is closed.")
        try:
            origin, target = split_url(request.url)
        except ValueError as exc:
            raise _translate(exc) from exc
        tenant = request.tenant
        share = tenant if request.share is None else request.share
        key = (share, tenant, origin.scheme, origin.host, origin.port)
        # One total for the request, a retry on a new connection included: an upstream that
        # took the request slowly and closed without answering must not get a second one.
        total = request.timeouts.total
        at = None if total is None else time.monotonic() + total
        connection = self._idle_connection(key)
        if connection is not None:
            response = self._exchange(key, origin, target, request, connection, at=at, reused=True)
            if response is not None:
                return response
        connection = self._connect(origin, request.timeouts.connect)
        response = self._exchange(key, origin, target, request, connection, at=at, reused=False)
        assert response is not None  # only a reused connection asks for a retry
        return response

    def close(self) -> None:
        """Close the idle connections; connections still reading a body close when done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, OrderedDict()
            self._idle_count = 0
            self._idle_of.clear()
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _exchange(
        self,
        key: _PoolKey,
        origin: Origin,
        target: str,
        request: UpstreamRequest,
        connection: _HTTPConnection,
        *,
        at: float | None,
        reused: bool,
    ) -> UpstreamResponse | None:
        """Write the request and read the response head, the total ending ``at``; ``None``
        asks for one retry."""
        exchange = _Exchange(
            transport=self,
            key=key,
            host_header=origin.host_header,
            connection=connection,
            deadline=_Deadline(connection, request.timeouts.read, at),
        )
        try:
            try:
                exchange.write(request, target)
            except (*PEER_CLOSED, _AnsweredEarly):
                if exchange.stage != _WRITING_BODY:
                    raise
                # RFC 9112 §9.5: an upstream may answer before it took the whole request (a
                # 413, say), and close or stop reading. Its answer is the response; the
                # connection, with the request cut short on it, is never kept.
                response = exchange.read_head(request.method)
                response.will_close = True
            else:
                response = exchange.read_head(request.method)
        except OSError as exc:
            exchange.close()
            if exchange.stage == _READING_BODY:
                raise  # the caller's body failed, not the upstream
            if reused and _may_retry(request, exchange.stage, exc):
                return None
            raise _translate(exc) from exc
        except BaseException:
            # The caller's body raised, or the response is malformed (a GatewayError either
            # way): propagate it unchanged.
            exchange.close()
            raise
        # A small body mostly arrives with the head: the connection goes back to the pool now.
        body = exchange.buffered_body()
        if body is None:
            chunks: Iterator[bytes] = exchange.chunks()
            close = exchange.close
        else:
            # Closing empties the list, so that iterating after close() yields nothing more.
            pieces = [body] if body else []
            chunks, close = iter(pieces), pieces.clear
        return UpstreamResponse(
            status=response.status,
            reason=response.reason,
            headers=response.fields,  # already a Headers: handed over without a copy
            chunks=chunks,
            close=close,
            content_length=response.length,
        )

    def _connect(self, origin: Origin, timeout: float | None) -> _HTTPConnection:
        connection: _HTTPConnection
        if origin.scheme == "https":
            connection = _HTTPSConnection(
                origin.host, origin.port, timeout=timeout, context=self._ssl_context
            )
        else:
            connection = _HTTPConnection(origin.host, origin.port, timeout=timeout)
        try:
            connection.connect()
        except (OSError, ValueError) as exc:
            # ValueError (UnicodeError among them): a host name that neither the name lookup
            # nor TLS takes, such as one with an empty label.
            connection.close()
            raise _translate(exc) from exc
        return connection

    def _idle_connection(self, key: _PoolKey) -> _HTTPConnection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                connection = idle.pop()
                self._idle_count -= 1
                self._forget_one(key[0])
                if not idle:
                    del self._idle[key]
            # Bytes may have arrived since the connection was released.
            if connection.is_quiet():
                return connection
            connection.close()

    def _release(self, key: _PoolKey, connection: _HTTPConnection) -> None:
        evicted = None
        unused: _HTTPConnection | None = connection
        with self._lock:
            if (
                not self._closed
                and len(self._idle.get(key, ())) < self._pool_size
                and (self._idle_count < self._max_idle or self._idle)
            ):
                share = key[0]
                if self._idle_count >= self._max_idle:
                    evicted = self._pop_from_the_largest(share)
                self._idle.setdefault(key, []).append(connection)
                self._idle.move_to_end(key)
                self._idle_count += 1
                self._idle_of[share] = self._idle_of.get(share, 0) + 1
                unused = None
        for closing in (evicted, unused):
            if closing is not None:
                closing.close()

    def _pop_from_the_largest(self, share: str | None) -> _HTTPConnection:
        """Take out of the full pool the connection idle the longest of the share that holds
        the most idle ones: ``share``'s own, when it holds as many (the lock is held).

        Evicting the oldest of all would let a tenant with connections to many origins (or a
        team of many callers) push every other's out, each then paying for new connections
        (and TLS handshakes)."""
        held = self._idle_of
        mine = held.get(share, 0)
        victim = share
        if not mine or mine < max(held.values()):
            victim = max(held, key=held.__getitem__)
        key, idle = next((key, idle) for key, idle in self._idle.items() if key[0] == victim)
        connection = idle.pop(0)
        self._idle_count -= 1
        self._forget_one(victim)
        if not idle:
            del self._idle[key]
        return connection

    def _forget_one(self, share: str | None) -> None:
        """One idle connection of ``share`` fewer (the lock is held)."""
        left = self._idle_of[share] - 1
        if left:
            self._idle_of[share] = left
        else:
            del self._idle_of[share]


class _HTTPConnection(http.client.HTTPConnection):
    """A connection as :mod:`http.client` opens it (``TCP_NODELAY``, the connect timeout);
    requests are written and responses read by :class:`_Exchange`."""

    #: Polls the socket for readability; made once, on the first check.
    _poller: Any = None
    #: Whether waits may use the kernel's socket timeouts (see _Deadline), and the one set.
    kernel_waits = sys.platform.startswith("linux")
    kernel_timeout: float | None = None
    #: The most bytes one send of a request is given. A TCP ``send`` that fails took
    #: nothing, and one that succeeds says how much it took, so any size will do.
    send_size = sys.maxsize
    #: Whether a body that lies in a file is sent from it (``os.sendfile``; not through TLS).
    sends_files = hasattr(os, "sendfile")

    def connect(self) -> None:
        super().connect()
        self.kernel_timeout = None  # a new socket: no kernel timeout set on it yet

    def is_quiet(self) -> bool:
        """Whether nothing waits to be read on this idle connection: no bytes the TLS layer
        has already decrypted (``SSLSocket.pending``, which the socket's readiness does not
        show), nothing on the socket. Bytes there were sent past the end of the last
        response, or the peer closed; either way the connection must not carry another
        request, whose answer they would pass for."""
        sock = self.sock
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        if not hasattr(select, "poll"):  # pragma: no cover - platforms without poll()
            return not select.select([sock], [], [], 0)[0]
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(sock, select.POLLIN)
        return not poller.poll(0)


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    # A TLS socket waits in Python: a kernel timeout inside the TLS layer would leave a record
    # half read.
    kernel_waits = False
    # One TLS record per send. A send takes all it is given or fails without saying how much
    # went out, but a record cut short cannot be read: when the first send fails, the
    # upstream has seen nothing of the request.
    send_size = TLS_RECORD
    # The bytes must go through the TLS layer: a file is read into memory like any body.
    sends_files = False

    def __init__(self, host: str, port: int, *, timeout: float | None, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls = context

    def connect(self) -> None:
        # RFC 9112 §9.8: a body delimited by the close is complete only if the close carries
        # TLS close_notify. The default wrap reads a bare TCP close as a clean end
        # (suppress_ragged_eofs), so a truncated body would pass for a whole one.
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(
            self.sock, server_hostname=self.host, suppress_ragged_eofs=False
        )


def _request_head(request: UpstreamRequest, target: str, host: str) -> bytes:
    """The request line and header section, as sent (RFC 9112 §3, §5).

    Written here rather than through http.client's putheader, which costs more than the rest
    of sending a small request; the checks are the same: a token method and names, no CR, LF
    or NUL in values, no whitespace or control characters in the target.
    """
    method = request.method
    # Request targets come checked from the relay, but a transport is also used directly, and
    # nothing that could split the request may reach the wire.
    if not is_token(method) or UNSAFE_TARGET_PATTERN.search(target):
        raise InvalidRequestError("The request cannot be sent.")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    # The patterns of is_token and is_safe_value, without a call of ours per field.
    token, unsafe = TOKEN_PATTERN.fullmatch, UNSAFE_VALUE_PATTERN.search
    for name, value in request.headers:
        if token(name) is None or unsafe(value) is not None:
            raise InvalidRequestError("A request header cannot be sent.")
        lines.append(f"{name}: {value}\r\n")
    length = request.wire_content_length
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    elif request.is_chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        # RFC 9110 §5.5: field values are octets; text beyond Latin-1 has no wire form.
        raise InvalidRequestError("A request header cannot be sent.") from None


def _may_retry(request: UpstreamRequest, stage: int, exc: Exception) -> bool:
    """Whether a failure on a reused connection leaves the request safe to send again
    (docs/contract.md §8, Retries)."""
    if isinstance(exc, (TimeoutError, BlockingIOError)):
        # BlockingIOError: the kernel's send timeout (see _Deadline). A timeout is the
        # upstream's answer to this request, not a connection closed while idle.
        return False
    if stage == _WRITING_HEAD:
        # No send took a byte: the peer closed the idle connection before any of the request
        # reached it, and no byte of a streamed body was consumed.
        return True
    # Some of the request was taken: the upstream may have acted on it (RFC 9112 §9.3.1).
    # A TLS peer that closes an idle connection without close_notify reads as SSLEOFError.
    return isinstance(exc, PEER_CLOSED) and request.may_retry_after_close
