"""What the served benchmarks share: servers on free ports, load generators, CPU and memory.

``bench_relay.py`` (and, through it, ``bench_limits.py`` and ``bench_serve.py``) start the
upstream of ``upstream.py`` and gateways under a real server, load them with ``wrk`` (else a
Python keep-alive client) and read the gateway processes' CPU time and memory with psutil.
Everything runs on 127.0.0.1, on ports a free-port probe picks.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
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
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from invoke_middleware._server import (
    WAITRESS_OUTBUF_HIGH_WATERMARK,
    WAITRESS_OUTBUF_OVERFLOW,
    WAITRESS_RECV_BYTES,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PATH = "/r/containers/bench/hello"
EXPECTED_BODY = b"hello, world\n"
MiB = 1024 * 1024


# -- processes ---------------------------------------------------------------------------------


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
def running(
    command: list[str],
    port: int,
    env: dict[str, str],
    *,
    log: Path | None = None,
    timeout: float = 20.0,
) -> Iterator[psutil.Process]:
    """Run ``command`` until the block ends, once something listens on ``port``; its standard
    error goes to ``log`` when given (to read the errors the server wrote afterwards)."""
    stderr = log.open("ab") if log is not None else None
    try:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=stderr)
    finally:
        if stderr is not None:
            stderr.close()  # the child holds its own descriptor
    try:
        wait_listening(port, process, timeout)
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


@contextmanager
def python_upstream() -> Iterator[tuple[str, psutil.Process]]:
    """The upstream of ``upstream.py`` on a free port, for as long as the block runs: its base
    URL and its process."""
    port = free_port()
    command = [sys.executable, str(BENCH / "upstream.py"), str(port)]
    with running(command, port, dict(os.environ)) as process:
        yield f"http://127.0.0.1:{port}", process


@contextmanager
def upstream() -> Iterator[str]:
    """The fixed-answer upstream of ``upstream.py`` on a free port, for as long as the block
    runs: its base URL."""
    with python_upstream() as (url, _):
        yield url


#: nginx as the small-request upstream: one process (its CPU is the upstream's), every
#: connection kept alive, the same 13-byte answer as ``upstream.py`` for any path.
NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location / {{ return 200 "hello, world\\n"; }}
    }}
}}
"""


