"""The catch-all and invoke routes against werkzeug's ``ProxyMiddleware``, under two servers.

Run: ``python bench/bench_relay.py`` (writes ``bench/results/relay.md``; ``--help`` for the
knobs). It starts, all on 127.0.0.1, nginx (``--upstream``; else ``bench/upstream.py``) for the
small requests, the upstream of ``bench/upstream.py`` for the streams and, under each
server (gunicorn gthread, ``--workers`` x ``--threads``, ``--preload``; waitress,
``--threads``), the gateways of ``bench/apps.py``: **bare** (the host app answering by
itself: the server's own cost), **floor** (a relay reduced to its system calls: how near the
bare server any relay can come), **proxy** (werkzeug ``ProxyMiddleware``) and the relay
(InvokeMiddleware, ``sk-`` key), which serves both the **catch-all** (``GET
/r/containers/bench/hello``) and the **invoke** route (``POST /r/invoke/bench``, a JSON
envelope of a GET without a body). Then, in interleaved rounds, its sections:

- ``gateways``: each gateway under ``wrk -t1`` (else a Python keep-alive client) at each
  ``--connections``: requests per second, p50 and p99 latency, and the CPU the gateway's
  processes (and the upstream) spent per request, read with psutil before and after;
- ``streaming``: one ``--stream-mib`` download and one upload through the catch-all and
  through the proxy, by a client that never holds the body: MiB/s, time to the first byte
  (download) or to the answer after the last byte (upload), and the growth of the gateway
  process's resident memory (peak sampled during the transfer, minus before); and the same
  transfers straight to ``upstream.py`` (**direct**). Under a server that reads a whole
  request body before calling the app (waitress), the report splits an upload's time into
  that reading, the same for any app, and the relay after it;
- ``sse``: server-sent events through the catch-all, each stamped by the upstream when
  written: how late each arrives, against the same stream read from the upstream directly;
- ``standalone``: ``invoke-middleware serve`` (gunicorn engine) with 1 process and with one
  per core, under the same load.

On a machine with few cores the client, the upstream and the gateway compete for them, so CPU
per request is the fairest of the throughput figures, and ratios of adjacent rounds the
steadiest.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from harness import (
    BENCH,
    HELLO,
    INVOKE_HELLO,
    PATH,
    ROOT,
    Load,
    MiB,
    PeakRSS,
    Request,
    check,
    cpu_model,
    cpu_seconds,
    free_port,
    gunicorn_command,
    nginx_path,
    nginx_upstream,
    python_load,
    python_upstream,
    running,
    serve_command,
    serve_config,
    source_revision,
    standalone_gateway,
    waitress_command,
    workers_of,
    wrk_load,
    wrk_version,
)

# What bench_limits.py and bench_serve.py take from here.
__all__ = [
    "PATH",
    "ROOT",
    "Round",
    "check",
    "cpu_seconds",
    "free_port",
    "gunicorn_command",
    "measure",
    "python_load",
    "running",
    "workers_of",
    "wrk_load",
]

RESULTS = BENCH / "results" / "relay.md"
SECTIONS = ("gateways", "streaming", "sse", "standalone")
SERVERS = ("gunicorn", "waitress")
#: Gateway -> (the apps.py factory serving it, the request it gets).
GATEWAYS: dict[str, tuple[str, Request]] = {
    "bare": ("make_bare()", HELLO),
    "floor": ("make_floor()", HELLO),
    "proxy": ("make_proxy()", HELLO),
    "catch-all": ("make_relay()", HELLO),
    "invoke": ("make_relay()", INVOKE_HELLO),
}
STREAMED = ("catch-all", "proxy")
DIRECTIONS = ("download", "upload")
#: The service (and proxy route) of downloads, uploads and events: ``upstream.py``.
STREAM_PREFIX = "/r/containers/stream"
#: The streaming rows of the transfers sent to ``upstream.py`` without a gateway.
DIRECT = "direct"
#: Servers that read the whole request body (into memory or a file) before the app runs:
#: the app has an upload's first byte only when the client has sent its last.
SPOOLING_SERVERS = frozenset({"waitress"})
BLOCK = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class Round:
    """One load run against one gateway."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    gateway_user_s: float
    gateway_system_s: float
    upstream_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def gateway_us(self) -> float:
        return (self.gateway_user_s + self.gateway_system_s) / self.requests * 1e6

    @property
    def gateway_user_us(self) -> float:
        return self.gateway_user_s / self.requests * 1e6

    @property
    def gateway_system_us(self) -> float:
        return self.gateway_system_s / self.requests * 1e6

    @property
    def upstream_us(self) -> float:
        return self.upstream_cpu_s / self.requests * 1e6


@dataclass(frozen=True, kw_only=True)
class Transfer:
    """One streamed body through one gateway."""

    mib_s: float
    #: Download: request sent to first body byte; upload: last byte sent to the answer.
    wait_ms: float
    rss_growth_mib: float


@dataclass(frozen=True)
class Served:
    """One gateway app under one server, and the processes that handle its requests."""

    port: int
    processes: list[psutil.Process]


