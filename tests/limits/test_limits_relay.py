"""Concurrency and rate limits through the real middleware under a real threaded server.

Every test drives the gateway over loopback sockets, to real upstreams: what is refused is
refused with the gateway's 429 before anything goes upstream, what is admitted is counted
exactly, and a slot is given back however the relay ends.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import io
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import pytest
import webtest

from invoke_middleware import CredentialKind, InMemoryServiceRegistry, InvokeMiddleware
from invoke_middleware.auth.principal import Principal, Role
from invoke_middleware.errors import UpstreamError
from invoke_middleware.hooks import RelayFinished, RelayStarted
from invoke_middleware.limits import (
    Limiter,
    LimitEvent,
    LimitKind,
    LimitOutcome,
    LimitSettings,
    Rate,
    ServiceLimits,
)
from invoke_middleware.pipeline import PipelineResponse, PipelineSettings
from invoke_middleware.request import CLIENT_GONE_KEY, WRITTEN_BY_CLOSE_KEY
from invoke_middleware.testing import MockTransport, make_response
from invoke_middleware.transport.base import Timeouts, UpstreamRequest, UpstreamResponse
from invoke_middleware.transport.wsgi import WSGITransport
from tests.integration.gateway import (
    CLIENT_TIMEOUT,
    Reply,
    RunningGateway,
    exchange,
    serve_gateway,
)
from tests.limits.conftest import RedisNamespace, run_concurrently, wait_released, wait_until
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.upstream import RecordingUpstream
from tests.toolkit.world import TEAM, host_app, make_service
from tests.upstreams import RawUpstream

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

OTHER_TEAM = uuid.UUID("019abc12-4567-7890-abcd-00000000000b")

#: An event stream that lasts far longer than any test: a relay that holds its slot.
LONG_STREAM = "/r/containers/svc/sse?count=100000&interval=0.2"


@contextmanager
def limited_gateway(
    upstream_url: str,
    limiter: Limiter,
    *,
    service_limits: ServiceLimits | None = None,
    **options: Any,
) -> Iterator[RunningGateway]:
    service = make_service("svc", upstream_url, limits=service_limits or ServiceLimits())
    with serve_gateway([service], limiter=limiter, **options) as gateway:
        yield gateway


def other_team(gateway: RunningGateway, upstream_url: str, slug: str) -> str:
    """Give :data:`OTHER_TEAM` a service ``slug`` at ``upstream_url``; a key of that team."""
    gateway.middleware.registry.add(  # type: ignore[attr-defined]
        make_service(slug, upstream_url, team=OTHER_TEAM)
    )
    return gateway.middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=OTHER_TEAM).key


class Stream:
    """A GET whose status line and headers were read, its body left on the socket."""

    def __init__(self, port: int, key: str, target: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
        self.sock.sendall(request.encode())
        self.response = http.client.HTTPResponse(self.sock, method="GET")
        self.response.begin()

    @property
    def status(self) -> int:
        return self.response.status

    def close(self) -> None:
        """Go away: the connection is shut at once (closing the socket object alone would
        leave it open while the response's file still refers to it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.response.close()
        self.sock.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_stream(
    gateway: RunningGateway, target: str = LONG_STREAM, key: str | None = None
) -> Stream:
    """Send a GET and read its status line and headers, leaving the body on the socket."""
    return Stream(gateway.port, key or gateway.key, target)


def get(
    gateway: RunningGateway, path: str = "/r/containers/svc/ok", key: str | None = None
) -> Reply:
    headers = [("Authorization", f"Bearer {key}")] if key else []
    return exchange(gateway, "GET", path, headers, auth=key is None)


def limiter_for(backend: str, request: pytest.FixtureRequest, **settings: Any) -> Limiter:
    """A limiter on ``memory://``, or on the test Redis under a prefix of the test's own."""
    if backend == "redis":
        namespace: RedisNamespace = request.getfixturevalue("redis_namespace")
        settings.update(storage_url=namespace.url, key_prefix=namespace.prefix)
    return Limiter(LimitSettings(**settings))


BACKENDS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis")]

_POLICY = re.compile(r'"(\w+)";q=(\d+);w=(\d+)')
_STATE = re.compile(r'^"(\w+)";r=(\d+);t=(\d+)$')


def policies(reply: Reply) -> list[tuple[str, int, int]]:
    value = reply.header("RateLimit-Policy") or ""
    return [(name, int(q), int(w)) for name, q, w in _POLICY.findall(value)]


def state(reply: Reply) -> tuple[str, int, int]:
    match = _STATE.match(reply.header("RateLimit") or "")
    assert match, reply.header("RateLimit")
    return match[1], int(match[2]), int(match[3])


# -- concurrency -------------------------------------------------------------------------------


def test_a_team_at_its_cap_is_refused_at_once_and_nothing_goes_upstream(
    raw_upstream: RawUpstream,
) -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=2))
    with limited_gateway(raw_upstream.url, limiter) as gateway, ExitStack() as streams:
        for _ in range(2):
            stream = streams.enter_context(open_stream(gateway))
            assert stream.status == 200
        accepted = raw_upstream.connections_accepted

        refused = get(gateway, LONG_STREAM)

        payload = assert_gateway_error(refused, 429, "too_many_in_flight")
        assert "Retry-After" in payload["error_message"]
        assert refused.header("Retry-After") == "1"
        assert raw_upstream.connections_accepted == accepted
        assert limiter.in_flight == 2
    wait_released(limiter)


