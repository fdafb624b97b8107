"""The MCP endpoint's tool calls run through the same limiter as the REST routes: a call over a
limit is a tool error naming the limit's code, and MCP and invoke draw on one budget."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from invoke_middleware import Limiter, LimitSettings, Rate
from invoke_middleware.limits import LimitEvent, LimitKind, LimitOutcome
from tests.mcp.conftest import Agent
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.world import INVOKE_ENVELOPE, World

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
