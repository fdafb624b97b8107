"""The bodies of a relay: reading the caller's, buffering or streaming the upstream's.

Every function here enforces one of the gateway's limits (docs/contract.md §3, §4, §8) while bytes
move: uploads are counted as they stream (chunked input has no length to check up front), an
invoke response over its cap is refused rather than truncated, and a streamed response that
fails half-way re-raises so the server aborts the connection instead of ending it cleanly.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import cast

from invoke_middleware.errors import (
    InvalidRequestError,
    LengthRequiredError,
    PayloadTooLargeError,
    ResponseTooLargeError,
    as_gateway_error,
)
from invoke_middleware.headers import CONTENT_LENGTH_PATTERN
from invoke_middleware.request import PipelineRequest
from invoke_middleware.transport.base import FileRegion, UpstreamResponse, unreadable_body

logger = logging.getLogger("invoke_middleware")


def close_body(body: Iterable[bytes]) -> None:
    """Call ``body.close()`` when it has one (PEP 3333: a server closes what it was given)."""
    close = getattr(body, "close", None)
    if close is not None:
        close()


#: The caller's body is read this much at a time. gunicorn receives a body up to 1 MiB per
#: system call and hands it out in the sizes asked for, copying what is left over on every
#: read: in 64 KiB reads each byte was copied about eight times, and an upload cost the
#: worker twice the CPU. Larger reads hold more per connection for no further gain (1 MiB
#: reads took an upload's peak memory to 7 MiB).
_READ_SIZE = 256 * 1024

#: The buffered readers whose position is the position in their file and whose bytes are that
#: file's, when what they read is a plain ``io.FileIO``: a body read through one may be sent
#: from the file itself. Exact types, not subclasses: a wrapper with a file descriptor may
#: hand out other bytes than its file's (``gzip.GzipFile`` has the compressed file's).
_BUFFERED_READERS = frozenset({io.BufferedRandom, io.BufferedReader})


def relay_content_length(method: str, response: UpstreamResponse) -> str | None:
    """The ``Content-Length`` to send the client: the upstream's framing, recomputed.

    The body passes through unchanged, so its length is the upstream's; a body that ends
    short raises mid-stream instead. A HEAD response keeps the length of the representation
    it describes (RFC 9110 §9.3.2), and so does a 304 (§15.4.5).
    """
    status = response.status
    if status == 204 or 100 <= status < 200:
        return None  # RFC 9110 §8.6: never in these
    if method == "HEAD" or status == 304:
        # Both describe a representation they do not carry: keep the upstream's own value.
        values = [v.strip() for k, v in response.headers if k.lower() == "content-length"]
        if len(set(values)) == 1 and CONTENT_LENGTH_PATTERN.fullmatch(values[0]):
            return values[0]
        return None
    if response.content_length is None:
        return None
    return str(response.content_length)


class RequestBody:
    """The caller's body as an iterable of chunks, read as the transport sends it.

    Counts bytes for the hooks and enforces the upload cap on chunked input, which has no
    length to check up front.
    """

    __slots__ = ("_body", "_first", "_length", "_limit", "sent")

    def __init__(self, request: PipelineRequest, length: int | None, limit: int) -> None:
        self._body = request.body
        self._length = length
        self._limit = limit
        self._first = b""
        self.sent = 0

    def has_bytes(self) -> bool:
        """Read the first chunk of a body of unknown length: whether there is any body."""
        self._first = self._read(_READ_SIZE)
        return bool(self._first)

    def __iter__(self) -> Iterator[bytes]:
        read = self._read
        if self._length is not None:
            remaining = self._length
            while remaining > 0:
                chunk = read(min(remaining, _READ_SIZE))
                if not chunk:
                    raise InvalidRequestError("The request body ended before Content-Length bytes.")
                remaining -= len(chunk)
                self.sent += len(chunk)
                yield chunk
            return
        first, self._first = self._first, b""
        chunk = first or read(_READ_SIZE)
        while chunk:
            self.sent += len(chunk)
            if self.sent > self._limit:
                raise PayloadTooLargeError()
            yield chunk
            chunk = read(_READ_SIZE)

    def file_region(self) -> FileRegion | None:
        """Where the body lies, when the server spooled it whole into a regular file before
        calling the application (waitress does, past its in-memory limit) and none of it has
        been read: a transport may then send it from the file (:class:`FileRegion`)."""
        body = self._body
        if self._length is None or self.sent:
            return None
        if type(body) in _BUFFERED_READERS:
            if type(cast("io.BufferedReader", body).raw) is not io.FileIO:
                return None  # a layer of its own between the reader and the file
        elif type(body) is not io.FileIO:
            return None
        reader = cast("io.BufferedIOBase", body)
        try:
            fd = reader.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None  # a pipe or a socket: its bytes are read once, as they come
            offset = reader.tell()
        except (OSError, ValueError):
            return None  # closed, or not a file after all
        return FileRegion(fd, offset, self._length, self._taken)

    def _taken(self, size: int) -> None:
        """``size`` more bytes were sent from the file: counted, and the reader moved past them
        (a server that drains what the application left unread finds nothing)."""
        self.sent += size
        try:
            cast("io.BufferedIOBase", self._body).seek(size, io.SEEK_CUR)
        except (OSError, ValueError) as error:
            raise unreadable_body() from error

    def _read(self, size: int) -> bytes:
        try:
            return self._body.read(size)
        except Exception as error:
            # The server's own reader failed: a malformed chunk size, a body cut short, a
            # client that went away (gunicorn's InvalidChunkSize and NoMoreData, werkzeug's
            # ClientDisconnected). The caller's fault, not the gateway's: 400, not 500.
            raise unreadable_body() from error


def request_body(request: PipelineRequest, limit: int) -> tuple[RequestBody | None, int | None]:
    """The relay's request body and its length (``None``: chunked), or no body at all."""
    if request.content_length is not None:
        if request.content_length > limit:
            raise PayloadTooLargeError()
        if request.content_length == 0:
            return None, None
        return RequestBody(request, request.content_length, limit), request.content_length
    if request.chunked:
        body = RequestBody(request, None, limit)
        if "Transfer-Encoding" in request.headers or body.has_bytes():
            return body, None
        # Over HTTP/2 or HTTP/3, a request without a length may have no body: this one has
        # none, and goes upstream without one (not as an empty chunked body).
        return None, None
    if "Transfer-Encoding" in request.headers:
        # Chunked input the server did not de-chunk for us: we cannot find its end.
        raise LengthRequiredError()
    return None, None


