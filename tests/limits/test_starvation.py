"""One team cannot starve another of the standalone gateway's worker threads.

The regression: eight streaming relays from one team to its own slow endpoint held all eight
of ``invoke-middleware serve``'s default threads, and another team's ordinary request waited
for them. With the standalone gateway's fair-share defaults a team holds at most half of the
threads; its other streams are refused at once with 429, and the other team is answered while
the first team's streams are all still open.
"""

from __future__ import annotations

import json
import socket
import uuid
from contextlib import ExitStack

import pytest
import requests

from tests.cli.conftest import Workspace, running_gateway
from tests.cli.test_server_limits import ENGINES, set_server
from tests.limits.test_limits_relay import Stream
from tests.mcp.conftest import tool_calls
from tests.toolkit.upstream import Received, RecordingUpstream
from tests.upstreams import RawUpstream

#: ``serve``'s default worker threads, and the share of them one team may hold.
THREADS = 8
TEAM_SHARE = THREADS // 2


def _serving_team(workspace: Workspace, slug: str, url: str, team: uuid.UUID) -> str:
    """Add ``team``'s service ``slug`` at ``url``; an integration key of the team."""
    workspace.add_service(slug, url, team=team)
    issued = workspace.run("credentials", "issue", "--team", str(team), "--kind", "integration")
    return issued.stdout.strip()


@pytest.mark.parametrize("engine", ENGINES)
def test_one_teams_slow_streams_leave_threads_for_another_team(
    workspace: Workspace, upstream: RecordingUpstream, raw_upstream: RawUpstream, engine: str
) -> None:
    # One process: the share is of each process's threads (with N processes, a team holds at
    # most half of each, wherever the kernel sends its connections).
    set_server(workspace, engine=engine, workers=1)
    slow_key = _serving_team(workspace, "slow", raw_upstream.url, workspace.team)
    other_key = _serving_team(workspace, "hello", upstream.url, uuid.uuid4())

    with running_gateway(workspace) as gateway, ExitStack() as streams:
        port = int(gateway.url.rsplit(":", 1)[1])
        statuses = []
        for _ in range(THREADS):
            stream = streams.enter_context(
                Stream(port, slow_key, "/r/containers/slow/sse?count=100000&interval=0.5")
            )
            statuses.append(stream.status)

        # Every stream the slow team was given is still open while the other team asks.
        answer = requests.get(
            f"{gateway.url}/r/containers/hello/greet",
            headers={"Authorization": f"Bearer {other_key}"},
            timeout=10,
        )
        log = gateway.log.read_text()

    assert statuses == [200] * TEAM_SHARE + [429] * (THREADS - TEAM_SHARE)
    assert answer.status_code == 200
    assert Received.from_json(answer.content).target == "/greet"
    assert log.count("limit=team_in_flight outcome=refused") == THREADS - TEAM_SHARE


@pytest.mark.parametrize("engine", ENGINES)
def test_two_teams_slow_streams_still_leave_a_thread_for_a_third(
    workspace: Workspace, upstream: RecordingUpstream, raw_upstream: RawUpstream, engine: str
) -> None:
    # Each team's cap alone let two teams hold every relay (4 + 3 of 7): the last quarter of
    # the relays is kept for teams with nothing in flight.
    set_server(workspace, engine=engine, workers=1)
    teams = [workspace.team, uuid.uuid4(), uuid.uuid4()]
    keys = [
        _serving_team(workspace, slug, raw_upstream.url if slug != "hello" else upstream.url, team)
        for team, slug in zip(teams, ["slow-a", "slow-b", "hello"], strict=True)
    ]

    with running_gateway(workspace) as gateway, ExitStack() as streams:
        port = int(gateway.url.rsplit(":", 1)[1])
        statuses: dict[str, list[int]] = {"slow-a": [], "slow-b": []}
        for slug, key in zip(statuses, keys, strict=False):
            for _ in range(THREADS):
                stream = streams.enter_context(
                    Stream(port, key, f"/r/containers/{slug}/sse?count=100000&interval=0.5")
                )
                statuses[slug].append(stream.status)
        answer = requests.get(
            f"{gateway.url}/r/containers/hello/greet",
            headers={"Authorization": f"Bearer {keys[2]}"},
            timeout=10,
        )

    assert statuses["slow-a"] == [200] * TEAM_SHARE + [429] * (THREADS - TEAM_SHARE)
    # The second team gets what is left but the reserved relay (8 threads: 7 relays, 1 kept).
    assert statuses["slow-b"] == [200] * 2 + [429] * (THREADS - 2)
    assert answer.status_code == 200
    assert Received.from_json(answer.content).target == "/greet"


#: An answer far larger than the socket buffers between the gateway and a client that reads
#: none of it: writing it holds the server's thread (gunicorn writes from the thread).
UNREAD_BYTES = 8 * 1024 * 1024


def _unread_answer(port: int, key: str, route: str) -> socket.socket:
    """Ask ``route`` for the large answer on a connection whose client never reads it."""
    path = f"/bytes/{UNREAD_BYTES}"
    if route == "invoke":
        target, message = "/r/invoke/big", {"method": "GET", "path": path}
    else:
        arguments = {"service_slug": "big", "method": "GET", "path": path}
        target, message = "/r/mcp", tool_calls("call_container_service", arguments, 1)[0]
    body = json.dumps(message).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


@pytest.mark.parametrize("route", ["invoke", "mcp"])
def test_answers_one_team_leaves_unread_leave_threads_for_another_team(
    workspace: Workspace, upstream: RecordingUpstream, route: str
) -> None:
    # The slot went back once a buffered answer was made, before the server wrote it: a team
    # whose clients read nothing held every thread, writing, and the other team timed out.
    set_server(workspace, engine="gunicorn", workers=1)
    key = _serving_team(workspace, "big", upstream.url, workspace.team)
    other_key = _serving_team(workspace, "hello", upstream.url, uuid.uuid4())

    with running_gateway(workspace) as gateway, ExitStack() as held:
        port = int(gateway.url.rsplit(":", 1)[1])
        heads = []
        for _ in range(THREADS):
            # One at a time: each has its answer's head (its write then stalls) or a 429
            # before the next asks.
            heads.append(held.enter_context(_unread_answer(port, key, route)).recv(12))
        answer = requests.get(
            f"{gateway.url}/r/containers/hello/greet",
            headers={"Authorization": f"Bearer {other_key}"},
            timeout=10,
        )

    assert heads == [b"HTTP/1.1 200"] * TEAM_SHARE + [b"HTTP/1.1 429"] * (THREADS - TEAM_SHARE)
    assert answer.status_code == 200