@dataclass
class Results:
    """Every round, keyed by what was measured."""

    #: (server, connections, gateway) -> rounds
    gateways: dict[tuple[str, int, str], list[Round]] = field(default_factory=dict)
    #: (server, direction, gateway) -> transfers
    streaming: dict[tuple[str, str, str], list[Transfer]] = field(default_factory=dict)
    #: "direct" or server -> per round, the delay of each event in ms
    sse: dict[str, list[list[float]]] = field(default_factory=dict)
    #: (connections, processes) -> rounds
    standalone: dict[tuple[int, int], list[Round]] = field(default_factory=dict)
    #: what the servers wrote on standard error: line (numbers masked) -> count
    logged: Counter[str] = field(default_factory=Counter)
    #: the commit the servers were started from (the tree may change while they run)
    revision: str = field(default_factory=source_revision)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load_fn(args: argparse.Namespace) -> Callable[..., Load]:
    return wrk_load if args.client == "wrk" else python_load


def measure(
    port: int,
    key: str,
    workers: list[psutil.Process],
    upstream: psutil.Process,
    args: argparse.Namespace,
    *,
    connections: int | None = None,
    request: Request = HELLO,
) -> Round:
    """One round of load on ``port``; CPU read from ``workers`` and ``upstream``."""
    gateway_before, upstream_before = cpu_seconds(workers), cpu_seconds([upstream])
    load = _load_fn(args)(
        port,
        key,
        connections=args.connections if connections is None else connections,
        seconds=args.seconds,
        request=request,
    )
    gateway_after, upstream_after = cpu_seconds(workers), cpu_seconds([upstream])
    return Round(
        requests=load.requests,
        seconds=load.seconds,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        gateway_user_s=gateway_after[0] - gateway_before[0],
        gateway_system_s=gateway_after[1] - gateway_before[1],
        upstream_cpu_s=sum(upstream_after) - sum(upstream_before),
    )


def _describe(result: Round) -> str:
    return (
        f"{result.rps:7.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
        f"gateway {result.gateway_us:6.1f} µs/req (user {result.gateway_user_us:5.1f}, "
        f"sys {result.gateway_system_us:5.1f})  upstream {result.upstream_us:5.1f} µs/req"
    )


# -- streaming clients -------------------------------------------------------------------------


def download(
    port: int, key: str, size: int, processes: list[psutil.Process], prefix: str = STREAM_PREFIX
) -> Transfer:
    """GET ``size`` bytes through the gateway (``prefix``: the route to the stream upstream;
    empty to ask it directly), read into one reused buffer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    buffer = memoryview(bytearray(BLOCK))
    try:
        with PeakRSS(processes) as memory:
            started = time.perf_counter()
            connection.request(
                "GET",
                f"{prefix}/download?bytes={size}",
                headers={"Authorization": f"Bearer {key}"},
            )
            response = connection.getresponse()
            received = len(response.read1(BLOCK))
            first = time.perf_counter()
            while count := response.readinto(buffer):
                received += count
            finished = time.perf_counter()
    finally:
        connection.close()
    if response.status != 200 or received != size:
        raise RuntimeError(
            f"download: {response.status} {response.getheaders()}, {received} of {size} bytes"
        )
    return Transfer(
        mib_s=size / MiB / (finished - started),
        wait_ms=(first - started) * 1e3,
        rss_growth_mib=memory.growth / MiB,
    )


def upload(
    port: int, key: str, size: int, processes: list[psutil.Process], prefix: str = STREAM_PREFIX
) -> Transfer:
    """POST ``size`` bytes (``Content-Length``) through the gateway (``prefix`` as for
    :func:`download`), one block sent again and again; the upstream answers how many it
    received."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    block = memoryview(bytes(BLOCK))
    try:
        with PeakRSS(processes) as memory:
            started = time.perf_counter()
            connection.putrequest("POST", f"{prefix}/upload")
            connection.putheader("Authorization", f"Bearer {key}")
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader("Content-Length", str(size))
            connection.endheaders()
            left = size
            while left:
                piece = block[: min(left, BLOCK)]
                connection.send(piece)
                left -= len(piece)
            sent = time.perf_counter()
            response = connection.getresponse()
            answer = response.read()
            finished = time.perf_counter()
    finally:
        connection.close()
    if response.status != 200 or answer != b"%d\n" % size:
        raise RuntimeError(f"upload of {size} bytes: {response.status} {answer[:200]!r}")
    return Transfer(
        mib_s=size / MiB / (finished - started),
        wait_ms=(finished - sent) * 1e3,
        rss_growth_mib=memory.growth / MiB,
    )


