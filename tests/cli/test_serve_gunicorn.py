"""``serve`` under gunicorn (:mod:`invoke_middleware._gunicorn`) against clients that try to hold
a worker thread: a half head behind a pipelined request, a head that never ends, a head over
``[server] max_request_header_bytes``, a silent upload, clients that never close. Each costs at
most a socket, for at most ``idle_timeout``, for real."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import requests

from invoke_middleware._server import GUNICORN
from tests.cli.conftest import Served, Workspace, running_gateway
from tests.cli.test_server_limits import ENGINES, set_server, set_table
from tests.toolkit.upstream import RecordingUpstream

#: Bounds a failing run: without the deadline under test the read would wait forever.
WAIT = 10.0


@contextmanager
def connections(served: Served, count: int) -> Iterator[list[socket.socket]]:
    """``count`` raw connections to ``served``, closed afterwards."""
    host, port = served.root.removeprefix("http://").split(":")
    with ExitStack() as stack:
        yield [
            stack.enter_context(socket.create_connection((host, int(port)), timeout=WAIT))
            for _ in range(count)
        ]


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (a timeout fails)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def answer(sock: socket.socket) -> int:
    """The status of the next whole response on ``sock`` (its body read too)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


def fields(size: int) -> bytes:
    """Header fields of 1000 bytes each, ``size`` bytes or a little more in all."""
    return b"".join(b"X-Pad-%d: %s\r\n" % (n, b"a" * 990) for n in range(size // 1000 + 1))


def test_a_half_head_pipelined_behind_a_request_is_closed_after_idle_timeout(
    workspace: Workspace,
) -> None:
    # The second head arrived with the first request; gunicorn gave the connection straight
    # back to a thread, which waited for the rest of it with no deadline: two such
    # connections held both threads for good.
    set_server(workspace, engine=GUNICORN, workers=1, idle_timeout=1)
    with running_gateway(workspace, "--threads", "2") as gateway:
        with connections(gateway, 2) as attackers:
            for sock in attackers:
                sock.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
                )
            for sock in attackers:
                assert until_closed(sock).count(b"HTTP/1.1 200 ") == 1
        assert requests.get(f"{gateway.root}/healthz", timeout=WAIT).status_code == 200


def test_a_head_that_outgrows_the_cap_before_it_ends_is_refused_431_at_once(
    workspace: Workspace,
) -> None:
    # Refused by the event loop, long before idle_timeout: a thread given the unfinished head
    # waited, blocked, for its end.
    set_server(
        workspace, engine=GUNICORN, workers=1, idle_timeout=60, max_request_header_bytes=4096
    )
    with running_gateway(workspace, "--threads", "1") as gateway:
        with connections(gateway, 1) as (sock,):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields(20_000))
            answer = until_closed(sock)  # no final CRLF: the head never ends
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b'"code":"request_header_fields_too_large"' in answer
        assert requests.get(f"{gateway.root}/healthz", timeout=WAIT).status_code == 200


@pytest.mark.parametrize("engine", ENGINES)
def test_max_request_header_bytes_caps_the_whole_head(workspace: Workspace, engine: str) -> None:
    set_server(workspace, engine=engine, workers=1, max_request_header_bytes=4096)
    with running_gateway(workspace) as gateway, connections(gateway, 2) as (small, large):
        for sock, size in ((small, 3000), (large, 20_000)):
            sock.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + fields(size)
                + b"\r\n"
            )
        # Every field is far below the cap: only their sum is over it.
        assert until_closed(small).split(b" ", 2)[1] == b"200"
        answer = until_closed(large)
        assert answer.split(b" ", 2)[1] == b"431"
        assert b"x-invoke-error: request_header_fields_too_large" in answer.lower()
        assert b'"code":"request_header_fields_too_large"' in answer