def test_another_team_is_served_while_one_team_holds_all_its_slots(
    raw_upstream: RawUpstream,
) -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=2))
    with limited_gateway(raw_upstream.url, limiter) as gateway, ExitStack() as streams:
        other_key = other_team(gateway, raw_upstream.url, "svc")
        for _ in range(2):
            streams.enter_context(open_stream(gateway))
        assert get(gateway).status == 429

        assert get(gateway, "/r/containers/svc/headers", key=other_key).status == 200


@pytest.mark.parametrize(
    "cap",
    [
        pytest.param("service_max_in_flight", id="per-service"),
        pytest.param("team_max_in_flight", id="per-team"),
        pytest.param("max_in_flight", id="per-process"),
    ],
)
def test_exactly_the_cap_is_admitted_among_32_concurrent_clients(
    raw_upstream: RawUpstream, cap: str
) -> None:
    limiter = Limiter(LimitSettings(**{cap: 5}))
    with limited_gateway(raw_upstream.url, limiter) as gateway, ExitStack() as streams:

        def call(_: int) -> int:
            stream = streams.enter_context(open_stream(gateway))
            return stream.status

        statuses = run_concurrently(32, call)

        assert statuses.count(200) == 5
        assert statuses.count(429) == 27
        assert limiter.in_flight == 5
    wait_released(limiter)


def test_a_short_queue_timeout_admits_a_request_once_a_global_slot_frees(
    raw_upstream: RawUpstream,
) -> None:
    limiter = Limiter(LimitSettings(max_in_flight=1, queue_timeout=CLIENT_TIMEOUT / 2))
    with limited_gateway(raw_upstream.url, limiter) as gateway:
        with open_stream(gateway, "/r/containers/svc/drip?count=5&interval=0.1") as first:
            # Admitted while the first still streams, as soon as that one ends.
            second = get(gateway, "/r/containers/svc/headers")
            assert first.response.read() == b"....."
        assert second.status == 200
    wait_released(limiter)


def test_a_team_at_its_own_cap_is_refused_at_once_whatever_the_queue_timeout(
    raw_upstream: RawUpstream,
) -> None:
    # Waiting holds a worker thread: a team waiting for its own cap would hold more than its
    # share of them. (Had it waited, the client would have given up first.)
    limiter = Limiter(LimitSettings(team_max_in_flight=1, queue_timeout=CLIENT_TIMEOUT * 4))
    with limited_gateway(raw_upstream.url, limiter) as gateway, open_stream(gateway) as first:
        assert first.status == 200
        assert_gateway_error(get(gateway), 429, "too_many_in_flight")
        assert limiter.waiting == 0
    wait_released(limiter)