def event_delays(
    port: int, path: str, key: str | None, events: int, interval: float
) -> list[float]:
    """Read ``events`` server-sent events from ``path``; for each, ms between the upstream
    stamping it and this client reading its line."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Accept": "text/event-stream"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    delays: list[float] = []
    try:
        connection.request("GET", f"{path}?events={events}&interval={interval:g}", headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"events: {response.status} {response.read()[:200]!r}")
        while line := response.readline():
            if line.startswith(b"data: "):
                delays.append((time.monotonic() - float(line[6:])) * 1e3)
    finally:
        connection.close()
    if len(delays) != events:
        raise RuntimeError(f"events: {len(delays)} of {events} arrived")
    return delays


# -- the run -----------------------------------------------------------------------------------


def serve_gateways(
    stack: ExitStack, args: argparse.Namespace, scratch: Path, upstream_url: str, stream_url: str
) -> tuple[dict[tuple[str, str], Served], dict[str, str]]:
    """Every app of ``GATEWAYS`` under every server: (server, factory) -> Served, and the
    relay's key under each server."""
    served: dict[tuple[str, str], Served] = {}
    keys: dict[str, str] = {}
    for server in args.servers:
        env = {
            **os.environ,
            "PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}",
            "BENCH_UPSTREAM": upstream_url,
            "BENCH_STREAM_UPSTREAM": stream_url,
            "BENCH_KEY_FILE": str(scratch / f"key-{server}"),
        }
        for factory in dict.fromkeys(factory for factory, _ in GATEWAYS.values()):
            port = free_port()
            if server == "gunicorn":
                command = gunicorn_command(port, factory, args)
            else:
                command = waitress_command(port, factory, args.threads)
            log = scratch / f"{server}-{factory.strip('()')}.log"
            master = stack.enter_context(running(command, port, env, log=log))
            processes = workers_of(master, args.workers) if server == "gunicorn" else [master]
            served[server, factory] = Served(port, processes)
            _progress(f"{server} {factory}: port {port}, pids {[p.pid for p in processes]}")
        keys[server] = (scratch / f"key-{server}").read_text(encoding="utf-8")
    return served, keys


def run_gateways(
    args: argparse.Namespace,
    served: dict[tuple[str, str], Served],
    keys: dict[str, str],
    upstream: psutil.Process,
    results: Results,
) -> None:
    for server in args.servers:
        for name, (factory, request) in GATEWAYS.items():
            port = served[server, factory].port
            check(port, keys[server], request)
            # Warm-up: pools, caches, lazy imports, the servers' threads.
            warm = min(2.0, args.seconds)
            _load_fn(args)(
                port, keys[server], connections=max(args.connections), seconds=warm, request=request
            )
            _progress(f"warm: {server} {name}")
    for index in range(args.rounds):
        for server in args.servers:
            for connections in args.connections:
                for name, (factory, request) in GATEWAYS.items():
                    gateway = served[server, factory]
                    result = measure(
                        gateway.port,
                        keys[server],
                        gateway.processes,
                        upstream,
                        args,
                        connections=connections,
                        request=request,
                    )
                    results.gateways.setdefault((server, connections, name), []).append(result)
                    _progress(
                        f"round {index + 1} {server} c{connections} {name:9} {_describe(result)}"
                    )


def run_streaming(
    args: argparse.Namespace,
    served: dict[tuple[str, str], Served],
    keys: dict[str, str],
    stream_upstream: Served,
    results: Results,
) -> None:
    size = args.stream_mib * MiB
    transfers = {"download": download, "upload": upload}
    for server in args.servers:  # warm-up: buffers, pools, lazy imports
        for name in STREAMED:
            gateway = served[server, GATEWAYS[name][0]]
            for transfer in transfers.values():
                transfer(gateway.port, keys[server], 4 * MiB, gateway.processes)
    for index in range(args.rounds):
        for server in args.servers:
            for direction, transfer in transfers.items():
                for name in STREAMED:
                    gateway = served[server, GATEWAYS[name][0]]
                    result = transfer(gateway.port, keys[server], size, gateway.processes)
                    results.streaming.setdefault((server, direction, name), []).append(result)
                    _progress(_describe_transfer(index, server, direction, name, result))
        # The client and the upstream alone, in the same round, without a gateway.
        for direction, transfer in transfers.items():
            result = transfer(stream_upstream.port, "", size, stream_upstream.processes, prefix="")
            results.streaming.setdefault((DIRECT, direction, DIRECT), []).append(result)
            _progress(_describe_transfer(index, DIRECT, direction, DIRECT, result))


def _describe_transfer(index: int, server: str, direction: str, name: str, t: Transfer) -> str:
    return (
        f"round {index + 1} {server} {direction:8} {name:9} {t.mib_s:7.1f} MiB/s"
        f"  wait {t.wait_ms:7.2f} ms  RSS +{t.rss_growth_mib:6.2f} MiB"
    )


def run_sse(
    args: argparse.Namespace,
    served: dict[tuple[str, str], Served],
    keys: dict[str, str],
    upstream_port: int,
    results: Results,
) -> None:
    for index in range(args.rounds):
        streams: dict[str, tuple[int, str, str | None]] = {
            "direct": (upstream_port, "/sse", None),
            **{
                server: (served[server, "make_relay()"].port, f"{STREAM_PREFIX}/sse", keys[server])
                for server in args.servers
            },
        }
        for name, (port, path, key) in streams.items():
            delays = event_delays(port, path, key, args.sse_events, args.sse_interval)
            results.sse.setdefault(name, []).append(delays)
            p50, p99 = _percentiles(delays)
            _progress(
                f"round {index + 1} events {name:8} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                f"max {max(delays):6.2f} ms"
            )


