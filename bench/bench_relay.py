"""The catch-all relay against werkzeug's ``ProxyMiddleware``, under the same server and load.

Run: ``python bench/bench_relay.py`` (writes ``bench/results/relay.md``; ``--help`` for the
knobs). It starts, all on 127.0.0.1:

- the fixed-answer upstream of ``bench/upstream.py``;
- three gunicorn servers with the same settings (``gthread``, same workers and threads,
  ``--preload``), each serving one gateway of ``bench/apps.py``: **relay** (InvokeMiddleware,
  catch-all route, ``sk-`` key), **proxy** (werkzeug ``ProxyMiddleware``) and **bare** (the
  host app answering by itself: the cost of the WSGI server alone).

Then it sends ``GET /r/containers/bench/hello`` with the key to each, in interleaved rounds
(relay, proxy, bare, relay, ...), with ``wrk`` when it is installed, else with a Python
keep-alive client. For every round it records requests per second, the p50 and p99 latency,
and the CPU time the gateway's worker processes (and the upstream) spent per request, read
with psutil before and after the round. On a machine with few cores, the client, the upstream
and the gateway compete for them, so CPU per request is the fairest of these figures.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import gunicorn
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "relay.md"
PATH = "/r/containers/bench/hello"
EXPECTED_BODY = b"hello, world\n"
GATEWAYS = {"relay": "make_relay()", "proxy": "make_proxy()", "bare": "make_bare()"}


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
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@contextmanager
def running(command: list[str], port: int, env: dict[str, str]) -> Iterator[psutil.Process]:
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        wait_listening(port, process)
        yield psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def workers_of(master: psutil.Process, count: int, timeout: float = 20.0) -> list[psutil.Process]:
    """The gunicorn master's worker processes, once all ``count`` of them are forked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children: list[psutil.Process] = master.children()
        if len(children) == count:
            return children
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn {master.pid} did not fork {count} workers")


def cpu_seconds(processes: list[psutil.Process]) -> tuple[float, float]:
    """User and system CPU seconds of ``processes``, summed."""
    user = system = 0.0
    for each in processes:
        times = each.cpu_times()
        user += times.user
        system += times.system
    return user, system


