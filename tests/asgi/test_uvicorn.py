"""A FastAPI host with the gateway under a real uvicorn on loopback: routes, streaming,
clients that go away or stall, hosts that cancel requests, and errors in the gateway's
format."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from invoke_middleware import Limiter, LimitSettings, PipelineSettings, RelayFinished, Timeouts
from invoke_middleware.asgi import DEFAULT_CLIENT_TIMEOUT, ASGIApp
from tests.asgi.paced_upstream import MAX_WAIT, PacedUpstream, event, read_event, serve_paced
from tests.asgi.server import (
    PREFIX,
    CancellingHost,
    ReceiveCounter,
    host_app,
    make_gateway,
    serve_uvicorn,
)
from tests.integration.gateway import CLIENT_TIMEOUT, RunningGateway, exchange
from tests.integration.sink import SinkUpstream, pattern_blocks, pattern_digest, serve_sink
from tests.limits.conftest import wait_until
from tests.toolkit.cookies import setting
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.upstream import RecordingUpstream
from tests.upstreams import RawUpstream, serve_raw

RELAY = PREFIX + "/r/containers/svc"
EVENT_COUNT = 5
#: A client timeout short enough for the tests that wait for it to run out.
SHORT_CLIENT_TIMEOUT = 0.5


class Finished:
    """An after-relay hook that keeps what it is told; :meth:`wait` for a number of them."""

    def __init__(self) -> None:
        self.events: list[RelayFinished] = []
        self._arrived = threading.Condition()

    def __call__(self, finished: RelayFinished) -> None:
        with self._arrived:
            self.events.append(finished)
            self._arrived.notify_all()

    def wait(self, count: int) -> list[RelayFinished]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.events) >= count, MAX_WAIT)
        return list(self.events)


@contextlib.contextmanager
def running(
    upstream_url: str,
    *,
    workers: int = 4,
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
    around: Callable[[ASGIApp], ASGIApp] = lambda app: app,
    **options: Any,
) -> Iterator[RunningGateway]:
    """The FastAPI host with the gateway (``options``) under uvicorn, ``workers`` threads;
    ``around`` wraps the host (as its outer middleware would)."""
    gateway, key = make_gateway(upstream_url, **options)
    app = host_app(gateway, workers=workers, client_timeout=client_timeout)
    try:
        with serve_uvicorn(around(app)) as port:
            yield RunningGateway(
                url=f"http://127.0.0.1:{port}", port=port, key=key, middleware=gateway
            )
    finally:
        gateway.close()


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    with serve_raw() as upstream:
        yield upstream


@pytest.fixture
def sink() -> Iterator[SinkUpstream]:
    with serve_sink() as upstream:
        yield upstream


def _send_until_closed(upstream: PacedUpstream) -> None:
    """Send the paced upstream's events until it sees its connection closed by the gateway
    (whose thread notices a client gone, or a cancelled request, at the next chunk)."""
    for _ in range(int(MAX_WAIT / 0.1)):
        upstream.send_next()
        if upstream.closed.wait(0.1):
            break
    assert upstream.closed.is_set()


@contextlib.contextmanager
def _events_request(
    gateway: RunningGateway, upstream: PacedUpstream
) -> Iterator[http.client.HTTPResponse]:
    """The paced stream's response, its first event sent: the head comes with it (the gateway
    reads a body's first piece before answering, as WSGI servers send the head with it)."""
    connection = gateway.connection()
    try:
        connection.request("GET", RELAY + "/events", headers=gateway.auth)
        upstream.send_next()
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        yield response
    finally:
        connection.close()


# --- routes ----------------------------------------------------------------------------


def test_host_keeps_its_own_routes_next_to_the_runtime_routes(raw: RawUpstream) -> None:
    with running(raw.url) as gateway:
        hello = exchange(gateway, "GET", "/hello", auth=False)
        profile = exchange(gateway, "GET", PREFIX + "/profile", auth=False)
        unknown = exchange(gateway, "GET", PREFIX + "/nothing-here", auth=False)
        listing = exchange(gateway, "GET", PREFIX + "/r/containers")
        relayed = exchange(gateway, "GET", RELAY + "/headers")
    assert (hello.status, json.loads(hello.body)) == (200, {"host": "fastapi"})
    assert (profile.status, json.loads(profile.body)) == (200, {"user": "ada"})
    # FastAPI's own 404, not the gateway's.
    assert unknown.status == 404
    assert unknown.header("X-Invoke-Error") is None
    assert listing.status == 200
    assert [s["slug"] for s in json.loads(listing.body)["services"]] == ["svc"]
    assert relayed.status == 200
    # Kept to the service, below the mount point (docs/contract.md §6).
    assert setting(relayed.all("Set-Cookie")) == [f"a=1; Path={RELAY}/", f"b=2; Path={RELAY}/"]
    assert relayed.header("X-Request-ID")