def test_a_request_waiting_for_a_global_slot_counts_under_its_teams_cap(
    raw_upstream: RawUpstream,
) -> None:
    limiter = Limiter(
        LimitSettings(max_in_flight=1, team_max_in_flight=1, queue_timeout=CLIENT_TIMEOUT / 2)
    )
    with limited_gateway(raw_upstream.url, limiter) as gateway, ExitStack() as stack:
        other_key = other_team(gateway, raw_upstream.url, "other")
        first = stack.enter_context(open_stream(gateway))  # the one global slot
        waiter = ThreadPoolExecutor(1)
        stack.callback(waiter.shutdown)
        waiting = waiter.submit(get, gateway, "/r/containers/other/headers", other_key)
        wait_until(lambda: limiter.waiting == 1, "the other team's request waits")

        # Its team's one slot is held by the waiting request: no second one may wait.
        assert_gateway_error(
            get(gateway, "/r/containers/other/headers", key=other_key), 429, "too_many_in_flight"
        )
        first.close()
        assert waiting.result(CLIENT_TIMEOUT).status == 200
    wait_released(limiter)


# -- a slot is given back however a relay ends ---------------------------------------------


def _complete(gateway: RunningGateway) -> None:
    reply = get(gateway, "/r/containers/svc/download?size=300000")
    assert reply.status == 200
    assert len(reply.body) == 300000


def _client_goes_away(gateway: RunningGateway) -> None:
    with open_stream(gateway) as stream:
        assert stream.status == 200
        assert stream.response.read1(64)


def _upstream_resets(gateway: RunningGateway) -> None:
    with open_stream(gateway, "/r/containers/svc/reset") as stream:
        assert stream.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            stream.response.read()


def _upstream_closes_early(gateway: RunningGateway) -> None:
    with (
        open_stream(gateway, "/r/containers/svc/truncate-chunked") as stream,
        pytest.raises((http.client.IncompleteRead, ConnectionError)),
    ):
        stream.response.read()


def _upstream_never_answers(gateway: RunningGateway) -> None:
    assert_gateway_error(get(gateway, "/r/containers/svc/hang"), 504, "upstream_timeout")


def _invoke(gateway: RunningGateway) -> None:
    envelope = json.dumps({"method": "GET", "path": "/headers"}).encode()
    reply = exchange(
        gateway, "POST", "/r/invoke/svc", [("Content-Type", "application/json")], envelope
    )
    assert reply.status == 200
    assert json.loads(reply.body)["status_code"] == 200


def _head(gateway: RunningGateway) -> None:
    assert exchange(gateway, "HEAD", "/r/containers/svc/download?size=10").status == 200


def _refused_by_the_path_rules(gateway: RunningGateway) -> None:
    assert_gateway_error(get(gateway, "/r/containers/svc/%2e%2e/x"), 400, "invalid_path")


ENDINGS = [
    pytest.param(_complete, id="body-complete"),
    pytest.param(_client_goes_away, id="client-disconnects-mid-stream"),
    pytest.param(_upstream_resets, id="upstream-resets-mid-body"),
    pytest.param(_upstream_closes_early, id="upstream-closes-mid-body"),
    pytest.param(_upstream_never_answers, id="upstream-timeout"),
    pytest.param(_invoke, id="invoke"),
    pytest.param(_head, id="head"),
    pytest.param(_refused_by_the_path_rules, id="refused-after-admission"),
]


@pytest.mark.parametrize("ending", ENDINGS)
def test_the_slot_is_released_however_the_relay_ends(
    raw_upstream: RawUpstream, ending: Callable[[RunningGateway], None]
) -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    settings = PipelineSettings(timeouts=Timeouts(connect=2.0, read=0.5, total=5.0))
    with limited_gateway(raw_upstream.url, limiter, settings=settings) as gateway:
        ending(gateway)
        wait_released(limiter)
        # The one slot is free: the next request is admitted.
        assert get(gateway, "/r/containers/svc/headers").status == 200
    wait_released(limiter)


