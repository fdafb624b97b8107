"""Message framing on both sides of the catch-all (RFC 9110 §8.6, §15.2; RFC 9112 §6).

The gateway writes its own framing towards the client and towards the container; these tests
check the cases where copying the other side's framing, or trusting ``http.client``'s, goes
wrong: bodiless statuses, interim (1xx) responses, and requests framed twice.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pytest

from invoke_middleware import HTTPTransport, RequestsTransport
from tests.integration.gateway import CLIENT_TIMEOUT, exchange, serve_gateway
from tests.integration.gateway_process import GatewayProcess, start_gateway_process
from tests.toolkit.servers import serve_wsgi
from tests.toolkit.upstream import RecordingUpstream, recording_upstream
from tests.toolkit.world import make_service

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def _bodiless(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/204":
        start_response("204 No Content", [("X-Deleted", "1")])
    else:
        start_response("304 Not Modified", [("ETag", '"v1"')])
    return []


@pytest.mark.parametrize(
    ("path", "status"),
    [pytest.param("/204", 204, id="no-content"), pytest.param("/304", 304, id="not-modified")],
)
def test_bodiless_status_gets_no_invented_content_length(path: str, status: int) -> None:
    # RFC 9110 §8.6: never Content-Length in a 204; in a 304 only the length the 200 would
    # have had, so none when the container sent none.
    with serve_wsgi(_bodiless) as upstream, serve_gateway([make_service("svc", upstream)]) as gw:
        reply = exchange(gw, "GET", "/r/containers/svc" + path)
    assert reply.status == status
    assert reply.body == b""
    assert reply.all("Content-Length") == []


@contextlib.contextmanager
def _upstream_with_early_hints() -> Iterator[str]:
    """``/first`` answers 103 Early Hints, then its final 200 a moment later; anything else
    answers 200 at once. One connection at a time, kept alive."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        # The gateway may drop the connection at any point: that ends this thread quietly.
        with contextlib.suppress(OSError), connection, connection.makefile("rb") as reader:
            while not stop.is_set():
                line = reader.readline()
                if not line:
                    return
                target = line.split()[1]
                while reader.readline() not in (b"\r\n", b""):
                    pass
                if target == b"/first":
                    connection.sendall(
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                    )
                    if stop.wait(0.3):
                        return
                    body = b"for the first request"
                else:
                    body = b"for the second request"
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
                )

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(CLIENT_TIMEOUT)
            threading.Thread(target=serve, args=(connection,)).start()

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(CLIENT_TIMEOUT)
        listener.close()


@pytest.mark.parametrize(
    "transport",
    [pytest.param(HTTPTransport, id="http"), pytest.param(RequestsTransport, id="requests")],
)
def test_interim_response_is_skipped_and_never_answers_the_next_request(
    transport: type[HTTPTransport] | type[RequestsTransport],
) -> None:
    with (
        _upstream_with_early_hints() as upstream,
        serve_gateway([make_service("svc", upstream)], transport=transport()) as gateway,
    ):
        first = exchange(gateway, "GET", "/r/containers/svc/first")
        second = exchange(gateway, "GET", "/r/containers/svc/second")
    assert (first.status, first.body) == (200, b"for the first request")
    assert (second.status, second.body) == (200, b"for the second request")


def test_request_framed_by_both_length_and_chunks_is_never_truncated(
    upstream: RecordingUpstream,
) -> None:
    # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; refusing is allowed too.
    # What must not happen is forwarding the first Content-Length bytes as the whole body.
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = exchange(
            gateway,
            "POST",
            "/r/containers/svc/upload",
            [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
            b"b\r\nhello world\r\n0\r\n\r\n",
        )
    assert reply.status in (200, 400)
    assert [r.body for r in upstream.received] in ([], [b"hello world"])


@pytest.fixture(scope="module")
def gunicorn_gateway() -> Iterator[GatewayProcess]:
    # gunicorn de-chunks the body itself, and its reader raises on a malformed chunk: the
    # gateway meets the error in the middle of reading, not before the app is called.
    with recording_upstream() as upstream, start_gateway_process("gunicorn", upstream.url) as gw:
        yield gw


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/r/invoke/svc", id="invoke"),
        pytest.param("/r/containers/svc/upload", id="catch-all"),
        pytest.param("/r/mcp", id="mcp"),
    ],
)
@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", id="bad-chunk-size"),
        pytest.param(b"5\r\n{}", id="cut-short"),
    ],
)
def test_malformed_chunked_body_is_the_callers_400(
    gunicorn_gateway: GatewayProcess, path: str, chunks: bytes
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {gunicorn_gateway.key}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    address = ("127.0.0.1", gunicorn_gateway.port)
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(head.encode() + chunks)
        sock.shutdown(socket.SHUT_WR)  # a body cut short: the server sees its end
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        body = response.read()
    assert response.status == 400, body
    assert response.getheader("X-Invoke-Error") == "invalid_request"