def read_capped(request: PipelineRequest, limit: int) -> bytes:
    """Read a whole (small) request body, refusing more than ``limit`` bytes.

    The same rules as the streamed :func:`request_body`, whose chunks it joins.
    """
    body, _ = request_body(request, limit)
    return b"".join(body) if body is not None else b""


class ResponseBuffer:
    """Buffers an invoke response whole, refusing (never truncating) one over ``limit`` bytes.

    ``received`` counts the body bytes read from the upstream so far, also when reading
    fails (refused as too large, or cut off): the relay's figures report what came in.
    """

    __slots__ = ("limit", "received")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0

    def read(self, response: UpstreamResponse, method: str) -> bytes | bytearray:
        """The body of ``response`` to a ``method`` request (none for ``HEAD``), as it was
        joined: not copied once more into ``bytes``."""
        if method == "HEAD":
            return b""
        if response.content_length is not None and response.content_length > self.limit:
            raise ResponseTooLargeError()
        # Pieces are joined as they come: kept in a list, each would hold some 40 bytes of
        # object besides its own, and an upstream trickling its body a few bytes per segment
        # would make a 10 MiB body cost half a gigabyte.
        joined = bytearray()
        for chunk in response:
            self.received += len(chunk)
            if self.received > self.limit:
                raise ResponseTooLargeError()
            joined += chunk
        return joined


class RelayBody:
    """The upstream body on its way to the client, chunk by chunk.

    A failure mid-stream is re-raised so that the server aborts the connection: a truncated
    body must never look complete (docs/contract.md §8). However the relay ends (the body
    read to its end, a failure, :meth:`close`, its iterator closed or dropped, or the body
    itself dropped unclosed), the upstream response is let go of and the end is told once,
    so a concurrency slot or an upstream connection is never held past the relay.
    """

    __slots__ = ("_also", "_chunks", "_done", "_first", "_on_end", "_response", "_sent")

    def __init__(
        self, response: UpstreamResponse, on_end: Callable[[int, str | None], None]
    ) -> None:
        self._response = response
        self._on_end = on_end
        self._also: Callable[[], None] | None = None
        self._chunks: Iterator[bytes] | None = None
        self._first: bytes | None = None
        self._sent = 0
        self._done = False

    def prime(self) -> None:
        """Read the first piece of the body now, before the response is handed over.

        Until it comes, nothing has reached the client (servers send the head with the first
        byte, or the adapter is told the head only now), so a failure (the upstream silent
        past the read timeout, a malformed first chunk) can still be answered with the
        gateway's error. Raises what the read raises, the upstream response let go of and the
        relay over without its end told: the caller reports the failure.
        """
        chunks = iter(self._response)
        try:
            self._first = next(chunks, None)
        except BaseException:
            self._done = True
            self._response.close()
            raise
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._chunks if self._chunks is not None else iter(self._response)
        first, self._first = self._first, None
        try:
            if first is not None:
                self._sent += len(first)
                yield first
            for chunk in chunks:
                self._sent += len(chunk)
                yield chunk
        except GeneratorExit:
            # The iterator was closed or dropped before the end and nobody called close():
            # a host's generator that wraps ours and was closed itself. The client went away.
            self._abandon()
            raise
        except Exception as error:
            code = as_gateway_error(error).code
            logger.warning("relay aborted mid-stream: %s", code)
            self._finish(code)
            raise
        self._finish(None)

    def also_on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` too when the body ends, fails or is closed (once, after the
        relay's own end, even if that raises): a concurrency slot is given back this way.
        One callback at most."""
        self._also = callback

    def _finish(self, code: str | None) -> None:
        if not self._done:
            self._done = True
            try:
                self._on_end(self._sent, code)
            finally:
                if self._also is not None:
                    self._also()

    def close(self) -> None:
        try:
            self._response.close()
        finally:
            # Closed before the end: the client went away. Told even when the upstream's
            # close fails, which the server then reports.
            self._finish("client_closed" if not self._done else None)

    def __del__(self) -> None:
        # Dropped without being read to its end or closed (a host that discards what it
        # was given, against PEP 3333): what it holds is let go of all the same.
        if not self._done:
            self._abandon()

    def _abandon(self) -> None:
        """:meth:`close` for a body nobody closed: a failure to close the upstream response
        is logged, as there is no caller left to raise it to."""
        if not self._done:
            try:
                self.close()
            except Exception:
                logger.warning("closing an abandoned relay body failed", exc_info=True)