def test_the_slot_is_released_when_the_upstream_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    with limited_gateway(f"http://127.0.0.1:{closed_port}", limiter) as gateway:
        for _ in range(2):
            assert_gateway_error(get(gateway), 502, "upstream_unreachable")
            wait_released(limiter)


def test_the_slot_is_released_when_hooks_raise(raw_upstream: RawUpstream) -> None:
    def broken_before(event: RelayStarted) -> None:
        raise RuntimeError("before")

    def broken_after(event: RelayFinished) -> None:
        raise RuntimeError("after")

    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    with limited_gateway(
        raw_upstream.url, limiter, before_relay=[broken_before], after_relay=[broken_after]
    ) as gateway:
        for ending in (_complete, _client_goes_away, _upstream_resets):
            ending(gateway)
            wait_released(limiter)


# -- rates --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_exactly_the_rate_is_admitted_among_32_concurrent_clients(
    upstream: RecordingUpstream, backend: str, request: pytest.FixtureRequest
) -> None:
    limiter = limiter_for(backend, request, team_rate=Rate(amount=50, window=3600))
    with limited_gateway(upstream.url, limiter) as gateway:
        statuses = run_concurrently(32, lambda _: [get(gateway).status for _ in range(4)])

    flat = [status for batch in statuses for status in batch]  # type: ignore[attr-defined]
    assert flat.count(200) == 50
    assert flat.count(429) == 128 - 50
    assert len(upstream.received) == 50


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_window_rolls_over_after_the_time_the_headers_announce(
    upstream: RecordingUpstream, backend: str, request: pytest.FixtureRequest
) -> None:
    limiter = limiter_for(backend, request, credential_rate=Rate(amount=2, window=3))
    with limited_gateway(upstream.url, limiter) as gateway:
        first, second, third = get(gateway), get(gateway), get(gateway)
        assert [first.status, second.status, third.status] == [200, 200, 429]
        assert state(first)[:2] == ("credential", 1)
        assert state(second)[:2] == ("credential", 0)
        name, remaining, reset = state(third)
        assert (name, remaining) == ("credential", 0)
        assert 1 <= reset <= 3
        assert third.header("Retry-After") == str(reset)

        time.sleep(reset + 0.1)  # waiting out the window the gateway announced

        fresh = get(gateway)
        assert fresh.status == 200
        assert state(fresh)[:2] == ("credential", 1)
    assert len(upstream.received) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_retry_after_waits_out_every_policy_the_refused_request_spent(
    upstream: RecordingUpstream, backend: str, request: pytest.FixtureRequest
) -> None:
    limiter = limiter_for(
        backend,
        request,
        credential_rate=Rate(amount=1, window=1),
        team_rate=Rate(amount=3, window=60),
        rate_batch=1,
    )
    with limited_gateway(upstream.url, limiter) as gateway:
        assert get(gateway).status == 200
        time.sleep(1.1)  # the credential's window of one second is over
        assert get(gateway).status == 200
        # Over the credential's rate, and counted: the team's third and last request.
        refused = get(gateway)
        assert refused.status == 429
        # Both have nothing left; the team's resets last. Waiting out the credential's window
        # alone would be refused again, by the team's.
        name, remaining, reset = state(refused)
        assert (name, remaining) == ("team", 0)
        assert reset >= 58
        assert refused.header("Retry-After") == str(reset)
    assert len(upstream.received) == 2


