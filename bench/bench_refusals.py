"""What refusing a hostile invoke envelope costs: CPU per refused KB and peak memory.

Run: ``python bench/bench_refusals.py`` (writes ``bench/results/refusals.md``), or, to compare
with an earlier version of the package in the same run::

    git archive <rev> invoke_middleware | tar -x -C /tmp/before
    python bench/bench_refusals.py --compare-tree /tmp/before --compare-label <rev>

Every envelope of ``tests/hostile_envelopes.py`` is sent, at each size, through a real
``InvokeMiddleware`` (WebTest, an in-memory key, one service), in a fresh interpreter per
package tree so that one tree's allocations do not weigh on the other's. A request is timed
(process CPU, best of ``--repeat``) and measured once under ``tracemalloc`` (peak of what
Python allocated while it was handled). Old trees may be very slow on the larger sizes: the
comparison uses ``--compare-sizes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "refusals.md"
SIZES = [16_000, 64_000, 400_000, 4_000_000]


def _worker(sizes: list[int], repeat: int) -> None:
    """Measure every shape at every size with the package on ``sys.path``; print JSON lines."""
    # Imported here: the parent process must not load the package it compares.
    import webtest  # noqa: PLC0415

    from invoke_middleware import (  # noqa: PLC0415
        CredentialKind,
        InMemoryServiceRegistry,
        InvokeMiddleware,
        Service,
        ServiceStatus,
        ServiceType,
    )
    from tests.hostile_envelopes import HOSTILE_ENVELOPES  # noqa: PLC0415

    team = uuid.uuid4()
    registry = InMemoryServiceRegistry()
    registry.add(
        Service(
            id=uuid.uuid4(),
            team_id=team,
            slug="bench",
            display_name="Bench",
            service_type=ServiceType.DEPLOYED,
            service_status=ServiceStatus.RUNNING,
            upstream_url="http://127.0.0.1:9",
        )
    )
    middleware = InvokeMiddleware(lambda environ, start_response: [], registry=registry)
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=team).key
    app = webtest.TestApp(middleware)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(raw: bytes) -> int:
        response = app.post("/r/invoke/bench", raw, headers=headers, expect_errors=True)
        return int(response.status_int)

    post(b'{"method": "get"}')  # imports jsonschema and compiles the schema, once
    for size in sizes:
        for name, build in HOSTILE_ENVELOPES:
            raw = build(size)
            cpu = []
            for _ in range(repeat):
                started = time.process_time()
                status = post(raw)
                cpu.append(time.process_time() - started)
            tracemalloc.start()
            post(raw)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            row = {"shape": name, "size": len(raw), "status": status, "cpu": min(cpu)}
            print(json.dumps({**row, "peak": peak}), flush=True)


def _measure(tree: Path, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(ROOT)])}
    args = [sys.executable, __file__, "--worker", "--sizes", *map(str, sizes)]
    result = subprocess.run(
        [*args, "--repeat", str(repeat)], env=env, capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def _table(rows: list[dict[str, Any]], before: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    lines = [
        "| shape | KB | status | µs CPU per KB | peak MiB | peak / size |"
        + (" before: status | µs per KB | peak MiB |" if before else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if before else ""),
    ]
    for row in rows:
        kb = float(row["size"]) / 1024
        peak = float(row["peak"])
        line = (
            f"| {row['shape']} | {kb:.0f} | {row['status']} "
            f"| {float(row['cpu']) * 1e6 / kb:.1f} | {peak / 2**20:.2f} "
            f"| {peak / float(row['size']):.1f} |"
        )
        old = before.get((row["shape"], row["size"]))
        if before:
            if old is None:
                line += " | | |"
            else:
                line += (
                    f" {old['status']} | {float(old['cpu']) * 1e6 / kb:.1f} "
                    f"| {float(old['peak']) / 2**20:.1f} |"
                )
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[16_000, 64_000, 400_000, 4_000_000]
    )
    parser.add_argument("--compare-tree", type=Path, help="an earlier package tree to measure too")
    parser.add_argument("--compare-sizes", type=int, nargs="+", default=[16_000, 64_000])
    parser.add_argument("--compare-label", help="what the earlier tree is (a commit, say)")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    if options.worker:
        _worker(options.sizes, options.repeat)
        return
    sizes = sorted(
        set(options.sizes) | (set(options.compare_sizes) if options.compare_tree else set())
    )
    rows = _measure(ROOT, sorted(sizes), options.repeat)
    before: dict[tuple[str, int], dict[str, Any]] = {}
    if options.compare_tree:
        for row in _measure(options.compare_tree, options.compare_sizes, 1):
            before[(row["shape"], row["size"])] = row
    command = "python bench/bench_refusals.py"
    if options.compare_tree:
        command += f" --compare-tree {options.compare_label or options.compare_tree}"
    text = "\n".join(
        [
            "# Refusing hostile invoke envelopes",
            "",
            f"Produced by `{command}`: each envelope of `tests/hostile_envelopes.py` sent",
            "through `InvokeMiddleware` (WebTest); CPU is the best of "
            f"{options.repeat} requests (process time),",
            "peak is what Python allocated while one request was handled (`tracemalloc`).",
            "The before columns were measured in the same run, in a fresh interpreter, from the",
            "tree given (one request each: the old code takes seconds per request).",
            "",
            f"- Python {platform.python_version()} ({platform.python_implementation()}), "
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            f"- jsonschema {version('jsonschema')}",
            "",
            *_table(rows, before),
            "",
        ]
    )
    RESULTS.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