def nginx_path() -> str | None:
    """The nginx program: on the ``PATH``, else where Debian installs it; ``None`` without."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


@contextmanager
def nginx_upstream(directory: Path) -> Iterator[tuple[str, psutil.Process]]:
    """nginx answering every request with the 13-byte body of ``upstream.py``, on a free port,
    for as long as the block runs: its base URL and its process."""
    nginx = nginx_path()
    if nginx is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(NGINX_CONF.format(port=port), encoding="utf-8")
    command = [nginx, "-p", str(directory), "-c", str(config)]
    with running(command, port, dict(os.environ), log=directory / "error.log") as process:
        yield f"http://127.0.0.1:{port}", process


def cpu_seconds(processes: list[psutil.Process]) -> tuple[float, float]:
    """User and system CPU seconds of ``processes``, summed."""
    user = system = 0.0
    for each in processes:
        times = each.cpu_times()
        user += times.user
        system += times.system
    return user, system


def gunicorn_command(port: int, factory: str, args: argparse.Namespace) -> list[str]:
    """gunicorn gthread serving ``apps:<factory>``, ``args.workers`` x ``args.threads``."""
    return [
        str(Path(sys.executable).with_name("gunicorn")),
        "--worker-class",
        "gthread",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--preload",
        # Each worker listens on its own socket: on one shared socket the kept-alive
        # connections of a round often all land in one worker (half the throughput on 2
        # cores, and bimodal rounds), as the standalone gateway avoids too.
        "--reuse-port",
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


def waitress_command(port: int, factory: str, threads: int) -> list[str]:
    """waitress (one process, ``threads`` threads) serving what ``apps.<factory>`` returns
    (``make_relay()``: waitress calls it without arguments); the environment must put
    ``bench/`` and the repository on ``PYTHONPATH``.

    Every gateway gets the output buffering the README recommends for waitress (the
    standalone gateway's own): waitress's default lets one download grow a 16 MiB buffer
    per connection, which the benchmark would otherwise measure as the gateway's memory."""
    return [
        str(Path(sys.executable).with_name("waitress-serve")),
        f"--listen=127.0.0.1:{port}",
        f"--threads={threads}",
        f"--outbuf-high-watermark={WAITRESS_OUTBUF_HIGH_WATERMARK}",
        f"--outbuf-overflow={WAITRESS_OUTBUF_OVERFLOW}",
        f"--recv-bytes={WAITRESS_RECV_BYTES}",
        "--call",
        f"apps:{factory.removesuffix('()')}",
    ]


class PeakRSS:
    """The largest growth of any of ``processes``' resident memory while the block runs:
    sampled every ``interval`` seconds in a thread, minus what each held at the start."""

    def __init__(self, processes: list[psutil.Process], interval: float = 0.005) -> None:
        self._processes = processes
        self._interval = interval
        self._before = {p.pid: p.memory_info().rss for p in processes}
        self._peak = dict(self._before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for each in self._processes:
                rss = each.memory_info().rss
                self._peak[each.pid] = max(self._peak[each.pid], rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        """Bytes: the peak minus the start, for the process that grew most."""
        return max(int(self._peak[pid] - self._before[pid]) for pid in self._before)


# -- requests ----------------------------------------------------------------------------------


def _hello(status: int, body: bytes) -> bool:
    return status == 200 and body == EXPECTED_BODY


def _enveloped_hello(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    answer = json.loads(body)
    return bool(
        answer["status_code"] == 200 and base64.b64decode(answer["body_base64"]) == EXPECTED_BODY
    )


@dataclass(frozen=True, kw_only=True)
class Request:
    """One request a load generator repeats, and how to tell a right answer."""

    method: str = "GET"
    path: str = PATH
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    expect: Callable[[int, bytes], bool] = _hello


HELLO = Request()
#: The invoke route carrying the same GET, without a body, in its JSON envelope.
INVOKE_HELLO = Request(
    method="POST",
    path="/r/invoke/bench",
    body=json.dumps({"method": "GET", "path": "/hello"}).encode(),
    headers={"Content-Type": "application/json"},
    expect=_enveloped_hello,
)


def check(port: int, key: str, request: Request = HELLO) -> None:
    """One request, to make sure the gateway answers what the upstream (or host) says."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {key}", **request.headers}
    try:
        connection.request(request.method, request.path, request.body or None, headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if not request.expect(response.status, body):
        raise RuntimeError(f"port {port} answered {response.status} {body[:200]!r}")


# -- load generators ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _wrk_script(request: Request) -> str:
    """A wrk Lua script sending ``request``'s method, headers and body."""
    # A long bracket string holds any body without escaping, as long as it has no "]==]".
    lines = [f'wrk.method = "{request.method}"', f"wrk.body = [==[{request.body.decode()}]==]"]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in request.headers.items()]
    return "\n".join(lines) + "\n"


def wrk_load(
    port: int, key: str, *, connections: int, seconds: float, request: Request = HELLO
) -> Load:
    """``wrk -t1`` with ``connections`` kept-alive connections for ``seconds``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_wrk_script(request))
    try:
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            script.name,
            "-H",
            f"Authorization: Bearer {key}",
            f"http://127.0.0.1:{port}{request.path}",
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
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


def python_load(
    port: int, key: str, *, connections: int, seconds: float, request: Request = HELLO
) -> Load:
    """Kept-alive requests from ``connections`` threads, one connection each, for
    ``seconds``. The client then shares the cores with the gateway: say so with its figures."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}", **request.headers}

    def client(mine: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < deadline:
                now = time.perf_counter()
                connection.request(request.method, request.path, request.body or None, headers)
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


# -- the standalone gateway --------------------------------------------------------------------

CLI = [sys.executable, "-m", "invoke_middleware.cli"]


def cli(directory: Path, *args: str) -> str:
    """Run an ``invoke-middleware`` command in ``directory``; its standard output."""
    done = subprocess.run(
        [*CLI, *args], cwd=directory, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def standalone_gateway(directory: Path, upstream_url: str) -> str:
    """``init`` a standalone gateway in ``directory`` with one service, ``bench``, relaying to
    ``upstream_url``; the ``sk-`` key issued for its team."""
    team = str(uuid.uuid4())
    cli(directory, "init")
    cli(directory, "services", "add", "bench", "--team", team, "--name", "Bench",
        "--upstream", upstream_url)  # fmt: skip
    return cli(directory, "credentials", "issue", "--team", team, "--kind", "integration")


def serve_config(
    directory: Path,
    name: str,
    *,
    port: int,
    server: dict[str, object],
    limits: dict[str, object] | None = None,
) -> Path:
    """A config for ``serve`` sharing the store ``init`` made in ``directory``, with
    ``[server]`` keys of its own (``engine``, ``workers``, ``threads``) and ``[limits]``."""
    database = tomllib.loads((directory / "invoke-middleware.toml").read_text())["store"]
    tables = {
        "store": {"database": database["database"]},
        "server": {"host": "127.0.0.1", "port": port, **server},
        "limits": limits or {},
    }
    lines = []
    for table, keys in tables.items():
        lines += [f"[{table}]", *(f"{key} = {json.dumps(value)}" for key, value in keys.items())]
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)  # else serve warns, once per process, that it may hold secrets
    return path


def serve_command(config: Path) -> list[str]:
    return [*CLI, "--config", str(config), "serve"]


# -- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).splitlines()[0].partition(" Copyright")[0].strip()


def source_revision() -> str:
    """The commit measured, with ``+`` when the tree has changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "invoke_middleware"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (head.stdout.strip() or "unknown") + ("+" if dirty.stdout.strip() else "")


def callgrind_total(dump: Path) -> int:
    """The instructions a ``valgrind --tool=callgrind`` output file counted in all."""
    for line in dump.read_text(encoding="utf-8").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {dump}")