def test_the_headers_state_every_policy_and_the_tightest_one(upstream: RecordingUpstream) -> None:
    limiter = Limiter(
        LimitSettings(
            credential_rate=Rate(amount=5, window=60),
            team_rate=Rate(amount=100, window=3600),
        )
    )
    service_limits = ServiceLimits(rate=Rate(amount=3, window=60))
    with limited_gateway(upstream.url, limiter, service_limits=service_limits) as gateway:
        replies = [get(gateway) for _ in range(3)]
        refused = get(gateway)

    expected_policies = [("credential", 5, 60), ("team", 100, 3600), ("service", 3, 60)]
    for number, reply in enumerate(replies, start=1):
        assert reply.status == 200
        assert policies(reply) == expected_policies
        name, remaining, reset = state(reply)
        assert (name, remaining) == ("service", 3 - number)
        assert 1 <= reset <= 60
    payload = assert_gateway_error(refused, 429, "rate_limited")
    assert payload["error_message"]
    assert policies(refused) == expected_policies
    name, remaining, reset = state(refused)
    assert (name, remaining) == ("service", 0)
    assert refused.header("Retry-After") == str(reset)
    assert len(upstream.received) == 3


def test_a_request_admitted_and_then_refused_says_what_is_left() -> None:
    # Counted, but answered without the fields: the client lost track of its budget.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    limiter = Limiter(LimitSettings(team_rate=Rate(amount=5, window=60)))
    bad_envelope = json.dumps({"method": "GET"}).encode()
    json_type = [("Content-Type", "application/json")]
    with limited_gateway(f"http://127.0.0.1:{closed_port}", limiter) as gateway:
        unreachable = get(gateway)
        invalid = exchange(gateway, "POST", "/r/invoke/svc", json_type, bad_envelope)

    assert_gateway_error(unreachable, 502, "upstream_unreachable")
    assert_gateway_error(invalid, 400, "invalid_request")
    assert policies(unreachable) == policies(invalid) == [("team", 5, 60)]
    assert state(unreachable)[:2] == ("team", 4)
    assert state(invalid)[:2] == ("team", 3)


def test_an_error_raised_again_and_again_never_carries_another_requests_count() -> None:
    # A host's transport may raise one error instance every time (a circuit breaker's
    # "open"): the fields of each request piled up on it, and one team's refusal showed
    # another team's budget.
    class Open(UpstreamError):
        pass

    circuit_open = Open("circuit open")

    def refuse(request: UpstreamRequest) -> UpstreamResponse:
        raise circuit_open

    limiter = Limiter(LimitSettings(team_rate=Rate(amount=100, window=60)))
    with limited_gateway("http://127.0.0.1:9", limiter, transport=MockTransport(refuse)) as gw:
        key = other_team(gw, "http://127.0.0.1:9", "theirs")
        ours = [get(gw) for _ in range(3)]
        theirs = get(gw, "/r/containers/theirs/x", key=key)

    assert [state(reply)[:2] for reply in ours] == [("team", 99), ("team", 98), ("team", 97)]
    assert state(theirs)[:2] == ("team", 99)
    for reply in (*ours, theirs):
        assert len(reply.all("RateLimit")) == 1
    assert circuit_open.headers == ()


@pytest.mark.parametrize(
    "gone", [pytest.param(True, id="not-callable"), pytest.param(lambda: 1 / 0, id="raises")]
)
def test_a_slot_is_given_back_whatever_a_host_put_under_client_gone(
    upstream: RecordingUpstream, gone: object
) -> None:
    # Asked after admission but outside the code that gives the slot back: a value that was
    # not a callable, or one that raised, kept the team's only slot for good.
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    registry = InMemoryServiceRegistry([make_service("svc", upstream.url)])
    middleware = InvokeMiddleware(host_app().wsgi_app, registry=registry, limiter=limiter)
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    app = webtest.TestApp(middleware)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        odd = app.get(
            "/r/containers/svc/ok",
            headers=headers,
            extra_environ={CLIENT_GONE_KEY: gone},
            expect_errors=True,
        )
        assert odd.status_int in (200, 500)
        assert limiter.in_flight == 0
        assert app.get("/r/containers/svc/ok", headers=headers).status_int == 200
    finally:
        middleware.close()


