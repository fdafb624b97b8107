"""The official MCP Python SDK client against the MCP endpoint on a real server.

The gateway runs under werkzeug's threaded server on loopback, in front of the recording
upstream; the SDK connects in each era: the ``initialize`` handshake, the stateless 2026-07-28
revision, and its own era probe.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.integration.gateway import RunningGateway, serve_gateway
from tests.toolkit.upstream import RecordingUpstream
from tests.toolkit.world import make_service


@pytest.fixture
def gateway(upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    services = [make_service("echo", upstream.url, usage_prompt="POST JSON to /anything")]
    with serve_gateway(services) as running:
        yield running


async def _session(gateway: RunningGateway, mode: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with (
        httpx2.AsyncClient(headers=gateway.auth, timeout=15) as http,
        Client(
            streamable_http_client(f"{gateway.url}/r/mcp", http_client=http), mode=mode
        ) as client,
    ):
        seen["version"] = client.protocol_version
        seen["tools"] = await client.list_tools()
        seen["listed"] = await client.call_tool("list_container_services", {})
        seen["called"] = await client.call_tool(
            "call_container_service",
            {
                "service_slug": "echo",
                "method": "POST",
                "path": "/anything?from=sdk",
                "headers": {"Content-Type": "application/json"},
                "body_base64": base64.b64encode(b'{"hello":"world"}').decode(),
            },
        )
        seen["refused"] = await client.call_tool(
            "call_container_service", {"service_slug": "nope", "method": "GET", "path": "/"}
        )
    return seen


@pytest.mark.parametrize(
    ("mode", "version"),
    [
        pytest.param("legacy", "2025-11-25", id="initialize-handshake"),
        pytest.param("2026-07-28", "2026-07-28", id="stateless"),
        pytest.param("auto", "2026-07-28", id="era-probe"),
    ],
)
def test_sdk_client_lists_and_calls_a_service_through_the_gateway(
    gateway: RunningGateway, upstream: RecordingUpstream, mode: str, version: str
) -> None:
    seen = anyio.run(_session, gateway, mode)

    assert seen["version"] == version
    tools = {tool.name: tool for tool in seen["tools"].tools}
    assert set(tools) == {
        "list_container_services",
        "get_container_service",
        "call_container_service",
    }
    assert "service_slug" in tools["call_container_service"].input_schema["required"]
    assert tools["call_container_service"].output_schema["required"] == [
        "status_code",
        "headers",
        "body_base64",
    ]

    listed = seen["listed"]
    assert not listed.is_error
    assert [s["slug"] for s in listed.structured_content["services"]] == ["echo"]

    called = seen["called"]
    assert not called.is_error
    assert called.structured_content["status_code"] == 200
    echoed = json.loads(called.content[1].text)  # the UTF-8 body as its own text block
    assert echoed["target"] == "/anything?from=sdk"
    assert base64.b64decode(echoed["body_base64"]) == b'{"hello":"world"}'
    (forwarded,) = [r for r in upstream.received if r.target == "/anything?from=sdk"]
    assert forwarded.body == b'{"hello":"world"}'
    assert forwarded.header("Authorization") is None  # the gateway key never reaches it

    refused = seen["refused"]
    assert refused.is_error
    assert "service_not_found" in refused.content[0].text


async def _call_nested_too_deep(gateway: RunningGateway, mode: str) -> str:
    headers: object = "x"
    for _ in range(70):  # past the 64 levels a message may nest: refused unparsed
        headers = {"a": headers}
    async with (
        httpx2.AsyncClient(headers=gateway.auth, timeout=15) as http,
        Client(
            streamable_http_client(f"{gateway.url}/r/mcp", http_client=http), mode=mode
        ) as client,
    ):
        with pytest.raises(MCPError) as refused:
            await client.call_tool(
                "call_container_service",
                {"service_slug": "echo", "method": "GET", "path": "/", "headers": headers},
            )
    return str(refused.value)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_sdk_client_reads_a_refusal_whose_id_could_not_be_read(
    gateway: RunningGateway, mode: str
) -> None:
    # The id of a message refused unparsed is null: without it, the SDK took the answer for
    # no JSON-RPC message at all and put a message of its own in place of the gateway's.
    message = anyio.run(_call_nested_too_deep, gateway, mode)
    assert "may nest arrays and objects 64 deep at most" in message
