"""The standalone server's own limits ([server]): what they default to, how they are checked,
and that they hold against callers without credentials (idle connections, oversized bodies)
and clients that stop reading, under both engines, for real."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from invoke_middleware._server import GUNICORN, WAITRESS, plan_server
from invoke_middleware._toml_config import ConfigError, load_config, starter_config
from tests.cli.conftest import Served, Workspace, running_gateway
from tests.toolkit.upstream import RecordingUpstream

ENGINES = [pytest.param(GUNICORN, id="gunicorn"), pytest.param(WAITRESS, id="waitress")]


def set_server(space: Workspace, **settings: object) -> None:
    """Add TOML keys to the [server] table of the workspace's configuration."""
    set_table(space, "server", **settings)


def set_table(space: Workspace, table: str, **settings: object) -> None:
    """Add TOML keys to the ``[table]`` of the workspace's configuration."""
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
    text = space.config.read_text()
    head = f"[{table}]\n"
    space.config.write_text(text.replace(head, head + "\n".join(lines) + "\n", 1))


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def _config(tmp_path: Path, server: str = "", gateway: str = "") -> Path:
    path = tmp_path / "invoke-middleware.toml"
    text = starter_config().replace("[server]\n", f"[server]\n{server}\n", 1)
    path.write_text(text.replace("[gateway]\n", f"[gateway]\n{gateway}\n", 1))
    return path


# -- defaults and checks ---------------------------------------------------------------------


def test_the_server_caps_follow_the_gateway_caps_by_default(tmp_path: Path) -> None:
    plan = plan_server(load_config(_config(tmp_path)))
    assert plan.max_request_header_bytes == 64 * 1024 + 8192
    assert plan.max_request_body_bytes == 1024 * 1024 * 1024
    assert plan.connection_limit == 1000
    assert plan.idle_timeout == 30

    small = _config(tmp_path, gateway="max_relay_body_bytes = 1000\nmax_header_bytes = 4096")
    plan = plan_server(load_config(small))
    assert plan.max_request_header_bytes == 4096 + 8192
    # The invoke envelope (a base64 body of up to 10 MiB) is now the larger of the two.
    assert plan.max_request_body_bytes > 10 * 1024 * 1024


def test_explicit_server_limits_win_over_the_derived_ones(tmp_path: Path) -> None:
    server = "max_request_body_bytes = 5000\nmax_request_header_bytes = 9000\nidle_timeout = 3"
    plan = plan_server(load_config(_config(tmp_path, server=server)))
    assert (plan.max_request_body_bytes, plan.max_request_header_bytes, plan.idle_timeout) == (
        5000,
        9000,
        3,
    )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        pytest.param("connection_limit = 0", "[server] connection_limit", id="zero-connections"),
        pytest.param('idle_timeout = "30"', "[server] idle_timeout", id="string-timeout"),
        pytest.param("idle_timeout = 0.5", "[server] idle_timeout", id="fractional-timeout"),
        pytest.param("max_request_body_bytes = -1", "[server] max_request_body_bytes", id="neg"),
        pytest.param('engine = "uwsgi"', "[server] engine", id="unknown-engine"),
        pytest.param('log_format = "xml"', "[server] log_format", id="unknown-log-format"),
        pytest.param("workers = 0", "[server] workers", id="no-workers"),
        pytest.param('engine = "waitress"\nworkers = 2', "[server] workers", id="waitress-fork"),
        pytest.param('metrics = "yes"', "[server] metrics", id="metrics-string"),
        pytest.param("idle_timout = 3", "[server] idle_timout", id="typo"),
    ],
)
def test_a_bad_server_setting_is_named(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_config(tmp_path, server=line))
    assert key in str(refused.value)
    assert str(tmp_path) in str(refused.value)


def test_waitress_is_one_process_and_gunicorn_one_per_core_by_default(tmp_path: Path) -> None:
    single = plan_server(load_config(_config(tmp_path, server='engine = "waitress"')))
    assert single.workers == 1
    several = plan_server(load_config(_config(tmp_path, server='engine = "gunicorn"')))
    assert several.workers >= 1
    assert plan_server(load_config(_config(tmp_path))).engine == GUNICORN


# -- under attack, for real ------------------------------------------------------------------


