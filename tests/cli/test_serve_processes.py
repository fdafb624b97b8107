"""``serve`` with several gunicorn workers: every process answers, connections opened together
are spread over them, a revocation made by another command applies in all of them, and
/metrics adds up the samples of every process, also after a worker exits. A worker that cannot
boot stops the server, and what every worker imports is checked before any starts."""

from __future__ import annotations

import dataclasses
import http.client
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from invoke_middleware._server import plan_server
from invoke_middleware._toml_config import load_config
from invoke_middleware.cli import _reread
from tests.cli.conftest import Served, Workspace, running_gateway
from tests.cli.test_server_limits import ENGINES, set_server, set_table
from tests.toolkit.servers import refused_port
from tests.toolkit.upstream import RecordingUpstream

_PER_PROCESS = re.compile(r'^invoke_server_requests\{pid="(\d+)"\} (\S+)$', re.MULTILINE)
_RELAYS = re.compile(
    r'^invoke_relays_total\{[^}]*status_class="(\dxx)"[^}]*\} (\S+)$', re.MULTILINE
)


def _per_process(served: Served) -> dict[str, float]:
    text = requests.get(f"{served.root}/metrics", timeout=10).text
    return {pid: float(value) for pid, value in _PER_PROCESS.findall(text)}


def _relayed(served: Served) -> dict[str, float]:
    text = requests.get(f"{served.root}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for status_class, value in _RELAYS.findall(text):
        totals[status_class] = totals.get(status_class, 0) + float(value)
    return totals


def _burst(url: str, key: str, count: int) -> list[int]:
    """``count`` requests over fresh connections, 2 at a time (each may reach any process).

    Two: the fair-share default lets one team hold half of a process's 8 threads, and a slot is
    given back when the server closes the body, which may be just after the client has read it
    and sent its next request; two clients hold at most four slots even then.
    """

    def one(_: int) -> int:
        with requests.Session() as session:
            return session.get(
                url, headers={"Authorization": f"Bearer {key}"}, timeout=20
            ).status_code

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(count)))


