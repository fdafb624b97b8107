"""HTTPTransport reads response heads strictly and within the total deadline.

Each case is a raw loopback server that answers one request with scripted bytes, so the
response can be anything a broken or hostile upstream might send.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from invoke_middleware.errors import UpstreamError, UpstreamTimeoutError
from invoke_middleware.transport import HTTPTransport, Timeouts, UpstreamRequest


@contextmanager
def scripted(parts: Sequence[bytes], *, pause: float = 0.0, hold: float = 3.0) -> Iterator[str]:
    """Serve one connection: read the request head, send ``parts`` with ``pause`` between
    them, then keep the connection open for ``hold`` seconds (bounded)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    done = threading.Event()

    def serve() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(5)
            received = b""
            while b"\r\n\r\n" not in received:
                data = sock.recv(4096)
                if not data:
                    return
                received += data
            try:
                for part in parts:
                    sock.sendall(part)
                    if pause:
                        time.sleep(pause)
            except OSError:
                return
            done.wait(hold)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        listener.close()
        thread.join(10)


def fetch(url: str, *, method: str = "GET", timeouts: Timeouts | None = None) -> tuple[int, bytes]:
    transport = HTTPTransport()
    try:
        response = transport.send(
            UpstreamRequest(
                method=method,
                url=url + "/",
                headers=(),
                timeouts=timeouts or Timeouts(connect=2, read=2, total=5),
            )
        )
        try:
            return response.status, b"".join(response)
        finally:
            response.close()
    finally:
        transport.close()


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: evil\rSet-Cookie: pwn=1\r\n", id="bare-cr"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n", id="nul"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\r\n \x00folded\r\n", id="nul-in-fold"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A : a\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon here\r\n", id="no-colon"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n", id="cl-twice"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n", id="cl-list"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n", id="cl-superscript"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n", id="cl-negative"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n", id="cl-plus"),
    ],
)
def test_a_malformed_head_is_an_upstream_error(head: bytes) -> None:
    with scripted([head + b"\r\nabc"]) as url, pytest.raises(UpstreamError):
        fetch(url)


def test_equal_repeated_content_lengths_are_accepted() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    with scripted([head]) as url:
        assert fetch(url) == (200, b"abc")


@pytest.mark.parametrize("status", [204, 304])
def test_a_bodiless_status_ends_at_its_head_even_when_it_claims_chunks(status: int) -> None:
    head = f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    started = time.monotonic()
    with scripted([head]) as url:
        assert fetch(url, timeouts=Timeouts(connect=2, read=6, total=10)) == (status, b"")
    # Waiting for a chunk that never comes would take the whole 6 s read timeout.
    assert time.monotonic() - started < 4


def test_a_head_dripping_byte_by_byte_meets_the_total_deadline() -> None:
    drip = [b"HTTP/1.1 200 OK\r\nX-Slow: "] + [b"a"] * 40
    started = time.monotonic()
    with scripted(drip, pause=0.1) as url, pytest.raises(UpstreamTimeoutError):
        fetch(url, timeouts=Timeouts(connect=2, read=1, total=1.0))
    assert time.monotonic() - started < 3.0  # the drip alone would take 4 s


def test_a_chunked_body_dripping_chunk_sizes_meets_the_total_deadline() -> None:
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"] + [b"1"] * 40
    with scripted(parts, pause=0.1) as url, pytest.raises(UpstreamTimeoutError):
        fetch(url, timeouts=Timeouts(connect=2, read=1, total=1.0))


def test_a_response_framed_both_ways_does_not_keep_its_connection() -> None:
    # RFC 9112 §6.3: Transfer-Encoding wins, and the connection must close afterwards.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
    with scripted([head + b"3\r\nabc\r\n0\r\n\r\n"]) as url:
        transport = HTTPTransport()
        try:
            response = transport.send(
                UpstreamRequest(
                    method="GET",
                    url=url + "/",
                    headers=(),
                    timeouts=Timeouts(connect=2, read=2, total=5),
                )
            )
            assert b"".join(response) == b"abc"
            response.close()
            assert not any(transport._idle.values())  # not returned to the pool
        finally:
            transport.close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc", (200, b"abc"), id="bare-lf"),
        pytest.param(b"HTTP/1.1 204\r\n\r\n", (204, b""), id="no-reason"),
        pytest.param(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            (200, b"ok"),
            id="interim-responses",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;name=value\r\nabc\r\nA \r\n0123456789\r\n0\r\nX-Checksum: 1\r\n\r\n",
            (200, b"abc0123456789"),
            id="chunk-extensions-and-trailers",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\n\r\nuntil the close", (200, b"until the close"), id="until-close"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 1\r\n\r\nz",
            (200, b"z"),
            id="folded-line",
        ),
    ],
)
def test_a_well_formed_answer_is_read_whole(answer: bytes, expected: tuple[int, bytes]) -> None:
    with scripted([answer], hold=0) as url:
        assert fetch(url) == expected


def test_an_answer_arriving_byte_by_byte_is_read_whole() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"5\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\n\r\n"
    )
    with scripted([answer[i : i + 1] for i in range(len(answer))], pause=0.001) as url:
        assert fetch(url) == (200, b"hello, world")


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/2 200 OK\r\n\r\n", id="not-http-1"),
        pytest.param(b"HTTP/1.1 099 Low\r\n\r\n", id="status-below-100"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n 4\r\n\r\nabc", id="folded-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", id="long-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", id="101-fields"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 40000, id="head-never-ends"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
            id="chunk-size-prefixed",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            id="chunk-longer-than-its-size",
        ),
    ],
)
def test_a_malformed_answer_is_an_upstream_error(answer: bytes) -> None:
    with scripted([answer], hold=0) as url, pytest.raises(UpstreamError):
        fetch(url)


def test_a_body_that_arrives_with_its_head_frees_the_connection_at_once() -> None:
    with scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]) as url:
        transport = HTTPTransport()
        try:
            response = transport.send(
                UpstreamRequest(method="GET", url=url + "/", headers=(), timeouts=Timeouts())
            )
            # Back in the pool before its body is read: the body is already in hand.
            assert sum(map(len, transport._idle.values())) == 1
            assert b"".join(response) == b"ok"
        finally:
            transport.close()


@pytest.mark.parametrize(
    ("head", "kept"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", True, id="http-1.1"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n", False, id="close"
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n", False, id="http-1.0"),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nConnection: x-a, Keep-Alive\r\nContent-Length: 2\r\n",
            True,
            id="http-1.0-keep-alive",
        ),
    ],
)
def test_the_connection_is_kept_as_the_response_says(head: bytes, kept: bool) -> None:
    with scripted([head + b"\r\nok"]) as url:
        transport = HTTPTransport()
        try:
            response = transport.send(
                UpstreamRequest(method="GET", url=url + "/", headers=(), timeouts=Timeouts())
            )
            assert b"".join(response) == b"ok"
            assert sum(map(len, transport._idle.values())) == int(kept)
        finally:
            transport.close()
