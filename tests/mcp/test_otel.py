"""MCP tool calls are traced like invokes: a server span for ``POST /r/mcp``, a client span
per upstream exchange under it."""

from __future__ import annotations

from opentelemetry.trace import SpanKind, StatusCode

from tests.mcp.conftest import Agent
from tests.otel_spans import trace_world, traceparent_of


def test_a_tool_call_makes_a_server_span_and_a_client_span_under_it(agent: Agent) -> None:
    spans = trace_world(agent.world)
    arguments = {"service_slug": "echo", "method": "GET", "path": "/traced?token=q-secret"}

    response = agent.call("call_container_service", arguments)

    assert response.json["result"]["isError"] is False
    server = spans.one(SpanKind.SERVER)
    client = spans.one(SpanKind.CLIENT)
    assert server.name == "POST /r/mcp"
    assert (server.attributes or {})["http.route"] == "/r/mcp"
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    assert agent.world.upstream.last().header("traceparent") == traceparent_of(client)
    assert "q-secret" not in str(dict(client.attributes or {}))


def test_a_failed_tool_call_fails_its_client_span_with_the_gateway_s_code(agent: Agent) -> None:
    spans = trace_world(agent.world)
    agent.world.upstream.server.shutdown()
    agent.world.upstream.server.server_close()
    arguments = {"service_slug": "echo", "method": "GET", "path": "/x"}

    response = agent.call("call_container_service", arguments)

    # A service-level failure is a tool result: the MCP exchange itself succeeded.
    assert response.json["result"]["isError"] is True
    client = spans.one(SpanKind.CLIENT)
    assert (client.attributes or {})["error.type"] == "upstream_unreachable"
    assert client.status.status_code is StatusCode.ERROR
    assert spans.one(SpanKind.SERVER).status.status_code is StatusCode.UNSET
