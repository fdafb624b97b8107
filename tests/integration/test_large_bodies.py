"""1 MiB and 100 MiB through the catch-all, both ways, byte-exact and in bounded memory.

The gateway (a Flask host wrapped by the middleware) runs in a subprocess under a real WSGI
server, so that its peak resident memory can be read from ``/proc`` (``VmHWM``) while the
bodies stream through it. The test process never holds a whole body either: both ends hash
the bytes as they go by.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.gateway import CLIENT_TIMEOUT
from tests.integration.sink import SinkUpstream, pattern_blocks, pattern_digest, serve_sink

MiB = 1024 * 1024
#: How much the gateway's peak memory may grow while a body passes through it.
MEMORY_GROWTH_LIMIT = 60 * MiB
SIZES = [pytest.param(MiB, id="1MiB"), pytest.param(100 * MiB, id="100MiB")]
_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class GatewayProcess:
    """A gateway running in a subprocess: where it listens and which process serves."""

    port: int
    key: str
    pid: int

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def memory(self, field: str) -> int:
        """``VmRSS`` or ``VmHWM`` of the serving process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise LookupError(field)

    def reset_peak(self) -> int:
        """Reset the peak to the current resident size (Linux ``clear_refs``); return it."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.memory("VmRSS")


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
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.gateway_process", request.param, sink.url],
        cwd=_REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the gateway process did not start"
        info = json.loads(process.stdout.readline())
        running = GatewayProcess(port=info["port"], key=info["key"], pid=info["pid"])
        _warm_up(running)
        yield running
    finally:
        process.terminate()
        process.wait(30)
        process.stdin.close()
        process.stdout.close()


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
