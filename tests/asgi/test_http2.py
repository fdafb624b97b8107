"""The gateway behind an ASGI server that speaks HTTP/2 (hypercorn, cleartext with prior
knowledge): a request body framed by HTTP/2's frames alone, without ``Content-Length``,
reaches the upstream whole, and a request without a body goes without one."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import pytest

from tests.asgi.server import PREFIX, host_app, make_gateway, serve_hypercorn
from tests.integration.gateway import CLIENT_TIMEOUT
from tests.toolkit.upstream import RecordingUpstream

RELAY = PREFIX + "/r/containers/svc"


@dataclass
class H2Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def h2_request(
    port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
) -> H2Reply:
    """One request over a fresh HTTP/2 connection; ``body`` sent in DATA frames only."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    reply = H2Reply()
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        stream = connection.get_next_available_stream_id()
        request_headers = [
            (":method", method),
            (":path", path),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{port}"),
            *headers,
        ]
        connection.send_headers(stream, request_headers, end_stream=body is None)
        pending = body
        done = False
        while not done:
            # As much as the flow-control window allows; the rest once the server opens it.
            while pending is not None:
                window = connection.local_flow_control_window(stream)
                size = min(len(pending), window, connection.max_outbound_frame_size)
                if pending and not size:
                    break
                connection.send_data(stream, pending[:size], end_stream=size == len(pending))
                pending = None if size == len(pending) else pending[size:]
            sock.sendall(connection.data_to_send())
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    fields = {bytes(k).decode(): bytes(v).decode() for k, v in event.headers}
                    reply.status = int(fields.pop(":status"))
                    reply.headers = fields
                elif isinstance(event, h2.events.DataReceived):
                    reply.body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: {event.error_code!r}")
        sock.sendall(connection.data_to_send())
    return reply


@pytest.fixture
def h2_gateway(upstream: RecordingUpstream) -> Iterator[tuple[int, str]]:
    gateway, key = make_gateway(upstream.url)
    try:
        with serve_hypercorn(host_app(gateway)) as port:
            yield port, key
    finally:
        gateway.close()


@pytest.mark.parametrize("size", [pytest.param(5, id="small"), pytest.param(200_000, id="large")])
def test_a_body_without_content_length_reaches_the_upstream_whole(
    h2_gateway: tuple[int, str], upstream: RecordingUpstream, size: int
) -> None:
    port, key = h2_gateway
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    reply = h2_request(port, "POST", RELAY + "/upload", [("authorization", f"Bearer {key}")], body)
    assert reply.status == 200, reply.body
    assert upstream.last().body == body


def test_a_request_without_a_body_goes_without_one(
    h2_gateway: tuple[int, str], upstream: RecordingUpstream
) -> None:
    port, key = h2_gateway
    reply = h2_request(port, "GET", RELAY + "/hello", [("authorization", f"Bearer {key}")], None)
    assert reply.status == 200
    received = upstream.last()
    assert received.body == b""
    assert received.header("Transfer-Encoding") is None
    assert received.header("Content-Length") is None


def test_a_query_with_bytes_outside_ascii_is_relayed_percent_encoded(
    h2_gateway: tuple[int, str], upstream: RecordingUpstream
) -> None:
    # HTTP/2 servers pass such bytes on; the ASGI-to-WSGI step decoded them as ASCII: a 500
    # and a traceback for each request. Percent-encoded, the query means the same.
    port, key = h2_gateway
    path = RELAY.encode() + b"/q?a=\xff&b=%20"
    reply = h2_request(port, "GET", path, [("authorization", f"Bearer {key}")], None)  # type: ignore[arg-type]
    assert reply.status == 200, reply.body
    assert upstream.last().target == "/q?a=%FF&b=%20"