def test_two_workers_both_answer_share_revocations_and_add_up_their_metrics(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    set_server(workspace, engine="gunicorn", workers=2, metrics=True)
    workspace.add_service("hello", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        url = f"{gateway.url}/r/containers/hello/ping"
        # Connections are spread by the kernel: send bursts (bounded) until both have answered.
        statuses: list[int] = []
        for _ in range(20):
            statuses += _burst(url, key, 40)
            if len([n for n in _per_process(gateway).values() if n > 0]) == 2:
                break
        before = _per_process(gateway)
        assert len(before) == 2, before
        assert all(count > 0 for count in before.values())
        assert set(statuses) == {200}
        # One scrape, from whichever process, counts the relays of both.
        assert _relayed(gateway) == {"2xx": len(statuses)}

        workspace.run("credentials", "revoke", key[:12])
        refused: list[int] = []
        for _ in range(20):
            refused += _burst(url, key, 40)
            after = _per_process(gateway)
            if all(after[pid] > before[pid] + 1 for pid in before):
                break
        # Both processes received requests after the revocation, and every one was refused.
        assert all(after[pid] > before[pid] + 1 for pid in before), (before, after)
        assert set(refused) == {401}
    assert len(upstream.received) == len(statuses)


def test_kept_alive_connections_opened_together_are_spread_over_the_workers(
    workspace: Workspace,
) -> None:
    # Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads the
    # connections over them; on one shared socket a burst of connections is often accepted
    # by one process, which then serves all of them on one core.
    set_server(workspace, engine="gunicorn", workers=2, metrics=True)
    with running_gateway(workspace) as gateway:
        address = urlsplit(gateway.root)
        host, port = address.hostname or "127.0.0.1", address.port or 80
        # A worker listens once it has booted: until both have, the first takes everything.
        for _ in range(100):
            if len([n for n in _per_process(gateway).values() if n > 0]) == 2:
                break
            time.sleep(0.05)
        for _ in range(3):
            before = _per_process(gateway)
            with ExitStack() as stack:
                sockets = [
                    stack.enter_context(socket.create_connection((host, port), timeout=20))
                    for _ in range(32)
                ]
                # Every connection made first, then one request on each, kept open meanwhile.
                for sock in sockets:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
                for sock in sockets:
                    response = http.client.HTTPResponse(sock)
                    response.begin()
                    assert response.status == 200
                    response.read()
                after = _per_process(gateway)
            served = {pid: after[pid] - before.get(pid, 0) for pid in after}
            # 32 connections on one of two sockets by chance: one time in 2**31.
            assert len(served) == 2, served
            assert all(count >= 1 for count in served.values()), served


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_refused_naming_the_address(workspace: Workspace, workers: int) -> None:
    set_server(workspace, engine="gunicorn", workers=workers)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = workspace.run("serve", "--host", "127.0.0.1", "--port", str(port), check=False)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_second_gateway_on_the_same_port_is_refused_not_sharing_it(
    workspace: Workspace,
) -> None:
    # The workers' sockets share their port among themselves (SO_REUSEPORT); another gateway
    # started on that port by the same user must still be refused, never handed connections.
    set_server(workspace, engine="gunicorn", workers=2)
    with running_gateway(workspace) as gateway:
        port = urlsplit(gateway.root).port
        result = workspace.run("serve", "--host", "127.0.0.1", "--port", str(port), check=False)
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
        assert requests.get(f"{gateway.root}/healthz", timeout=10).status_code == 200


def test_workers_with_sockets_of_their_own_listen_on_ipv6_too(workspace: Workspace) -> None:
    set_server(workspace, engine="gunicorn", workers=2)
    with running_gateway(workspace, "--host", "::1") as gateway:
        assert gateway.root.startswith("http://[::1]:")
        assert requests.get(f"{gateway.root}/healthz", timeout=10).status_code == 200


def _log_lines(served: Served, text: str) -> list[str]:
    return [line for line in served.log.read_text().splitlines() if text in line]


def test_a_worker_that_exits_leaves_metrics_to_the_others_and_the_server_running(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    # The multi-process metrics directory is made in the server's temporary directory.
    workspace.env["TMPDIR"] = str(workspace.path)
    set_server(workspace, engine="gunicorn", workers=2, metrics=True)
    workspace.add_service("hello", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        [metrics_dir] = workspace.path.glob("invoke-middleware-metrics-*")
        assert set(_burst(f"{gateway.url}/r/containers/hello/ping", key, 10)) == {200}
        # The arbiter retires one worker, as it does on a reload or a worker timeout.
        gateway.process.send_signal(signal.SIGTTOU)
        deadline = time.monotonic() + 20
        while not _log_lines(gateway, "Worker exiting") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _log_lines(gateway, "Worker exiting")
        time.sleep(0.5)  # what the worker did after saying so
        assert metrics_dir.is_dir()
        assert requests.get(f"{gateway.root}/metrics", timeout=10).status_code == 200
        # The retired worker's counts are still added up.
        assert _relayed(gateway) == {"2xx": 10}
        assert set(_burst(f"{gateway.url}/r/containers/hello/ping", key, 4)) == {200}
    assert gateway.stop() == 0
    # Only the arbiter, as it stops, removes the directory and says so.
    assert not metrics_dir.exists()
    [stopped] = _log_lines(gateway, ": stopped")
    assert f"[{gateway.process.pid}]" in stopped


def test_metrics_add_up_workers_added_to_a_single_worker_server(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    # With one worker, the metrics stayed in that process: once SIGTTIN added a second, each
    # scrape counted the requests of whichever process answered it.
    set_server(workspace, engine="gunicorn", workers=1, metrics=True)
    workspace.add_service("hello", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        gateway.process.send_signal(signal.SIGTTIN)
        deadline = time.monotonic() + 20
        while len(_log_lines(gateway, "Booting worker")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_log_lines(gateway, "Booting worker")) == 2
        served_by: set[str] = set()
        while len(served_by) < 2 and time.monotonic() < deadline:
            assert set(_burst(f"{gateway.url}/r/containers/hello/ping", key, 10)) == {200}
            served_by = {pid for pid, count in _per_process(gateway).items() if count}
        assert len(served_by) == 2
        relayed = _relayed(gateway)["2xx"]
        # Every scrape, whichever process answers it, counts both processes' relays.
        assert {_relayed(gateway)["2xx"] for _ in range(6)} == {relayed}


def _shadowed_module(directory: Path, name: str) -> str:
    """A directory for PYTHONPATH in which ``import name`` fails, as when it is missing."""
    package = directory / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError('No module named {name}')\n")
    return str(directory)


@pytest.mark.parametrize("engine", ENGINES)
def test_metrics_with_a_token_are_served_only_with_it(workspace: Workspace, engine: str) -> None:
    token = "f3" * 16
    workspace.env["METRICS_TOKEN"] = token
    set_server(workspace, engine=engine, workers=1, metrics=True, metrics_token_env="METRICS_TOKEN")
    with running_gateway(workspace) as gateway:
        url = f"{gateway.root}/metrics"
        refused = requests.get(url, timeout=10)
        wrong = requests.get(url, headers={"Authorization": "Bearer " + "0" * 32}, timeout=10)
        served = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert (refused.status_code, wrong.status_code, served.status_code) == (401, 401, 200)
    assert "invoke_relays_in_flight" in served.text
    assert "invoke_relays" not in refused.text + wrong.text


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "value", [pytest.param(None, id="unset"), pytest.param("short", id="short")]
)
def test_a_metrics_token_that_is_unset_or_short_stops_the_server_before_it_serves(
    workspace: Workspace, engine: str, value: str | None
) -> None:
    workspace.env.pop("METRICS_TOKEN", None)
    if value is not None:
        workspace.env["METRICS_TOKEN"] = value
    set_server(workspace, engine=engine, workers=1, metrics=True, metrics_token_env="METRICS_TOKEN")
    result = workspace.run("serve", "--host", "127.0.0.1", "--port", "0", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"invoke-middleware: error: {workspace.config.name}: [server] metrics_token_env: the "
        "environment variable METRICS_TOKEN must hold a token of at least 32 characters"
    )
    assert "serving on" not in result.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_metrics_without_prometheus_client_are_refused_in_one_line_before_serving(
    workspace: Workspace, tmp_path: Path, engine: str
) -> None:
    # Workers that could not import it failed to boot, one after another, for good.
    workspace.env["PYTHONPATH"] = _shadowed_module(tmp_path / "shadow", "prometheus_client")
    set_server(workspace, engine=engine, workers=1, metrics=True)
    result = workspace.run("serve", "--host", "127.0.0.1", "--port", "0", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"invoke-middleware: error: {workspace.config.name}: [server] metrics: needs "
        "prometheus_client, which cannot be imported (No module named prometheus_client)"
    )
    assert "Booting worker" not in result.stderr
    assert "serving on" not in result.stderr


def test_a_worker_that_cannot_boot_stops_the_server_with_gunicorns_status(
    workspace: Workspace,
) -> None:
    # A metrics directory that does not exist: each worker fails as it builds its metrics.
    # gunicorn stops when a worker exits with status 3 (it could not boot); the worker's
    # status used to reach it as 1, and the arbiter started another, for good.
    workspace.env["PROMETHEUS_MULTIPROC_DIR"] = str(workspace.path / "missing")
    set_server(workspace, engine="gunicorn", workers=1, metrics=True)
    result = workspace.run("serve", "--host", "127.0.0.1", "--port", "0", check=False)
    assert result.returncode == 1
    assert result.stderr.count("Booting worker") == 1
    assert "Reason: Worker failed to boot." in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "invoke-middleware: error: the server stopped with status 3"
    )


_PER_PROCESS_RATES = "each of the 2 processes counts rates on its own"


@pytest.mark.parametrize(
    ("workers", "configured", "stored", "warned"),
    [
        pytest.param(2, True, False, True, id="configured-rate"),
        pytest.param(2, False, True, True, id="stored-service-rate"),
        pytest.param(2, False, False, False, id="no-rate"),
        pytest.param(1, True, True, False, id="one-process"),
    ],
)
def test_rates_counted_per_process_are_warned_about_at_start_up(
    workspace: Workspace, workers: int, configured: bool, stored: bool, warned: bool
) -> None:
    # Each worker counted its own window: 5/minute admitted 10 with two, said nowhere.
    set_server(workspace, engine="gunicorn", workers=workers)
    if configured:
        set_table(workspace, "limits", credential_rate="5/minute")
    workspace.add_service("svc", "http://127.0.0.1:9")
    if stored:
        workspace.run(
            "services", "set-limits", "svc", "--team", str(workspace.team), "--rate", "5/minute"
        )
    with running_gateway(workspace) as gateway:
        assert requests.get(f"{gateway.root}/healthz", timeout=10).status_code == 200
    log = gateway.log.read_text(encoding="utf-8")
    assert (log.count(_PER_PROCESS_RATES) == 1) is warned, log


@pytest.mark.parametrize("hops", [0, 1])
def test_metrics_without_a_token_behind_trusted_proxies_are_warned_about(
    workspace: Workspace, hops: int
) -> None:
    set_server(workspace, engine="waitress", metrics=True)
    set_table(workspace, "gateway", trusted_proxy_hops=hops)
    with running_gateway(workspace) as gateway:
        assert requests.get(f"{gateway.root}/healthz", timeout=10).status_code == 200
    log = gateway.log.read_text(encoding="utf-8")
    assert log.count("no [server] metrics_token_env while trusted_proxy_hops") == hops, log


def _via_after_reload(gateway: Served, upstream: RecordingUpstream, key: str, via: str) -> None:
    """Wait (bounded) until every process relays with ``Via: via``: the workers the arbiter
    started after SIGHUP, once the old ones are gone."""
    deadline = time.monotonic() + 30
    seen: set[str | None] = set()
    while time.monotonic() < deadline:
        upstream.received.clear()
        try:
            statuses = set(_burst(f"{gateway.url}/r/containers/hello/ping", key, 6))
        except requests.ConnectionError:
            # A connection still queued at an old worker's own socket as it closes is reset
            # (without net.ipv4.tcp_migrate_req), as the README says: only while they change.
            continue
        assert statuses == {200}
        seen = {received.header("Via") for received in upstream.received}
        if seen == {via}:
            return
        time.sleep(0.2)
    raise AssertionError(f"still relaying with {seen} after SIGHUP: {gateway.log.read_text()}")


def test_sighup_reads_the_configuration_file_again(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    set_server(workspace, engine="gunicorn", workers=2)
    set_table(workspace, "gateway", pseudonym="edge-1")
    workspace.add_service("hello", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        _via_after_reload(gateway, upstream, key, "1.1 edge-1")
        text = workspace.config.read_text()
        workspace.config.write_text(text.replace('pseudonym = "edge-1"', 'pseudonym = "edge-2"'))
        gateway.process.send_signal(signal.SIGHUP)
        _via_after_reload(gateway, upstream, key, "1.1 edge-2")
        assert len(_log_lines(gateway, "SIGHUP: read")) == 1

        # A file that fails is said so, and the workers keep what they had; so does a change
        # to the running server's own table.
        text = workspace.config.read_text()
        workspace.config.write_text(
            text.replace('pseudonym = "edge-2"', 'pseudonym = "not a token"').replace(
                "threads = 8", "threads = 3", 1
            )
        )
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        failed = "the workers restart with the configuration they had"
        while not _log_lines(gateway, failed) and time.monotonic() < deadline:
            time.sleep(0.1)
        [failed] = _log_lines(gateway, failed)
        assert "pseudonym" in failed
        _via_after_reload(gateway, upstream, key, "1.1 edge-2")
        # Fixed, the file is read again, but the [server] table waits for the next start.
        workspace.config.write_text(
            workspace.config.read_text().replace('"not a token"', '"edge-3"')
        )
        gateway.process.send_signal(signal.SIGHUP)
        _via_after_reload(gateway, upstream, key, "1.1 edge-3")
        assert len(_log_lines(gateway, "a changed [server] table applies")) == 1
    assert gateway.stop() == 0


def test_sighup_applies_the_gateway_s_header_cap_in_the_server_too(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    # The server refuses a head over the gateway's cap (plus the request line's room) before
    # the gateway sees it: a cap raised in the file must reach the server's workers too.
    set_server(workspace, engine="gunicorn", workers=1)
    set_table(workspace, "gateway", max_header_bytes=4096)
    workspace.add_service("hello", upstream.url)
    key = workspace.issue("--kind", "integration")
    # One field past the server's first cap (4096 + 8192), under the second.
    padding = {"X-Padding": "p" * 8000, "X-More-Padding": "p" * 6000}

    def relay() -> int:
        return requests.get(
            f"{gateway.url}/r/containers/hello/ping",
            headers={"Authorization": f"Bearer {key}", **padding},
            timeout=20,
        ).status_code

    with running_gateway(workspace) as gateway:
        assert relay() == 431
        text = workspace.config.read_text()
        workspace.config.write_text(
            text.replace("max_header_bytes = 4096", "max_header_bytes = 65536")
        )
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        statuses = []
        while time.monotonic() < deadline:
            try:
                statuses.append(relay())
            except requests.ConnectionError:
                continue  # the old worker's queue, reset as it goes (see the README)
            if statuses[-1] == 200:
                break
            time.sleep(0.2)
        assert statuses[-1] == 200, (statuses, gateway.log.read_text())
    assert gateway.stop() == 0


def test_a_reread_plan_has_the_file_s_caps_and_the_running_server_s_table(
    workspace: Workspace,
) -> None:
    set_table(workspace, "server", max_request_body_bytes=5000)
    config = load_config(workspace.config)
    plan = dataclasses.replace(plan_server(config), port=9999, threads=3)
    text = workspace.config.read_text()
    workspace.config.write_text(
        text.replace(
            "[gateway]\n", "[gateway]\nmax_header_bytes = 1000\nmax_header_count = 7\n"
        ).replace("max_request_body_bytes = 5000", "max_request_body_bytes = 6000")
    )
    reread = _reread(config, plan)
    assert reread is not None
    _, fresh = reread
    # The gateway's caps are the file's; the [server] table's own are the running server's.
    assert (fresh.max_request_header_bytes, fresh.max_header_count) == (1000 + 8192, 7)
    assert fresh.max_request_body_bytes == 5000
    assert (fresh.port, fresh.threads) == (9999, 3)


@pytest.mark.parametrize(("engine", "workers"), [("waitress", 1), ("gunicorn", 1), ("gunicorn", 2)])
def test_a_store_that_does_not_answer_at_start_is_served_and_said_unready(
    workspace: Workspace, engine: str, workers: int
) -> None:
    # It may be back any moment: requests get 503 meanwhile, and /readyz tells a load
    # balancer. With more than one process, looking for stored rates stopped the start.
    set_server(workspace, engine=engine, workers=workers)
    key = workspace.issue("--kind", "integration")
    with refused_port() as port:
        text = workspace.config.read_text()
        database = f'database = "postgresql://gateway@127.0.0.1:{port}/x"'
        workspace.config.write_text(re.sub(r"(?m)^database = .*$", database, text))
        with running_gateway(workspace) as gateway:
            ready = requests.get(f"{gateway.root}/readyz", timeout=10)
            relayed = requests.get(
                f"{gateway.url}/r/containers/hello/ping",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
    assert ready.status_code == 503
    assert (relayed.status_code, relayed.headers["X-Invoke-Error"]) == (503, "store_unavailable")
    assert relayed.headers["Retry-After"] == "1"
    # With several processes, stored rates could not be looked for: said, not skipped.
    assert len(_log_lines(gateway, "rates stored for teams or services were not looked")) == (
        workers > 1
    )


@pytest.mark.parametrize(
    ("database", "said"),
    [
        pytest.param("postgresql://postgres@127.0.0.1:1/test", "cannot be read", id="unreachable"),
        pytest.param("sqlite:///missing/store.sqlite3", "does not exist", id="missing-file"),
    ],
)
def test_sighup_keeps_the_workers_off_a_store_that_cannot_be_read(
    workspace: Workspace, caplog: pytest.LogCaptureFixture, database: str, said: str
) -> None:
    # The store opens lazily: the check built a gateway on it, and the workers that replaced
    # the healthy ones answered every request 500.
    config = load_config(workspace.config)
    plan = plan_server(config)
    text = workspace.config.read_text()
    assert _reread(config, plan) is not None  # as it is: read again
    workspace.config.write_text(re.sub(r"(?m)^database = .*$", f'database = "{database}"', text))
    assert _reread(config, plan) is None
    [failed] = [
        r.getMessage() for r in caplog.records if "configuration they had" in r.getMessage()
    ]
    assert said in failed
    assert "postgres@" not in failed
