"""Soak: 64 concurrent clients of two teams, under a real threaded server, each request
carrying a unique token that the upstream echoes back.

Both teams' services have the same upstream origin, so their requests share the transport's
pool (today; by team once pools are keyed by team). Each client alternates the structured
invoke and the streaming relay on one kept-alive connection to the gateway, and checks that
the answer is to its own request: the token in the path, in a header and in the body.

Asserted: no error, no cross-talk, the process's open file descriptors and threads back to
where they were before (polled until the server's connection threads end, bounded), and the
pool never holding more idle connections per key than its limit.

Short form: 64 clients x 6 requests. ``INVOKE_CAMPAIGN=long``: 64 clients x 250 requests.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from invoke_middleware import ERROR_MARKER_HEADER, CredentialKind
from invoke_middleware.transport import HTTPTransport
from tests.campaign.conftest import record_figures, scale
from tests.integration.gateway import CLIENT_TIMEOUT, RunningGateway, serve_gateway
from tests.toolkit.upstream import recording_upstream
from tests.toolkit.world import OTHER_TEAM, make_service

CLIENTS = 64
REQUESTS_PER_CLIENT = scale(6, 250)
POOL_LIMIT = 8
#: How long the process may take to let go of the server's connection threads.
SETTLE_SECONDS = 15.0


@dataclass
class Tally:
    """What the clients saw, added up under a lock."""

    requests: int = 0
    errors: list[str] = field(default_factory=list)
    cross_talk: list[str] = field(default_factory=list)
    max_idle_per_key: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True, kw_only=True)
class Soak:
    gateway: RunningGateway
    transport: HTTPTransport
    keys: dict[str, str]  # slug -> key of the team that owns it
    base_threads: int  # threads alive with both servers up and no client


@pytest.fixture
def soak() -> Iterator[Soak]:
    transport = HTTPTransport(pool_size_per_origin=POOL_LIMIT)
    # The recording upstream keeps connections alive (werkzeug's server closes each one),
    # so the pool is really used; it echoes each request as JSON.
    with recording_upstream() as upstream:
        services = [
            make_service("ours", upstream.url),
            make_service("theirs", upstream.url, team=OTHER_TEAM),
        ]
        with serve_gateway(services, transport=transport) as gateway:
            other = gateway.middleware.credentials.issue(
                CredentialKind.INTEGRATION, team_id=OTHER_TEAM
            )
            yield Soak(
                gateway=gateway,
                transport=transport,
                keys={"ours": gateway.key, "theirs": other.key},
                base_threads=threading.active_count(),
            )


def idle_per_key(transport: HTTPTransport) -> list[int]:
    """How many idle connections the pool keeps under each of its keys (see
    ``HTTPTransport._release``)."""
    with transport._lock:
        return [len(connections) for connections in transport._idle.values()]


def one_exchange(
    connection: http.client.HTTPConnection, slug: str, key: str, relay: bool
) -> tuple[int, dict[str, object] | None, str]:
    """One request carrying a fresh token; the status, the upstream's account, the token."""
    token = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {key}"}
    if relay:
        headers |= {"X-Token": token, "Content-Type": "application/octet-stream"}
        connection.request("POST", f"/r/containers/{slug}/own/{token}", token.encode(), headers)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return (
                response.status,
                {"gateway_error": response.getheader(ERROR_MARKER_HEADER)},
                token,
            )
        return response.status, json.loads(body), token
    envelope = {
        "method": "POST",
        "path": f"/own/{token}",
        "headers": {"X-Token": token},
        "body_base64": base64.b64encode(token.encode()).decode(),
    }
    headers["Content-Type"] = "application/json"
    connection.request("POST", f"/r/invoke/{slug}", json.dumps(envelope).encode(), headers)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        return response.status, {"gateway_error": response.getheader(ERROR_MARKER_HEADER)}, token
    answer = json.loads(body)
    if answer["status_code"] != 200:
        return answer["status_code"], None, token
    return 200, json.loads(base64.b64decode(answer["body_base64"])), token


def _header(account: dict[str, object], name: str) -> object:
    headers = account.get("headers")
    assert isinstance(headers, list)
    values = [value for key, value in headers if key.lower() == name.lower()]
    return values[0] if len(values) == 1 else values