def test_invoke_and_relay_share_one_budget(upstream: RecordingUpstream) -> None:
    limiter = Limiter(LimitSettings(team_rate=Rate(amount=2, window=3600)))
    envelope = json.dumps({"method": "GET", "path": "/x"}).encode()
    json_type = [("Content-Type", "application/json")]
    with limited_gateway(upstream.url, limiter) as gateway:
        invoked = exchange(gateway, "POST", "/r/invoke/svc", json_type, envelope)
        relayed = get(gateway)
        refused = exchange(gateway, "POST", "/r/invoke/svc", json_type, envelope)

    assert invoked.status == 200
    assert state(invoked)[:2] == ("team", 1)
    assert json.loads(invoked.body)["status_code"] == 200
    assert relayed.status == 200
    assert_gateway_error(refused, 429, "rate_limited")


def test_a_credential_budget_is_the_credentials_own(upstream: RecordingUpstream) -> None:
    limiter = Limiter(LimitSettings(credential_rate=Rate(amount=1, window=3600)))
    with limited_gateway(upstream.url, limiter) as gateway:
        second_key = gateway.middleware.credentials.issue(
            CredentialKind.INTEGRATION, team_id=TEAM
        ).key
        assert get(gateway).status == 200
        assert get(gateway).status == 429
        assert get(gateway, key=second_key).status == 200


def test_a_users_budget_spans_all_their_credentials(upstream: RecordingUpstream) -> None:
    limiter = Limiter(LimitSettings(user_rate=Rate(amount=2, window=3600)))
    with limited_gateway(upstream.url, limiter) as gateway:
        middleware = gateway.middleware
        middleware.memberships.set_role(TEAM, "ada", Role.MEMBER)
        middleware.memberships.set_role(TEAM, "bob", Role.MEMBER)
        laptop, phone, bobs = (
            middleware.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id=user).key
            for user in ("ada", "ada", "bob")
        )
        statuses = [get(gateway, key=key).status for key in (laptop, phone, laptop, bobs)]
    assert statuses == [200, 200, 429, 200]


def test_a_teams_own_limits_replace_the_defaults(upstream: RecordingUpstream) -> None:
    from invoke_middleware.limits import TeamLimits

    limiter = Limiter(
        LimitSettings(
            team_rate=Rate(amount=1, window=3600),
            teams={TEAM: TeamLimits(rate=Rate(amount=3, window=3600))},
        )
    )
    with limited_gateway(upstream.url, limiter) as gateway:
        statuses = [get(gateway).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_refusals_are_reported_by_limit_kind(raw_upstream: RawUpstream) -> None:
    events: list[LimitEvent] = []
    limiter = Limiter(
        LimitSettings(team_max_in_flight=1, credential_rate=Rate(amount=2, window=3600)),
        on_event=[events.append],
    )
    with limited_gateway(raw_upstream.url, limiter) as gateway:
        with open_stream(gateway):
            assert get(gateway).status == 429  # the slot is taken
        wait_released(limiter)
        assert get(gateway, "/r/containers/svc/headers").status == 200
        assert get(gateway, "/r/containers/svc/headers").status == 429  # the rate is used up

    assert [(e.limit, e.outcome, e.route) for e in events] == [
        (LimitKind.TEAM_IN_FLIGHT, LimitOutcome.REFUSED, "catch_all"),
        (LimitKind.CREDENTIAL_RATE, LimitOutcome.REFUSED, "catch_all"),
    ]
    assert all(e.principal.team_id == TEAM for e in events)


def test_an_upstreams_own_ratelimit_fields_are_replaced(raw_upstream: RawUpstream) -> None:
    limiter = Limiter(LimitSettings(team_rate=Rate(amount=10, window=60)))
    with limited_gateway(raw_upstream.url, limiter) as gateway:
        reply = get(gateway, "/r/containers/svc/ratelimit")
    assert reply.status == 200
    assert reply.all("RateLimit-Policy") == ['"team";q=10;w=60']
    assert len(reply.all("RateLimit")) == 1
    assert state(reply)[:2] == ("team", 9)


def test_an_upstreams_own_ratelimit_fields_pass_when_no_rate_applies(
    raw_upstream: RawUpstream,
) -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=4))
    with limited_gateway(raw_upstream.url, limiter) as gateway:
        reply = get(gateway, "/r/containers/svc/ratelimit")
    assert reply.status == 200
    assert reply.all("RateLimit-Policy") == ['"upstream";q=100;w=1']
    assert reply.all("RateLimit") == ['"upstream";r=99;t=1']