def test_a_silent_upload_is_answered_400_and_gives_the_slot_back_after_idle_timeout(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    # The thread read the body from a socket without a timeout: the upload held it, and the
    # team's only slot, for as long as the client kept the connection open.
    set_server(workspace, engine=GUNICORN, workers=1, idle_timeout=1)
    set_table(workspace, "limits", team_max_in_flight=1)
    workspace.add_service("files", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace, "--threads", "2") as gateway:
        routes = gateway.url.removeprefix(gateway.root) + "/r/containers/files"
        with connections(gateway, 1) as (stalled,):
            stalled.sendall(
                f"POST {routes}/up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b"a" * 10
            )
            assert stalled.recv(65536).startswith(b"HTTP/1.1 400 ")
            # Still connected, and the team's next upload is relayed.
            answer = requests.post(
                f"{gateway.url}/r/containers/files/up",
                data=b"hi",
                headers={"Authorization": f"Bearer {key}"},
                timeout=WAIT,
            )
            assert answer.status_code == 200


@pytest.mark.parametrize(
    ("declared", "refused"),
    [pytest.param(900, 401, id="unauthenticated"), pytest.param(10**6, 413, id="over-cap")],
)
def test_a_refused_upload_trickled_on_does_not_hold_a_thread(
    workspace: Workspace, declared: int, refused: int
) -> None:
    # gunicorn drained the body the gateway left unread before taking the connection's next
    # request, bounded only between reads of 1 KiB: a byte every half second held the
    # thread for minutes, with no credentials needed.
    set_server(workspace, engine=GUNICORN, workers=1, idle_timeout=30, max_request_body_bytes=1000)
    with running_gateway(workspace, "--threads", "2") as gateway, connections(gateway, 2) as bad:
        target = gateway.url.removeprefix(gateway.root) + "/r/containers/files/up"
        for sock in bad:
            sock.sendall(
                f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode()
                + b"x"
            )
            assert answer(sock) == refused
        for _ in range(6):
            for sock in bad:
                with contextlib.suppress(OSError):
                    sock.sendall(b"x")
            assert requests.get(f"{gateway.root}/healthz", timeout=2).status_code == 200
            time.sleep(0.5)
        for sock in bad:
            assert until_closed(sock) == b""


@pytest.mark.parametrize("size", [900, 64 * 1024])
def test_a_refused_upload_sent_whole_keeps_its_connection(workspace: Workspace, size: int) -> None:
    # Up to 64 KiB already received is drained for the connection to take its next request.
    set_server(workspace, engine=GUNICORN, workers=1)
    with (
        running_gateway(workspace, "--threads", "1") as gateway,
        connections(gateway, 1) as (sock,),
    ):
        target = gateway.url.removeprefix(gateway.root) + "/r/containers/files/up"
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
            + b"x" * size
        )
        assert answer(sock) == 401
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock) == 200


def test_clients_that_never_close_do_not_stall_the_other_connections(
    workspace: Workspace,
) -> None:
    # gunicorn closed each answered "Connection: close" connection in its event loop, waiting
    # up to 2 s for the client to close first: eight silent clients stalled every other
    # connection of the process for 16 s.
    set_server(workspace, engine=GUNICORN, workers=1, idle_timeout=60)
    with running_gateway(workspace, "--threads", "4") as gateway, connections(gateway, 8) as silent:
        for sock in silent:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        started = time.monotonic()
        for sock in silent:
            assert until_closed(sock).startswith(b"HTTP/1.1 200 ")
        assert requests.get(f"{gateway.root}/healthz", timeout=WAIT).status_code == 200
        assert time.monotonic() - started < 8


def test_gunicorns_control_socket_is_off(workspace: Workspace) -> None:
    # It sits at one path per user: two gateways of one user would take over each other's,
    # and any process of the user could add or retire workers.
    set_server(workspace, engine=GUNICORN, workers=1)
    with running_gateway(workspace) as gateway:
        assert requests.get(f"{gateway.root}/healthz", timeout=WAIT).status_code == 200
        log = gateway.log.read_text()
    assert "Booting worker" in log
    assert "ontrol socket" not in log
