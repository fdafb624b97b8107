"""1 MiB and 100 MiB through the catch-all, both ways, byte-exact and in bounded memory.

The gateway (a Flask host wrapped by the middleware) runs in a subprocess under a real WSGI
server, so that its peak resident memory can be read from ``/proc`` (``VmHWM``) while the
bodies stream through it. The test process never holds a whole body either: both ends hash
the bytes as they go by.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from tests.integration.gateway_process import GatewayProcess, start_gateway_process
from tests.integration.sink import SinkUpstream, pattern_blocks, pattern_digest, serve_sink

MiB = 1024 * 1024
#: How much the gateway's peak memory may grow while a body passes through it.
MEMORY_GROWTH_LIMIT = 60 * MiB
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
    ],
)
def gateway(request: pytest.FixtureRequest, sink: SinkUpstream) -> Iterator[GatewayProcess]:
    with start_gateway_process(request.param, sink.url) as running:
        _warm_up(running)
        yield running


def _warm_up(gateway: GatewayProcess) -> None:
    # Import and allocate everything a transfer needs before the baseline is taken.
    for _ in range(3):
        _upload(gateway, 256 * 1024, chunked=False)
        _upload(gateway, 256 * 1024, chunked=True)
        _download(gateway, 256 * 1024, chunked=False)
        _download(gateway, 256 * 1024, chunked=True)


def _upload(gateway: GatewayProcess, size: int, *, chunked: bool) -> dict[str, object]:
    connection = gateway.connection()
    try:
        framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
        connection.request(
            "PUT",
            "/r/containers/svc/upload",
            body=pattern_blocks(size),
            headers={**gateway.auth, **framing},
            encode_chunked=chunked,
        )
        response = connection.getresponse()
        assert response.status == 200
        answer: dict[str, object] = json.loads(response.read())
        return answer
    finally:
        connection.close()


def _download(gateway: GatewayProcess, size: int, *, chunked: bool) -> tuple[int, str]:
    connection = gateway.connection()
    try:
        query = f"size={size}" + ("&chunked=1" if chunked else "")
        connection.request("GET", f"/r/containers/svc/download?{query}", headers=gateway.auth)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == (None if chunked else str(size))
        digest = hashlib.sha256()
        received = 0
        while piece := response.read(MiB):
            digest.update(piece)
            received += len(piece)
        return received, digest.hexdigest()
    finally:
        connection.close()


FRAMING = [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")]


@pytest.mark.parametrize("chunked", FRAMING)
@pytest.mark.parametrize("size", SIZES)
def test_upload_reaches_the_upstream_byte_exact_in_bounded_memory(
    gateway: GatewayProcess, sink: SinkUpstream, size: int, chunked: bool
) -> None:
    baseline = gateway.reset_peak()
    answer = _upload(gateway, size, chunked=chunked)
    growth = gateway.memory("VmHWM") - baseline
    assert answer == {"size": size, "sha256": pattern_digest(size)}
    upload = sink.uploads[-1]
    assert upload.complete
    assert upload.transfer_encoding == ("chunked" if chunked else None)
    assert growth < MEMORY_GROWTH_LIMIT, f"peak grew by {growth / MiB:.1f} MiB"


@pytest.mark.parametrize("chunked", FRAMING)
@pytest.mark.parametrize("size", SIZES)
def test_download_reaches_the_client_byte_exact_in_bounded_memory(
    gateway: GatewayProcess, size: int, chunked: bool
) -> None:
    baseline = gateway.reset_peak()
    received, digest = _download(gateway, size, chunked=chunked)
    growth = gateway.memory("VmHWM") - baseline
    assert (received, digest) == (size, pattern_digest(size))
    assert growth < MEMORY_GROWTH_LIMIT, f"peak grew by {growth / MiB:.1f} MiB"
