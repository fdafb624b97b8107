"""1 MiB and 100 MiB through the catch-all, both ways, byte-exact and in bounded memory.

The gateway (a Flask host wrapped by the middleware) runs in a subprocess under a real WSGI
server, so that its peak resident memory can be read from ``/proc`` (``VmHWM``) while the
bodies stream through it. The test process never holds a whole body either: both ends hash
the bytes as they go by. Each transfer is measured from the resident size the one before left
behind, so memory a server keeps after a body (in the arena of the thread that served it, say)
counts against the next one as well.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.gateway_process import GatewayProcess, start_gateway_process
from tests.integration.sink import SinkUpstream, pattern_digest, serve_sink

MiB = 1024 * 1024
#: How much the gateway's peak memory may grow while a body passes through it: a few of the
#: relay's chunks and the server's buffers, whatever the body's size.
MEMORY_GROWTH_LIMIT = 8 * MiB
RELAY = "/r/containers/svc"
SIZES = [pytest.param(MiB, id="1MiB"), pytest.param(100 * MiB, id="100MiB")]


@pytest.fixture(scope="module")
def sink() -> Iterator[SinkUpstream]:
    with serve_sink() as running:
        yield running


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("werkzeug", id="werkzeug"),
        pytest.param("gunicorn", id="gunicorn-gthread"),
        pytest.param("waitress", id="waitress-as-served"),
    ],
)
def gateway(request: pytest.FixtureRequest, sink: SinkUpstream) -> Iterator[GatewayProcess]:
    with start_gateway_process(request.param, sink.url) as running:
        _warm_up(running)
        yield running


def _warm_up(gateway: GatewayProcess) -> None:
    # Import and allocate everything a transfer needs before the baseline is taken.
    for _ in range(3):
        gateway.upload(RELAY, 256 * 1024, chunked=False)
        gateway.upload(RELAY, 256 * 1024, chunked=True)
        gateway.download(RELAY, 256 * 1024, chunked=False)
        gateway.download(RELAY, 256 * 1024, chunked=True)


FRAMING = [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")]


@pytest.mark.parametrize("chunked", FRAMING)
@pytest.mark.parametrize("size", SIZES)
def test_upload_reaches_the_upstream_byte_exact_in_bounded_memory(
    gateway: GatewayProcess, sink: SinkUpstream, size: int, chunked: bool
) -> None:
    baseline = gateway.reset_peak()
    answer = gateway.upload(RELAY, size, chunked=chunked)
    growth = gateway.memory("VmHWM") - baseline
    assert answer == {"size": size, "sha256": pattern_digest(size)}
    upload = sink.uploads[-1]
    assert upload.complete
    # waitress reads a body whole before the gateway sees it, and passes it on with its length.
    relayed_chunked = chunked and gateway.server != "waitress"
    assert upload.transfer_encoding == ("chunked" if relayed_chunked else None)
    assert growth < MEMORY_GROWTH_LIMIT, f"peak grew by {growth / MiB:.1f} MiB"


@pytest.mark.parametrize("chunked", FRAMING)
@pytest.mark.parametrize("size", SIZES)
def test_download_reaches_the_client_byte_exact_in_bounded_memory(
    gateway: GatewayProcess, size: int, chunked: bool
) -> None:
    baseline = gateway.reset_peak()
    received, digest = gateway.download(RELAY, size, chunked=chunked)
    growth = gateway.memory("VmHWM") - baseline
    assert (received, digest) == (size, pattern_digest(size))
    assert growth < MEMORY_GROWTH_LIMIT, f"peak grew by {growth / MiB:.1f} MiB"
