"""``invoke-middleware serve``: the real console script, real HTTP through waitress to a real
upstream on loopback, with the store changed by other ``invoke-middleware`` processes."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from invoke_middleware.readiness import DEFAULT_MAX_AGE
from invoke_middleware.testing import mint_jwt
from tests.cli.conftest import Workspace, running_gateway, start_gateway
from tests.cli.test_server_limits import set_server
from tests.toolkit.upstream import Received, RecordingUpstream

INVOKE_HEADERS = {"Content-Type": "application/json"}


def _invoke(url: str, slug: str, token: str, path: str, **headers: str) -> requests.Response:
    return requests.post(
        f"{url}/r/invoke/{slug}",
        data=json.dumps({"method": "GET", "path": path}),
        headers={"Authorization": f"Bearer {token}", **INVOKE_HEADERS, **headers},
        timeout=10,
    )


def _add_hello(space: Workspace, upstream: RecordingUpstream) -> None:
    space.add_service("hello", upstream.url)


def test_served_gateway_relays_to_the_upstream_until_the_key_is_revoked(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    _add_hello(workspace, upstream)
    key = workspace.issue("--kind", "integration", "--name", "ci")
    with running_gateway(workspace) as gateway:
        invoked = _invoke(gateway.url, "hello", key, "/greet?name=ada")
        assert invoked.status_code == 200
        envelope = invoked.json()
        assert envelope["status_code"] == 200
        echoed = Received.from_json(base64.b64decode(envelope["body_base64"]))
        assert echoed.method == "GET"
        assert echoed.target == "/greet?name=ada"
        # The caller's key is the gateway's business, never the container's.
        assert echoed.header("Authorization") is None

        relayed = requests.put(
            f"{gateway.url}/r/containers/hello/items/7?full=1",
            data=b"payload",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert relayed.status_code == 200
        echoed = Received.from_json(relayed.content)
        assert (echoed.method, echoed.target, echoed.body) == ("PUT", "/items/7?full=1", b"payload")
        assert echoed.header("Authorization") is None
        assert len(upstream.received) == 2

        prefix = key[:12]
        revoked = workspace.run("credentials", "revoke", prefix)
        assert revoked.stdout == ""
        assert prefix in revoked.stderr

        refused = _invoke(gateway.url, "hello", key, "/greet")
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthenticated"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        refused_relay = requests.get(
            f"{gateway.url}/r/containers/hello/",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert refused_relay.status_code == 401
        assert len(upstream.received) == 2


def test_a_device_key_acts_with_its_users_current_role(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    _add_hello(workspace, upstream)
    team = str(workspace.team)
    workspace.run("members", "set", "--team", team, "--user", "ada", "member")
    key = workspace.issue("--kind", "device", "--user", "ada")
    assert key.startswith("dk-")
    with running_gateway(workspace) as gateway:
        assert _invoke(gateway.url, "hello", key, "/").status_code == 200

        workspace.run("members", "set", "--team", team, "--user", "ada", "viewer")
        assert _invoke(gateway.url, "hello", key, "/").status_code == 403
        listed = requests.get(
            f"{gateway.url}/r/containers", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert [s["slug"] for s in listed.json()["services"]] == ["hello"]

        workspace.run("members", "remove", "--team", team, "--user", "ada")
        assert _invoke(gateway.url, "hello", key, "/").status_code == 403
    assert len(upstream.received) == 1


def test_a_status_change_reaches_the_served_gateway(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    _add_hello(workspace, upstream)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        assert _invoke(gateway.url, "hello", key, "/").status_code == 200
        workspace.run("services", "set-status", "hello", "stopped", "--team", str(workspace.team))
        # Service lookups may be served from a cache for up to [store] service_cache_ttl
        # (2 s in the starter config); poll, with a bound, until the change shows.
        deadline = time.monotonic() + 30
        answer = _invoke(gateway.url, "hello", key, "/")
        while answer.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = _invoke(gateway.url, "hello", key, "/")
        assert answer.status_code == 409
        assert answer.json()["code"] == "service_not_running"
        assert "stopped" in answer.json()["error_message"]


def test_user_jwts_are_verified_with_the_configured_secret(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    _add_hello(workspace, upstream)
    secret = "a-test-secret-long-enough-for-hs256-keys!"
    with workspace.config.open("a") as config:
        config.write('\n[jwt]\nalgorithms = ["HS256"]\nsecret_env = "TEST_JWT_SECRET"\n')
    workspace.env["TEST_JWT_SECRET"] = secret
    team = str(workspace.team)
    workspace.run("members", "set", "--team", team, "--user", "grace", "member")
    good = mint_jwt(secret_or_private_key=secret, sub="grace")
    forged = mint_jwt(secret_or_private_key=secret + "-not", sub="grace")
    with running_gateway(workspace) as gateway:
        assert _invoke(gateway.url, "hello", good, "/", **{"X-Team-ID": team}).status_code == 200
        assert _invoke(gateway.url, "hello", forged, "/", **{"X-Team-ID": team}).status_code == 401
        assert _invoke(gateway.url, "hello", good, "/").json()["code"] == "missing_team"
    assert len(upstream.received) == 1


def test_healthz_answers_and_other_host_paths_are_json_404(workspace: Workspace) -> None:
    with running_gateway(workspace) as gateway:
        health = requests.get(f"{gateway.url}/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        missing = requests.get(f"{gateway.url}/", timeout=10)
        assert missing.status_code == 404
        assert missing.headers["Content-Type"] == "application/json"
        assert "error_message" in missing.json()
        assert requests.post(f"{gateway.url}/healthz", timeout=10).status_code == 405


def test_runtime_routes_follow_the_configured_prefix(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    text = workspace.config.read_text()
    workspace.config.write_text(text.replace('prefix = ""', 'prefix = "/api/v1"'))
    _add_hello(workspace, upstream)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        assert gateway.url == f"{gateway.root}/api/v1"
        assert _invoke(gateway.url, "hello", key, "/").status_code == 200
        assert _invoke(gateway.root, "hello", key, "/").status_code == 404


def test_serve_logs_its_url_and_stops_cleanly_on_sigterm(workspace: Workspace) -> None:
    served = start_gateway(workspace, "--threads", "2")
    try:
        assert requests.get(f"{served.url}/healthz", timeout=10).status_code == 200
    finally:
        status = served.stop()
    log = served.log.read_text()
    assert status == 0
    assert f"serving on {served.url} (store sqlite:///" in log
    assert "2 threads" in log
    assert log.rstrip().endswith("stopped")
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("signum", "engine"),
    [
        pytest.param(signal.SIGINT, None, id="sigint"),
        # SIGHUP's default action ended the single-process server at once: relays cut, the
        # store left open.
        pytest.param(signal.SIGHUP, "waitress", id="sighup-single-process"),
    ],
)
def test_serve_stops_cleanly_on(workspace: Workspace, signum: int, engine: str | None) -> None:
    if engine is not None:
        set_server(workspace, engine=engine)
    served = start_gateway(workspace)
    try:
        served.process.send_signal(signum)
        status = served.process.wait(timeout=15)
    finally:
        served.stop()
    log = served.log.read_text()
    assert status == 0
    assert log.rstrip().endswith("stopped")
    assert "Traceback" not in log


def test_a_server_started_with_sighup_ignored_outlives_its_terminal(workspace: Workspace) -> None:
    # nohup hands SIGHUP down ignored: the server's own handler replaced that, and
    # `nohup invoke-middleware serve &` stopped when its terminal closed.
    set_server(workspace, engine="waitress")
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the child
    try:
        served = start_gateway(workspace)
    finally:
        signal.signal(signal.SIGHUP, previous)
    try:
        served.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert served.process.poll() is None
        assert requests.get(f"{served.root}/healthz", timeout=10).status_code == 200
    finally:
        assert served.stop() == 0


#: ``run_server`` under waitress in one process, ``sys.argv[1]`` times, each stopped by
#: SIGTERM; with ``sys.argv[2]`` seconds of clean-up, during which a second SIGTERM comes.
_SERVE_AND_STOP = """
import os, signal, sys, threading, time
from invoke_middleware._server import WAITRESS, ServerPlan, run_server

