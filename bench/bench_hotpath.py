"""The gateway's own CPU per request on its two hot routes, and its Python calls per request.

Run: ``python bench/bench_hotpath.py`` (prints a table; ``bench/results/hotpath.md`` keeps the
figures of each change to these routes; ``--help`` for the knobs). ``--compare-tree DIR``
(repeatable) measures another source tree of the package in the same run (``git archive REV
invoke_middleware | tar -x -C DIR``), so that a before/after pair shares the machine's state.
``--top ROUTE`` prints the functions with the most self time under cProfile instead.

It starts the fixed-answer upstream of ``bench/upstream.py`` and, per tree, one child process
that builds :class:`InvokeMiddleware` the way ``bench/apps.py`` does (one deployed service, an
``sk-`` key in the in-memory store, the default ``HTTPTransport``) and calls it as a WSGI
application, one kept-alive connection to the upstream:

- **catch_all**: ``GET /r/containers/bench/hello``;
- **invoke**: ``POST /r/invoke/bench`` with the envelope ``{"method": "GET", "path": "/hello"}``;
- **limited**: the catch-all through a second gateway with the in-memory limiter of
  ``bench/bench_limits.py`` (a per-team concurrency cap, a per-credential and a per-team rate,
  none of which refuses): its difference from **catch_all** is the limiter's whole cost,
  the ``RateLimit`` fields included;
- **standalone**: the catch-all through the standalone gateway as ``invoke-middleware serve``
  builds it (``init`` in a scratch directory: the SQLite store, its ``sk-`` key, the access
  log written per request, here to ``/dev/null``, and the fair-share limits of 8 threads).

The environ is what gunicorn builds for a small request from curl (its ``RAW_URI``, ``wsgi.*``
keys and four header fields). Each round runs ``--requests`` requests of one route in one
child and records the process's CPU time per request, user and system (``getrusage``: the
gateway's work, plus building the
environ and draining the body, the same for every tree: the **harness** row is that loop around
a host app answering by itself). Rounds alternate between routes and trees; the table gives
medians and quartiles. The calls per request are cProfile's count of calls (Python functions and
the built-ins they call) over ``--requests`` requests, divided by that number: a deterministic
figure, unlike the times.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ROUTES = ("catch_all", "invoke", "limited", "standalone", "harness")
#: The routes through the gateway (``harness`` answers by itself).
GATEWAY_ROUTES = ROUTES[:4]
EXPECTED_BODY = b"hello, world\n"
TEAM = uuid.UUID("0b0b0b0b-0000-4000-8000-00000000be4c")
SERVICE = uuid.UUID("0c0c0c0c-0000-4000-8000-00000000be4c")
ENVELOPE = json.dumps({"method": "GET", "path": "/hello"}).encode()


# -- the child: one tree's gateway, driven over stdin/stdout -----------------------------------


def environ_for(route: str, key: str) -> Callable[[], dict[str, Any]]:
    """A factory of gunicorn-like environs for ``route``: a fresh dict and input per call."""
    if route == "invoke":
        method, path, body = "POST", "/r/invoke/bench", ENVELOPE
    else:
        method, path, body = "GET", "/r/containers/bench/hello", b""
    template: dict[str, Any] = {
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": "gunicorn/23.0.0",
        "REQUEST_METHOD": method,
        "QUERY_STRING": "",
        "RAW_URI": path,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_USER_AGENT": "curl/8.5.0",
        "HTTP_ACCEPT": "*/*",
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
    }
    if body:
        template["CONTENT_TYPE"] = "application/json"
        template["CONTENT_LENGTH"] = str(len(body))

    def make() -> dict[str, Any]:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(body)
        return environ

    return make


def build(upstream_url: str) -> tuple[Callable[[str], None], Callable[[], None]]:
    """The gateway built from whatever ``invoke_middleware`` is first on the path: a function
    that sends one request of a route through it (and checks the answer), and one that closes
    it."""
    from invoke_middleware import (  # noqa: PLC0415 - from the tree the parent chose
        CredentialKind,
        InMemoryServiceRegistry,
        InvokeMiddleware,
        Limiter,
        LimitSettings,
        Rate,
        Service,
        ServiceStatus,
        ServiceType,
    )

    def host(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [EXPECTED_BODY]

    registry = InMemoryServiceRegistry()
    registry.add(
        Service(
            id=SERVICE,
            team_id=TEAM,
            slug="bench",
            display_name="Bench",
            service_type=ServiceType.DEPLOYED,
            service_status=ServiceStatus.RUNNING,
            upstream_url=upstream_url,
        )
    )
    gateway = InvokeMiddleware(host, registry=registry)
    key = gateway.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    # The policy of bench/apps.py's bench_limiter, written out: apps.py needs a newer tree
    # than the baseline trees this compares (it imports the Redis batching settings).
    never = Rate(amount=10**9, window=3600)
    settings = LimitSettings(team_max_in_flight=64, credential_rate=never, team_rate=never)
    limited = InvokeMiddleware(
        host, registry=registry, credentials=gateway.credentials, limiter=Limiter(settings)
    )
    standalone, standalone_key, close_standalone = build_standalone(upstream_url)
    expected = {
        "catch_all": lambda data: data == EXPECTED_BODY,
        "invoke": lambda data: json.loads(data)["status_code"] == 200,
        "limited": lambda data: data == EXPECTED_BODY,
        "standalone": lambda data: data == EXPECTED_BODY,
        "harness": lambda data: data == EXPECTED_BODY,
    }
    apps = {
        "catch_all": gateway,
        "invoke": gateway,
        "limited": limited,
        "standalone": standalone,
        "harness": host,
    }
    environs = {
        route: environ_for(route, standalone_key if route == "standalone" else key)
        for route in ROUTES
    }

    def one(route: str) -> None:
        statuses: list[str] = []
        body = apps[route](environs[route](), lambda s, h, e=None: statuses.append(s))
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if not statuses[0].startswith("200") or not expected[route](data):
            raise RuntimeError(f"{route} answered {statuses[0]} {data[:200]!r}")

    def close() -> None:
        gateway.close()
        limited.close()
        close_standalone()

    return one, close


def build_standalone(upstream_url: str) -> tuple[Any, str, Callable[[], None]]:
    """The standalone gateway of ``invoke-middleware serve`` on a store made by its CLI in a
    scratch directory, logging as ``serve`` does (a line per request, to ``/dev/null``): its
    WSGI application, its ``sk-`` key and a function that closes both."""
    import harness  # noqa: PLC0415 - the CLI runs with this child's PYTHONPATH (its tree)

    from invoke_middleware._server import configure_logging  # noqa: PLC0415
    from invoke_middleware._toml_config import load_config  # noqa: PLC0415
    from invoke_middleware.standalone import build_standalone_app  # noqa: PLC0415

    scratch = tempfile.TemporaryDirectory()
    directory = Path(scratch.name)
    key = harness.standalone_gateway(directory, upstream_url)
    app = build_standalone_app(load_config(directory / "invoke-middleware.toml"), threads=8)
    configure_logging()
    sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)

    def close() -> None:
        app.close()
        sink.close()
        scratch.cleanup()

    return app.wsgi, key, close


def child(upstream_url: str) -> None:
    """Answer ``time ROUTE N``, ``calls ROUTE N`` and ``top ROUTE N`` lines on stdin, one line
    each, with the gateway of :func:`build`."""
    one, close = build(upstream_url)
    for route in ROUTES:
        for _ in range(200):  # warm-up: the pooled connection, caches, the allocator
            one(route)
    print("ready", flush=True)
    for line in sys.stdin:
        command, route, count = line.split()
        requests = int(count)
        if command == "time":
            before = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(requests):
                one(route)
            after = resource.getrusage(resource.RUSAGE_SELF)
            user = (after.ru_utime - before.ru_utime) / requests * 1e6
            system = (after.ru_stime - before.ru_stime) / requests * 1e6
            print(f"{user:.3f} {system:.3f}", flush=True)
            continue
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(requests):
            one(route)
        profile.disable()
        if command == "calls":
            # Counted from the profiler's own entries: pstats merges functions that share a
            # file, line and name (every dataclass's generated __init__ is "<string>:2"), and
            # its total would miss all but one of them.
            total = sum(entry.callcount for entry in profile.getstats())
            print(f"{total / requests:.2f}", flush=True)
        else:
            stats = pstats.Stats(profile)
            text = io.StringIO()
            stats.stream = text  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(40)
            print(json.dumps(text.getvalue()), flush=True)
    close()


def count(upstream_url: str, route: str, requests: int) -> None:
    """Send ``requests`` requests of ``route`` after a warm-up, then exit: run under callgrind
    for twice as many counts, the difference of two runs is what the requests cost."""
    one, close = build(upstream_url)
    for _ in range(50):
        one(route)
    for _ in range(requests):
        one(route)
    close()


def instructions(tree: Path, upstream_url: str, route: str, scratch: Path) -> float:
    """Instructions per request of ``route`` with ``tree``'s package (callgrind): the run of
    600 requests less the run of 100, divided by 500, so start-up and warm-up cancel out.

    The child's string hashes are fixed (``PYTHONHASHSEED``), like the service's and team's
    ids: with random ones, dicts and sets lay out differently in every run, and the count of
    one route moved by some 10,000 instructions between runs of the same code."""
    import harness  # noqa: PLC0415

    totals = []
    for requests in (100, 600):
        out = scratch / f"callgrind.{tree.name}.{route}.{requests}"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--count",
                upstream_url,
                route,
                str(requests),
            ],
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
            cwd=tree,
            check=True,
            capture_output=True,
        )
        totals.append(harness.callgrind_total(out))
    return (totals[1] - totals[0]) / 500


class Child:
    """One tree's child process."""

    def __init__(self, label: str, tree: Path, upstream_url: str) -> None:
        self.label = label
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child", upstream_url],
            env=env,
            cwd=tree,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.ask_line() != "ready":
            raise RuntimeError(f"the child for {label} did not start")

    def ask_line(self, line: str | None = None) -> str:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        if line is not None:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)


