"""A small, fast HTTP/1.1 upstream for the relay benchmarks.

Run: ``python bench/upstream.py PORT``. It is single-threaded on asyncio so that it costs
little of the machine the gateways run on, and keeps each connection alive unless the request
says ``Connection: close``. By path:

- ``/download?bytes=N``: ``200`` with ``N`` zero bytes (``Content-Length``), written as fast
  as the reader takes them (never more than a few blocks held);
- ``/chunks?bytes=N&size=S``: ``200`` with ``N`` zero bytes (rounded down to whole chunks) in
  chunks of ``S`` bytes (chunked), written as fast as the reader takes them: what a hostile
  container sends when ``S`` is 1;
- ``/upload``: reads the request body (``Content-Length`` or chunked) and drops it, then
  answers ``200`` with the number of bytes received, in decimal, and a newline;
- ``/sse?events=N&interval=S``: ``text/event-stream``, chunked: ``N`` events, one every
  ``S`` seconds, each ``data: <time.monotonic() when written>`` (Linux's monotonic clock is
  the machine's, so a client on the same machine can tell how late each event arrives);
- anything else: ``200`` with the same 13-byte body (the relay benchmark's request).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Coroutine
from urllib.parse import parse_qs, urlsplit

BODY = b"hello, world\n"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
KEEP_ALIVE = _HEAD + b"\r\n" + BODY
CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY
_BLOCK = memoryview(bytes(256 * 1024))
#: Where every connection receives: the loop runs one callback at a time, and each consumes
#: what it received before returning, so one buffer serves all (no allocation per receive).
_RECEIVED = memoryview(bytearray(1024 * 1024))
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


class _Body:
    """Counts and drops a request body framed by ``Content-Length`` (``length``) or chunked
    (``length=None``), as it arrives."""

    def __init__(self, length: int | None) -> None:
        self.received = 0
        self._chunked = length is None
        # Bytes left of the body, or of the current chunk and its CRLF.
        self._left = length or 0
        self._trailers = False  # past the last chunk: lines up to an empty one
        self.done = length == 0

    def skip(self, size: int) -> int:
        """Count what of ``size`` bytes just received, with nothing buffered before them,
        belongs to a ``Content-Length`` body, without copying it anywhere: the bytes taken."""
        if self._chunked:
            return 0
        taken = min(self._left, size)
        self._left -= taken
        self.received += taken
        self.done = not self._left
        return taken

    def feed(self, buffer: bytearray) -> None:
        """Consume what belongs to the body from the start of ``buffer``."""
        while not self.done and buffer:
            if self._left:
                taken = min(self._left, len(buffer))
                del buffer[:taken]
                self._left -= taken
                if not self._chunked:
                    self.received += taken
                    self.done = not self._left
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                return
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if self._trailers:
                self.done = not line
                continue
            size = int(line.split(b";")[0], 16)
            self.received += size
            self._left = size + 2 if size else 0
            self._trailers = not size


class _Upstream(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._upload: _Body | None = None
        self._close_after = False
        self._streaming = False  # a streamed answer is being written
        self._task: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # a streamed answer sees the transport closing and stops

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVED

    def buffer_updated(self, nbytes: int) -> None:
        data = _RECEIVED[:nbytes]
        if self._upload is not None and not self._buffer:
            # An upload's body is counted where it was received: at the speed of the network
            # rather than of a copy into the buffer and out again.
            taken = self._upload.skip(nbytes)
            if not self._upload.done:
                return
            data = data[taken:]
        self._buffer += data
        self._advance()

    def _advance(self) -> None:
        assert self._transport is not None
        while not self._streaming:
            if self._upload is not None:
                self._upload.feed(self._buffer)
                if not self._upload.done:
                    return
                answer = b"%d\n" % self._upload.received
                self._upload = None
                self._answer(b"text/plain", answer)
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            del self._buffer[: end + 4]
            self._close_after = b"\nconnection: close" in head
            target = head[head.index(b" ") + 1 : head.index(b" ", head.index(b" ") + 1)]
            if target.startswith(b"/download"):
                size = int(_query(target, "bytes", "0"))
                self._stream(self._download(size))
            elif target.startswith(b"/chunks"):
                size = int(_query(target, "bytes", "0"))
                chunk = max(1, int(_query(target, "size", "1")))
                self._stream(self._chunks(size // chunk, chunk))
            elif target.startswith(b"/sse"):
                events = int(_query(target, "events", "50"))
                interval = float(_query(target, "interval", "0.1"))
                self._stream(self._events(events, interval))
            elif target.startswith(b"/upload"):
                length = _CONTENT_LENGTH.search(head)
                self._upload = _Body(int(length.group(1)) if length else None)
            elif self._close_after:
                self._transport.write(CLOSE)
                self._transport.close()
                return
            else:
                self._transport.write(KEEP_ALIVE)

    def _answer(self, content_type: bytes, body: bytes) -> None:
        assert self._transport is not None
        close = b"Connection: close\r\n" if self._close_after else b""
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (content_type, len(body), close, body)
        )
        if self._close_after:
            self._transport.close()

    def _stream(self, writer: Coroutine[object, object, None]) -> None:
        self._streaming = True
        self._task = asyncio.get_running_loop().create_task(writer)
        self._task.add_done_callback(self._streamed)

    def _streamed(self, task: asyncio.Future[None]) -> None:
        assert self._transport is not None
        self._streaming = False
        if self._close_after or task.exception() is not None:
            self._transport.close()
        elif not self._transport.is_closing():
            self._advance()

    async def _download(self, size: int) -> None:
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        left = size
        while left and not self._transport.is_closing():
            await self._writable.wait()
            block = _BLOCK[: min(left, len(_BLOCK))]
            self._transport.write(block)
            left -= len(block)

    async def _chunks(self, count: int, size: int) -> None:
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        framed = b"%x\r\n%s\r\n" % (size, bytes(size))
        per_block = max(1, len(_BLOCK) // len(framed))
        block = framed * per_block
        left = count
        while left and not self._transport.is_closing():
            await self._writable.wait()
            taken = min(left, per_block)
            self._transport.write(block if taken == per_block else framed * taken)
            left -= taken
        self._transport.write(b"0\r\n\r\n")

    async def _events(self, count: int, interval: float) -> None:
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(count):
            await asyncio.sleep(start + (index + 1) * interval - loop.time())
            if self._transport.is_closing():
                return
            event = b"id: %d\ndata: %.6f\n\n" % (index, time.monotonic())
            self._transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        self._transport.write(b"0\r\n\r\n")


def _query(target: bytes, name: str, default: str) -> str:
    values = parse_qs(urlsplit(target.decode("latin-1")).query).get(name)
    return values[0] if values else default


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
