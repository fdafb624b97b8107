"""Keep-alive: connections are reused, stale ones are noticed, and retries stay safe."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
import requests.adapters

from invoke_middleware.errors import UpstreamTimeoutError, UpstreamUnreachableError
from invoke_middleware.transport import HTTPTransport, RequestsTransport, Timeouts, Transport
from tests.toolkit.upstream import repeating_bytes
from tests.upstreams import RawUpstream

from ._helpers import fetch, send


def _body(*pieces: bytes) -> Iterator[bytes]:
    yield from pieces


def test_connection_is_reused_after_a_complete_response(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    for _ in range(3):
        response, _ = fetch(wire, "GET", raw_upstream.url + "/download?size=1000")
        assert response.status == 200

    assert raw_upstream.connections_accepted == 1


def test_connection_is_discarded_when_the_body_was_not_read_to_its_end(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    # Leaving the with block closes the response (UpstreamResponse is a context manager).
    with send(wire, "GET", raw_upstream.url + f"/download?size={1 << 20}") as response:
        next(iter(response))

    _, body = fetch(wire, "GET", raw_upstream.url + "/download?size=10")

    assert body == repeating_bytes(10)
    assert raw_upstream.connections_accepted == 2


def test_connection_the_peer_closed_while_idle_is_not_used(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    fetch(wire, "GET", raw_upstream.url + "/close-after-response")
    assert raw_upstream.closed_after_response.wait(10)

    # Not idempotent, so this can only succeed if the stale connection was never tried.
    response, _ = fetch(wire, "POST", raw_upstream.url + "/echo", body=b"payload")

    assert response.status == 200
    assert raw_upstream.connections_accepted == 2
    assert raw_upstream.dropped == 0


def test_idempotent_request_is_retried_once_when_a_reused_connection_closes(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    fetch(wire, "GET", raw_upstream.url + "/drop-next")

    response, _ = fetch(wire, "PUT", raw_upstream.url + "/echo", body=b"same again")

    assert response.status == 200
    assert raw_upstream.dropped == 1
    assert raw_upstream.connections_accepted == 2


@pytest.mark.parametrize(
    ("method", "streamed"),
    [
        pytest.param("POST", False, id="not-idempotent"),
        pytest.param("PUT", True, id="streamed-body-consumed"),
    ],
)
def test_request_the_upstream_may_have_processed_is_not_retried(
    wire: Transport, raw_upstream: RawUpstream, method: str, streamed: bool
) -> None:
    fetch(wire, "GET", raw_upstream.url + "/drop-next")
    body = _body(b"only ", b"once") if streamed else b"only once"

    with pytest.raises(UpstreamUnreachableError):
        send(wire, method, raw_upstream.url + "/echo", body=body, content_length=9)

    assert raw_upstream.dropped == 1
    assert raw_upstream.connections_accepted == 1


def test_idle_connections_kept_per_origin_are_bounded(raw_upstream: RawUpstream) -> None:
    transport = HTTPTransport(pool_size_per_origin=1)
    # Bodies larger than one receive: each connection stays busy until its body is read (a
    # body that arrives with its head frees the connection at once).
    size = 1024 * 1024
    try:
        first = send(transport, "GET", raw_upstream.url + f"/download?size={size}")
        second = send(transport, "GET", raw_upstream.url + f"/download?size={size}")
        for response in (first, second):
            assert b"".join(response) == repeating_bytes(size)
            response.close()
        for _ in range(2):
            fetch(transport, "GET", raw_upstream.url + "/download?size=10")
    finally:
        transport.close()

    # Two were open at once; only one was kept, and it served both later requests.
    assert raw_upstream.connections_accepted == 2


def test_a_full_pool_takes_from_the_share_that_holds_the_most(raw_upstream: RawUpstream) -> None:
    # The gateway pools per caller: team-a's four callers held one idle connection each, as
    # many tenants, and team-b's one was the one pushed out. Counted by team, team-a gives
    # up its own.
    transport = HTTPTransport(max_idle_connections=4)
    size = 1024 * 1024  # larger than one receive: each connection stays busy until read
    url = raw_upstream.url + f"/download?size={size}"
    try:
        busy = [send(transport, "GET", url, tenant="team-b caller", share="team-b")]
        busy += [
            send(transport, "GET", url, tenant=f"team-a caller-{n}", share="team-a")
            for n in range(4)
        ]
        for response in busy:  # team-b's released first: the one idle the longest
            assert b"".join(response) == repeating_bytes(size)
            response.close()
        assert raw_upstream.connections_accepted == 5
        small = raw_upstream.url + "/download?size=10"
        fetch(transport, "GET", small, tenant="team-b caller", share="team-b")
    finally:
        transport.close()
    assert raw_upstream.connections_accepted == 5  # team-b's connection was still there


def test_closed_transport_refuses_to_send(raw_upstream: RawUpstream) -> None:
    transport = HTTPTransport()
    fetch(transport, "GET", raw_upstream.url + "/download?size=10")

    transport.close()

    with pytest.raises(RuntimeError):
        send(transport, "GET", raw_upstream.url + "/download?size=10")


def test_waiting_for_a_pooled_connection_keeps_the_total_deadline(
    raw_upstream: RawUpstream,
) -> None:
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=1, pool_block=True))
    timeouts = Timeouts(connect=1.0, read=1.0, total=0.5)
    url = raw_upstream.url + "/download?size=10"
    with RequestsTransport(session) as transport:
        # The pool's one connection is held by a response nobody reads, for a while.
        held = send(transport, "GET", url, timeouts=timeouts)
        release = threading.Timer(4.0, held.close)
        release.start()
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamTimeoutError):
                send(transport, "GET", url, timeouts=timeouts)
        finally:
            release.cancel()
            held.close()
    session.close()

    assert time.monotonic() - started < 2.0


def test_a_full_pool_takes_from_the_tenant_that_holds_the_most(raw_upstream: RawUpstream) -> None:
    # Four idle connections in all. team-a holds three, team-b one; team-a's next one used to
    # push out the connection idle the longest, team-b's: a tenant with many connections (to
    # many origins) could keep every other tenant reconnecting. Now team-a gives up its own.
    transport = HTTPTransport(max_idle_connections=4)
    size = 1024 * 1024  # larger than one receive: each connection stays busy until read
    url = raw_upstream.url + f"/download?size={size}"
    try:
        busy = [send(transport, "GET", url, tenant="team-b")]
        busy += [send(transport, "GET", url, tenant="team-a") for _ in range(4)]
        for response in busy:  # team-b's released first: the one idle the longest
            assert b"".join(response) == repeating_bytes(size)
            response.close()
        assert raw_upstream.connections_accepted == 5
        fetch(transport, "GET", raw_upstream.url + "/download?size=10", tenant="team-b")
    finally:
        transport.close()
    assert raw_upstream.connections_accepted == 5  # team-b's connection was still there