# -- the parent -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument(
        "--compare-tree", type=Path, action="append", default=[], help="another source tree"
    )
    parser.add_argument("--top", choices=GATEWAY_ROUTES, help="print a cProfile listing instead")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind's callgrind instead of timing",
    )
    parser.add_argument("--child", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.count:
        count(args.count[0], args.count[1], int(args.count[2]))
        return

    trees = [("this tree", ROOT)]
    trees += [(f"`{tree.resolve().name}/`", tree.resolve()) for tree in args.compare_tree]
    # Imported here: the children import only the package of the tree they measure (which
    # may be older than bench/), and so they build their gateway themselves, not from apps.py.
    import harness  # noqa: PLC0415

    if args.instructions:
        with harness.upstream() as url, tempfile.TemporaryDirectory() as scratch:
            print("| tree | route | instructions/req |\n|---|---|---:|")
            for label, tree in trees:
                for route in GATEWAY_ROUTES:
                    counted = instructions(tree, url, route, Path(scratch))
                    print(f"| {label} | {route} | {counted:,.0f} |", flush=True)
        return

    with harness.upstream() as url, ExitStack() as stack:
        children = []
        for label, tree in trees:
            each = Child(label, tree, url)
            stack.callback(each.close)
            children.append(each)
        if args.top:
            for each in children:
                print(f"== {each.label}")
                print(json.loads(each.ask_line(f"top {args.top} {args.requests}")))
            return
        load_before = os.getloadavg()[0]
        calls = {
            (each.label, route): float(each.ask_line(f"calls {route} {args.requests}"))
            for each in children
            for route in ROUTES
        }
        times: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in calls}
        for round_number in range(args.rounds):
            order = children if round_number % 2 == 0 else children[::-1]
            for each in order:
                for route in ROUTES:
                    user, system = each.ask_line(f"time {route} {args.requests}").split()
                    times[each.label, route].append((float(user), float(system)))
        load_after = os.getloadavg()[0]

    command = f"bench/bench_hotpath.py --rounds {args.rounds} --requests {args.requests}"
    command += "".join(f" --compare-tree {tree.resolve().name}" for tree in args.compare_tree)
    lines = [
        "| tree | route | CPU µs/req (median) | quartiles | user | system | calls/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, _ in trees:
        for route in ROUTES:
            samples = times[label, route]
            totals = [user + system for user, system in samples]
            spread = "-"
            if len(totals) > 1:
                low, _, high = statistics.quantiles(totals, n=4)
                spread = f"{low:.1f} to {high:.1f}"
            user = statistics.median(user for user, _ in samples)
            system = statistics.median(system for _, system in samples)
            lines.append(
                f"| {label} | {route} | {statistics.median(totals):.1f} | {spread} "
                f"| {user:.1f} | {system:.1f} | {calls[label, route]:.1f} |"
            )
    setup = (
        f"`{command}`; Python {platform.python_version()}, {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} cores; load average {load_before:.1f} "
        f"before, {load_after:.1f} after"
    )
    print(setup)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