def test_without_a_limiter_no_ratelimit_fields_are_added(upstream: RecordingUpstream) -> None:
    with serve_gateway([make_service("svc", upstream.url)]) as gateway:
        reply = get(gateway)
    assert reply.status == 200
    assert reply.header("RateLimit") is None
    assert reply.header("RateLimit-Policy") is None


def test_an_admission_holds_its_slot_until_any_other_streamed_body_ends() -> None:
    # The pipeline's streamed bodies give the slot back through the relay's own end; a body
    # of another kind (an embedding application's own generator) is wrapped instead.
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    principal = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, credential_id="sk-x")
    service = make_service("svc", "http://127.0.0.1:9")

    def chunks() -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    for finish in ("exhaust", "close"):
        admission = limiter.admit(principal, service, route="catch_all", request_id="r")
        response = admission.hold(
            PipelineResponse(status=200, reason="OK", headers=[], body=chunks())
        )
        assert limiter.in_flight == 1
        body = iter(response.body)
        assert next(body) == b"a"
        assert limiter.in_flight == 1  # still streaming
        if finish == "exhaust":
            assert list(body) == [b"b"]
        else:
            response.body.close()  # type: ignore[attr-defined]  # the client went away
        assert limiter.in_flight == 0


@pytest.mark.parametrize("finish", ["write", "close", "drop"])
def test_a_buffered_answer_holds_its_slot_until_the_server_has_written_it(finish: str) -> None:
    # Given back once the answer was made, the slot was free while the server's thread wrote
    # it to a client that may read nothing: a team held every thread, writing.
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    principal = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, credential_id="sk-x")
    service = make_service("svc", "http://127.0.0.1:9")
    admission = limiter.admit(principal, service, route="invoke", request_id="r")
    response = admission.hold(
        PipelineResponse(status=200, reason="OK", headers=[], body=(b"answer",))
    )
    assert limiter.in_flight == 1
    body = response.body
    if finish == "write":
        chunks = iter(body)
        assert next(chunks) == b"answer"
        assert limiter.in_flight == 1  # being written
        assert list(chunks) == []
    elif finish == "close":
        body.close()  # type: ignore[attr-defined]
    else:
        del response, body  # a host that discards what it was given
        gc.collect()
    assert limiter.in_flight == 0


def test_a_server_that_writes_by_close_keeps_the_slot_until_it_closes_the_body() -> None:
    # The ASGI adapter's thread queues what it takes for the event loop, and its last send
    # may wait for a client that reads nothing: the slot is held until close(), which comes
    # after that send, not given back when the relay's body is exhausted.
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    middleware = InvokeMiddleware(
        host_app().wsgi_app,
        registry=InMemoryServiceRegistry([make_service("svc", "http://svc.internal")]),
        transport=MockTransport(lambda _: make_response(200, chunks=[b"first", b"second"])),
        limiter=limiter,
    )
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    body = _call(middleware, key, **{WRITTEN_BY_CLOSE_KEY: True})
    assert list(body) == [b"first", b"second"]
    assert limiter.in_flight == 1  # taken whole, perhaps not written yet
    body.close()  # type: ignore[attr-defined]
    assert limiter.in_flight == 0


# -- a slot is given back when the host or the upstream misbehaves ----------------------------


