"""The catch-all relay (docs/contract.md §4) and its errors (docs/contract.md §8), end to end: a
Flask host wrapped by the middleware on a real WSGI server, real upstreams on loopback, real
clients."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from invoke_middleware import (
    HTTPTransport,
    PipelineSettings,
    RelayFinished,
    RequestsTransport,
    Service,
    Timeouts,
)
from tests.integration.gateway import (
    CLIENT_TIMEOUT,
    Reply,
    RunningGateway,
    exchange,
    serve_gateway,
)
from tests.integration.gateway_process import GatewayProcess, start_gateway_process
from tests.integration.sink import SinkUpstream, pattern_blocks, pattern_digest, serve_sink
from tests.toolkit.cookies import setting
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.upstream import RecordingUpstream, repeating_bytes
from tests.toolkit.world import make_service
from tests.upstreams import RawUpstream, serve_raw

EVENT_COUNT = 5
EVENT_INTERVAL = 0.2


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as client:
        client.trust_env = False  # no proxy settings from the environment on loopback
        yield client


@pytest.fixture
def sink() -> Iterator[SinkUpstream]:
    with serve_sink() as running:
        yield running


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _invoke(gateway: RunningGateway, envelope: dict[str, object]) -> tuple[int, bytes]:
    reply = exchange(
        gateway,
        "POST",
        "/r/invoke/svc",
        [("Content-Type", "application/json")],
        json.dumps(envelope).encode(),
    )
    return reply.status, reply.body


# --- streaming responses -------------------------------------------------------------------


@pytest.mark.parametrize(
    "upstream_kind",
    [
        pytest.param("wsgi", id="werkzeug-upstream"),
        pytest.param("raw", id="raw-chunked-upstream"),
    ],
)
def test_server_sent_events_reach_the_client_one_by_one(
    upstream_kind: str,
    scripted_url: str,
    raw_upstream: RawUpstream,
    session: requests.Session,
) -> None:
    base = scripted_url if upstream_kind == "wsgi" else raw_upstream.url
    with serve_gateway([make_service("svc", base)]) as gateway:
        arrivals: list[tuple[float, bytes]] = []
        with session.get(
            f"{gateway.url}/r/containers/svc/sse",
            params={"count": EVENT_COUNT, "interval": EVENT_INTERVAL},
            headers={**gateway.auth, "Accept": "text/event-stream"},
            stream=True,
            timeout=CLIENT_TIMEOUT,
        ) as response:
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            for piece in response.iter_content(chunk_size=None):
                arrivals.append((time.monotonic(), piece))
    events = b"".join(piece for _, piece in arrivals).split(b"\n\n")
    assert events == [f"id: {n}\ndata: event {n}".encode() for n in range(EVENT_COUNT)] + [b""]
    # Each event came in its own read, and they came spread out as the upstream sent them
    # (at least 3 of the 4 intervals apart), not all at the end.
    assert [piece.count(b"\n\n") for _, piece in arrivals] == [1] * EVENT_COUNT
    assert arrivals[-1][0] - arrivals[0][0] >= 3 * EVENT_INTERVAL


@pytest.mark.parametrize(
    ("path", "declared"),
    [
        pytest.param("/reset", "1000", id="reset-after-100-of-1000-bytes"),
        pytest.param("/truncate", "1000", id="close-after-100-of-1000-bytes"),
        pytest.param("/truncate-chunked", None, id="close-before-last-chunk"),
    ],
)
def test_upstream_failure_mid_body_aborts_the_client_response(
    path: str, declared: str | None, raw_upstream: RawUpstream, session: requests.Session
) -> None:
    with serve_gateway([make_service("svc", raw_upstream.url)]) as gateway:
        with session.get(
            f"{gateway.url}/r/containers/svc{path}",
            headers=gateway.auth,
            stream=True,
            timeout=CLIENT_TIMEOUT,
        ) as response:
            assert response.status_code == 200
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                for _ in response.iter_content(chunk_size=None):
                    pass
        connection = gateway.connection()
        try:
            connection.request("GET", f"/r/containers/svc{path}", headers=gateway.auth)
            raw = connection.getresponse()
            assert raw.getheader("Content-Length") == declared
            # Short of the declared length, or without the last chunk: never a clean end.
            with pytest.raises(http.client.IncompleteRead) as excinfo:
                raw.read()
        finally:
            connection.close()
    assert len(excinfo.value.partial) <= 100


# --- timeouts and unreachable upstreams -----------------------------------------------------


def _timeout_service(base: str, where: str, timeouts: Timeouts) -> tuple[Service, PipelineSettings]:
    if where == "gateway":
        return make_service("svc", base), PipelineSettings(timeouts=timeouts)
    return make_service("svc", base, timeouts=timeouts), PipelineSettings()


WHERE = [pytest.param("gateway", id="gateway-settings"), pytest.param("service", id="per-service")]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(
    "timeouts",
    [
        pytest.param(Timeouts(read=0.3), id="read-timeout"),
        pytest.param(Timeouts(total=0.3), id="total-deadline"),
    ],
)
def test_hanging_upstream_is_a_504_on_both_routes(
    where: str, timeouts: Timeouts, raw_upstream: RawUpstream
) -> None:
    service, settings = _timeout_service(raw_upstream.url, where, timeouts)
    with serve_gateway([service], settings=settings) as gateway:
        reply = exchange(gateway, "GET", "/r/containers/svc/hang")
        assert_gateway_error(reply, 504, "upstream_timeout")
        status, body = _invoke(gateway, {"method": "GET", "path": "/hang"})
        assert status == 504
        assert json.loads(body)["code"] == "upstream_timeout"


@pytest.mark.parametrize("where", WHERE)
def test_dripping_upstream_over_the_total_deadline_is_cut_off(
    where: str, raw_upstream: RawUpstream
) -> None:
    # 100 bytes, one every 50 ms, each well within the read timeout: only the deadline ends it.
    service, settings = _timeout_service(raw_upstream.url, where, Timeouts(read=5.0, total=0.5))
    target = "/drip?count=100&interval=0.05"
    with serve_gateway([service], settings=settings) as gateway:
        status, body = _invoke(gateway, {"method": "GET", "path": target})
        assert status == 504
        assert json.loads(body)["code"] == "upstream_timeout"
        # On the catch-all the head is already on its way: the body is aborted instead.
        connection = gateway.connection()
        try:
            connection.request("GET", "/r/containers/svc" + target, headers=gateway.auth)
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Length") == "100"
            with pytest.raises(http.client.IncompleteRead) as excinfo:
                response.read()
        finally:
            connection.close()
    assert 0 < len(excinfo.value.partial) < 100


def test_refused_connection_is_a_502_upstream_unreachable() -> None:
    with serve_gateway([make_service("svc", f"http://127.0.0.1:{_closed_port()}")]) as gateway:
        reply = exchange(gateway, "GET", "/r/containers/svc/x")
        assert_gateway_error(reply, 502, "upstream_unreachable", hidden=["refused", "111"])
        status, body = _invoke(gateway, {"method": "GET", "path": "/x"})
        assert status == 502
        assert json.loads(body)["code"] == "upstream_unreachable"


def test_response_that_is_not_http_is_a_502_without_its_text(raw_upstream: RawUpstream) -> None:
    with serve_gateway([make_service("svc", raw_upstream.url)]) as gateway:
        reply = exchange(gateway, "GET", "/r/containers/svc/garbage")
    assert_gateway_error(reply, 502, "upstream_error", hidden=["not http"])


# --- what comes back unchanged --------------------------------------------------------------


@pytest.mark.parametrize(
    "status", [pytest.param(code, id=str(code)) for code in (201, 202, 404, 418, 500, 503)]
)
def test_upstream_status_and_body_come_back_unchanged(
    status: int, upstream: RecordingUpstream
) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(gateway, "GET", f"/r/containers/svc/status/{status}")
    assert reply.status == status
    assert reply.body == b'{"status":true}'
    assert reply.header("X-Invoke-Error") is None
    assert reply.header("X-Request-ID")


def test_repeated_response_headers_come_back_in_order(raw_upstream: RawUpstream) -> None:
    with serve_gateway([make_service("svc", raw_upstream.url)]) as gateway:
        reply = exchange(gateway, "GET", "/r/containers/svc/headers")
    assert reply.status == 200
    # In order, each kept to the service (docs/contract.md §6).
    root = "/r/containers/svc/"
    assert setting(reply.all("Set-Cookie")) == [f"a=1; Path={root}", f"b=2; Path={root}"]
    assert reply.all("X-Multi") == ["one", "two"]


def test_binary_and_gzip_bodies_come_back_byte_exact(upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        binary = exchange(gateway, "GET", "/r/containers/svc/bytes/70000")
        compressed = exchange(
            gateway, "GET", "/r/containers/svc/gzip", [("Accept-Encoding", "gzip")]
        )
    assert binary.body == repeating_bytes(70000)
    assert binary.header("Content-Length") == "70000"
    assert compressed.header("Content-Encoding") == "gzip"
    assert gzip.decompress(compressed.body) == b"compressed payload " * 20


def test_redirect_is_returned_not_followed(upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(gateway, "GET", "/r/containers/svc/redirect")
    assert reply.status == 302
    assert reply.header("Location") == "/elsewhere"
    assert reply.body == b"moved"
    assert [r.target for r in upstream.received] == ["/redirect"]


def test_head_keeps_the_content_length_of_the_representation(
    upstream: RecordingUpstream,
) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(gateway, "HEAD", "/r/containers/svc/bytes/5000")
    assert reply.status == 200
    assert reply.header("Content-Length") == "5000"
    assert reply.body == b""
    assert upstream.last().method == "HEAD"


# --- request bodies ---------------------------------------------------------------------


def test_chunked_upload_of_unknown_length_reaches_the_upstream_byte_exact(
    sink: SinkUpstream,
) -> None:
    size = 300_000
    with serve_gateway([make_service("svc", sink.url)]) as gateway:
        connection = gateway.connection()
        try:
            connection.request(
                "PUT",
                "/r/containers/svc/upload",
                body=pattern_blocks(size, 7000),
                headers={**gateway.auth, "Transfer-Encoding": "chunked"},
                encode_chunked=True,
            )
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
    assert response.status == 200
    assert answer["size"] == size
    upload = sink.uploads[-1]
    assert upload.complete
    assert upload.transfer_encoding == "chunked"
    assert upload.sha256 == _digest_of(pattern_blocks(size, 7000))


def test_upload_with_content_length_reaches_the_upstream_with_that_length(
    sink: SinkUpstream,
) -> None:
    size = 300_000
    with serve_gateway([make_service("svc", sink.url)]) as gateway:
        connection = gateway.connection()
        try:
            connection.request(
                "POST",
                "/r/containers/svc/upload",
                body=pattern_blocks(size),
                headers={**gateway.auth, "Content-Length": str(size)},
            )
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
    assert response.status == 200
    upload = sink.uploads[-1]
    assert (upload.complete, upload.content_length, upload.transfer_encoding) == (
        True,
        str(size),
        None,
    )
    assert upload.sha256 == pattern_digest(size)


def _digest_of(pieces: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


def test_chunked_upload_to_a_server_that_cannot_terminate_it_is_a_411(
    upstream: RecordingUpstream,
) -> None:
    with serve_gateway([make_service("svc", upstream.url)], server="wsgiref") as gateway:
        reply = exchange(
            gateway,
            "POST",
            "/r/containers/svc/upload",
            [("Transfer-Encoding", "chunked")],
            b"5\r\nhello\r\n0\r\n\r\n",
        )
        control = exchange(gateway, "POST", "/r/containers/svc/upload", body=b"hello")
    assert_gateway_error(reply, 411, "length_required")
    assert control.status == 200
    assert [r.body for r in upstream.received] == [b"hello"]


def test_content_length_over_the_cap_is_a_413_before_the_body_is_sent(
    upstream: RecordingUpstream,
) -> None:
    settings = PipelineSettings(max_relay_body_bytes=1000)
    with serve_gateway([make_service("svc", upstream.url)], settings=settings) as gateway:
        # Only the head is sent: the answer must come without the gateway waiting for a body.
        head = (
            "PUT /r/containers/svc/upload HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{gateway.port}\r\n"
            f"Authorization: Bearer {gateway.key}\r\n"
            "Content-Length: 10000000\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(head.encode())
            response = http.client.HTTPResponse(sock, method="PUT")
            response.begin()
            reply = Reply(
                status=response.status, headers=tuple(response.msg.items()), body=response.read()
            )
            response.close()
    assert_gateway_error(reply, 413, "payload_too_large")
    assert upstream.received == []


def test_chunked_upload_over_the_cap_never_reaches_the_upstream_whole(
    sink: SinkUpstream,
) -> None:
    cap, size = 100_000, 400_000
    settings = PipelineSettings(max_relay_body_bytes=cap)
    with serve_gateway([make_service("svc", sink.url)], settings=settings) as gateway:
        chunks = b"".join(b"%X\r\n%b\r\n" % (len(p), p) for p in pattern_blocks(size, 10_000))
        reply = exchange(
            gateway,
            "POST",
            "/r/containers/svc/upload",
            [("Transfer-Encoding", "chunked")],
            chunks + b"0\r\n\r\n",
        )
    assert_gateway_error(reply, 413, "payload_too_large")
    assert all(not upload.complete and upload.size <= cap for upload in sink.uploads)


# --- refused requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", [pytest.param("TRACE", id="trace"), pytest.param("CONNECT", id="connect")]
)
def test_trace_and_connect_are_405(method: str, upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(gateway, method, "/r/containers/svc/x")
    assert_gateway_error(reply, 405, "method_not_allowed")
    assert upstream.received == []


def test_websocket_upgrade_is_501(upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(
            gateway,
            "GET",
            "/r/containers/svc/ws",
            [
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
    assert_gateway_error(reply, 501, "upgrade_not_supported")
    assert upstream.received == []


def test_request_that_already_passed_the_gateway_is_a_508(upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(gateway, "GET", "/r/containers/svc/x", [("Via", "1.1 invoke-middleware")])
        forwarded = exchange(gateway, "GET", "/r/containers/svc/x")
    assert_gateway_error(reply, 508, "loop_detected")
    assert forwarded.status == 200
    assert [r.header("Via") for r in upstream.received] == ["1.1 invoke-middleware"]


def test_host_routes_still_reach_the_host(upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(gateway, "GET", "/hello", auth=False)
    assert (reply.status, reply.body) == (200, b"hello from host")
    assert reply.header("X-Request-ID") is None
    assert upstream.received == []


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: a connection attempt waits until it times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname(), timeout=CLIENT_TIMEOUT):
            yield listener.getsockname()[1]


@pytest.mark.parametrize("where", WHERE)
def test_connect_timeout_is_a_504(where: str, full_listener: int) -> None:
    base = f"http://127.0.0.1:{full_listener}"
    service, settings = _timeout_service(base, where, Timeouts(connect=0.3))
    with serve_gateway([service], settings=settings) as gateway:
        reply = exchange(gateway, "GET", "/r/containers/svc/x")
    assert_gateway_error(reply, 504, "upstream_timeout")


def test_client_going_away_mid_download_ends_the_relay(sink: SinkUpstream) -> None:
    size = 64 * 1024 * 1024
    finished: list[RelayFinished] = []
    done = threading.Event()

    def after(event: RelayFinished) -> None:
        finished.append(event)
        done.set()

    with serve_gateway([make_service("svc", sink.url)], after_relay=[after]) as gateway:
        connection = gateway.connection()
        try:
            connection.request(
                "GET", f"/r/containers/svc/download?size={size}", headers=gateway.auth
            )
            response = connection.getresponse()
            assert len(response.read(1024 * 1024)) == 1024 * 1024
            response.close()  # the socket closes only once the response lets go of it
        finally:
            connection.close()
        assert done.wait(CLIENT_TIMEOUT)
    [event] = finished
    assert event.error_code == "client_closed"
    assert event.status == 200
    assert 1024 * 1024 <= event.bytes_out < size


def test_request_id_is_kept_from_caller_to_upstream_and_back(upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        ok = exchange(gateway, "GET", "/r/containers/svc/x", [("X-Request-ID", "req-4711")])
        refused = exchange(gateway, "TRACE", "/r/containers/svc/x", [("X-Request-ID", "req-4712")])
    assert ok.header("X-Request-ID") == "req-4711"
    assert upstream.last().header("X-Request-ID") == "req-4711"
    assert assert_gateway_error(refused, 405, "method_not_allowed")["request_id"] == "req-4712"


# --- the same streams under gunicorn (gthread), which frames responses itself ------------


@pytest.fixture(scope="module")
def gunicorn_gateway() -> Iterator[GatewayProcess]:
    with serve_raw() as upstream, start_gateway_process("gunicorn", upstream.url) as running:
        yield running


def test_gunicorn_relays_server_sent_events_one_by_one(
    gunicorn_gateway: GatewayProcess, session: requests.Session
) -> None:
    arrivals: list[tuple[float, bytes]] = []
    with session.get(
        f"http://127.0.0.1:{gunicorn_gateway.port}/r/containers/svc/sse",
        params={"count": EVENT_COUNT, "interval": EVENT_INTERVAL},
        headers=gunicorn_gateway.auth,
        stream=True,
        timeout=CLIENT_TIMEOUT,
    ) as response:
        assert response.status_code == 200
        for piece in response.iter_content(chunk_size=None):
            arrivals.append((time.monotonic(), piece))
    assert [piece.count(b"\n\n") for _, piece in arrivals] == [1] * EVENT_COUNT
    assert arrivals[-1][0] - arrivals[0][0] >= 3 * EVENT_INTERVAL


@pytest.mark.parametrize(
    ("path", "declared"),
    [
        pytest.param("/reset", "1000", id="reset-after-100-of-1000-bytes"),
        pytest.param("/truncate-chunked", None, id="close-before-last-chunk"),
    ],
)
def test_gunicorn_aborts_the_response_when_the_upstream_fails_mid_body(
    gunicorn_gateway: GatewayProcess, path: str, declared: str | None
) -> None:
    connection = gunicorn_gateway.connection()
    try:
        connection.request("GET", f"/r/containers/svc{path}", headers=gunicorn_gateway.auth)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == declared
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("transport", [HTTPTransport, RequestsTransport])
def test_a_caller_slower_than_the_total_deadline_gets_408_not_the_service_s_504(
    upstream: RecordingUpstream, transport: type[HTTPTransport | RequestsTransport]
) -> None:
    # The caller trickles 40 bytes over about 4 s against a total of 1 s; the service waits
    # and is fine. The deadline ran out while the caller's body was read: a 504 blamed the
    # service (its metrics and its error code) for the caller's slowness.
    timeouts = Timeouts(connect=2.0, read=1.0, total=1.0)
    services = [make_service("svc", upstream.url)]
    with (
        serve_gateway(
            services, settings=PipelineSettings(timeouts=timeouts), transport=transport()
        ) as gateway,
        socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT) as sock,
    ):
        sock.sendall(
            f"POST /r/containers/svc/up HTTP/1.1\r\nHost: g\r\n"
            f"Authorization: Bearer {gateway.key}\r\nContent-Length: 40\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        reply = b""
        for _ in range(10):  # 4 bytes every 0.4 s, until the gateway answers
            with contextlib.suppress(OSError):
                sock.sendall(b"abcd")
            time.sleep(0.4)
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                reply += sock.recv(65536)
            sock.settimeout(CLIENT_TIMEOUT)
            if reply:
                break
        reply += _read_rest(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["code"] == "request_timeout"


def _read_rest(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while piece := sock.recv(65536):
            data += piece
    return data