times, cleaning = int(sys.argv[1]), float(sys.argv[2])

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

def close():
    time.sleep(cleaning)
    print("closed", flush=True)

def stop_soon(bound):
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    if cleaning:
        threading.Timer(0.3 + cleaning / 2, os.kill, (os.getpid(), signal.SIGTERM)).start()

plan = ServerPlan(engine=WAITRESS, host="127.0.0.1", port=0, workers=1, threads=1,
                  connection_limit=10, idle_timeout=5, max_request_header_bytes=8192,
                  max_request_body_bytes=1 << 20, max_header_count=100)
for n in range(times):
    try:
        run_server(plan, lambda: (app, close), on_ready=stop_soon)
    except SystemExit:
        pass
    print("stopped", flush=True)
"""


@pytest.mark.parametrize(
    ("times", "cleaning"),
    [
        # The first one's clean-up left the signals ignored, which the second took for nohup's.
        pytest.param(2, 0.0, id="a-second-server"),
        # A second signal must not cut the clean-up short (the store, Redis, the pools).
        pytest.param(1, 1.5, id="a-signal-during-clean-up"),
    ],
)
def test_serve_in_one_process_stops_on_its_signals_and_cleans_up(
    times: int, cleaning: float
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_STOP, str(times), str(cleaning)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["closed", "stopped"] * times, result.stderr


def test_readyz_checks_the_store_and_says_which_probe_failed(workspace: Workspace) -> None:
    with running_gateway(workspace) as gateway:
        ready = requests.get(f"{gateway.root}/readyz", timeout=10)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "probes": {"store": "ok"}}
        assert requests.head(f"{gateway.root}/readyz", timeout=10).status_code == 200
        # The store's tables are gone: still alive, no longer ready.
        store = workspace.path / "invoke-middleware.sqlite3"
        with sqlite3.connect(store) as connection:
            connection.execute("DROP TABLE invoke_services")
        assert requests.get(f"{gateway.root}/healthz", timeout=10).status_code == 200
        time.sleep(DEFAULT_MAX_AGE)  # the last outcome is answered again until then
        not_ready = requests.get(f"{gateway.root}/readyz", timeout=10)
        assert not_ready.status_code == 503
        assert not_ready.json() == {"status": "not_ready", "probes": {"store": "OperationalError"}}
