"""What tracing costs a relay: the OpenTelemetry wrappers with the API alone, and with an SDK.

Run: ``python bench/bench_otel.py`` (writes ``bench/results/otel.md``). In one process, in
interleaved rounds, it measures the CPU time (``time.process_time``) per call of:

- **transport**: ``send`` + read + ``close`` on a constant in-memory transport, bare and
  wrapped in :class:`~invoke_middleware.otel.TracingTransport`: the wrapper's own cost;
- **relay**: a whole catch-all relay (``GET /r/containers/bench/hello`` with an ``sk-`` key,
  through :class:`~invoke_middleware.InvokeMiddleware`, body read and closed) on the same
  constant transport, bare and through :func:`~invoke_middleware.otel.instrument`.

Each is measured with the API alone (no provider set: the no-op tracer every host without an
SDK has) and, for reference, with an SDK ``TracerProvider`` whose spans go to a processor
that drops them (the cost of making spans, without any exporter's). The upstream is in
memory so that the figures are the gateway's CPU only; the relay's CPU per request under a
real server is in ``bench/results/relay.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from invoke_middleware import CredentialKind, InMemoryServiceRegistry, InvokeMiddleware
from invoke_middleware.otel import TracingTransport, instrument
from invoke_middleware.testing import MockTransport, make_response
from invoke_middleware.transport.base import Transport, UpstreamRequest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from tests.toolkit.world import TEAM, make_service  # noqa: E402

RESULTS = BENCH / "results" / "otel.md"
PATH = "/r/containers/bench/hello"
BODY = b"hello, world\n"


class DroppingProcessor(SpanProcessor):
    """Receives every finished span and keeps none: spans are made, nothing is exported."""

    def on_end(self, span: ReadableSpan) -> None:
        return None


def constant_transport() -> Transport:
    return MockTransport(
        lambda request: make_response(200, headers=[("Content-Type", "text/plain")], body=BODY)
    )


def transport_call(transport: Transport) -> Callable[[], None]:
    request = UpstreamRequest(
        method="GET", url="http://127.0.0.1:9/hello", headers=(("Accept", "*/*"),)
    )

    def call() -> None:
        response = transport.send(request)
        for _ in response:
            pass
        response.close()

    return call


def relay_call(traced: bool, provider: TracerProvider | None) -> Callable[[], None]:
    def host(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [])
        return []

    middleware = InvokeMiddleware(
        host,
        registry=InMemoryServiceRegistry([make_service("bench", "http://127.0.0.1:9")]),
        transport=constant_transport(),
    )
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    app: Any = instrument(middleware, tracer_provider=provider) if traced else middleware

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    def call() -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": PATH,
            "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "gateway",
            "SERVER_PORT": "8080",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "gateway",
            "HTTP_AUTHORIZATION": f"Bearer {key}",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
        }
        body = app(environ, start_response)
        for _ in body:
            pass
        body.close()

    return call


def cpu_per_call(call: Callable[[], None], calls: int) -> float:
    """CPU microseconds per call over ``calls`` calls."""
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()

    sdk = TracerProvider()
    sdk.add_span_processor(DroppingProcessor())
    cases: dict[str, Callable[[], None]] = {
        "transport, bare": transport_call(constant_transport()),
        "transport, TracingTransport, API only": transport_call(
            TracingTransport(constant_transport())
        ),
        "transport, TracingTransport, SDK": transport_call(
            TracingTransport(constant_transport(), tracer_provider=sdk)
        ),
        "relay, bare": relay_call(False, None),
        "relay, instrument(), API only": relay_call(True, None),
        "relay, instrument(), SDK": relay_call(True, sdk),
    }
    for call in cases.values():  # warm-up: caches, lazy imports, the auth cache
        cpu_per_call(call, 500)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, call in cases.items():
            samples[name].append(cpu_per_call(call, args.calls))
    medians = {name: statistics.median(values) for name, values in samples.items()}

    relay = medians["relay, bare"]
    rows = [
        f"| {name} | {value:.1f} | {value - medians[name.split(',')[0] + ', bare']:+.1f} | "
        f"{(value - medians[name.split(',')[0] + ', bare']) / relay * 100:+.1f}% |"
        for name, value in medians.items()
    ]
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("opentelemetry-api", "opentelemetry-sdk")
    )
    report = "\n".join(
        [
            "# Tracing overhead (OpenTelemetry)",
            "",
            "Produced by `bench/bench_otel.py`. CPU time per call (`time.process_time`), in one",
            "process, interleaved rounds, medians over rounds; the upstream is an in-memory",
            'constant transport, so the figures are the gateway\'s CPU alone. "API only" is',
            'the no-op tracer of a host without an SDK; "SDK" makes real spans and drops them',
            "(no exporter). The last column divides the added CPU by the bare in-process relay's;",
            "under a real server and sockets a relay costs far more CPU (see",
            "`bench/results/relay.md`, gateway CPU µs/req), so the share there is smaller.",
            "",
            "## Setup",
            "",
            f"- {platform.processor() or platform.machine()}, Python {platform.python_version()},"
            f" {platform.system()} {platform.release()}",
            f"- {versions}",
            f"- `python bench/bench_otel.py --rounds {args.rounds} --calls {args.calls}`",
            "",
            "## Results (medians)",
            "",
            "| case | CPU µs/call | vs bare, µs | vs the bare relay's CPU |",
            "|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
