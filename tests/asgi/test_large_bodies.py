"""100 MiB through the catch-all under uvicorn, both ways, byte-exact and in bounded memory.

The FastAPI host runs in a uvicorn process of its own (:func:`tests.asgi.server.start_process`)
so that its peak resident memory (``VmHWM``, reset before each transfer) can be read while a
body streams through it; psutil cross-checks the resident size after the transfer.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from tests.asgi.server import PREFIX, start_process
from tests.integration.gateway_process import GatewayProcess
from tests.integration.sink import SinkUpstream, pattern_digest, serve_sink

MiB = 1024 * 1024
SIZE = 100 * MiB
#: How much the server's peak memory may grow while a 100 MiB body passes through it.
MEMORY_GROWTH_LIMIT = 30 * MiB
RELAY = PREFIX + "/r/containers/svc"
FRAMING = [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")]


@pytest.fixture(scope="module")
def sink() -> Iterator[SinkUpstream]:
    with serve_sink() as running:
        yield running


@pytest.fixture(scope="module")
def server(sink: SinkUpstream) -> Iterator[GatewayProcess]:
    with start_process(sink.url) as running:
        for _ in range(3):  # import and allocate what a transfer needs before any baseline
            running.upload(RELAY, 256 * 1024, chunked=True)
            running.download(RELAY, 256 * 1024, chunked=False)
        yield running


def _growth(server: GatewayProcess, baseline: int) -> int:
    peak = server.memory("VmHWM") - baseline
    # The resident size psutil reports afterwards is below the peak, never above it.
    assert psutil.Process(server.pid).memory_info().rss - baseline <= peak
    return peak


@pytest.mark.parametrize("chunked", FRAMING)
def test_100_mib_upload_reaches_the_upstream_byte_exact_in_bounded_memory(
    server: GatewayProcess, sink: SinkUpstream, chunked: bool
) -> None:
    baseline = server.reset_peak()
    answer = server.upload(RELAY, SIZE, chunked=chunked)
    growth = _growth(server, baseline)
    assert answer == {"size": SIZE, "sha256": pattern_digest(SIZE)}
    assert sink.uploads[-1].complete
    assert growth < MEMORY_GROWTH_LIMIT, f"peak grew by {growth / MiB:.1f} MiB"


@pytest.mark.parametrize("chunked", FRAMING)
def test_100_mib_download_reaches_the_client_byte_exact_in_bounded_memory(
    server: GatewayProcess, chunked: bool
) -> None:
    baseline = server.reset_peak()
    received, digest = server.download(RELAY, SIZE, chunked=chunked)
    growth = _growth(server, baseline)
    assert (received, digest) == (SIZE, pattern_digest(SIZE))
    assert growth < MEMORY_GROWTH_LIMIT, f"peak grew by {growth / MiB:.1f} MiB"
