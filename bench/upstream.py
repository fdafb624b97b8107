"""A small, fast HTTP/1.1 upstream for the relay benchmark: every request gets the same answer.

Run: ``python bench/upstream.py PORT``. It answers ``200`` with a 13-byte body, keeps the
connection alive unless the request says ``Connection: close``, and is single-threaded on
asyncio so that it costs little of the machine the gateways run on. It reads request heads
only: the benchmark sends bodiless GETs.
"""

from __future__ import annotations

import asyncio
import sys

BODY = b"hello, world\n"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
KEEP_ALIVE = _HEAD + b"\r\n" + BODY
CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY


class _FixedAnswer(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            if b"\nconnection: close" in head.lower():
                self._transport.write(CLOSE)
                self._transport.close()
                return
            self._transport.write(KEEP_ALIVE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FixedAnswer, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
