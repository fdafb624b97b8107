"""HTTPTransport sends a request body within its deadline, never twice once the upstream may
have acted on it, and returns an answer the upstream gave before taking the whole body.

The upstream is :class:`~tests.transport._hostile.HostileUpstream` with a small receive buffer:
a body it does not read waits on the gateway's side at once, as over a slow network. Tests
marked ``SCHEMES`` run over TLS too, where each send is one TLS record.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator

import pytest

from invoke_middleware.errors import (
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from invoke_middleware.transport import HTTPTransport, Timeouts
from tests.upstreams import RawUpstream, TLSFiles

from ._helpers import SpooledFile, drain, fetch, send
from ._hostile import HostileUpstream, serve_hostile

#: Far more than the socket buffers on both sides hold: sending it waits on the upstream.
_LARGE = 16 * 1024 * 1024


@pytest.fixture
def upstream(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[HostileUpstream]:
    """Plain HTTP, or HTTPS when parametrised (indirectly) with ``"https"``."""
    context = tls_files.server_context() if getattr(request, "param", "http") == "https" else None
    with serve_hostile(context, receive_buffer=8192) as server:
        yield server


@pytest.fixture
def transport(tls_files: TLSFiles) -> Iterator[HTTPTransport]:
    with HTTPTransport(ca_bundle=tls_files.ca_cert) as transport:
        yield transport


SCHEMES = pytest.mark.parametrize("upstream", ["http", "https"], indirect=True)


BodyOf = Callable[[str], bytes | Iterable[bytes]]


@pytest.fixture
def body_of() -> Iterator[BodyOf]:
    """Makes a body of ``_LARGE`` zero bytes in a shape of ``BODY_SHAPES``."""
    spooled: list[SpooledFile] = []

    def make(shape: str) -> bytes | Iterable[bytes]:
        data = bytes(_LARGE)
        if shape == "streamed":
            return iter([data])
        if shape == "spooled":
            # Sent from its file (over TLS, read into memory).
            spooled.append(SpooledFile(data))
            return spooled[-1]
        return data

    yield make
    for body in spooled:
        body.close()


BODY_SHAPES = [
    pytest.param("bytes", id="bytes-body"),
    pytest.param("streamed", id="streamed-body"),
    pytest.param("spooled", id="spooled-body"),
]


def _idle_connections(transport: HTTPTransport) -> int:
    return sum(map(len, transport._idle.values()))


@SCHEMES
@pytest.mark.parametrize("shape", BODY_SHAPES)
def test_the_total_deadline_holds_while_the_upstream_reads_the_body_slowly(
    transport: HTTPTransport, upstream: HostileUpstream, shape: str, body_of: BodyOf
) -> None:
    # The upstream takes a little of the body well within each read timeout: only the total
    # can stop the upload, and running into it is a timeout, not a broken connection. 4 KiB
    # every 250 ms: a blocking sendfile waits again, with a fresh kernel timeout, after each.
    timeouts = Timeouts(connect=2.0, read=0.5, total=1.5)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError):
        send(
            transport,
            "POST",
            upstream.url + "/trickle?size=4096&every=0.25",
            body=body_of(shape),
            content_length=_LARGE,
            timeouts=timeouts,
        )

    assert time.monotonic() - started < 2.0  # the upstream would keep reading for 5 s


@pytest.mark.parametrize(
    "spooled", [pytest.param(False, id="streamed"), pytest.param(True, id="spooled")]
)
def test_an_upstream_that_reads_the_body_steadily_is_not_cut_off_at_the_read_timeout(
    transport: HTTPTransport, spooled: bool, body_of: BodyOf
) -> None:
    # 64 KiB every 100 ms, with the system's usual socket buffers, a streamed body sent
    # 64 KiB at a time: the kernel wakes a sender blocked on one only once a third of its
    # (megabytes of) buffer is free, which takes longer than the read timeout here. The
    # upstream keeps taking bytes, so the upload goes on until the total.
    timeouts = Timeouts(connect=2.0, read=0.5, total=3.0)
    chunk = bytes(64 * 1024)
    started = time.monotonic()

    with serve_hostile(None) as upstream, pytest.raises(UpstreamTimeoutError):
        send(
            transport,
            "POST",
            upstream.url + "/trickle?size=65536&every=0.1",
            body=body_of("spooled") if spooled else iter([chunk] * (_LARGE // len(chunk))),
            content_length=_LARGE,
            timeouts=timeouts,
        )

    assert time.monotonic() - started > 2.5


@pytest.mark.parametrize("shape", BODY_SHAPES)
def test_an_upstream_that_stops_reading_the_body_is_cut_off_within_two_read_timeouts(
    transport: HTTPTransport, upstream: HostileUpstream, shape: str, body_of: BodyOf
) -> None:
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError):
        send(
            transport,
            "POST",
            upstream.url + "/stall",
            body=body_of(shape),
            content_length=_LARGE,
            timeouts=Timeouts(connect=2.0, read=0.3, total=30.0),
        )

    assert time.monotonic() - started < 3.0  # the total is 30 s


@pytest.mark.parametrize(
    ("method", "sent_times"),
    [
        pytest.param("POST", 1, id="not-idempotent-sent-once"),
        pytest.param("PUT", 2, id="idempotent-sent-again"),
    ],
)
def test_a_body_cut_short_on_a_reused_connection_is_sent_again_only_if_idempotent(
    transport: HTTPTransport, upstream: HostileUpstream, method: str, sent_times: int
) -> None:
    fetch(transport, "GET", upstream.url + "/say?word=hi")  # leaves a connection in the pool

    # The upstream reads the head, acts on it, and resets the connection mid-body.
    with pytest.raises(UpstreamUnreachableError):
        send(transport, method, upstream.url + "/act-and-drop", body=bytes(_LARGE))

    assert upstream.heads_read == sent_times
    assert upstream.connections_accepted == sent_times


@pytest.mark.parametrize("after", ["interim", "partial"])
def test_a_request_answered_in_part_on_a_reused_connection_is_not_sent_again(
    transport: HTTPTransport, raw_upstream: RawUpstream, after: str
) -> None:
    # Bytes of a response came: the upstream has seen the request and may have acted on it,
    # idempotent or not (docs/contract.md §8: a retry only before any byte of the response).
    fetch(transport, "GET", raw_upstream.url + "/headers")

    with pytest.raises(UpstreamError, match="ended early"):
        send(transport, "DELETE", f"{raw_upstream.url}/cut-short?after={after}")

    assert raw_upstream.cut_short == 1


def test_a_retry_on_a_new_connection_gets_what_is_left_of_the_total(
    transport: HTTPTransport, upstream: HostileUpstream
) -> None:
    # The reused connection is closed without a byte after 0.9 s: the request may be sent
    # again, but within the same total of 1.2 s, not a new one (the upstream would have held
    # it 1.8 s, and twice as long as the total with each stall just under it).
    fetch(transport, "GET", upstream.url + "/say?word=hi")
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError):
        send(
            transport,
            "GET",
            upstream.url + "/silent-close?seconds=0.9",
            timeouts=Timeouts(connect=2.0, read=1.0, total=1.2),
        )

    assert time.monotonic() - started < 1.7
    assert upstream.heads_read == 2  # sent again, on a new connection


def test_a_send_timeout_on_a_reused_connection_is_a_timeout_and_not_retried(
    transport: HTTPTransport, upstream: HostileUpstream
) -> None:
    fetch(transport, "GET", upstream.url + "/say?word=hi")
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError):
        send(
            transport,
            "PUT",
            upstream.url + "/stall",
            body=bytes(_LARGE),
            timeouts=Timeouts(connect=2.0, read=0.5, total=1.0),
        )

    assert time.monotonic() - started < 3.0
    assert upstream.heads_read == 1
    assert upstream.connections_accepted == 1


@SCHEMES
@pytest.mark.parametrize("shape", BODY_SHAPES)
@pytest.mark.parametrize("reused", [pytest.param(False, id="new"), pytest.param(True, id="reused")])
def test_an_answer_given_before_the_body_was_taken_is_the_response(
    transport: HTTPTransport, upstream: HostileUpstream, shape: str, body_of: BodyOf, reused: bool
) -> None:
    if reused:
        fetch(transport, "GET", upstream.url + "/say?word=hi")

    response = send(
        transport,
        "POST",
        upstream.url + "/answer-early",
        body=body_of(shape),
        content_length=_LARGE,
    )

    assert (response.status, drain(response)) == (413, b"too big!")
    # The answer did not say to close, but the request was cut short on that connection.
    assert _idle_connections(transport) == 0
    assert upstream.heads_read == 1


@SCHEMES
@pytest.mark.parametrize("shape", BODY_SHAPES)
def test_an_answer_given_before_the_body_stalled_is_the_response(
    transport: HTTPTransport, upstream: HostileUpstream, shape: str, body_of: BodyOf
) -> None:
    # The upstream answered, then took no more of the body and kept the connection open:
    # the answer waited on the socket while the send timed out, and the caller got 504.
    response = send(
        transport,
        "POST",
        upstream.url + "/answer-early-and-stall",
        body=body_of(shape),
        content_length=_LARGE,
        timeouts=Timeouts(connect=2.0, read=0.3, total=30.0),
    )

    assert (response.status, drain(response)) == (413, b"too big!")
    assert _idle_connections(transport) == 0


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://svc.example:0/", id="port-zero"),
        pytest.param("http://[::1]x/", id="text-after-ipv6-literal"),
        pytest.param("http://a..b/", id="empty-label"),
        pytest.param("http://" + "x" * 64 + ".example/", id="label-too-long"),
        pytest.param("ftp://svc.example/", id="other-scheme"),
    ],
)
def test_an_upstream_url_no_connection_can_be_opened_to_is_unreachable(
    transport: HTTPTransport, url: str
) -> None:
    with pytest.raises(UpstreamUnreachableError):
        send(transport, "GET", url)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_host_name_the_lookup_refuses_is_unreachable(
    transport: HTTPTransport, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    # What the name lookup raises for a label it cannot encode; no name server is asked.
    def refuse(*args: object, **kwargs: object) -> None:
        raise UnicodeError("label empty or too long")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(UpstreamUnreachableError):
        send(transport, "GET", f"{scheme}://svc.example/")
