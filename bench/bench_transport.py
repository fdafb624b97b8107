"""Per-request cost of each transport for a small GET over a kept-alive loopback connection.

Run: ``python bench/bench_transport.py`` (writes ``bench/results/transport.md``).

Each round sends ``GET /download?size=100`` to the raw loopback upstream from
``tests/upstreams.py``, reads the body and closes the response. The first request of each
transport opens the connection; the rest reuse it, as a gateway under steady load does. A plain
``requests.Session`` (with its defaults) is measured alongside for reference.
"""

from __future__ import annotations

import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from invoke_middleware.transport import (
    HTTPTransport,
    RequestsTransport,
    Transport,
    UpstreamRequest,
)
from tests.upstreams import serve_raw

ROUNDS = 2000
REPEATS = 5


def _via(transport: Transport, url: str) -> Callable[[], None]:
    request = UpstreamRequest(method="GET", url=url, headers=(("Accept", "*/*"),))

    def call() -> None:
        response = transport.send(request)
        for _ in response:
            pass
        response.close()

    return call


def _via_session(session: requests.Session, url: str) -> Callable[[], None]:
    def call() -> None:
        session.get(url).content  # noqa: B018

    return call


def main() -> None:
    rows = []
    with serve_raw() as upstream:
        url = upstream.url + "/download?size=100"
        session = requests.Session()
        http, via_requests = HTTPTransport(), RequestsTransport()
        for name, call in [
            ("HTTPTransport", _via(http, url)),
            ("RequestsTransport", _via(via_requests, url)),
            ("requests.Session().get (reference)", _via_session(session, url)),
        ]:
            call()
            timings = timeit.repeat(call, number=ROUNDS, repeat=REPEATS)
            rows.append(
                (name, min(timings) / ROUNDS * 1e6, statistics.median(timings) / ROUNDS * 1e6)
            )
        http.close()
        via_requests.close()
        session.close()
    lines = [
        "# Transport: small GET over a kept-alive loopback connection",
        "",
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{ROUNDS} requests x {REPEATS} repeats, client and server in one process.",
        "",
        "| transport | best µs/request | median µs/request |",
        "|---|---:|---:|",
        *(f"| {name} | {best:.0f} | {median:.0f} |" for name, best, median in rows),
        "",
    ]
    out = Path(__file__).parent / "results" / "transport.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