class _BodyFailingToClose:
    """An in-process upstream's body whose ``close()`` raises."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"first"
        yield b"second"

    def close(self) -> None:
        raise RuntimeError("the upstream application fails while closing")


def _in_process_gateway(limiter: Limiter) -> tuple[InvokeMiddleware, str]:
    """The middleware over an in-process upstream (``WSGITransport``), and a key of ``TEAM``."""

    def upstream(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _BodyFailingToClose()

    middleware = InvokeMiddleware(
        host_app().wsgi_app,
        registry=InMemoryServiceRegistry([make_service("svc", "http://svc.internal")]),
        transport=WSGITransport(upstream),
        limiter=limiter,
    )
    return middleware, middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key


def _call(middleware: InvokeMiddleware, key: str, **extra: object) -> Iterable[bytes]:
    environ: dict[str, object] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/r/containers/svc/stream",
        "QUERY_STRING": "",
        "SERVER_NAME": "gateway",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
        **extra,
    }
    statuses: list[str] = []
    body = middleware(environ, lambda status, headers, exc_info=None: statuses.append(status))  # type: ignore[arg-type,return-value]
    assert statuses == ["200 OK"]
    return body


def test_the_slot_is_released_when_the_upstream_body_fails_to_close() -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    middleware, key = _in_process_gateway(limiter)
    for _ in range(2):  # the second is admitted only if the first gave its slot back
        body = _call(middleware, key)
        chunks = iter(body)
        assert next(chunks) == b"first"
        with pytest.raises(UpstreamError):  # the server is told, and logs it
            body.close()  # type: ignore[attr-defined]  # the client went away
        assert limiter.in_flight == 0


def test_the_slot_is_released_when_a_host_generator_drops_the_body_unclosed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A host middleware written as a generator (``yield from app(...)``) never calls the
    # gateway body's close(): closing the host's generator only closes the iterator of ours.
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    middleware, key = _in_process_gateway(limiter)

    def host_generator() -> Iterator[bytes]:
        yield from _call(middleware, key)

    outer = host_generator()
    assert next(outer) == b"first"
    assert limiter.in_flight == 1
    outer.close()
    assert limiter.in_flight == 0
    # No caller is left to raise the upstream's failing close() to: it is logged.
    assert "closing an abandoned relay body failed" in caplog.text


def test_the_slot_is_released_when_a_body_is_dropped_without_being_read() -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    middleware, key = _in_process_gateway(limiter)
    body = _call(middleware, key)
    assert limiter.in_flight == 1
    del body  # neither iterated nor closed: a host that discards what it was given
    gc.collect()
    assert limiter.in_flight == 0


def test_a_slot_given_back_by_the_collector_inside_the_limiter_does_not_deadlock() -> None:
    # A streamed body dropped in a reference cycle gives its slot back when the collector
    # runs, which may be in a thread that holds the limiter's lock at that moment.
    limiter = Limiter(LimitSettings(team_max_in_flight=2))
    principal = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, credential_id="sk-x")
    service = make_service("svc", "http://127.0.0.1:9")
    finished = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    def drop_in_a_cycle_then_release() -> None:
        thresholds, enabled = gc.get_threshold(), gc.isenabled()
        gc.disable()
        try:
            held = limiter.admit(principal, service, route="catch_all", request_id="r1").hold(
                PipelineResponse(status=200, reason="OK", headers=[], body=chunks())
            )
            body = iter(held.body)
            next(body)
            cycle: list[object] = [body]
            cycle.append(cycle)
            del body, cycle, held
            second = limiter.admit(principal, service, route="catch_all", request_id="r2")
            gc.set_threshold(1)  # the next allocation collects: the one inside the lock
            gc.enable()
            second.release()
        finally:
            gc.set_threshold(*thresholds)
            if not enabled:
                gc.disable()
            finished.set()

    threading.Thread(target=drop_in_a_cycle_then_release, daemon=True).start()
    assert finished.wait(CLIENT_TIMEOUT), "the thread waits for a lock it holds itself"
    gc.collect()
    assert limiter.in_flight == 0