def run_standalone(
    args: argparse.Namespace,
    stack: ExitStack,
    scratch: Path,
    upstream_url: str,
    upstream: psutil.Process,
    results: Results,
) -> None:
    directory = scratch / "standalone"
    directory.mkdir()
    key = standalone_gateway(directory, upstream_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    servers: dict[int, Served] = {}
    for processes in dict.fromkeys((1, args.standalone_workers)):
        port = free_port()
        server = {"engine": "gunicorn", "workers": processes, "threads": args.threads}
        # By default one team holds at most half of a process's threads (429 past it), and a
        # quarter is kept for teams with nothing in flight: every thread may relay here, as in
        # the other sections, where no limiter runs.
        limits = {
            "team_max_in_flight": args.threads,
            "max_in_flight": args.threads,
            "idle_team_reserve": 0,
        }
        config = serve_config(
            directory, f"serve-{processes}.toml", port=port, server=server, limits=limits
        )
        # The relay log (a line per request) is part of the work; the file keeps its errors.
        log = scratch / f"standalone-{processes}.log"
        master = stack.enter_context(running(serve_command(config), port, env, log=log))
        servers[processes] = Served(port, workers_of(master, processes))
        check(port, key)
        _load_fn(args)(port, key, connections=max(args.connections), seconds=min(2.0, args.seconds))
        _progress(f"standalone, {processes} processes: port {port}")
    for index in range(args.rounds):
        for connections in args.connections:
            for processes, gateway in servers.items():
                result = measure(
                    gateway.port, key, gateway.processes, upstream, args, connections=connections
                )
                results.standalone.setdefault((connections, processes), []).append(result)
                _progress(
                    f"round {index + 1} standalone c{connections} x{processes} {_describe(result)}"
                )


def read_logs(scratch: Path) -> Counter[str]:
    """Every line the servers wrote on standard error but their notices (``INFO``), with
    numbers masked so that repeats group."""
    lines: Counter[str] = Counter()
    for log in sorted(scratch.glob("*.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if " INFO " in line or line.startswith("INFO:"):
                continue
            lines[f"{log.stem}: {re.sub(r'[0-9]+', 'N', line.strip())}"] += 1
    return lines


def run(args: argparse.Namespace) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        with ExitStack() as stack:
            stream_url, stream_process = stack.enter_context(python_upstream())
            stream_port = urlsplit(stream_url).port or 80
            upstream = stream_process
            upstream_url = stream_url
            if args.upstream == "nginx":
                upstream_url, upstream = stack.enter_context(nginx_upstream(scratch / "nginx"))
            if {"gateways", "streaming", "sse"} & set(args.only):
                served, keys = serve_gateways(stack, args, scratch, upstream_url, stream_url)
                if "gateways" in args.only:
                    run_gateways(args, served, keys, upstream, results)
                if "streaming" in args.only:
                    direct = Served(stream_port, [stream_process])
                    run_streaming(args, served, keys, direct, results)
                if "sse" in args.only:
                    run_sse(args, served, keys, stream_port, results)
            if "standalone" in args.only:
                run_standalone(args, stack, scratch, upstream_url, upstream, results)
        # The servers have stopped: their logs are complete.
        results.logged = read_logs(scratch)
    return results


# -- the report --------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _percentiles(delays: list[float]) -> tuple[float, float]:
    quantiles = statistics.quantiles(delays, n=100, method="inclusive")
    return quantiles[49], quantiles[98]


def _paired(
    first: list[Round], second: list[Round], value: Callable[[Round, Round], float]
) -> float:
    """The median over rounds of ``value(first round n, second round n)``: adjacent rounds
    share the machine's conditions, so their ratio is the steadier figure."""
    return _median([value(a, b) for a, b in zip(first, second, strict=True)])


#: An app whose CPU per request differs more than this between its rounds was not measured
#: under the same conditions from round to round (a server thrashing, the machine busy): the
#: goals read from its rounds are reported as unsteady, neither met nor missed.
UNSTEADY = 2.0


def _spread(*apps: list[Round]) -> float:
    """The largest ratio between two rounds' CPU per request of one of ``apps``."""
    return max(
        max(r.gateway_us for r in rounds) / min(r.gateway_us for r in rounds) for rounds in apps
    )


@dataclass(frozen=True)
class Goal:
    what: str
    where: str
    measured: float
    target: float
    above: bool  # the goal is to reach at least ``target`` (else: to stay under it)
    unit: str = ""
    #: Of the rounds it was read from (see UNSTEADY); 1 where it does not apply.
    spread: float = 1.0

    def row(self) -> str:
        met = self.measured >= self.target if self.above else self.measured < self.target
        sign = "≥" if self.above else "<"
        verdict = "yes" if met else "**no**"
        if self.spread > UNSTEADY:
            verdict = f"unsteady: CPU per request varied {self.spread:.1f}x between rounds"
        return (
            f"| {self.what} | {self.where} | {self.measured:.2f}{self.unit} | "
            f"{sign} {self.target:g}{self.unit} | {verdict} |"
        )


def goals(args: argparse.Namespace, results: Results) -> list[Goal]:
    found: list[Goal] = []
    rps: Callable[[Round, Round], float] = lambda a, b: a.rps / b.rps  # noqa: E731
    for server in args.servers:
        for connections in args.connections:
            rounds = {name: results.gateways.get((server, connections, name)) for name in GATEWAYS}
            if not all(rounds.values()):
                continue
            where = f"{server}, {connections} connections"
            catch_all, proxy = rounds["catch-all"] or [], rounds["proxy"] or []
            bare, invoke = rounds["bare"] or [], rounds["invoke"] or []
            for what, mine, theirs, target in (
                ("req/s catch-all / proxy", catch_all, proxy, 1.5),
                ("req/s catch-all / bare", catch_all, bare, 0.6),
                ("req/s invoke / catch-all", invoke, catch_all, 0.85),
            ):
                ratio = _paired(mine, theirs, rps)
                found.append(Goal(what, where, ratio, target, True, spread=_spread(mine, theirs)))
    for server in args.servers:
        for direction in DIRECTIONS:
            catch_all_streams = results.streaming.get((server, direction, "catch-all"))
            proxy_streams = results.streaming.get((server, direction, "proxy"))
            if not catch_all_streams or not proxy_streams:
                continue
            where = f"{server}, {args.stream_mib} MiB {direction}"
            ratio = _median(
                [a.mib_s / b.mib_s for a, b in zip(catch_all_streams, proxy_streams, strict=True)]
            )
            growth = max(t.rss_growth_mib for t in catch_all_streams)
            found += [
                Goal("MiB/s catch-all / proxy", where, ratio, 1.5, True),
                Goal("catch-all RSS growth (worst round)", where, growth, 8, False, " MiB"),
            ]
    for server in args.servers:
        if server in results.sse:
            _, p99 = _percentiles([d for delays in results.sse[server] for d in delays])
            where = f"{server}, {args.sse_events} events every {args.sse_interval * 1e3:g} ms"
            found.append(Goal("event delay p99 through the catch-all", where, p99, 5, False, " ms"))
    for connections in args.connections:
        one = results.standalone.get((connections, 1))
        many = results.standalone.get((connections, args.standalone_workers))
        if one and many and args.standalone_workers > 1:
            where = f"`serve`, gunicorn, {connections} connections"
            ratio = _paired(many, one, rps)
            found.append(
                Goal(f"req/s {args.standalone_workers} processes / 1", where, ratio, 1.8, True)
            )
    return found


def _upstream_text(args: argparse.Namespace) -> str:
    if args.upstream == "python":
        return "`bench/upstream.py` (asyncio, one thread)"
    version = (
        subprocess.run(
            [str(nginx_path()), "-v"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stderr.strip()
        .removeprefix("nginx version: ")
    )
    return f"{version} (one process, `return 200` of the same 13 bytes, kept-alive connections)"


def _setup(args: argparse.Namespace, results: Results, load: str) -> list[str]:
    client = (
        f"`wrk -t1 -c<connections> -d{args.seconds:g}s --latency` ({wrk_version()}), one client"
        " thread, kept-alive connections; the invoke route's POST and body from a `-s` Lua script"
        if args.client == "wrk"
        else "a Python keep-alive client, one thread and connection per connection (it shares"
        " the cores with the gateway)"
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("gunicorn", "waitress", "werkzeug")
    )
    return [
        "## Setup",
        "",
        f"- {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, {versions}, invoke_middleware at "
        f"{results.revision}",
        f"- gunicorn: `--worker-class gthread --workers {args.workers} --threads {args.threads}"
        " --preload --reuse-port --keep-alive 30`; waitress: `waitress-serve --threads "
        f"{args.threads}` (one process)",
        f"- upstream of the small requests: {_upstream_text(args)}; of the downloads, uploads"
        " and events: `bench/upstream.py` (asyncio, one thread)",
        f"- load: {client}; connections: {', '.join(map(str, args.connections))}",
        f"- {args.rounds} interleaved rounds of {args.seconds:g} s after a warm-up; medians over"
        " rounds",
        "- CPU per request: user + system time of the processes serving the gateway (gunicorn's"
        " workers, waitress's process) and of the upstream over the round, divided by the"
        " requests served in it",
        f"- load average (1 min) before and after the run: {load}",
        f"- command: `{' '.join(['python', 'bench/bench_relay.py', *sys.argv[1:]])}`",
        "",
    ]


def _gateway_tables(args: argparse.Namespace, results: Results) -> list[str]:
    lines = [
        "### Small requests",
        "",
        "Each column is its own median over the rounds (so user + system need not add up);"
        " *above bare* is the median over rounds of (gateway CPU - bare's in the same pass).",
        "",
        "| server | conns | gateway | req/s | p50 ms | p99 ms | gateway CPU µs/req | user |"
        " system | above bare | upstream µs/req |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (server, connections, name), rounds in results.gateways.items():
        bare = results.gateways[server, connections, "bare"]
        above = _paired(rounds, bare, lambda a, b: a.gateway_us - b.gateway_us)
        lines.append(
            f"| {server} | {connections} | {name} | {_median([r.rps for r in rounds]):.0f} | "
            f"{_median([r.p50_ms for r in rounds]):.2f} | "
            f"{_median([r.p99_ms for r in rounds]):.2f} | "
            f"{_median([r.gateway_us for r in rounds]):.0f} | "
            f"{_median([r.gateway_user_us for r in rounds]):.0f} | "
            f"{_median([r.gateway_system_us for r in rounds]):.0f} | {above:.0f} | "
            f"{_median([r.upstream_us for r in rounds]):.0f} |"
        )
    return [*lines, ""]


def _streaming_table(args: argparse.Namespace, results: Results) -> list[str]:
    lines = [
        f"### Streaming ({args.stream_mib} MiB)",
        "",
        "*wait*: for a download, from sending the request to the first body byte; for an"
        " upload, from the last byte sent to the whole answer. *RSS growth*: the gateway"
        " process's resident memory, peak sampled every 5 ms during the transfer minus before"
        " it (for gunicorn, the worker that grew most); median and worst round. *direct*: the"
        " same transfers to `upstream.py` without a gateway (its RSS growth is the"
        " upstream's).",
        "",
        "| server | direction | gateway | MiB/s | wait ms | RSS growth MiB | worst |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (server, direction, name), transfers in results.streaming.items():
        lines.append(
            f"| {server} | {direction} | {name} | {_median([t.mib_s for t in transfers]):.0f} | "
            f"{_median([t.wait_ms for t in transfers]):.2f} | "
            f"{_median([t.rss_growth_mib for t in transfers]):.2f} | "
            f"{max(t.rss_growth_mib for t in transfers):.2f} |"
        )
    return [*lines, ""]


def _sse_table(args: argparse.Namespace, results: Results) -> list[str]:
    lines = [
        "### Server-sent events",
        "",
        f"{args.sse_events} events, one every {args.sse_interval * 1e3:g} ms, each stamped with"
        " `time.monotonic()` by the upstream as it writes it; the delay is the client's clock"
        " when it has read the event's line minus the stamp. *direct* reads the upstream"
        " without a gateway (the client's and the loopback's share). Over all rounds' events.",
        "",
        "| stream | events | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rounds in results.sse.items():
        delays = [d for each in rounds for d in each]
        p50, p99 = _percentiles(delays)
        label = name if name == "direct" else f"{name}, catch-all"
        lines.append(f"| {label} | {len(delays)} | {p50:.2f} | {p99:.2f} | {max(delays):.2f} |")
    return [*lines, ""]


def _standalone_table(args: argparse.Namespace, results: Results) -> list[str]:
    lines = [
        "### Standalone gateway",
        "",
        f'`invoke-middleware serve` with `[server] engine = "gunicorn"`, `threads ='
        f" {args.threads}`, `workers` 1 and {args.standalone_workers}; `GET {PATH}` with an"
        " `sk-` key from the store; its log line per request is written to a file.",
        "",
        "| conns | processes | req/s | p50 ms | p99 ms | gateway CPU µs/req |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for (connections, processes), rounds in results.standalone.items():
        lines.append(
            f"| {connections} | {processes} | {_median([r.rps for r in rounds]):.0f} | "
            f"{_median([r.p50_ms for r in rounds]):.2f} | "
            f"{_median([r.p99_ms for r in rounds]):.2f} | "
            f"{_median([r.gateway_us for r in rounds]):.0f} |"
        )
    return [*lines, ""]


def _ratios(args: argparse.Namespace, results: Results) -> list[str]:
    lines = ["## Ratios", "", "Medians over rounds of the ratio of adjacent rounds.", ""]
    for server in args.servers:
        for connections in args.connections:
            rounds = {n: results.gateways.get((server, connections, n), []) for n in GATEWAYS}
            if not all(rounds.values()):
                continue
            catch_all, proxy, bare = rounds["catch-all"], rounds["proxy"], rounds["bare"]
            extra = {
                name: _paired(rounds[name], bare, lambda a, b: a.gateway_us - b.gateway_us)
                for name in ("catch-all", "invoke", "proxy")
            }
            rps = _paired(catch_all, proxy, lambda a, b: a.rps / b.rps)
            cpu = _paired(catch_all, proxy, lambda a, b: a.gateway_us / b.gateway_us)
            upstream = _paired(
                catch_all,
                proxy,
                lambda a, b: (a.gateway_us + a.upstream_us) / (b.gateway_us + b.upstream_us),
            )
            floor = rounds.get("floor")
            if floor:
                lines.append(
                    f"- {server}, {connections} connections: req/s floor / bare"
                    f" **{_paired(floor, bare, lambda a, b: a.rps / b.rps):.2f}**, catch-all /"
                    f" floor {_paired(catch_all, floor, lambda a, b: a.rps / b.rps):.2f}; CPU"
                    " per request above the floor's: catch-all"
                    f" {_paired(catch_all, floor, lambda a, b: a.gateway_us - b.gateway_us):.0f}"
                    " µs"
                )
            lines += [
                f"- {server}, {connections} connections: req/s catch-all / proxy **{rps:.2f}**,"
                f" catch-all / bare {_paired(catch_all, bare, lambda a, b: a.rps / b.rps):.2f},"
                f" invoke / catch-all "
                f"{_paired(rounds['invoke'], catch_all, lambda a, b: a.rps / b.rps):.2f};"
                f" gateway CPU per request catch-all / proxy {cpu:.2f} (with the upstream's"
                f" {upstream:.2f}); above bare: catch-all {extra['catch-all']:.0f} µs, invoke"
                f" {extra['invoke']:.0f} µs, proxy {extra['proxy']:.0f} µs"
                f" ({extra['catch-all'] / extra['proxy']:.2f}x)",
            ]
    for server in args.servers:
        for direction in DIRECTIONS:
            mine = results.streaming.get((server, direction, "catch-all"))
            theirs = results.streaming.get((server, direction, "proxy"))
            if mine and theirs:
                ratio = _median([a.mib_s / b.mib_s for a, b in zip(mine, theirs, strict=True)])
                lines.append(f"- {server}, {direction}: MiB/s catch-all / proxy **{ratio:.2f}**")
                direct = results.streaming.get((DIRECT, direction, DIRECT))
                if direction == "upload" and server in SPOOLING_SERVERS and direct:
                    lines.append(_spooled_upload(args, server, mine, theirs, direct))
    for connections in args.connections:
        one = results.standalone.get((connections, 1))
        many = results.standalone.get((connections, args.standalone_workers))
        if one and many and many is not one:
            ratio = _paired(many, one, lambda a, b: a.rps / b.rps)
            cpu = _paired(many, one, lambda a, b: a.gateway_us / b.gateway_us)
            lines.append(
                f"- `serve`, {connections} connections: req/s {args.standalone_workers}"
                f" processes / 1 **{ratio:.2f}**, CPU per request {cpu:.2f}"
            )
    return [*lines, ""]


def _spooled_upload(
    args: argparse.Namespace,
    server: str,
    mine: list[Transfer],
    theirs: list[Transfer],
    direct: list[Transfer],
) -> str:
    """Where an upload's time goes under a server that reads the whole body before the app
    runs, and how short the relay would have to be for the catch-all to reach 1.5x the
    proxy: the server's reading (the client's sending, before it waits) is the same for any
    app; only the rest (*wait*) is the app's, and the upstream's receiving is part of it."""
    mib = float(args.stream_mib)
    reading = _median([mib / t.mib_s - t.wait_ms / 1e3 for t in mine])
    # 1.5x the proxy's MiB/s is the proxy's time / 1.5; the reading is spent before the app.
    needed = _median([mib / t.mib_s / 1.5 for t in theirs]) - reading
    relay_time = _median([t.wait_ms for t in mine])
    proxy_time = _median([t.wait_ms for t in theirs])
    upstream_time = _median([mib / t.mib_s for t in direct]) * 1e3
    need = (
        f"at most {needed * 1e3:.0f} ms ({mib / needed:.0f} MiB/s)"
        if needed > 0
        else "less than no time"
    )
    return (
        f"  - under {server} the body is read for {reading * 1e3:.0f} ms before any app runs;"
        f" relaying it then took {relay_time:.0f} ms (catch-all) and {proxy_time:.0f} ms"
        f" (proxy), and `upstream.py` took {upstream_time:.0f} ms to receive it straight from"
        f" the client (*direct*). 1.5x the proxy would need the relay to take {need}"
    )


def _every_round(results: Results) -> list[str]:
    lines = ["## Every round", ""]
    if results.gateways:
        lines += [
            "| round | server | conns | gateway | req/s | p50 ms | p99 ms | gateway CPU µs/req |",
            "|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        rows = [
            (
                index,
                f"| {index + 1} | {server} | {connections} | {name} | {r.rps:.0f} | "
                f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.gateway_us:.0f} |",
            )
            for (server, connections, name), rounds in results.gateways.items()
            for index, r in enumerate(rounds)
        ]
        lines += [row for _, row in sorted(rows, key=lambda pair: pair[0])] + [""]
    if results.streaming:
        lines += [
            "| round | server | direction | gateway | MiB/s | wait ms | RSS growth MiB |",
            "|---:|---|---|---|---:|---:|---:|",
        ]
        rows = [
            (
                index,
                f"| {index + 1} | {server} | {direction} | {name} | {t.mib_s:.0f} | "
                f"{t.wait_ms:.2f} | {t.rss_growth_mib:.2f} |",
            )
            for (server, direction, name), transfers in results.streaming.items()
            for index, t in enumerate(transfers)
        ]
        lines += [row for _, row in sorted(rows, key=lambda pair: pair[0])] + [""]
    if results.sse:
        lines += ["| round | stream | p50 ms | p99 ms | max ms |", "|---:|---|---:|---:|---:|"]
        rows = [
            (
                index,
                f"| {index + 1} | {name} | {_percentiles(delays)[0]:.2f} | "
                f"{_percentiles(delays)[1]:.2f} | {max(delays):.2f} |",
            )
            for name, rounds in results.sse.items()
            for index, delays in enumerate(rounds)
        ]
        lines += [row for _, row in sorted(rows, key=lambda pair: pair[0])] + [""]
    if results.standalone:
        lines += [
            "| round | conns | processes | req/s | p50 ms | p99 ms | gateway CPU µs/req |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = [
            (
                index,
                f"| {index + 1} | {connections} | {processes} | {r.rps:.0f} | "
                f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.gateway_us:.0f} |",
            )
            for (connections, processes), rounds in results.standalone.items()
            for index, r in enumerate(rounds)
        ]
        lines += [row for _, row in sorted(rows, key=lambda pair: pair[0])] + [""]
    return lines


def _logged(results: Results) -> list[str]:
    lines = [
        "## What the servers wrote",
        "",
        "Standard error of every server over the run, but for its `INFO` lines (digits shown"
        " as N):",
        "",
    ]
    if not results.logged:
        return [*lines, "nothing.", ""]
    lines += ["| count | line |", "|---:|---|"]
    for line, count in results.logged.most_common(15):
        text = line.replace("|", "\\|")[:200]
        lines.append(f"| {count} | `{text}` |")
    return [*lines, ""]


def report(args: argparse.Namespace, results: Results, load: str) -> str:
    lines = [
        "# The relay against werkzeug's ProxyMiddleware, under gunicorn and waitress",
        "",
        "Produced by `bench/bench_relay.py` (`bench/README.md` says what each section does),"
        " against loopback upstreams (below), in interleaved rounds:",
        "",
        "- **bare**: the host app answering by itself (the server's own cost);",
        "- **floor**: a relay reduced to its system calls (`apps.make_floor`: one kept-alive",
        "  upstream connection per thread, one send and one receive, nothing checked): how",
        "  near the bare server any relay can come;",
        "- **proxy**: the host wrapped by werkzeug's `ProxyMiddleware` (a new upstream",
        "  connection per request, as werkzeug does);",
        "- **catch-all**: `GET /r/containers/bench/hello` through `InvokeMiddleware` (an `sk-` key",
        "  in the in-memory store, the default `HTTPTransport`);",
        "- **invoke**: `POST /r/invoke/bench` to the same gateway, the same GET in a JSON",
        "  envelope.",
        "",
        *_setup(args, results, load),
        "## Goals",
        "",
        "| measure | where | measured | goal | met |",
        "|---|---|---:|---:|---|",
        *(goal.row() for goal in goals(args, results)),
        "",
        "## Results (medians)",
        "",
    ]
    if results.gateways:
        lines += _gateway_tables(args, results)
    if results.streaming:
        lines += _streaming_table(args, results)
    if results.sse:
        lines += _sse_table(args, results)
    if results.standalone:
        lines += _standalone_table(args, results)
    lines += _ratios(args, results)
    lines += _every_round(results)
    lines += _logged(results)
    lines += [
        "Figures on a shared machine move by some percent between runs; compare the ratios",
        "within one run.",
        "",
    ]
    return "\n".join(lines)


def _names(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(names) - set(choices))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose among {', '.join(choices)}")
        return names

    return parse


def _counts(text: str) -> list[int]:
    return [int(each) for each in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load round")
    parser.add_argument("--connections", type=_counts, default=[16, 64], help="e.g. 16,64")
    parser.add_argument("--servers", type=_names(SERVERS), default=list(SERVERS))
    parser.add_argument(
        "--only",
        type=_names(SECTIONS),
        default=list(SECTIONS),
        help=f"sections, among {','.join(SECTIONS)}",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=8, help="threads per process")
    parser.add_argument("--stream-mib", type=int, default=256, help="size of each transfer")
    parser.add_argument("--sse-events", type=int, default=50)
    parser.add_argument("--sse-interval", type=float, default=0.1, help="seconds")
    parser.add_argument(
        "--standalone-workers",
        type=int,
        default=os.cpu_count() or 2,
        help="the N of serve's N processes against 1",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
    )
    parser.add_argument(
        "--upstream",
        choices=("nginx", "python"),
        default="nginx" if nginx_path() else "python",
        help="what answers the small requests (downloads, uploads and events: upstream.py)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    before = os.getloadavg()[0]
    started = time.monotonic()
    results = run(args)
    text = report(args, results, f"{before:.1f} / {os.getloadavg()[0]:.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    _progress(f"written to {args.output} after {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
