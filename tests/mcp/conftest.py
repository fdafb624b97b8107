"""The MCP endpoint under test: the gateway tests' Flask host and loopback upstream.

:class:`Agent` posts JSON-RPC messages to ``/r/mcp`` through WebTest, in either era: a
handshake-era client names its revision in ``MCP-Protocol-Version``, a 2026-07-28 client adds
the per-request ``_meta`` and the ``Mcp-Method``/``Mcp-Name`` headers; :func:`tool_calls`
makes a 2025-03-26 batch of them. :func:`container_world` puts a handler in place of the
loopback upstream, for answers that upstream does not give. :func:`renderer_without_marker`
stands for a host's error renderer.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from invoke_middleware import GatewayError, RenderedError
from invoke_middleware.testing import MockTransport, RecordingTransport
from invoke_middleware.transport.base import UpstreamRequest, UpstreamResponse
from tests.toolkit.world import World

STATELESS = "2026-07-28"
_ids = itertools.count(1)


def stateless_meta(version: str = STATELESS) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientInfo": {"name": "test-agent", "version": "1.0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }


@dataclass
class Agent:
    """Sends JSON-RPC messages to the MCP endpoint as one caller."""

    world: World
    key: str = "sk"
    version: str | None = None  # handshake-era MCP-Protocol-Version; None: no header
    headers: dict[str, str] = field(default_factory=dict)
    #: What the server adds to each request's environ (``CLIENT_GONE_KEY``, say).
    environ: dict[str, Any] = field(default_factory=dict)

    def post(self, document: Any, *, status: int | None = 200, **headers: str) -> Any:
        sent = self._headers(headers)
        return self.world.app.post_json(
            "/r/mcp", document, headers=sent, status=status, extra_environ=self.environ
        )

    def post_raw(self, body: bytes, *, status: int | None = 200, **headers: str) -> Any:
        """Post ``body`` as it is: for texts that no JSON encoder writes."""
        return self.world.app.post(
            "/r/mcp",
            body,
            headers=self._headers(headers),
            content_type="application/json",
            status=status,
            extra_environ=self.environ,
        )

    def _headers(self, headers: dict[str, str]) -> dict[str, str]:
        sent = {**self.world.auth(self.key), "Accept": "application/json, text/event-stream"}
        if self.version is not None:
            sent["MCP-Protocol-Version"] = self.version
        sent.update(self.headers)
        sent.update(headers)
        return sent

    def request(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(_ids), "method": method}
        if params is not None:
            message["params"] = params
        return self.post(message, **kw)

    def call(self, tool: str, arguments: dict[str, Any] | None = None, **kw: Any) -> Any:
        params: dict[str, Any] = {"name": tool}
        if arguments is not None:
            params["arguments"] = arguments
        return self.request("tools/call", params, **kw)


@dataclass
class StatelessAgent(Agent):
    """A 2026-07-28 client: ``_meta`` on every request, the mirrored headers on every POST."""

    def request(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        params = {**(params or {}), "_meta": stateless_meta()}
        headers = {"MCP-Protocol-Version": STATELESS, "Mcp-Method": method}
        if method == "tools/call":
            headers["Mcp-Name"] = params["name"]
        headers.update(kw.pop("headers", {}))
        return super().request(method, params, **headers, **kw)


@pytest.fixture
def agent(world: World) -> Agent:
    """A handshake-era client of revision 2025-11-25."""
    return Agent(world, version="2025-11-25")


@pytest.fixture
def modern(world: World) -> StatelessAgent:
    """A 2026-07-28 client."""
    return StatelessAgent(world)


def container_world(
    make_world: Callable[..., World],
    handler: Callable[[UpstreamRequest], UpstreamResponse],
    **options: Any,
) -> tuple[World, RecordingTransport]:
    """A world whose services are answered by ``handler`` instead of the loopback upstream,
    and the transport recording what reached it; ``options`` go to the middleware."""
    transport = RecordingTransport(MockTransport(handler))
    world = make_world(transport=transport, egress_transport=transport, **options)
    return world, transport


def tool_calls(tool: str, arguments: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """A batch of ``count`` calls of ``tool`` with ``arguments``, with ids 0 to ``count - 1``."""
    params = {"name": tool, "arguments": arguments}
    return [
        {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params} for n in range(count)
    ]


def renderer_without_marker(error: GatewayError, *, request_id: str) -> RenderedError:
    """A host's renderer: a body of its own, and no ``X-Invoke-Error`` marker."""
    body = json.dumps({"message": error.message}).encode()
    return RenderedError(
        status=error.status,
        headers=(("Content-Type", "application/json"), ("Content-Length", str(len(body)))),
        body=body,
    )