@contextmanager
def idle_connections(url: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send half a request head and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
            sockets.append(sock)
        for sock in sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        yield sockets


@pytest.mark.parametrize("engine", ENGINES)
def test_idle_connections_beyond_the_old_limit_do_not_block_a_client(
    workspace: Workspace, engine: str
) -> None:
    # 150 is past waitress's built-in connection limit (100), which held every other client.
    set_server(workspace, engine=engine)
    with running_gateway(workspace) as gateway, idle_connections(gateway.root, 150):
        assert requests.get(f"{gateway.root}/healthz", timeout=20).status_code == 200


@pytest.mark.parametrize("engine", ENGINES)
def test_connections_past_the_limit_wait_only_until_the_idle_ones_time_out(
    workspace: Workspace, engine: str
) -> None:
    set_server(workspace, engine=engine, workers=1, connection_limit=4, idle_timeout=2)
    with (
        running_gateway(workspace, "--threads", "2") as gateway,
        idle_connections(gateway.root, 8),
    ):
        # The idle ones are closed after idle_timeout; the legitimate client is then served.
        assert requests.get(f"{gateway.root}/healthz", timeout=30).status_code == 200


def _post_head(served: Served, path: str, length: int, **headers: str) -> bytes:
    """Send only the head of a POST declaring ``length`` body bytes; return the answer, head
    and body (the server answers without waiting for a body it will not take)."""
    host, port = served.root.removeprefix("http://").split(":")
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{fields}\r\n".encode()
        )
        # The head and the body may come in separate packets: read until the body is whole.
        answer = b""
        while (size := _answer_size(answer)) is None or len(answer) < size:
            received = sock.recv(65536)
            if not received:
                break
            answer += received
        return answer


def _answer_size(answer: bytes) -> int | None:
    """The length of the whole answer once its head is in, from its Content-Length."""
    head, separator, _ = answer.partition(b"\r\n\r\n")
    if not separator:
        return None
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return len(head) + 4 + (int(length.group(1)) if length else 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_oversized_body_is_refused_before_it_is_sent(workspace: Workspace, engine: str) -> None:
    set_server(workspace, engine=engine, max_request_body_bytes=1_000_000)
    with running_gateway(workspace) as gateway:
        answer = _post_head(
            gateway,
            "/r/containers/hello/up",
            1_000_001,
            Authorization="Bearer x",
            **{"X-Request-ID": "upload-7"},
        )
    # The server's refusal, in the gateway's error format: a client tells it from a
    # container's 413 by the marker, and finds it in the logs by the request id.
    assert answer.startswith(b"HTTP/1.1 413 ")
    head, _, body = answer.partition(b"\r\n\r\n")
    fields = head.lower()  # waitress writes X-Request-Id
    assert b"\r\nx-invoke-error: payload_too_large" in fields
    assert b"\r\nx-request-id: upload-7" in fields
    assert fields.count(b"\r\ncontent-length:") == 1  # twice, a strict proxy refuses it
    assert json.loads(body) == {
        "error_message": "The request body is too large.",
        "code": "payload_too_large",
        "request_id": "upload-7",
    }


def test_an_upload_without_credentials_is_refused_before_its_body_under_gunicorn(
    workspace: Workspace,
) -> None:
    # gunicorn hands the gateway the body as it streams: the 401 comes before any of the
    # 100 MiB (waitress would read the whole body first; the README says so).
    set_server(workspace, engine=GUNICORN)
    with running_gateway(workspace) as gateway:
        answer = _post_head(gateway, "/r/containers/hello/up", 100 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 401 ")


def _status_until(url: str, key: str, wanted: int, *, within: float) -> int:
    """GET ``url`` every half second until it answers ``wanted`` or ``within`` seconds pass;
    the last status."""
    deadline = time.monotonic() + within
    while True:
        status = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        if status.status_code == wanted or time.monotonic() > deadline:
            return status.status_code
        time.sleep(0.5)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_client_that_stops_reading_a_download_gives_its_slot_back_after_idle_timeout(
    workspace: Workspace, upstream: RecordingUpstream, engine: str
) -> None:
    # Under waitress the thread relaying the download waited, for as long as the client
    # kept the connection open, for its output buffer to drain, and held the team's slot.
    set_server(workspace, engine=engine, workers=1, idle_timeout=2)
    set_table(workspace, "limits", team_max_in_flight=1)
    workspace.add_service("files", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace, "--threads", "4") as gateway:
        host, port = gateway.root.removeprefix("http://").split(":")
        files = gateway.url + "/r/containers/files"
        with socket.create_connection((host, int(port)), timeout=10) as stalled:
            # Far more than the buffers on the way hold; the client reads the head, then stops.
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(
                f"GET {urlsplit(files).path}/bytes/{64 * 1024 * 1024} HTTP/1.1\r\n"
                f"Host: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
            )
            assert stalled.recv(64).startswith(b"HTTP/1.1 200 ")
            # The download holds the team's one slot...
            assert _status_until(f"{files}/x", key, 429, within=0) == 429
            # ...and gives it back once nothing was sent for idle_timeout (2 s), although
            # the client is still connected.
            assert _status_until(f"{files}/x", key, 200, within=30) == 200
