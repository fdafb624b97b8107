"""``invoke-middleware serve`` with 1 and with N gunicorn worker processes, same load.

Run: ``python bench/bench_serve.py`` (writes ``bench/results/serve.md``). It starts the
fixed-answer upstream of ``bench/upstream.py``, makes a standalone gateway (``init``, one
service ``bench`` pointing at the upstream, one ``sk-`` key) in a temporary directory, and runs
``serve --workers 1`` and ``serve --workers N`` in interleaved rounds, sending ``GET
/r/containers/bench/hello`` with ``wrk`` when it is installed, else with the Python keep-alive
client of ``bench_relay.py`` (which then shares the cores with the gateway: say so when quoting
the figures). It records requests per second per round, CPU per request of the gateway's
processes, and the median ratio N:1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relay import (
    PATH,
    ROOT,
    check,
    cpu_seconds,
    free_port,
    python_load,
    running,
    wrk_load,
)

RESULTS = Path(__file__).resolve().parent / "results" / "serve.md"
CLI = [sys.executable, "-m", "invoke_middleware.cli"]


def _cli(directory: Path, *args: str) -> str:
    done = subprocess.run(
        [*CLI, *args], cwd=directory, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def _processes(master: psutil.Process, workers: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = master.children()
        if len(children) >= workers:
            return [master, *children]
        time.sleep(0.1)
    raise RuntimeError("workers did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None
    load = wrk_load if use_wrk else python_load
    rows: dict[int, list[tuple[float, float]]] = {1: [], args.workers: []}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        upstream_port = free_port()
        team = str(uuid.uuid4())
        _cli(workdir, "init")
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        _cli(workdir, "services", "add", "bench", "--team", team, "--name", "Bench",
             "--upstream", upstream_url)  # fmt: skip
        key = _cli(workdir, "credentials", "issue", "--team", team, "--kind", "integration")
        upstream = [sys.executable, str(ROOT / "bench" / "upstream.py"), str(upstream_port)]
        with running(upstream, upstream_port, env):
            for _ in range(args.rounds):
                for workers, measured in rows.items():
                    port = free_port()
                    # The relay log (a line per request) is part of the work, not of the output.
                    config = str(workdir / "invoke-middleware.toml")
                    command = ["sh", "-c", 'exec "$@" 2>/dev/null', "sh", *CLI, "--config",
                               config, "serve", "--port", str(port), "--workers",
                               str(workers), "--threads", str(args.threads)]  # fmt: skip
                    with running(command, port, env) as master:
                        processes = _processes(master, workers)
                        check(port, key)
                        before = cpu_seconds(processes)
                        result = load(port, key, connections=args.connections, seconds=args.seconds)
                        after = cpu_seconds(processes)
                    rate = result.requests / result.seconds
                    cpu_us = (sum(after) - sum(before)) / result.requests * 1e6
                    measured.append((rate, cpu_us))
                    print(f"workers={workers} {rate:.0f} req/s {cpu_us:.0f} us CPU/request")
    one = statistics.median(r for r, _ in rows[1])
    many = statistics.median(r for r, _ in rows[args.workers])
    lines = [
        "# `invoke-middleware serve`: 1 process against N",
        "",
        f"Machine: {os.cpu_count()} cores ({sys.platform}); gunicorn gthread, {args.threads} "
        f"threads per process; {args.connections} keep-alive connections, {args.seconds:g} s "
        f"rounds, interleaved; load: {'wrk' if use_wrk else 'Python threads (same machine)'}; "
        f"request: `GET {PATH}` with an `sk-` key, relayed to `bench/upstream.py`.",
        "",
        "| round | workers | req/s | gateway CPU µs/request |",
        "|---|---|---|---|",
    ]
    for workers, measured in rows.items():
        for index, (rate, cpu_us) in enumerate(measured, 1):
            lines.append(f"| {index} | {workers} | {rate:.0f} | {cpu_us:.0f} |")
    lines += ["", f"Median: 1 process {one:.0f} req/s, {args.workers} processes {many:.0f} "
              f"req/s: **{many / one:.2f}x**.", ""]  # fmt: skip
    RESULTS.write_text("\n".join(lines))
    print(f"ratio {many / one:.2f}x; wrote {RESULTS}")


if __name__ == "__main__":
    main()
