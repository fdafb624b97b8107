"""Cost of ``import invoke_middleware``, against ``import werkzeug`` in the same run.

Run: ``python bench/bench_import.py`` (writes ``bench/results/import.md``). ``--rounds N``
sets how many interleaved rounds (default 21). ``--compare-tree DIR``, repeatable, also times
``import invoke_middleware`` from another source tree in the same rounds, for a before/after
in one run (``git archive REV | tar -x -C DIR`` makes one of an earlier commit).

Every measurement is a fresh interpreter (``python -c``) that times the import statement
alone with ``time.perf_counter``, so interpreter start-up is left out and nothing is cached
in the process. The targets take turns within each round (the order alternates between
rounds), so a busy moment on a shared machine hits both alike; the report gives the median
and the quartiles of each, and their ratio. A last run under ``python -X importtime`` says
where the time goes: the packages that cost the most (self time summed over their modules),
the slowest single modules, and which heavy optional dependencies the bare import loaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "import.md"
#: Dependencies that ``import invoke_middleware`` must not load (tests/test_imports.py).
HEAVY = ("requests", "urllib3", "jwt", "cryptography", "jsonschema", "sqlalchemy", "werkzeug")
GOAL_MS = 60.0
TOP = 12
#: Where the interpreters run: an empty folder, so that ``python -c`` (which puts the working
#: folder first on ``sys.path``) imports the installed package or the tree asked for, never
#: a checkout that happens to be the working folder.
NEUTRAL_FOLDER = tempfile.mkdtemp(prefix="bench-import-")

_TIMED = (
    "import time; cpu, wall = time.process_time(), time.perf_counter(); import {target}; "
    "print(time.process_time() - cpu, time.perf_counter() - wall)"
)


@dataclass(frozen=True, kw_only=True)
class Target:
    """One import to time: the module, and the source tree to import it from (or installed)."""

    label: str
    module: str
    tree: Path | None = None

    def time(self) -> tuple[float, float]:
        """CPU and wall milliseconds one fresh interpreter spends in ``import module``."""
        env = dict(os.environ)
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        out = subprocess.run(
            [sys.executable, "-c", _TIMED.format(target=self.module)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=NEUTRAL_FOLDER,
        ).stdout
        cpu, wall = out.split()
        return float(cpu) * 1000, float(wall) * 1000


@dataclass(frozen=True, kw_only=True)
class Module:
    """One line of ``-X importtime``: a module, its own and its cumulative microseconds."""

    name: str
    self_us: int
    cumulative_us: int


def import_profile(target: str) -> tuple[list[Module], list[str]]:
    """``-X importtime`` lines of a fresh ``import target``, and the heavy modules loaded."""
    code = f"import sys, {target}; print(','.join(sorted(m for m in sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_FOLDER,
    )
    modules = []
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line
        modules.append(
            Module(
                name=fields[2].strip(),
                self_us=int(fields[0]),
                cumulative_us=int(fields[1]),
            )
        )
    loaded = set(done.stdout.strip().split(","))
    return modules, [name for name in HEAVY if name in loaded]


def by_package(modules: list[Module]) -> list[tuple[str, int]]:
    """Self time summed per top-level package, most expensive first."""
    totals: dict[str, int] = defaultdict(int)
    for module in modules:
        totals[module.name.split(".")[0]] += module.self_us
    return sorted(totals.items(), key=lambda item: -item[1])


def total_ms(modules: list[Module], name: str) -> float:
    """The cumulative milliseconds of module ``name``."""
    return next(m.cumulative_us for m in modules if m.name == name) / 1000


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    low, median, high = statistics.quantiles(samples, n=4)
    return low, median, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--compare-tree", type=Path, action="append", default=[], help="another source tree"
    )
    args = parser.parse_args()

    ours = Target(label="`invoke_middleware`", module="invoke_middleware")
    reference = Target(label="`werkzeug`", module="werkzeug")
    targets = [ours, reference]
    for tree in args.compare_tree:
        label = f"`invoke_middleware` from `{tree.resolve().name}/`"
        targets.append(Target(label=label, module=ours.module, tree=tree.resolve()))

    samples: dict[Target, list[tuple[float, float]]] = {target: [] for target in targets}
    load_before = os.getloadavg()[0]
    for target in targets:
        target.time()  # warm the file system cache and the bytecode caches
    for round_number in range(args.rounds):
        order = targets if round_number % 2 == 0 else targets[::-1]
        for target in order:
            samples[target].append(target.time())

    load_after = os.getloadavg()[0]
    cpu = {target: [c for c, _ in samples[target]] for target in targets}
    wall = {target: [w for _, w in samples[target]] for target in targets}
    medians = {target: statistics.median(cpu[target]) for target in targets}
    command = "bench/bench_import.py --rounds " + str(args.rounds)
    command += "".join(f" --compare-tree {tree.resolve().name}" for tree in args.compare_tree)
    lines = [
        "# Import time: `import invoke_middleware` against `import werkzeug`",
        "",
        f"Produced by `{command}`: each figure is one fresh interpreter timing the import "
        "statement alone; the targets alternate within each round. Milliseconds of CPU time "
        "(what the import costs, little moved by other processes on a shared machine) and of "
        "wall time; the ratio is the CPU time against werkzeug's in the same run.",
        "",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        f"- werkzeug {version('werkzeug')}",
        f"- load average {load_before:.1f} before the rounds, {load_after:.1f} after",
        "",
        "| import | CPU median ms | CPU quartiles ms | wall median ms | x werkzeug (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for target in targets:
        low, _, high = quartiles(cpu[target])
        median = medians[target]
        lines.append(
            f"| {target.label} | {median:.1f} | {low:.1f} to {high:.1f} "
            f"| {statistics.median(wall[target]):.1f} | {median / medians[reference]:.2f} |"
        )
    verdict = "under" if medians[ours] < GOAL_MS else "over"
    lines += [
        "",
        f"Goal: under {GOAL_MS:.0f} ms; the CPU median is {verdict} it ({medians[ours]:.1f} ms).",
    ]

    modules, heavy = import_profile("invoke_middleware")
    lines += [
        "",
        "## Where the time goes (`python -X importtime`, one run)",
        "",
        f"Total: {total_ms(modules, ours.module):.1f} ms (the profiler adds its own cost). "
        "Heavy optional dependencies loaded by the bare import: "
        + (", ".join(f"`{name}`" for name in heavy) if heavy else "none")
        + ".",
        "",
        "| package | self ms, all its modules |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {us / 1000:.1f} |" for name, us in by_package(modules)[:TOP]]
    lines += ["", "| slowest modules | self ms | cumulative ms |", "|---|---:|---:|"]
    slowest = sorted(modules, key=lambda module: -module.self_us)[:TOP]
    lines += [
        f"| `{m.name}` | {m.self_us / 1000:.1f} | {m.cumulative_us / 1000:.1f} |" for m in slowest
    ]

    os.rmdir(NEUTRAL_FOLDER)
    report = "\n".join(lines) + "\n"
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