# --- streaming -------------------------------------------------------------------------


def test_server_sent_events_reach_the_client_one_by_one_as_the_upstream_sends_them() -> None:
    with (
        serve_paced() as upstream,
        running(upstream.url) as gateway,
        _events_request(gateway, upstream) as response,
    ):
        for number in range(EVENT_COUNT):
            if number:
                upstream.send_next()
            # The upstream has not sent event n+1 yet: event n came on its own.
            assert read_event(response) == event(number)
            assert len(upstream.sent_at) == number + 1
        upstream.end()
        assert response.read() == b""  # and the stream ends cleanly


def test_client_that_leaves_mid_stream_frees_the_thread_and_the_upstream() -> None:
    finished = Finished()
    # One thread only: the request after the disconnect is served only if it was freed.
    with (
        serve_paced() as upstream,
        running(upstream.url, workers=1, after_relay=[finished]) as gateway,
    ):
        with _events_request(gateway, upstream) as response:
            assert read_event(response) == event(0)
        # The client went away, the stream still open upstream.
        # The thread notices at the next chunk; send until the upstream sees the close.
        _send_until_closed(upstream)
        [relay] = finished.wait(1)
        assert relay.error_code == "client_closed"
        listing = exchange(gateway, "GET", PREFIX + "/r/containers")
        assert listing.status == 200


