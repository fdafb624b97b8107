"""``invoke-middleware serve`` answers the MCP endpoint out of the box: no setting, no code.

The real console script serves a workspace made by ``init``; an integration key issued by
``credentials issue`` reaches a service added by ``services add``, through ``/r/mcp``, with the
official SDK client (its default mode) and with raw JSON-RPC in the handshake era.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import httpx2
import requests
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.cli.conftest import Workspace, running_gateway
from tests.toolkit.upstream import Received, RecordingUpstream

ACCEPT = "application/json, text/event-stream"


def _add_hello(space: Workspace, upstream: RecordingUpstream) -> None:
    space.add_service("hello", upstream.url, "--usage-prompt", "GET /greet?name=...")


async def _sdk_session(url: str, key: str) -> dict[str, Any]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=15) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        listed = await client.call_tool("list_container_services", {})
        called = await client.call_tool(
            "call_container_service",
            {"service_slug": "hello", "method": "GET", "path": "/greet?name=agent"},
        )
        return {"version": client.protocol_version, "listed": listed, "called": called}


def _rpc(url: str, key: str, message: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(
        url,
        data=json.dumps(message),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": ACCEPT,
            **headers,
        },
        timeout=15,
    )


def test_served_gateway_answers_mcp_agents_with_an_integration_key(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    _add_hello(workspace, upstream)
    key = workspace.issue("--kind", "integration", "--name", "agent")
    with running_gateway(workspace) as gateway:
        endpoint = f"{gateway.url}/r/mcp"

        seen = anyio.run(_sdk_session, endpoint, key)
        assert seen["version"] == "2026-07-28"
        listed = seen["listed"].structured_content["services"]
        assert [(s["slug"], s["usage_prompt"]) for s in listed] == [
            ("hello", "GET /greet?name=...")
        ]
        called = seen["called"]
        assert not called.is_error
        echoed = Received.from_json(base64.b64decode(called.structured_content["body_base64"]))
        assert echoed.target == "/greet?name=agent"
        assert echoed.header("Authorization") is None  # the agent's key stays at the gateway

        initialized = _rpc(
            endpoint,
            key,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            },
        )
        assert initialized.status_code == 200
        assert initialized.json()["result"]["protocolVersion"] == "2025-06-18"
        assert "Mcp-Session-Id" not in initialized.headers
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "call_container_service",
                "arguments": {"service_slug": "hello", "method": "DELETE", "path": "/items/3"},
            },
        }
        answered = _rpc(endpoint, key, call, **{"MCP-Protocol-Version": "2025-06-18"})
        assert answered.status_code == 200
        assert answered.headers["X-Request-ID"]
        result = answered.json()["result"]
        assert result["isError"] is False
        assert result["structuredContent"]["status_code"] == 200

        assert [(r.method, r.target) for r in upstream.received] == [
            ("GET", "/greet?name=agent"),
            ("DELETE", "/items/3"),
        ]

        # A key is all it takes, and nothing else does.
        refused = _rpc(endpoint, "sk-unknown", call, **{"MCP-Protocol-Version": "2025-06-18"})
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert len(upstream.received) == 2