def client(soak: Soak, number: int, tally: Tally, start: threading.Barrier) -> None:
    slug = "ours" if number % 2 else "theirs"
    key = soak.keys[slug]
    connection = soak.gateway.connection(CLIENT_TIMEOUT)
    start.wait(CLIENT_TIMEOUT)
    try:
        for index in range(REQUESTS_PER_CLIENT):
            try:
                status, account, token = one_exchange(connection, slug, key, relay=bool(index % 2))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with tally.lock:
                    tally.errors.append(f"client {number}: {exc!r}")
                connection.close()
                connection = soak.gateway.connection(CLIENT_TIMEOUT)
                continue
            idle = max(idle_per_key(soak.transport), default=0)
            with tally.lock:
                tally.requests += 1
                tally.max_idle_per_key = max(tally.max_idle_per_key, idle)
                if status != 200 or account is None:
                    tally.errors.append(f"client {number}: status {status} {account}")
                    continue
                own = (
                    account.get("target") == f"/own/{token}"
                    and _header(account, "X-Token") == token
                    and account.get("body_base64") == base64.b64encode(token.encode()).decode()
                )
                if not own:
                    tally.cross_talk.append(f"client {number} ({slug}) got {account}")
    finally:
        connection.close()


def run_clients(soak: Soak, tally: Tally) -> float:
    start = threading.Barrier(CLIENTS + 1)
    threads = [
        threading.Thread(target=client, args=(soak, number, tally, start))
        for number in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    start.wait(CLIENT_TIMEOUT)
    began = time.perf_counter()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT * REQUESTS_PER_CLIENT)
    return time.perf_counter() - began


def settled_counts(process: psutil.Process, soak: Soak) -> tuple[int, int, int]:
    """Open descriptors, threads and idle pooled connections, once every thread but those
    the pool holds open has ended.

    In this process each idle pooled connection is two descriptors (the transport's and the
    upstream server's) and one thread (the upstream server's, waiting for the next request);
    the gateway server's connection threads end when their clients have closed. Polled, with
    a bound, so that a slow exit is not taken for a leak and a leak still shows.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        idle = sum(idle_per_key(soak.transport))
        # Threads as the interpreter counts them, as the wait above does: the system's count
        # also has, for a moment, a thread the interpreter has already let go of.
        threads = threading.active_count()
        if threads <= soak.base_threads + idle or time.monotonic() > deadline:
            return process.num_fds() - 2 * idle, threads - idle, idle
        time.sleep(0.05)


def test_many_clients_of_two_teams_get_their_own_answers_and_leave_nothing_behind(
    soak: Soak,
) -> None:
    process = psutil.Process()
    warm_up = Tally()
    run_clients(soak, warm_up)
    assert not warm_up.errors, warm_up.errors[:5]
    # Counted without what the pool holds: what is left must not grow under load.
    fds_before, threads_before, idle_before = settled_counts(process, soak)
    alive_before = set(threading.enumerate())

    tally = Tally()
    seconds = run_clients(soak, tally)
    fds_after, threads_after, idle_after = settled_counts(process, soak)

    record_figures(
        "soak",
        {
            "clients": CLIENTS,
            "requests": tally.requests,
            "seconds": round(seconds, 2),
            "requests_per_second": round(tally.requests / seconds),
            "errors": len(tally.errors),
            "cross_talk": len(tally.cross_talk),
            "fds_before": fds_before,
            "fds_after": fds_after,
            "threads_before": threads_before,
            "threads_after": threads_after,
            "idle_before": idle_before,
            "idle_after": idle_after,
            "max_idle_per_key": tally.max_idle_per_key,
            "pool_limit": POOL_LIMIT,
        },
    )
    assert tally.requests == CLIENTS * REQUESTS_PER_CLIENT
    assert not tally.errors, tally.errors[:5]
    assert not tally.cross_talk, tally.cross_talk[:5]
    assert tally.max_idle_per_key <= POOL_LIMIT
    assert max(idle_per_key(soak.transport), default=0) <= POOL_LIMIT
    assert fds_after <= fds_before
    started = [thread.name for thread in set(threading.enumerate()) - alive_before]
    assert threads_after <= threads_before, started  # names the threads the load left