def test_chunked_upload_streams_to_the_upstream_byte_exact(sink: SinkUpstream) -> None:
    size = 3 * 1024 * 1024 + 17
    with running(sink.url) as gateway:
        connection = gateway.connection()
        connection.request(
            "PUT",
            RELAY + "/upload",
            body=pattern_blocks(size),
            headers={**gateway.auth, "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
    assert response.status == 200
    assert answer == {"size": size, "sha256": pattern_digest(size)}
    assert sink.uploads[-1].complete
    assert sink.uploads[-1].transfer_encoding == "chunked"


@pytest.mark.parametrize(
    "chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")]
)
def test_upload_the_client_abandons_never_reaches_the_upstream_complete(
    sink: SinkUpstream, chunked: bool
) -> None:
    finished = Finished()
    with running(sink.url, after_relay=[finished]) as gateway:
        framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 10000000"
        head = (
            f"PUT {RELAY}/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {gateway.key}\r\n{framing}\r\n\r\n"
        ).encode()
        piece = b"x" * 65536
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(head)
            for _ in range(8):
                sock.sendall(b"%X\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
        [relay] = finished.wait(1)
        exchange(gateway, "GET", PREFIX + "/r/containers")  # still serving
    assert relay.error_code is not None
    assert relay.bytes_in < 10_000_000
    assert sink.uploads, "the upstream never saw the upload"
    assert not sink.uploads[-1].complete


def _start_upload(
    gateway: RunningGateway, size: int, sent: int, *, auth: bool = True
) -> socket.socket:
    """A connection that announced a ``size``-byte PUT to ``/upload`` and sent ``sent`` bytes."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT)
    authorization = f"Authorization: Bearer {gateway.key}\r\n" if auth else ""
    head = (
        f"PUT {RELAY}/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"{authorization}Content-Length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x" * sent)
    return sock


# --- clients that stall, hosts that cancel ---------------------------------------------


def test_upload_that_goes_silent_is_refused_and_frees_the_thread_and_the_slot(
    sink: SinkUpstream,
) -> None:
    finished = Finished()
    # One thread, one slot for the team: the next request is served only if both were freed.
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    with running(
        sink.url,
        workers=1,
        client_timeout=SHORT_CLIENT_TIMEOUT,
        limiter=limiter,
        after_relay=[finished],
    ) as gateway:
        with _start_upload(gateway, 1000, 10) as sock:
            response = http.client.HTTPResponse(sock, method="PUT")
            response.begin()  # the client still listens: it gets the answer
            assert response.status == 400
            assert response.getheader("X-Invoke-Error") == "invalid_request"
            response.close()
        [relay] = finished.wait(1)
        assert exchange(gateway, "GET", RELAY + "/download?size=10").status == 200
    assert relay.error_code == "invalid_request"
    [upload] = sink.uploads
    assert not upload.complete


def test_client_that_stops_reading_a_download_frees_the_thread(sink: SinkUpstream) -> None:
    finished = Finished()
    with (
        running(
            sink.url, workers=1, client_timeout=SHORT_CLIENT_TIMEOUT, after_relay=[finished]
        ) as gateway,
        socket.socket() as sock,
    ):
        # A small receive buffer, never read: the server soon has to wait for the client.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(("127.0.0.1", gateway.port))
        sock.sendall(
            f"GET {RELAY}/download?size={1024 * 1024 * 1024} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {gateway.key}\r\n\r\n".encode()
        )
        [relay] = finished.wait(1)
        # The client is still connected; the one thread serves the next request.
        listing = exchange(gateway, "GET", PREFIX + "/r/containers")
    assert relay.error_code == "client_closed"
    assert relay.bytes_out < 1024 * 1024 * 1024
    assert listing.status == 200


def test_stream_whose_request_the_host_cancels_frees_the_thread_and_the_upstream() -> None:
    finished = Finished()
    with (
        serve_paced() as upstream,
        running(
            upstream.url,
            workers=1,
            around=lambda app: CancellingHost(app, 0.5),
            after_relay=[finished],
        ) as gateway,
        _events_request(gateway, upstream) as response,
    ):
        assert read_event(response) == event(0)
        # The host cancels the request at 0.5 s; the thread sees it at the upstream's next
        # event. Without that, it would relay into a2wsgi's queue until it is full, then wait.
        _send_until_closed(upstream)
        [relay] = finished.wait(1)
        listing = exchange(gateway, "GET", PREFIX + "/r/containers")
    assert relay.error_code == "client_closed"
    assert listing.status == 200


def test_upload_whose_request_the_host_cancels_frees_the_thread(sink: SinkUpstream) -> None:
    finished = Finished()
    # The client stays silent but connected for longer than the host lets the request run.
    with (
        running(
            sink.url,
            workers=1,
            around=lambda app: CancellingHost(app, 0.5),
            after_relay=[finished],
        ) as gateway,
        _start_upload(gateway, 10_000_000, 256 * 1024),
    ):
        [relay] = finished.wait(1)
        listing = exchange(gateway, "GET", PREFIX + "/r/containers")
    assert relay.error_code is not None
    assert listing.status == 200
    [upload] = sink.uploads
    assert not upload.complete


def test_request_waiting_for_a_thread_leaves_its_body_with_the_server(
    sink: SinkUpstream,
) -> None:
    counter = ReceiveCounter()
    size = 1024 * 1024
    with (
        serve_paced() as upstream,
        running(upstream.url, workers=1, around=counter.around) as gateway,
        _events_request(gateway, upstream),
    ):
        # The one thread relays the stream; a second upload (anyone's) waits for it.
        upload = _start_upload(gateway, size, 0, auth=False)
        upload.setblocking(False)
        with contextlib.suppress(BlockingIOError), upload:
            upload.send(b"x" * size)  # as much as the buffers on the way take
            time.sleep(0.5)
            assert counter.taken == 0
        upstream.end()  # frees the thread


def test_one_team_s_streams_leave_workers_for_everyone_else(scripted_url: str) -> None:
    # Four workers and no limiter configured: one team opening four long streams used to
    # hold all four, and every other request (another team's, a listing) waited for them.
    # By default a team holds at most half of the workers; the rest are refused at once.
    streams: list[http.client.HTTPConnection] = []
    with running(scripted_url, workers=4) as gateway:
        try:
            statuses = []
            for _ in range(4):
                connection = gateway.connection()
                connection.request("GET", RELAY + "/sse?count=600&interval=0.05",
                                   headers=gateway.auth)  # fmt: skip
                statuses.append(connection.getresponse().status)
                streams.append(connection)
            # Answered while the streams go on (the client gives up after CLIENT_TIMEOUT).
            listing = exchange(gateway, "GET", PREFIX + "/r/containers")
        finally:
            for connection in streams:
                connection.close()
    assert sorted(statuses) == [200, 200, 429, 429]
    assert listing.status == 200


def test_a_request_whose_client_left_while_it_waited_for_a_slot_is_not_relayed(
    upstream: RecordingUpstream,
) -> None:
    # The adapter knew the client was gone, but the request, admitted once the slot freed,
    # still went upstream, for nobody.
    limiter = Limiter(LimitSettings(max_in_flight=1, team_max_in_flight=2, queue_timeout=5))
    with running(upstream.url, limiter=limiter) as gateway:
        holder = gateway.connection()
        holder.request("GET", RELAY + "/events", headers=gateway.auth)
        stream = holder.getresponse()  # its first event is in: the only slot is held
        assert stream.status == 200
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT) as left:
            left.sendall(
                f"GET {RELAY}/after-leaving HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {gateway.auth['Authorization']}\r\n\r\n".encode()
            )
            wait_until(lambda: limiter.waiting == 1, "the request waits for the slot")
        time.sleep(0.3)  # the adapter reads the disconnect
        upstream.release.set()
        stream.read()
        holder.close()
        wait_until(lambda: limiter.in_flight == limiter.waiting == 0, "both are done")
    assert [r.target for r in upstream.received] == ["/events"]


def test_a_field_name_with_an_underscore_is_dropped(upstream: RecordingUpstream) -> None:
    # As gunicorn and waitress drop it: the ASGI-to-WSGI step joins X_Tag into X-Tag (one
    # environ key for both), and so, behind trusted proxies, a caller's X_Forwarded_For into
    # the X-Forwarded-For the proxy set.
    with running(upstream.url) as gateway:
        reply = exchange(gateway, "GET", RELAY + "/x", [("X-Tag", "a"), ("X_Tag", "b")])
    assert reply.status == 200
    assert upstream.last().header("X-Tag") == "a"


def test_cookie_fields_are_joined_as_one_cookie_list(upstream: RecordingUpstream) -> None:
    # The ASGI-to-WSGI step joined them with ",", a list no cookie reader splits: "b=2" was
    # lost in the value of a, and a cookie kept to another team could hide there.
    with running(upstream.url) as gateway:
        reply = exchange(gateway, "GET", RELAY + "/x", [("Cookie", "a=1"), ("Cookie", "b=2")])
    assert reply.status == 200
    assert upstream.last().header("Cookie") == "a=1; b=2"


def test_gateway_errors_keep_their_format_under_uvicorn(raw: RawUpstream) -> None:
    with running(raw.url) as gateway:
        assert_gateway_error(
            exchange(gateway, "GET", RELAY + "/x", auth=False), 401, "unauthenticated"
        )
        assert_gateway_error(
            exchange(gateway, "GET", PREFIX + "/r/containers/nope/x"), 404, "service_not_found"
        )
        assert_gateway_error(exchange(gateway, "GET", RELAY + "/garbage"), 502, "upstream_error")
        # uvicorn decodes the path; the gateway still checks the target as the client sent it.
        assert_gateway_error(exchange(gateway, "GET", RELAY + "/a%2Fb"), 400, "invalid_path")
        assert_gateway_error(exchange(gateway, "GET", RELAY + "/%2e%2e/x"), 400, "invalid_path")
        assert_gateway_error(
            exchange(
                gateway, "POST", PREFIX + "/r/invoke/svc", [("Content-Type", "text/plain")], b"x"
            ),
            415,
            "unsupported_media_type",
        )
        reply = exchange(gateway, "GET", RELAY + "/x", [("X-Request-ID", "trace-42")], auth=False)
    assert reply.header("X-Request-ID") == "trace-42"
    assert json.loads(reply.body)["request_id"] == "trace-42"


def test_an_upstream_silent_after_its_head_is_the_gateway_s_504(raw: RawUpstream) -> None:
    # The adapter sends the head as soon as it is given one: the gateway gives it only with
    # the first piece of the body, so a failure before it is still an error response.
    settings = PipelineSettings(timeouts=Timeouts(connect=2.0, read=0.3, total=10.0))
    finished = Finished()
    with running(raw.url, settings=settings, after_relay=[finished]) as gateway:
        reply = exchange(gateway, "GET", RELAY + "/drip?count=3&interval=2")
    assert_gateway_error(reply, 504, "upstream_timeout")
    [relay] = finished.wait(1)
    assert (relay.status, relay.error_code) == (504, "upstream_timeout")


def test_upstream_failure_mid_body_aborts_the_client_response(raw: RawUpstream) -> None:
    with running(raw.url) as gateway:
        connection = gateway.connection()
        connection.request("GET", RELAY + "/truncate", headers=gateway.auth)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == "1000"
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        connection.close()


def test_a_request_whose_client_left_while_it_waited_for_a_thread_is_not_relayed(
    upstream: RecordingUpstream,
) -> None:
    # A request without a body is watched from its arrival: 3,000 whose clients closed at
    # once waited for the threads like any other, and each was relayed, for nobody.
    with running(upstream.url, workers=1) as gateway:
        holder = gateway.connection()
        holder.request("GET", RELAY + "/events", headers=gateway.auth)
        stream = holder.getresponse()  # the only thread relays it
        assert stream.status == 200
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT) as left:
            left.sendall(
                f"GET {RELAY}/after-leaving HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {gateway.auth['Authorization']}\r\n\r\n".encode()
            )
        time.sleep(0.3)  # the adapter reads the disconnect
        upstream.release.set()
        stream.read()
        holder.close()
        limiter = gateway.middleware.pipeline.limiter
        assert limiter is not None
        wait_until(lambda: limiter.in_flight == 0, "both are done")
        time.sleep(0.3)  # the thread would relay the second request now
    assert [r.target for r in upstream.received] == ["/events"]


@pytest.mark.parametrize(
    ("version", "headers", "watched"),
    [
        ("1.1", [], True),
        ("1.0", [(b"content-length", b"0")], True),
        ("1.1", [(b"content-length", b"5")], False),
        ("1.1", [(b"transfer-encoding", b"chunked")], False),
        ("2", [], False),  # HTTP/2 may send data it did not announce
        ("2", [(b"content-length", b"0")], True),
    ],
)
def test_only_a_request_surely_without_a_body_is_watched_before_a_thread_takes_it(
    version: str, headers: list[tuple[bytes, bytes]], watched: bool
) -> None:
    from invoke_middleware.asgi import _without_body

    assert _without_body({"type": "http", "http_version": version, "headers": headers}) is watched


def test_an_instrumented_gateway_makes_its_spans_under_uvicorn(
    upstream: RecordingUpstream,
) -> None:
    # instrument()'s wrapper was refused (it has no pipeline): ASGI hosts had no server spans.
    from fastapi import FastAPI
    from opentelemetry.trace import SpanKind

    from invoke_middleware.asgi import InvokeASGIMiddleware
    from tests.otel_spans import traced

    gateway, key = make_gateway(upstream.url)
    wrapped, spans = traced(gateway)
    app = InvokeASGIMiddleware(FastAPI(), gateway=wrapped, workers=2)
    try:
        with serve_uvicorn(app) as port:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
            connection.request("GET", RELAY + "/hello", headers={"Authorization": f"Bearer {key}"})
            response = connection.getresponse()
            response.read()
            connection.close()
            assert response.status == 200
            wait_until(lambda: len(spans.all()) == 2, "the server and client spans")
    finally:
        app.close()  # its threads, and the gateway
    server = spans.one(SpanKind.SERVER)
    assert (server.attributes or {})["http.route"] == PREFIX + "/r/containers/{slug}/{tail}"
    assert spans.one(SpanKind.CLIENT).parent is not None


def test_only_a_gateway_or_its_tracing_wrapper_is_served() -> None:
    from invoke_middleware.asgi import InvokeASGIMiddleware, no_wsgi_host

    async def host(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="InvokeMiddleware"):
        InvokeASGIMiddleware(host, gateway=no_wsgi_host)  # type: ignore[arg-type]


def test_invoke_answers_left_unread_hold_their_team_s_slots(sink: SinkUpstream) -> None:
    # An invoke answer (8 MiB of body, 11 MiB of base64) went to a2wsgi in one piece, which
    # its queue took at once: the slot was given back before a byte was written, and one team
    # left any number of answers waiting in the server's memory. In 64 KiB pieces, a client
    # that reads nothing holds the thread and the slot; the team's third request is refused.
    envelope = json.dumps({"method": "GET", "path": f"/download?size={8 * 1024 * 1024}"})
    with running(sink.url, workers=4, client_timeout=CLIENT_TIMEOUT) as gateway:
        unread: list[socket.socket] = []
        try:
            statuses = []
            for _ in range(4):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(CLIENT_TIMEOUT)
                sock.connect(("127.0.0.1", gateway.port))
                sock.sendall(
                    f"POST {PREFIX}/r/invoke/svc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {gateway.key}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(envelope)}\r\n\r\n{envelope}".encode()
                )
                statuses.append(int(sock.recv(12)[9:12]))  # the status line, nothing more
                unread.append(sock)
            # The fair-share caps for 4 workers, set on the first request: 2 for a team.
            limiter = gateway.middleware.pipeline.limiter
            assert limiter is not None
            held = limiter.in_flight
        finally:
            for sock in unread:
                sock.close()
    assert statuses == [200, 200, 429, 429]
    assert held == 2
