"""Rate budgets shared through Redis: across gateway processes, and when Redis goes away.

Every test uses the Redis on 127.0.0.1:6379 under a key prefix of its own (deleted after it)
and fails, rather than skips, under ``CI=true`` when Redis is missing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from invoke_middleware.limits import Limiter, LimitEvent, LimitOutcome, LimitSettings, Rate
from tests.integration.gateway_process import GatewayProcess, start_gateway_process
from tests.limits.conftest import RedisNamespace, run_concurrently
from tests.limits.tcp_cutter import TCPCutter
from tests.limits.test_limits_relay import get, limited_gateway, state
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.upstream import RecordingUpstream


@pytest.fixture
def cutter(redis_server: str) -> Iterator[TCPCutter]:
    """A way to Redis that the test can cut mid-run."""
    host_port = redis_server.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    with TCPCutter((host, int(port))) as forwarder:
        yield forwarder


def _limiter(
    cutter: TCPCutter, namespace: RedisNamespace, events: list[LimitEvent], **settings: object
) -> Limiter:
    return Limiter(
        LimitSettings(
            team_rate=Rate(amount=3, window=3600),
            storage_url=cutter.url,
            key_prefix=namespace.prefix,
            **settings,  # type: ignore[arg-type]
        ),
        on_event=[events.append],
    )


def test_two_gateway_processes_share_one_budget(
    upstream: RecordingUpstream, redis_namespace: RedisNamespace
) -> None:
    limits = {
        "team": str(uuid.uuid4()),
        # Large enough for batches of 16 (a tenth of what is left, at most 16) to be reserved.
        "team_rate": "250/hour",
        "storage_url": redis_namespace.url,
        "key_prefix": redis_namespace.prefix,
    }
    with ExitStack() as stack:
        processes: list[GatewayProcess] = [
            stack.enter_context(start_gateway_process("werkzeug", upstream.url, limits))
            for _ in range(2)
        ]

        def call(index: int) -> list[int]:
            process = processes[index % 2]
            statuses = []
            for _ in range(20):
                connection = process.connection()
                try:
                    connection.request("GET", "/r/containers/svc/x", headers=process.auth)
                    response = connection.getresponse()
                    response.read()
                    statuses.append(response.status)
                finally:
                    connection.close()
            return statuses

        results = run_concurrently(16, call)

    by_process = [
        [s for i, batch in enumerate(results) if i % 2 == p for s in batch]  # type: ignore[attr-defined]
        for p in (0, 1)
    ]
    admitted = [statuses.count(200) for statuses in by_process]
    # Never more than the budget; less only by what one process reserved and had no request
    # left to use (README, "Batches": at most 16 per rate and process).
    assert 250 - 16 <= sum(admitted) <= 250
    assert all(count > 0 for count in admitted)  # both processes drew on the one budget
    assert sum(statuses.count(429) for statuses in by_process) == 320 - sum(admitted)
    assert len(upstream.received) == sum(admitted)
    assert redis_namespace.keys()  # the counters live in Redis, under the test's prefix


def test_when_redis_goes_away_requests_are_served_and_the_event_reported(
    upstream: RecordingUpstream,
    cutter: TCPCutter,
    redis_namespace: RedisNamespace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[LimitEvent] = []
    limiter = _limiter(cutter, redis_namespace, events)
    with limited_gateway(upstream.url, limiter) as gateway:
        assert state(get(gateway))[:2] == ("team", 2)
        assert state(get(gateway))[:2] == ("team", 1)

        cutter.cut()
        with caplog.at_level(logging.WARNING, logger="invoke_middleware.limits"):
            during = [get(gateway) for _ in range(4)]

        cutter.restore()
        time.sleep(limiter.settings.storage_timeout)  # Redis is asked again after this long
        after = [get(gateway) for _ in range(2)]

    assert [reply.status for reply in during] == [200] * 4
    assert all(reply.header("RateLimit") is None for reply in during)
    assert [e.outcome for e in events] == [LimitOutcome.STORE_FAILED_OPEN] * 4 + [
        LimitOutcome.REFUSED
    ]
    warnings = [r for r in caplog.records if r.name == "invoke_middleware.limits"]
    assert len(warnings) == 1  # one line, not one per request
    assert "served without rate limits" in warnings[0].getMessage()
    # Redis is back: the budget it kept applies again.
    assert after[0].status == 200
    assert state(after[0])[:2] == ("team", 0)
    assert_gateway_error(after[1], 429, "rate_limited")
    assert len(upstream.received) == 2 + 4 + 1


def test_fail_closed_refuses_with_503_while_redis_is_away(
    upstream: RecordingUpstream, cutter: TCPCutter, redis_namespace: RedisNamespace
) -> None:
    events: list[LimitEvent] = []
    limiter = _limiter(cutter, redis_namespace, events, fail_open=False)
    with limited_gateway(upstream.url, limiter) as gateway:
        assert get(gateway).status == 200
        cutter.cut()
        refused = get(gateway)
        cutter.restore()
        time.sleep(limiter.settings.storage_timeout)
        restored = get(gateway)

    assert_gateway_error(refused, 503, "limits_unavailable")
    assert refused.header("Retry-After") == "1"
    assert [e.outcome for e in events] == [LimitOutcome.STORE_FAILED_CLOSED]
    assert restored.status == 200
    assert len(upstream.received) == 2


def test_a_redis_that_is_down_from_the_start_does_not_stop_the_gateway(
    upstream: RecordingUpstream, redis_namespace: RedisNamespace
) -> None:
    cutter = TCPCutter(("127.0.0.1", 6379))
    cutter.cut()  # a port where nothing listens
    events: list[LimitEvent] = []
    limiter = _limiter(cutter, redis_namespace, events)
    with limited_gateway(upstream.url, limiter) as gateway:
        assert get(gateway).status == 200
    assert [e.outcome for e in events] == [LimitOutcome.STORE_FAILED_OPEN]


def test_a_container_s_rate_fields_never_pass_for_the_gateway_s_while_redis_is_away(
    upstream: RecordingUpstream, redis_namespace: RedisNamespace
) -> None:
    # Failing open, the gateway writes no RateLimit fields: the container's own, naming a
    # policy as generous as it likes, must not reach the caller in their place.
    cutter = TCPCutter(("127.0.0.1", 6379))
    cutter.cut()
    events: list[LimitEvent] = []
    limiter = _limiter(cutter, redis_namespace, events)
    forged = "/r/containers/svc/fields?RateLimit-Policy=%22team%22%3Bq%3D999999%3Bw%3D1"
    with limited_gateway(upstream.url, limiter) as gateway:
        reply = get(gateway, forged + "&RateLimit=%22team%22%3Br%3D999999%3Bt%3D1&X-Kept=1")
    assert reply.status == 200
    assert reply.header("X-Kept") == "1"
    assert reply.header("RateLimit-Policy") is None
    assert reply.header("RateLimit") is None
    assert [e.outcome for e in events] == [LimitOutcome.STORE_FAILED_OPEN]


def test_the_counters_expire_with_their_window(redis_namespace: RedisNamespace) -> None:
    import redis

    limiter = Limiter(
        LimitSettings(
            team_rate=Rate(amount=5, window=60),
            storage_url=redis_namespace.url,
            key_prefix=redis_namespace.prefix,
        )
    )
    from invoke_middleware.auth.principal import CredentialKind, Principal
    from tests.toolkit.world import TEAM, make_service

    principal = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, credential_id="sk-x")
    limiter.admit(
        principal, make_service("svc", "http://127.0.0.1:9"), route="catch_all", request_id="r"
    )
    (key,) = redis_namespace.keys()
    with redis.Redis.from_url(redis_namespace.url) as client:
        assert 0 < client.ttl(key) <= 60  # nothing is kept past its window
        assert client.get(key) == b"1"
