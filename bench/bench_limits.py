"""What the fair-share limiter costs per request, against the catch-all relay's own cost.

Run: ``python bench/bench_limits.py`` (writes ``bench/results/limits.md``; ``--help`` for the
knobs). Redis must listen at ``--redis`` (default ``redis://127.0.0.1:6379/0``); the benchmark
uses a key prefix of its own and deletes its keys afterwards.

It starts the fixed-answer upstream of ``bench/upstream.py`` and builds, in this process,
four gateways that differ only in their limiter: **none**, **memory** (``memory://``),
**redis** (the default ``rate_batch``: one round trip reserves 16 requests) and
**redis-each** (``rate_batch=1``: one round trip per request). The limiters apply the same
policy: a concurrency cap per team and two rates (per credential and per team), high enough
never to refuse. Each gateway is called as a WSGI application, ``GET /r/containers/bench/hello``
with an ``sk-`` key, over one kept-alive upstream connection, in interleaved rounds (none,
memory, redis, redis-each, none, ...). Per round it records the CPU time of this process
(``time.process_time``: the gateway's work, plus a loop that builds the environ and drains
the body, the same for all) and the wall time, per request.

The limiter's cost is the difference with the **none** round next to it; the ratio divides it
by the relay's own CPU per request in that same pair of rounds. Redis's own CPU is not counted
(it is another process, like the upstream); its round trip shows in the wall time.

A second table times ``Limiter.admit`` and ``Admission.release`` alone, without a relay.

Served, the gateways run under gunicorn as ``bench/bench_relay.py`` runs the relay; then
the in-memory limiter runs beside two floors under it and a gateway without a limiter, in one
server process (``apps.make_relay_ab``): alternating in one gunicorn worker (CPU per request,
user and system), and counted in instructions under valgrind's callgrind, served by gunicorn
and by waitress. The counts are weighed by each server's share of user space in the relay's
CPU time, measured in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import bench_relay  # noqa: E402
import harness  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
from apps import TEAM, bench_limiter, bench_registry, host  # noqa: E402

from invoke_middleware import (  # noqa: E402
    InvokeMiddleware,
)
from invoke_middleware.auth.principal import CredentialKind, Principal  # noqa: E402
from invoke_middleware.limits import Limiter  # noqa: E402

RESULTS = BENCH / "results" / "limits.md"
PATH = "/r/containers/bench/hello"
EXPECTED_BODY = b"hello, world\n"
SERVED = {
    "none": "make_relay()",
    "memory": "make_relay('memory')",
    "redis": "make_relay('redis')",
    "redis-each": "make_relay('redis-each')",
}


@dataclass
class Pipeline:
    name: str
    app: InvokeMiddleware
    key: str

    def call(self) -> None:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": PATH,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8080",
            "HTTP_AUTHORIZATION": f"Bearer {self.key}",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
        }
        status: list[str] = []
        body = self.app(environ, lambda s, h, e=None: status.append(s))  # type: ignore[arg-type,misc]
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if not status[0].startswith("200") or data != EXPECTED_BODY:
            raise RuntimeError(f"{self.name} answered {status[0]} {data[:200]!r}")


def build(name: str, upstream_url: str, limiter: Limiter | None) -> Pipeline:
    app = InvokeMiddleware(host, registry=bench_registry(upstream_url), limiter=limiter)
    key = app.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    return Pipeline(name=name, app=app, key=key)


@dataclass(frozen=True)
class Round:
    cpu_us: float
    wall_us: float


def measure(work: Callable[[], None], requests: int) -> Round:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        work()
    return Round(
        cpu_us=(time.process_time() - cpu) / requests * 1e6,
        wall_us=(time.perf_counter() - wall) / requests * 1e6,
    )


def limiter_alone(limiter: Limiter) -> Callable[[], None]:
    principal = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, credential_id="sk-bench")
    service = bench_registry("http://127.0.0.1:9").get(TEAM, "bench")
    assert service is not None

    def work() -> None:
        limiter.admit(principal, service, route="relay", request_id="bench").release()

    return work


def _upstream_for_servers(
    stack: ExitStack, args: argparse.Namespace, prefix: str
) -> tuple[Path, dict[str, str], psutil.Process]:
    """A scratch directory and the fixed-answer upstream, until ``stack`` closes, and the
    environment that tells the factories of ``apps.py`` where they are (and Redis)."""
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    upstream_port = harness.free_port()
    env = {
        **os.environ,
        "BENCH_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
        "BENCH_KEY_FILE": str(scratch / "key"),
        "BENCH_REDIS": args.redis,
        "BENCH_REDIS_PREFIX": prefix,
    }
    command = [sys.executable, str(BENCH / "upstream.py"), str(upstream_port)]
    return scratch, env, stack.enter_context(bench_relay.running(command, upstream_port, env))


def served_rounds(args: argparse.Namespace, prefix: str) -> dict[str, list[bench_relay.Round]]:
    """The three gateways under gunicorn, loaded as ``bench/bench_relay.py`` loads its own:
    CPU of the worker processes per request."""
    rounds: dict[str, list[bench_relay.Round]] = {name: [] for name in SERVED}
    with ExitStack() as stack:
        scratch, env, upstream_process = _upstream_for_servers(stack, args, prefix)
        servers: dict[str, tuple[int, str, list[psutil.Process]]] = {}
        for name, factory in SERVED.items():
            port = harness.free_port()
            gunicorn = bench_relay.gunicorn_command(port, factory, args)
            master = stack.enter_context(bench_relay.running(gunicorn, port, env))
            suffix = "" if name == "none" else f".{name}"
            key = (scratch / f"key{suffix}").read_text(encoding="utf-8")
            bench_relay.check(port, key)
            servers[name] = (port, key, bench_relay.workers_of(master, args.workers))
        load = bench_relay.wrk_load if args.client == "wrk" else bench_relay.python_load
        for port, key, _ in servers.values():  # warm-up
            load(port, key, connections=args.connections, seconds=min(2.0, args.seconds))
        for index in range(args.rounds):
            for name, (port, key, workers) in servers.items():
                result = bench_relay.measure(port, key, workers, upstream_process, args)
                rounds[name].append(result)
                print(
                    f"served round {index + 1} {name:6} {result.rps:7.0f} req/s "
                    f"gateway {result.gateway_us:6.1f} µs/req",
                    file=sys.stderr,
                )
    return rounds


#: The gateways of ``apps.make_relay_ab``, by the first segment of their paths.
AB_PATHS = {
    "none": "/a/r/containers/bench/hello",
    "memory": "/b/r/containers/bench/hello",
    "fields only": "/c/r/containers/bench/hello",
    "least": "/d/r/containers/bench/hello",
}


def same_process_rounds(
    args: argparse.Namespace, prefix: str
) -> dict[str, list[tuple[float, float]]]:
    """The catch-all without a limiter, with the in-memory one and with its two floors, in
    one gunicorn worker (``apps.make_relay_ab``), in alternating short rounds: the worker's
    CPU µs per request, user and system. Two processes differ by more than the limiter costs
    (placement, memory layout); one process, alternating, cancels that out."""
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in AB_PATHS}
    with ExitStack() as stack:
        scratch, env, _ = _upstream_for_servers(stack, args, prefix)
        port = harness.free_port()
        gunicorn = bench_relay.gunicorn_command(port, "make_relay_ab()", args)
        master = stack.enter_context(bench_relay.running(gunicorn, port, env))
        workers = bench_relay.workers_of(master, args.workers)
        key = (scratch / "key.ab").read_text(encoding="utf-8")
        requests = {name: harness.Request(path=path) for name, path in AB_PATHS.items()}
        for request in requests.values():
            harness.check(port, key, request)
            harness.wrk_load(port, key, connections=args.connections, seconds=1, request=request)
        for round_number in range(args.ab_rounds):
            # Each gateway first as often as last: a round after another finds the worker warm.
            names = list(requests)
            order = names[round_number % len(names) :] + names[: round_number % len(names)]
            for name in order:
                cpu[name].append(_cpu_per_request(args, port, key, workers, requests[name]))
        print(
            "same process: "
            + ", ".join(f"{name} {_median(_totals(cpu[name])):.0f} µs/req" for name in AB_PATHS),
            file=sys.stderr,
        )
    return cpu


#: Requests each gateway gets before it is counted: the pooled connection, caches, imports.
CALLGRIND_WARM_UP = 50


def _get_each(connection: http.client.HTTPConnection, key: str, path: str, count: int) -> None:
    """``count`` sequential requests for ``path`` on ``connection``, each checked."""
    for _ in range(count):
        connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        if response.status != 200 or response.read() != EXPECTED_BODY:
            raise RuntimeError(f"{path}: {response.status}")


def instruction_rounds(args: argparse.Namespace, prefix: str) -> dict[str, dict[str, list[float]]]:
    """The gateways of ``apps.make_relay_ab`` under ``valgrind --tool=callgrind``, served by
    gunicorn and by waitress, each with one worker thread: instructions per request, by
    server and gateway. Deterministic where CPU time is not; they count user space only (the
    system calls are the same with and without the limiter)."""
    with ExitStack() as stack:
        scratch, env, _ = _upstream_for_servers(stack, args, prefix)
        env["PYTHONPATH"] = f"{BENCH}{os.pathsep}{ROOT}"
        return {
            "gunicorn": _gunicorn_instructions(args, scratch, env),
            "waitress": _waitress_instructions(args, scratch, env),
        }


def _gunicorn_instructions(
    args: argparse.Namespace, scratch: Path, env: dict[str, str]
) -> dict[str, list[float]]:
    """A forked gunicorn worker gets no channel of its own for ``callgrind_control``, so a
    worker is counted over its whole life, from the dump it writes as it exits: a worker that
    served ``--callgrind-requests`` more requests than another, less the other, over that
    number. Each pair of workers is forked from masters started alike (with the same string
    hashes, so that both lay their tables out alike), and their start-up cancels out."""
    counts: dict[str, list[float]] = {name: [] for name in AB_PATHS}
    env = {**env, "PYTHONHASHSEED": "0"}
    for _ in range(args.callgrind_rounds):
        for name, path in AB_PATHS.items():
            short, long = (
                _gunicorn_worker_total(scratch, env, path, requests)
                for requests in (0, args.callgrind_requests)
            )
            counts[name].append((long - short) / args.callgrind_requests)
            print(f"gunicorn: {name} {counts[name][-1]:,.0f} per request", file=sys.stderr)
    return counts


def _gunicorn_worker_total(scratch: Path, env: dict[str, str], path: str, requests: int) -> int:
    """The instructions of one gunicorn worker's life, through a warm-up and ``requests``
    more requests for ``path``."""
    run = Path(tempfile.mkdtemp(dir=scratch))
    port = harness.free_port()
    one_thread = argparse.Namespace(workers=1, threads=1)
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={run}/callgrind.%p",
        *harness.gunicorn_command(port, "make_relay_ab()", one_thread),
    ]
    with (run / "valgrind.log").open("ab") as log:
        master = subprocess.Popen(
            command, env={**env, "BENCH_KEY_FILE": str(run / "key")}, cwd=ROOT, stderr=log
        )
    try:
        harness.wait_listening(port, master, timeout=300)
        key = (run / "key.ab").read_text(encoding="utf-8")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        _get_each(connection, key, path, CALLGRIND_WARM_UP + requests)
        connection.close()
    finally:
        # Under valgrind the worker takes its time to stop and write its dump.
        master.terminate()
        master.wait(timeout=300)
    dumps = [dump for dump in run.glob("callgrind.*") if dump.name != f"callgrind.{master.pid}"]
    if len(dumps) != 1:
        raise RuntimeError(f"one worker's dump expected: {sorted(run.iterdir())}")
    return harness.callgrind_total(dumps[0])


def _waitress_instructions(
    args: argparse.Namespace, scratch: Path, env: dict[str, str]
) -> dict[str, list[float]]:
    """All gateways in one waitress process: batches of ``--callgrind-requests`` requests on
    one kept-alive connection, the counters zeroed before each batch and dumped after."""
    counts: dict[str, list[float]] = {name: [] for name in AB_PATHS}
    port = harness.free_port()
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={scratch}/callgrind.%p",
        *harness.waitress_command(port, "make_relay_ab", 1),
    ]
    log = scratch / "valgrind.log"
    with bench_relay.running(command, port, env, log=log, timeout=300) as server:
        key = (scratch / "key.ab").read_text(encoding="utf-8")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for path in AB_PATHS.values():
            _get_each(connection, key, path, CALLGRIND_WARM_UP)
        dumps = 0
        for _ in range(args.callgrind_rounds):
            for name, path in AB_PATHS.items():
                _callgrind_control("--zero", server.pid)
                _get_each(connection, key, path, args.callgrind_requests)
                _callgrind_control("--dump", server.pid)
                dumps += 1
                dump = next(scratch.glob(f"callgrind.{server.pid}.{dumps}"), None)
                if dump is None:
                    raise RuntimeError(f"no dump {dumps}: {sorted(scratch.iterdir())}")
                counts[name].append(harness.callgrind_total(dump) / args.callgrind_requests)
                print(f"waitress: {name} {counts[name][-1]:,.0f} per request", file=sys.stderr)
        connection.close()
    return counts


def _cpu_per_request(
    args: argparse.Namespace,
    port: int,
    key: str,
    processes: list[psutil.Process],
    request: harness.Request,
) -> tuple[float, float]:
    """The user and system CPU µs per request of ``processes`` under one round of load."""
    user, system = harness.cpu_seconds(processes)
    load = harness.wrk_load(
        port, key, connections=args.connections, seconds=args.ab_seconds, request=request
    )
    user_after, system_after = harness.cpu_seconds(processes)
    per_request = 1e6 / load.requests
    return (user_after - user) * per_request, (system_after - system) * per_request


def _user_share(
    args: argparse.Namespace, port: int, key: str, processes: list[psutil.Process]
) -> float:
    request = harness.Request(path=AB_PATHS["none"])
    harness.wrk_load(port, key, connections=args.connections, seconds=1, request=request)
    rounds = [_cpu_per_request(args, port, key, processes, request) for _ in range(5)]
    return _median([user / (user + system) for user, system in rounds])


def user_shares(args: argparse.Namespace, prefix: str) -> dict[str, float]:
    """The share of user space in the relay's CPU time (no limiter), by server, each with
    ``--threads`` threads under ``--connections`` connections for 5 rounds: what weighs the
    instruction counts, which leave out the kernel's work on the relay's system calls."""
    shares: dict[str, float] = {}
    with ExitStack() as stack:
        scratch, env, _ = _upstream_for_servers(stack, args, prefix)
        env["PYTHONPATH"] = f"{BENCH}{os.pathsep}{ROOT}"
        for server in ("gunicorn", "waitress"):
            port = harness.free_port()
            if server == "gunicorn":
                command = bench_relay.gunicorn_command(port, "make_relay_ab()", args)
            else:
                command = harness.waitress_command(port, "make_relay_ab", args.threads)
            with bench_relay.running(command, port, env) as master:
                processes = (
                    bench_relay.workers_of(master, args.workers)
                    if server == "gunicorn"
                    else [master]
                )
                key = (scratch / "key.ab").read_text(encoding="utf-8")
                shares[server] = _user_share(args, port, key, processes)
    return shares


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def cleanup(redis_url: str, prefix: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--output", type=Path, default=RESULTS)
    served = parser.add_argument_group("served (gunicorn, as bench/bench_relay.py)")
    served.add_argument("--served-rounds", type=int, default=5, help="0: skip")
    served.add_argument("--seconds", type=float, default=5.0, help="per served round")
    served.add_argument("--connections", type=int, default=8)
    served.add_argument("--workers", type=int, default=1)
    served.add_argument("--threads", type=int, default=4)
    served.add_argument("--client", choices=("wrk", "python"), default=None)
    served.add_argument("--ab-rounds", type=int, default=20, help="same-process pairs; 0: skip")
    served.add_argument("--ab-seconds", type=float, default=2.0)
    served.add_argument(
        "--callgrind-requests", type=int, default=300, help="per batch under callgrind; 0: skip"
    )
    served.add_argument("--callgrind-rounds", type=int, default=2)
    args = parser.parse_args()
    if args.client is None:
        args.client = "wrk" if shutil.which("wrk") else "python"

    prefix = f"invoke-bench-{uuid.uuid4().hex[:12]}"
    load_before = os.getloadavg()[0]
    try:
        with harness.upstream() as upstream_url:
            memory_limiter = bench_limiter("memory://", prefix)
            redis_limiter = bench_limiter(args.redis, prefix)
            each_limiter = bench_limiter(args.redis, prefix, rate_batch=1)
            gateways = [
                build("none", upstream_url, None),
                build("memory", upstream_url, memory_limiter),
                build("redis", upstream_url, redis_limiter),
                build("redis-each", upstream_url, each_limiter),
            ]
            for gateway in gateways:  # warm-up: connections, caches, Redis scripts
                for _ in range(300):
                    gateway.call()
            rounds: dict[str, list[Round]] = {g.name: [] for g in gateways}
            for _ in range(args.rounds):
                for gateway in gateways:
                    rounds[gateway.name].append(measure(gateway.call, args.requests))
            limiters = {
                "memory": memory_limiter,
                "redis": redis_limiter,
                "redis-each": each_limiter,
            }
            alone: dict[str, list[Round]] = {name: [] for name in limiters}
            for _ in range(args.rounds):
                for name, limiter in limiters.items():
                    alone[name].append(measure(limiter_alone(limiter), args.requests))
            for gateway in gateways:
                gateway.app.close()
        served: dict[str, list[bench_relay.Round]] = {}
        if args.served_rounds:
            served_args = argparse.Namespace(**{**vars(args), "rounds": args.served_rounds})
            served = served_rounds(served_args, prefix)
        same: dict[str, list[tuple[float, float]]] = {}
        if args.ab_rounds and args.client == "wrk":
            same = same_process_rounds(args, prefix)
        instructions: dict[str, dict[str, list[float]]] = {}
        shares: dict[str, float] = {}
        if args.callgrind_requests and shutil.which("valgrind"):
            instructions = instruction_rounds(args, prefix)
            if args.client == "wrk":
                shares = user_shares(args, prefix)
    finally:
        cleanup(args.redis, prefix)
    load_after = os.getloadavg()[0]

    report = render(
        args, rounds, alone, served, same, instructions, shares, load_before, load_after
    )
    args.output.write_text(report, encoding="utf-8")
    print(report)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def render(
    args: argparse.Namespace,
    rounds: dict[str, list[Round]],
    alone: dict[str, list[Round]],
    served: dict[str, list[bench_relay.Round]],
    same: dict[str, list[tuple[float, float]]],
    instructions: dict[str, dict[str, list[float]]],
    shares: dict[str, float],
    load_before: float,
    load_after: float,
) -> str:
    base = rounds["none"]
    lines = [
        "# The limiter's cost per request",
        "",
        "Produced by `bench/bench_limits.py`. `GET /r/containers/bench/hello` (13-byte answer)",
        "through `InvokeMiddleware` called as a WSGI application in one process, over one",
        "kept-alive connection to `bench/upstream.py`, with no limiter, a `memory://` limiter",
        "and two `redis://` limiters, in interleaved rounds. The limiters apply a per-team",
        "concurrency cap and two rates (per credential, per team) that never refuse; with",
        "Redis both rates are counted by one script call, in one round trip: for every request",
        "(**redis-each**, `rate_batch = 1`), or for 16 requests at a time (**redis**, the",
        "default `rate_batch`).",
        "",
        "## Setup",
        "",
        f"- {harness.cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, limits {importlib.metadata.version('limits')}, "
        f"redis-py {importlib.metadata.version('redis')}, "
        f"Redis on loopback ({_redis_version(args.redis)})",
        f"- {args.rounds} rounds of {args.requests} requests per gateway after a warm-up; medians",
        f"- load average (1 min) before and after: {load_before:.1f} / {load_after:.1f}",
        "- CPU: `time.process_time()` of the process over the round (the gateway's work and a",
        "  small client loop, the same for every gateway), divided by the requests",
        "",
        "## Through the relay",
        "",
        "| limiter | CPU µs/req | wall µs/req | added CPU µs/req | added CPU / relay CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, series in rounds.items():
        cpu = _median([r.cpu_us for r in series])
        wall = _median([r.wall_us for r in series])
        if name == "none":
            lines.append(f"| {name} | {cpu:.1f} | {wall:.1f} | — | — |")
            continue
        added = [r.cpu_us - b.cpu_us for r, b in zip(series, base, strict=True)]
        ratio = [(r.cpu_us - b.cpu_us) / b.cpu_us for r, b in zip(series, base, strict=True)]
        lines.append(
            f"| {name} | {cpu:.1f} | {wall:.1f} | {_median(added):.1f} | "
            f"**{_median(ratio) * 100:.1f} %** |"
        )
    relay_cpu = _median([r.cpu_us for r in base])
    lines += [
        "",
        "Added CPU and its ratio are medians over rounds of (limiter round - the `none` round of",
        "the same pass), so slow drifts of the machine cancel out.",
        "",
        "## The limiter alone (`admit` + `release`, no relay)",
        "",
        "| storage | CPU µs/call | wall µs/call | CPU / relay CPU |",
        "|---|---:|---:|---:|",
    ]
    for name, series in alone.items():
        cpu = _median([r.cpu_us for r in series])
        wall = _median([r.wall_us for r in series])
        lines.append(f"| {name} | {cpu:.1f} | {wall:.1f} | {cpu / relay_cpu * 100:.1f} % |")
    if served:
        lines += render_served(args, served)
    if same:
        lines += render_same_process(args, same)
    if instructions:
        lines += render_instructions(args, instructions, shares)
    lines += [
        "",
        f"Command: `python bench/bench_limits.py --rounds {args.rounds} "
        f"--requests {args.requests} --served-rounds {args.served_rounds} "
        f"--seconds {args.seconds:g} --ab-rounds {args.ab_rounds} "
        f"--ab-seconds {args.ab_seconds:g} --client {args.client} "
        f"--callgrind-requests {args.callgrind_requests} --callgrind-rounds "
        f"{args.callgrind_rounds}`",
        "",
    ]
    return "\n".join(lines)


def render_served(
    args: argparse.Namespace, served: dict[str, list[bench_relay.Round]]
) -> list[str]:
    base = served["none"]
    lines = [
        "",
        "## Served (gunicorn, as `bench/bench_relay.py` serves the relay)",
        "",
        f"`gunicorn --worker-class gthread --workers {args.workers} --threads {args.threads}"
        f" --preload`, load from {args.client} with {args.connections} kept-alive connections,"
        f" {args.served_rounds} interleaved rounds of {args.seconds:g} s; CPU of the worker"
        " processes per request (the relay's whole cost in a server: parsing, WSGI, relay).",
        "",
        "| limiter | req/s | gateway CPU µs/req | added CPU µs/req | added CPU / relay CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, series in served.items():
        rps = _median([r.rps for r in series])
        cpu = _median([r.gateway_us for r in series])
        if name == "none":
            lines.append(f"| {name} | {rps:.0f} | {cpu:.0f} | — | — |")
            continue
        added = [r.gateway_us - b.gateway_us for r, b in zip(series, base, strict=True)]
        ratio = [a / b.gateway_us for a, b in zip(added, base, strict=True)]
        lines.append(
            f"| {name} | {rps:.0f} | {cpu:.0f} | {_median(added):.0f} | "
            f"**{_median(ratio) * 100:.1f} %** |"
        )
    return lines


#: What each gateway of ``apps.make_relay_ab`` is, in the tables.
AB_LABELS = {
    "none": "none",
    "memory": "in-memory limiter",
    "fields only": "floor: the two fields, fixed (`FieldsOnlyLimiter`)",
    "least": "floor: this policy's least work (`LeastLimiter`)",
}

AB_ABOUT = [
    "`apps.make_relay_ab` serves four gateways from one process, one key for all, each",
    "request sent to its own gateway by its first path segment: `/a/...` without a limiter,",
    "`/b/...` with the in-memory one, and two floors under it. **fields only** admits every",
    "request with the same two fields and counts nothing: what any limiter writing",
    "`RateLimit-Policy` and `RateLimit` costs, in the pipeline and in the server, whatever its",
    "own code. **least** does the least work of this policy, written for it alone: under one",
    "lock, the team's slot and the two windows in plain tables, `RateLimit` formatted from the",
    "tightest, the slot given back at the end; no settings, overrides, store or events.",
]


def _totals(rounds: list[tuple[float, float]]) -> list[float]:
    return [user + system for user, system in rounds]


def render_same_process(
    args: argparse.Namespace, rounds: dict[str, list[tuple[float, float]]]
) -> list[str]:
    same = {name: _totals(each) for name, each in rounds.items()}
    user_share = _median([user / (user + system) for user, system in rounds["none"]])
    lines = [
        "",
        "## Served, the in-memory limiter and its floors against no limiter in one worker",
        "",
        *AB_ABOUT,
        "",
        f"One gunicorn worker, loaded in rotating rounds of {args.ab_seconds:g} s"
        f" ({args.ab_rounds} rounds of each, {args.connections} connections): the worker's",
        "CPU per request. Separate server processes differ by more than the limiter costs;",
        "alternating in one process cancels that out. Ratios are medians over rounds of the",
        "difference with the `none` round of the same rotation.",
        "",
        "| gateway | CPU µs/req | added CPU µs/req | added CPU / relay CPU | quartiles |",
        "|---|---:|---:|---:|---:|",
        f"| none | {_median(same['none']):.0f} | — | — | — |",
    ]
    for name in list(AB_PATHS)[1:]:
        added = [m - n for m, n in zip(same[name], same["none"], strict=True)]
        ratios = [a / n for a, n in zip(added, same["none"], strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4)
        lines.append(
            f"| {AB_LABELS[name]} | {_median(same[name]):.0f} | {_median(added):.1f} | "
            f"**{_median(ratios) * 100:.1f} %** | {low * 100:.1f} %, {high * 100:.1f} % |"
        )
    lines += [
        "",
        f"User space is {user_share * 100:.0f} % of the relay's CPU time here (median of the",
        "`none` rounds); the rest is the kernel's work on the relay's system calls, which a",
        "limiter does not add to.",
    ]
    return lines


def render_instructions(
    args: argparse.Namespace, counts: dict[str, dict[str, list[float]]], shares: dict[str, float]
) -> list[str]:
    lines = [
        "",
        "## Served, counted in instructions",
        "",
        "The same gateways (`apps.make_relay_ab`) under `valgrind --tool=callgrind`, each",
        "server with one worker thread, sequential requests on one kept-alive connection,",
        f"{args.callgrind_rounds} rounds (the counts repeat to within 0.5 %). **gunicorn**: a",
        "forked worker cannot be reached by `callgrind_control`, so each count is the",
        f"difference between two workers' whole lives, one with {args.callgrind_requests}",
        "requests more than the other, over that number. **waitress**: one process, the",
        f"counters zeroed before each batch of {args.callgrind_requests} requests and dumped",
        "after.",
        "",
        "Callgrind counts user space only; the relay's CPU time is also the kernel's work on",
        "its system calls, which a limiter does not add to. *Of the CPU time* weighs the",
        "instruction ratio by the share of user space in the relay's CPU time, measured for",
        "each server in the same run (5 rounds without a limiter, "
        f"{args.threads} threads, {args.connections} connections):",
        ", ".join(f"{server} {share * 100:.0f} %" for server, share in shares.items()) + ".",
        "",
        "| server | gateway | instructions per request | added | added / relay | of the CPU time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for server, by_gateway in counts.items():
        none = _median(by_gateway["none"])
        lines.append(f"| {server} | none | {none:,.0f} | — | — | — |")
        for name in list(AB_PATHS)[1:]:
            counted = _median(by_gateway[name])
            ratio = (counted - none) / none
            weighed = f"{ratio * shares[server] * 100:.1f} %" if server in shares else "—"
            lines.append(
                f"| {server} | {AB_LABELS[name]} | {counted:,.0f} | {counted - none:,.0f} "
                f"| {ratio * 100:.1f} % | **{weighed}** |"
            )
    return lines


def _redis_version(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        return f"server {client.info('server')['redis_version']}"


if __name__ == "__main__":
    main()
