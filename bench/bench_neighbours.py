"""What one team's relays cost another team's requests in the same gateway process.

Run: ``python bench/bench_neighbours.py`` (writes ``bench/results/neighbours.md``), or, to
compare with an earlier version of the package in the same run::

    git archive <rev> invoke_middleware | tar -x -C /tmp/before
    python bench/bench_neighbours.py --compare-tree /tmp/before --compare-label <rev>

One ``InvokeMiddleware`` in one process (threads share the interpreter lock, as a gunicorn
gthread worker's do), relaying to ``bench/upstream.py``. A *victim* thread sends small
invokes one after another and times each; meanwhile ``--neighbours`` threads relay bodies
through the catch-all as fast as they can: none (the baseline, measured in the same run),
ordinary downloads (``Content-Length``), 64 KiB chunks, and 1-byte chunks (what a hostile
container sends). Reported: the victim's latency against the baseline, and what the
neighbours moved and spent. Each tree runs in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results" / "neighbours.md"

#: What the neighbours relay, by name: the catch-all path on the upstream, and the bytes of
#: data in each body.
MODES: dict[str, tuple[str, int]] = {
    "none": ("", 0),
    "downloads": ("/download?bytes={size}", 16 * 2**20),
    "64-KiB chunks": ("/chunks?bytes={size}&size=65536", 16 * 2**20),
    "1-byte chunks": ("/chunks?bytes={size}&size=1", 256 * 2**10),
}


def _worker(victims: int, neighbours: int) -> None:
    """Measure every mode with the package on ``sys.path``; print one JSON object."""
    # Imported here: the parent process must not load the package it compares.
    import apps  # noqa: PLC0415
    import harness  # noqa: PLC0415
    from werkzeug.test import EnvironBuilder  # noqa: PLC0415

    from invoke_middleware import CredentialKind, InvokeMiddleware  # noqa: PLC0415

    def call(app: Any, path: str, key: str, body: bytes | None = None) -> int:
        builder = EnvironBuilder(
            path=path,
            method="POST" if body is not None else "GET",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        received = 0
        answer = app(builder.get_environ(), lambda status, headers, exc_info=None: None)
        try:
            for piece in answer:
                received += len(piece)
        finally:
            getattr(answer, "close", lambda: None)()
        return received

    results: dict[str, Any] = {}
    with harness.upstream() as url:
        gateway = InvokeMiddleware(apps.host, registry=apps.bench_registry(url))
        key = gateway.credentials.issue(CredentialKind.INTEGRATION, team_id=apps.TEAM).key
        envelope = json.dumps({"method": "GET", "path": "/hello"}).encode()
        for _ in range(20):
            call(gateway, "/r/invoke/bench", key, envelope)
        for mode, (path, size) in MODES.items():
            stop = threading.Event()
            # Per neighbour: data relayed, its CPU seconds, when it started and ended.
            tallies: list[tuple[int, float, float, float]] = []

            def neighbour(
                target: str, stop: threading.Event = stop, tallies: list[Any] = tallies
            ) -> None:
                began, cpu, data = time.perf_counter(), time.thread_time(), 0
                while not stop.is_set():
                    data += call(gateway, target, key)
                tallies.append((data, time.thread_time() - cpu, began, time.perf_counter()))

            target = "/r/containers/bench" + path.format(size=size)
            threads = [
                threading.Thread(target=neighbour, args=(target,))
                for _ in range(neighbours if path else 0)
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.5 if threads else 0)
            latencies = []
            for _ in range(victims):
                start = time.perf_counter()
                call(gateway, "/r/invoke/bench", key, envelope)
                latencies.append(time.perf_counter() - start)
            stop.set()
            for thread in threads:
                thread.join()
            latencies.sort()
            results[mode] = {
                "p50": statistics.median(latencies) * 1000,
                "p95": latencies[int(len(latencies) * 0.95)] * 1000,
                "data": sum(row[0] for row in tallies),
                "cpu": sum(row[1] for row in tallies),
                # The neighbours' own time: each finishes the body it was relaying.
                "seconds": max((row[3] for row in tallies), default=0.0)
                - min((row[2] for row in tallies), default=0.0),
            }
        gateway.close()
    print(json.dumps(results))


def _measure(tree: Path, victims: int, neighbours: int) -> dict[str, Any]:
    """The figures of one package tree, measured in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(BENCH)])}
    command = [sys.executable, __file__, "--worker", str(victims), str(neighbours)]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True, timeout=1800
    )
    figures: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return figures


def _table(label: str, figures: dict[str, Any]) -> list[str]:
    alone = figures["none"]
    lines = [
        f"### {label}",
        "",
        "| neighbours relay | victim p50 ms | p95 ms | p50 / alone | p95 / alone"
        " | neighbours' data MiB/s | neighbours' CPU ms per MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, row in figures.items():
        mib = row["data"] / 2**20
        rate = f"{mib / row['seconds']:.1f}" if mib else "—"
        cost = f"{row['cpu'] * 1000 / mib:.1f}" if mib else "—"
        lines.append(
            f"| {mode} | {row['p50']:.2f} | {row['p95']:.2f} | {row['p50'] / alone['p50']:.2f}"
            f" | {row['p95'] / alone['p95']:.2f} | {rate} | {cost} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--victims", type=int, default=300, help="invokes timed per mode")
    parser.add_argument("--neighbours", type=int, default=4, help="threads relaying bodies")
    parser.add_argument("--compare-tree", type=Path, help="an earlier package tree to measure too")
    parser.add_argument("--compare-label", default="before", help="its name in the report")
    parser.add_argument("--output", type=Path, default=RESULTS)
    if sys.argv[1:2] == ["--worker"]:
        _worker(int(sys.argv[2]), int(sys.argv[3]))
        return
    args = parser.parse_args()
    sections = _table("This tree", _measure(ROOT, args.victims, args.neighbours))
    if args.compare_tree is not None:
        figures = _measure(args.compare_tree.resolve(), args.victims, args.neighbours)
        sections += _table(f"`{args.compare_label}`", figures)
    command = " ".join(["python bench/bench_neighbours.py", *sys.argv[1:]])
    report = [
        "# What one team's relays cost another's requests",
        "",
        "Produced by `bench/bench_neighbours.py` (its docstring says how): one gateway"
        f" process, a victim thread sending {args.victims} small invokes one after another"
        f" while {args.neighbours} threads relay bodies through the catch-all as fast as they"
        " can. Latencies are the victim's; *alone* is the `none` row of the same tree and run."
        " The neighbours' CPU is their threads' own, per MiB of data relayed.",
        "",
        f"- Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs;"
        f" werkzeug {version('werkzeug')}",
        "",
        *sections,
        f"Command: `{command}`",
        "",
    ]
    args.output.write_text("\n".join(report), encoding="utf-8")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