def check(port: int, key: str) -> None:
    """One request, to make sure the gateway answers what the upstream (or host) says."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", PATH, headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200 or body != EXPECTED_BODY:
        raise RuntimeError(f"port {port} answered {response.status} {body[:200]!r}")


# -- load generators ---------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk_load(port: int, key: str, *, connections: int, seconds: float) -> Load:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {key}",
        f"http://127.0.0.1:{port}{PATH}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)$", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)$", out, re.MULTILINE)
    if total is None or p50 is None or p99 is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    return Load(
        requests=int(total.group(1)),
        seconds=elapsed,
        p50_ms=_wrk_ms(p50.group(1)),
        p99_ms=_wrk_ms(p99.group(1)),
    )


def python_load(port: int, key: str, *, connections: int, seconds: float) -> Load:
    """Keep-alive GETs from ``connections`` threads, one connection each, for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}

    def client(mine: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < deadline:
                now = time.perf_counter()
                connection.request("GET", PATH, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(str(response.status))
                    return
                mine.append(time.perf_counter() - now)
        except OSError as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    elapsed = time.monotonic() - started
    if failures:
        raise RuntimeError(f"client failures: {failures[:5]}")
    merged = sorted(x for mine in latencies for x in mine)
    quantiles = statistics.quantiles(merged, n=100)
    return Load(
        requests=len(merged),
        seconds=elapsed,
        p50_ms=quantiles[49] * 1e3,
        p99_ms=quantiles[98] * 1e3,
    )


# -- the run -----------------------------------------------------------------------------------


def measure(
    port: int,
    key: str,
    workers: list[psutil.Process],
    upstream: psutil.Process,
    args: argparse.Namespace,
) -> Round:
    load_fn = wrk_load if args.client == "wrk" else python_load
    gateway_before, upstream_before = cpu_seconds(workers), cpu_seconds([upstream])
    load = load_fn(port, key, connections=args.connections, seconds=args.seconds)
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


def gunicorn_command(port: int, factory: str, args: argparse.Namespace) -> list[str]:
    return [
        str(Path(sys.executable).with_name("gunicorn")),
        "--worker-class",
        "gthread",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--preload",
        "--bind",
        f"127.0.0.1:{port}",
        "--keep-alive",
        "30",
        "--log-level",
        "warning",
        "--pythonpath",
        f"{BENCH},{ROOT}",
        f"apps:{factory}",
    ]


def run(args: argparse.Namespace) -> dict[str, list[Round]]:
    rounds: dict[str, list[Round]] = {name: [] for name in GATEWAYS}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        upstream_port = free_port()
        env = {
            **os.environ,
            "BENCH_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
            "BENCH_KEY_FILE": str(scratch / "key"),
        }
        upstream = stack.enter_context(
            running(
                [sys.executable, str(BENCH / "upstream.py"), str(upstream_port)],
                upstream_port,
                env,
            )
        )
        servers: dict[str, tuple[int, list[psutil.Process]]] = {}
        for name, factory in GATEWAYS.items():
            port = free_port()
            command = gunicorn_command(port, factory, args)
            master = stack.enter_context(running(command, port, env))
            servers[name] = (port, workers_of(master, args.workers))
        key = (scratch / "key").read_text(encoding="utf-8")
        for name, (port, workers) in servers.items():
            check(port, key)
            print(f"{name}: port {port}, worker pids {[w.pid for w in workers]}", file=sys.stderr)
        for port, _ in servers.values():  # warm-up: pools, caches, lazy imports
            load_fn = wrk_load if args.client == "wrk" else python_load
            load_fn(port, key, connections=args.connections, seconds=min(2.0, args.seconds))
        for index in range(args.rounds):
            for name, (port, workers) in servers.items():
                result = measure(port, key, workers, upstream, args)
                rounds[name].append(result)
                print(
                    f"round {index + 1} {name:5} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"gateway {result.gateway_us:6.1f} µs/req "
                    f"(user {result.gateway_user_us:5.1f}, sys {result.gateway_system_us:5.1f})  "
                    f"upstream {result.upstream_us:5.1f} µs/req",
                    file=sys.stderr,
                )
    return rounds


def _median(rounds: list[Round], attribute: str) -> float:
    return float(statistics.median(getattr(r, attribute) for r in rounds))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).splitlines()[0].partition(" Copyright")[0].strip()


def report(rounds: dict[str, list[Round]], args: argparse.Namespace, load: str) -> str:
    medians = {
        name: {
            attr: _median(rs, attr)
            for attr in (
                "rps",
                "p50_ms",
                "p99_ms",
                "gateway_us",
                "gateway_user_us",
                "gateway_system_us",
                "upstream_us",
            )
        }
        for name, rs in rounds.items()
    }
    relay, proxy, bare = medians["relay"], medians["proxy"], medians["bare"]
    client = (
        f"`wrk -t1 -c{args.connections} -d{args.seconds:g}s --latency` ({_wrk_version()}): "
        f"one client thread, {args.connections} kept-alive connections"
        if args.client == "wrk"
        else f"Python keep-alive client: {args.connections} threads with one connection each, "
        f"{args.seconds:g} s"
    )
    rows = [
        f"| {name} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
        f"{m['gateway_us']:.0f} | {m['gateway_user_us']:.0f} | {m['gateway_system_us']:.0f} | "
        f"{m['upstream_us']:.0f} | {m['gateway_us'] + m['upstream_us']:.0f} |"
        for name, m in medians.items()
    ]
    per_round = [
        f"| {index + 1} | {name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
        f"{r.gateway_us:.0f} |"
        for index in range(args.rounds)
        for name, rs in rounds.items()
        for r in [rs[index]]
    ]
    # Adjacent rounds share the machine's conditions: their ratios are the steadier figure.
    paired = list(zip(rounds["relay"], rounds["proxy"], strict=True))
    rps_ratio = statistics.median(r.rps / p.rps for r, p in paired)
    cpu_ratio = statistics.median(r.gateway_us / p.gateway_us for r, p in paired)
    relay_total = relay["gateway_us"] + relay["upstream_us"]
    proxy_total = proxy["gateway_us"] + proxy["upstream_us"]
    relay_extra = relay["gateway_us"] - bare["gateway_us"]
    proxy_extra = proxy["gateway_us"] - bare["gateway_us"]
    return "\n".join(
        [
            "# Catch-all relay vs werkzeug ProxyMiddleware",
            "",
            "Produced by `bench/bench_relay.py`. `GET /r/containers/bench/hello` (13-byte",
            "answer) through three gateways served by gunicorn with identical settings, against",
            "the same loopback upstream (`bench/upstream.py`), in interleaved rounds.",
            "",
            "- **relay**: the host wrapped by `InvokeMiddleware` (catch-all route, `sk-` key in",
            "  the in-memory store, default `HTTPTransport`);",
            "- **proxy**: the host wrapped by werkzeug's `ProxyMiddleware` (a new upstream",
            "  connection per request, as werkzeug does);",
            "- **bare**: the host app answering by itself (the server's own cost).",
            "",
            "## Setup",
            "",
            f"- {_cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
            f"- Python {platform.python_version()}, gunicorn {gunicorn.__version__}, "
            f"werkzeug {importlib.metadata.version('werkzeug')}",
            f"- server: `gunicorn --worker-class gthread --workers {args.workers} "
            f"--threads {args.threads} --preload --keep-alive 30 apps:<factory>`",
            f"- load: {client}; few client threads, so that the client leaves the gateway a core",
            f"- {args.rounds} rounds per gateway after a warm-up; medians over rounds",
            f"- load average (1 min) before and after the run: {load}",
            "- CPU per request: user + system time of the gunicorn worker processes (and of",
            "  the upstream) over the round, divided by the requests served in it",
            "",
            "## Results (medians)",
            "",
            "Each column is its own median over the rounds (so user + system need not add up).",
            "",
            "| gateway | req/s | p50 ms | p99 ms | gateway CPU µs/req | user | system "
            "| upstream CPU µs/req | gateway + upstream |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "## Ratios",
            "",
            "Medians of the ratios of adjacent rounds (relay round *n* / proxy round *n*):",
            "",
            f"- throughput relay / proxy: **{rps_ratio:.2f}**",
            f"- gateway CPU per request, relay / proxy: **{cpu_ratio:.2f}**",
            "",
            "Ratios of the medians above:",
            "",
            f"- throughput relay / proxy: {relay['rps'] / proxy['rps']:.2f}",
            f"- throughput relay / bare: {relay['rps'] / bare['rps']:.2f}",
            f"- gateway CPU per request, relay / proxy: "
            f"{relay['gateway_us'] / proxy['gateway_us']:.2f}",
            f"- gateway CPU per request above bare: relay {relay_extra:.0f} µs, "
            f"proxy {proxy_extra:.0f} µs ({relay_extra / proxy_extra:.2f}x)",
            f"- gateway + upstream CPU per request, relay / proxy: {relay_total / proxy_total:.2f}",
            f"- p50 latency relay / proxy: {relay['p50_ms'] / proxy['p50_ms']:.2f}",
            "",
            "## Every round",
            "",
            "| round | gateway | req/s | p50 ms | p99 ms | gateway CPU µs/req |",
            "|---:|---|---:|---:|---:|---:|",
            *per_round,
            "",
            "Figures on a shared machine move by some percent between runs; compare the ratios",
            "within one run.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round")
    parser.add_argument("--connections", type=int, default=8, help="client connections")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    before = os.getloadavg()[0]
    rounds = run(args)
    text = report(rounds, args, f"{before:.1f} / {os.getloadavg()[0]:.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
