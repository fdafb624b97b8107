"""The MCP endpoint's tool calls run through the same limiter as the REST routes: a call over a
limit is a tool error naming the limit's code, and MCP and invoke draw on one budget."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from invoke_middleware import Limiter, LimitSettings, Rate
from invoke_middleware.limits import LimitEvent, LimitKind, LimitOutcome
from tests.integration.gateway import CLIENT_TIMEOUT, Reply, RunningGateway, exchange
from tests.limits.conftest import wait_released, wait_until
from tests.limits.test_limits_relay import limited_gateway, other_team
from tests.mcp.conftest import Agent
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.world import INVOKE_ENVELOPE, World
from tests.upstreams import RawUpstream

CALL = {"service_slug": "echo", "method": "GET", "path": "/from-mcp"}


def call(agent: Agent) -> dict[str, Any]:
    result: dict[str, Any] = agent.call("call_container_service", CALL).json["result"]
    return result


def test_an_mcp_call_over_a_rate_limit_is_a_tool_error_naming_the_limit_code(
    make_world: Callable[..., World],
) -> None:
    events: list[LimitEvent] = []
    limiter = Limiter(
        LimitSettings(credential_rate=Rate(amount=1, window=3600)), on_event=[events.append]
    )
    world = make_world(limiter=limiter)
    agent = Agent(world, version="2025-11-25")

    admitted = call(agent)
    refused = call(agent)

    assert admitted["isError"] is False
    assert admitted["structuredContent"]["status_code"] == 200
    assert refused["isError"] is True
    assert "rate_limited" in refused["content"][0]["text"]
    error = json.loads(refused["content"][1]["text"])
    assert error["code"] == "rate_limited"
    assert error["status"] == 429
    assert int(error["retry_after"]) >= 1
    assert [r.target for r in world.upstream.received] == ["/from-mcp"]  # nothing more went up
    assert [(e.limit, e.outcome, e.route) for e in events] == [
        (LimitKind.CREDENTIAL_RATE, LimitOutcome.REFUSED, "invoke")
    ]


def test_mcp_and_invoke_share_one_budget(make_world: Callable[..., World]) -> None:
    limiter = Limiter(LimitSettings(team_rate=Rate(amount=2, window=3600)))
    world = make_world(limiter=limiter)
    agent = Agent(world, version="2025-11-25")

    invoked = world.invoke("echo", INVOKE_ENVELOPE)
    called = call(agent)
    invoke_refused = world.invoke("echo", INVOKE_ENVELOPE, expect_errors=True)
    call_refused = call(agent)

    assert invoked.status_int == 200
    assert called["isError"] is False
    assert_gateway_error(invoke_refused, 429, "rate_limited")
    assert call_refused["isError"] is True
    assert json.loads(call_refused["content"][1]["text"])["code"] == "rate_limited"
    assert len(world.upstream.received) == 2


def _ping(gateway: RunningGateway, key: str) -> Reply:
    headers = [
        ("Authorization", f"Bearer {key}"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    return exchange(gateway, "POST", "/r/mcp", headers, body, auth=False)


def test_a_message_being_read_holds_a_slot_under_its_teams_cap(raw_upstream: RawUpstream) -> None:
    # The endpoint reads a message before it knows which service it calls; a team's slow
    # uploads must not hold more worker threads than its cap allows its relays.
    events: list[LimitEvent] = []
    limiter = Limiter(LimitSettings(team_max_in_flight=1), on_event=[events.append])
    with limited_gateway(raw_upstream.url, limiter) as gateway, ExitStack() as stack:
        other_key = other_team(gateway, raw_upstream.url, "other")
        slow = stack.enter_context(
            socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT)
        )
        slow.sendall(
            b"POST /r/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n"
            + f"Authorization: Bearer {gateway.key}\r\n\r\n".encode()
            + b'{"jsonrpc": "2.0", '
        )
        wait_until(lambda: limiter.in_flight == 1, "the slow message holds its team's slot")

        refused = _ping(gateway, gateway.key)
        other = _ping(gateway, other_key)

        slow.close()  # the client goes away: the slot comes back
        wait_released(limiter)
        after = _ping(gateway, gateway.key)

    assert_gateway_error(refused, 429, "too_many_in_flight")
    assert other.status == 200
    assert after.status == 200
    assert [(e.route, e.limit, e.service) for e in events] == [
        ("mcp", LimitKind.TEAM_IN_FLIGHT, None)
    ]
