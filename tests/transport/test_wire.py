"""What the socket transports put on the wire, and how they fail, against a raw upstream."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from invoke_middleware.errors import (
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from invoke_middleware.transport import Timeouts, Transport
from invoke_middleware.transport._response import MAX_INTERIM
from tests.upstreams import RawUpstream, ReceivedRequest

from ._helpers import drain, fetch, send, values
from ._hostile import HostileUpstream, serve_hostile


def _received(transport: Transport, upstream: RawUpstream, **options: object) -> ReceivedRequest:
    method = str(options.pop("method", "GET"))
    target = str(options.pop("target", "/echo"))
    response, body = fetch(transport, method, upstream.url + target, **options)
    assert response.status == 200
    return ReceivedRequest.parse(body)


def _stream(*pieces: bytes) -> Iterator[bytes]:
    yield from pieces


@pytest.fixture
def hostile() -> Iterator[HostileUpstream]:
    """An upstream that answers the way no well-behaved one does; a body it does not read
    waits on the sending side at once."""
    with serve_hostile(receive_buffer=8192) as upstream:
        yield upstream


def test_request_carries_exactly_the_given_fields_plus_host(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    sent = [("X-One", "1"), ("Accept", "text/plain"), ("X-One", "2")]

    received = _received(wire, raw_upstream, headers=sent)

    assert received.request_line == "GET /echo HTTP/1.1"
    assert Counter(received.headers) == Counter([("Host", f"127.0.0.1:{raw_upstream.port}"), *sent])
    assert [v for n, v in received.headers if n == "X-One"] == ["1", "2"]


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/echo?a=%2F&b=%7E&c=x+y&d", id="escapes"),
        # A signed URL is signed as written: lower-case escapes and the characters a query
        # may carry unencoded must reach the upstream unchanged.
        pytest.param('/echo?filter={"a":1}|x^y`z<q>&sig=ab%2fcd%7e&e=%e2%82%ac', id="signed-query"),
    ],
)
def test_path_and_query_are_sent_as_written(
    wire: Transport, raw_upstream: RawUpstream, target: str
) -> None:
    received = _received(wire, raw_upstream, target=target)

    assert received.request_line == f"GET {target} HTTP/1.1"


@pytest.mark.parametrize(
    ("method", "body", "content_length", "framing", "expected"),
    [
        pytest.param("GET", None, None, [], b"", id="no-body"),
        pytest.param("POST", None, None, [("Content-Length", "0")], b"", id="post-without-body"),
        pytest.param("POST", b"abc", None, [("Content-Length", "3")], b"abc", id="bytes-by-length"),
        pytest.param(
            "POST",
            (b"ab", b"", b"cd"),
            4,
            [("Content-Length", "4")],
            b"abcd",
            id="stream-with-length",
        ),
        pytest.param(
            "PUT",
            (b"ab", b"", b"cde"),
            None,
            [("Transfer-Encoding", "chunked")],
            b"abcde",
            id="stream-chunked",
        ),
    ],
)
def test_body_is_framed_by_length_or_chunked(
    wire: Transport,
    raw_upstream: RawUpstream,
    method: str,
    body: bytes | tuple[bytes, ...] | None,
    content_length: int | None,
    framing: list[tuple[str, str]],
    expected: bytes,
) -> None:
    streamed = _stream(*body) if isinstance(body, tuple) else body

    received = _received(
        wire, raw_upstream, method=method, body=streamed, content_length=content_length
    )

    framing_fields = {"content-length", "transfer-encoding"}
    assert [(n, v) for n, v in received.headers if n.lower() in framing_fields] == framing
    assert received.body == expected


def test_chunked_upload_sends_each_piece_as_a_chunk(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    received = _received(wire, raw_upstream, method="POST", body=_stream(b"hello ", b"world"))

    assert received.raw_body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"


def test_repeated_response_fields_are_kept_in_order(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    response, _ = fetch(wire, "GET", raw_upstream.url + "/headers")

    assert values(response, "Set-Cookie") == ["a=1; Path=/", "b=2"]
    assert values(response, "X-Multi") == ["one", "two"]


def test_compressed_body_and_its_encoding_are_kept(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    import gzip

    response, body = fetch(wire, "GET", raw_upstream.url + "/gzip")

    assert values(response, "Content-Encoding") == ["gzip"]
    assert gzip.decompress(body) == b"compressed " * 100


def test_redirect_is_returned_with_its_location(wire: Transport, raw_upstream: RawUpstream) -> None:
    response, _ = fetch(wire, "POST", raw_upstream.url + "/redirect", body=b"x")

    assert (response.status, response.reason) == (302, "Found")
    assert values(response, "Location") == ["/echo"]


def test_refused_connection_is_unreachable(wire: Transport) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]

    with pytest.raises(UpstreamUnreachableError):
        send(wire, "GET", f"http://127.0.0.1:{port}/")


def test_unresolvable_host_is_unreachable(wire: Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lookup fails here, without asking a name server: tests stay on loopback.
    def no_such_host(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(UpstreamUnreachableError):
        send(wire, "GET", "http://does-not-exist.invalid/")


def test_silent_upstream_times_out_after_the_read_timeout(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    timeouts = Timeouts(connect=5.0, read=0.3, total=20.0)

    with pytest.raises(UpstreamTimeoutError):
        send(wire, "GET", raw_upstream.url + "/hang", timeouts=timeouts)


def test_a_kept_alive_connection_takes_the_read_timeout_of_each_request(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    # The first request leaves its connection in the pool with a long read timeout; the next
    # one, on that connection, must wait no longer than its own.
    fetch(wire, "GET", raw_upstream.url + "/echo", timeouts=Timeouts(read=30.0, total=60.0))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError):
        send(wire, "GET", raw_upstream.url + "/hang", timeouts=Timeouts(read=0.3, total=60.0))
    assert time.monotonic() - started < 10


def test_an_upstream_that_stops_reading_the_body_times_out(wire: Transport) -> None:
    # Nothing accepts or reads: the kernel completes the handshake, the socket buffers fill,
    # and the send gives up within the timeouts.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/upload"
        body = (bytes(1 << 20) for _ in range(256))
        with pytest.raises(UpstreamTimeoutError):
            send(wire, "POST", url, body=body, timeouts=Timeouts(connect=1.0, read=0.3, total=20.0))


def test_total_deadline_stops_a_body_that_keeps_dripping(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    # Each byte comes well within the read timeout; only the total deadline can stop it.
    timeouts = Timeouts(connect=5.0, read=2.0, total=0.5)
    response = send(
        wire, "GET", raw_upstream.url + "/drip?count=200&interval=0.02", timeouts=timeouts
    )

    with pytest.raises(UpstreamTimeoutError):
        drain(response)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/drip-head", id="head"),
        pytest.param("/drip-interim", id="interim-responses"),
        pytest.param("/drip-trailers", id="trailers"),
    ],
)
def test_total_deadline_stops_an_answer_that_keeps_dripping(
    wire: Transport, hostile: HostileUpstream, target: str
) -> None:
    # A few bytes come well within each read timeout, for seconds: only the total can stop
    # them, whichever part of the answer they belong to.
    timeouts = Timeouts(connect=2.0, read=1.0, total=1.0)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError):
        drain(send(wire, "GET", hostile.url + target, timeouts=timeouts))

    assert time.monotonic() - started < 3.0  # the upstream drips for 5 s


def test_total_deadline_stops_an_upload_the_upstream_reads_slowly(
    wire: Transport, hostile: HostileUpstream
) -> None:
    # The upstream takes 8 KiB every 50 ms, each piece well within the read timeout.
    pieces = (bytes(65536) for _ in range(256))
    timeouts = Timeouts(connect=2.0, read=0.5, total=1.0)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError):
        send(wire, "POST", hostile.url + "/trickle", body=pieces, timeouts=timeouts)

    assert time.monotonic() - started < 3.0  # the upstream would keep reading for 5 s


@pytest.mark.parametrize(
    "status", [pytest.param(103, id="early-hints"), pytest.param(102, id="processing")]
)
def test_interim_responses_are_skipped_on_the_same_connection(
    wire: Transport, hostile: HostileUpstream, status: int
) -> None:
    response, body = fetch(wire, "GET", f"{hostile.url}/interim?status={status}")
    # The connection is kept: the next request gets its own answer on it.
    _, next_body = fetch(wire, "GET", hostile.url + "/say?word=next")

    assert (response.status, body, next_body) == (200, b"ok", b"next")
    assert hostile.connections_accepted == 1


@pytest.mark.parametrize(
    ("method", "target"),
    [
        pytest.param("GET", "/bodyless?status=204", id="no-content"),
        pytest.param("GET", "/bodyless?status=304", id="not-modified"),
        pytest.param("POST", "/bodyless?status=201", id="content-length-zero"),
        pytest.param("HEAD", "/echo", id="head"),
    ],
)
def test_connection_is_reused_after_a_response_without_a_body(
    wire: Transport, hostile: HostileUpstream, method: str, target: str
) -> None:
    _, body = fetch(wire, method, hostile.url + target, body=b"{}" if method == "POST" else None)
    # Not idempotent: it gets its answer only if the connection was left ready for it.
    _, next_body = fetch(wire, "POST", hostile.url + "/say?word=next", body=b"{}")

    assert (body, next_body) == (b"", b"next")
    assert hostile.connections_accepted == 1


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/large-head?padding=200000", id="head"),
        pytest.param("/interim?status=103&count=2&padding=100000", id="interim-heads"),
        pytest.param(f"/interim?status=100&count={MAX_INTERIM}", id="interim-responses"),
    ],
)
def test_heads_within_the_head_limit_are_read_whole(
    wire: Transport, hostile: HostileUpstream, target: str
) -> None:
    response, body = fetch(wire, "GET", hostile.url + target)

    assert (response.status, body) == (200, b"ok")


@pytest.mark.parametrize(
    "target",
    [
        # Five 60 KB lines: each within what http.client allows a line.
        pytest.param("/large-head?padding=300000", id="head"),
        # Each of the two is within the limit of one head; together they are over it.
        pytest.param("/interim?status=100&count=2&padding=180000", id="interim-heads"),
        pytest.param("/interim?status=100&count=20000", id="endless-interim-responses"),
        # Small enough to fit the limit together, but each a head to parse.
        pytest.param(f"/interim?status=100&count={MAX_INTERIM + 1}", id="too-many-interim"),
    ],
)
def test_heads_over_the_head_limit_are_an_upstream_error(
    wire: Transport, hostile: HostileUpstream, target: str
) -> None:
    with pytest.raises(UpstreamError) as raised:
        send(wire, "GET", hostile.url + target)

    assert raised.value.code == "upstream_error"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/reset", id="reset-mid-body"),
        pytest.param("/truncate", id="closed-before-content-length"),
        pytest.param("/truncate-chunked", id="closed-before-last-chunk"),
    ],
)
def test_body_that_ends_early_raises(
    wire: Transport, raw_upstream: RawUpstream, target: str
) -> None:
    response = send(wire, "GET", raw_upstream.url + target)

    with pytest.raises(UpstreamError):
        drain(response)


def test_response_that_is_not_http_is_an_upstream_error(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    with pytest.raises(UpstreamError) as raised:
        send(wire, "GET", raw_upstream.url + "/garbage")

    assert "not http" not in raised.value.message
