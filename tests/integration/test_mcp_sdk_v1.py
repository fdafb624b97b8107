"""The official MCP Python SDK 1.x client against the MCP endpoint on a real server.

The test environment holds the 2.x SDK, and one interpreter cannot import both, so this test
builds a virtual environment of its own with ``mcp>=1.23,<2`` (from the package index pip is
configured with) and runs a small client script in it, in a subprocess, against the gateway
served by werkzeug's threaded server on loopback in front of the recording upstream. The 1.x
client speaks the handshake era only: ``initialize`` (it offers 2025-11-25), then every request
with ``MCP-Protocol-Version``; it validates each structured result against the tool's output
schema itself.

It is slower than the rest (building the environment takes seconds to a minute); every step is
bounded by a timeout. Set ``INVOKE_MIDDLEWARE_MCP1_PYTHON`` to an interpreter that already has
the 1.x SDK to skip the build. When the environment cannot be built (no package index), the
test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.gateway import RunningGateway, serve_gateway
from tests.toolkit.upstream import RecordingUpstream
from tests.toolkit.world import make_service

#: Seconds allowed to create the environment and install the SDK into it.
BUILD_TIMEOUT = 300
#: Seconds allowed to the client script, end to end.
CLIENT_TIMEOUT = 120
#: The SDK releases under test: the 1.x line, from the first with tool output validation.
REQUIREMENT = "mcp>=1.23,<2"

CLIENT_SCRIPT = textwrap.dedent(
    '''
    """Drive the MCP endpoint with the 1.x SDK client; print what it saw as one JSON line."""
    import asyncio
    import base64
    import json
    import sys

    import httpx
    import mcp
    from importlib.metadata import version
    from mcp import ClientSession
    from mcp.client import streamable_http


    def connect(url, key):
        headers = {"Authorization": f"Bearer {key}"}
        modern = getattr(streamable_http, "streamable_http_client", None)
        if modern is not None:
            client = httpx.AsyncClient(headers=headers, timeout=15)
            return client, modern(url, http_client=client)
        return None, streamable_http.streamablehttp_client(url, headers=headers, timeout=15)


    def text_blocks(result):
        return [block.text for block in result.content if block.type == "text"]


    async def main(url, key):
        http, transport = connect(url, key)
        seen = {"sdk_version": version("mcp")}
        async with transport as (read, write, session_id):
            async with ClientSession(read, write) as session:
                initialized = await session.initialize()
                seen["protocol_version"] = initialized.protocolVersion
                seen["instructions"] = initialized.instructions
                seen["server"] = initialized.serverInfo.name
                seen["session_id"] = session_id()
                await session.send_ping()
                tools = await session.list_tools()
                seen["tools"] = {
                    tool.name: {
                        "required": tool.inputSchema.get("required"),
                        "output_required": (tool.outputSchema or {}).get("required"),
                        "read_only": tool.annotations.readOnlyHint,
                    }
                    for tool in tools.tools
                }
                # call_tool checks each structured result against the tool's output schema
                # and raises when it does not conform.
                listed = await session.call_tool("list_container_services", {})
                seen["listed"] = [s["slug"] for s in listed.structuredContent["services"]]
                got = await session.call_tool("get_container_service", {"service_slug": "echo"})
                seen["got"] = got.structuredContent
                called = await session.call_tool(
                    "call_container_service",
                    {
                        "service_slug": "echo",
                        "method": "POST",
                        "path": "/anything?from=sdk1",
                        "headers": {"Content-Type": "application/json"},
                        "body_base64": base64.b64encode(b'{"hello":"v1"}').decode(),
                    },
                )
                seen["called"] = {
                    "is_error": called.isError,
                    "structured": called.structuredContent,
                    "texts": text_blocks(called),
                }
                refused = await session.call_tool(
                    "call_container_service",
                    {"service_slug": "nope", "method": "GET", "path": "/"},
                )
                seen["refused"] = {"is_error": refused.isError, "texts": text_blocks(refused)}
        if http is not None:
            await http.aclose()
        print(json.dumps(seen))


    asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), timeout=60))
    '''
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the MCP SDK 1.x environment is required under CI: {reason}")
    pytest.skip(f"no MCP SDK 1.x environment: {reason}")


def _run(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


@pytest.fixture(scope="module")
def sdk1_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter whose ``mcp`` is a 1.x release."""
    given = os.environ.get("INVOKE_MIDDLEWARE_MCP1_PYTHON")
    if given:
        python = Path(given)
    else:
        venv = tmp_path_factory.mktemp("mcp-sdk-1") / "venv"
        python = venv / "bin" / "python"
        try:
            made = _run([sys.executable, "-m", "venv", str(venv)], BUILD_TIMEOUT)
            if made.returncode != 0:
                _unavailable(f"venv failed: {made.stderr.strip()[-500:]}")
            installed = _run(
                [str(python), "-m", "pip", "install", "--quiet", REQUIREMENT],
                BUILD_TIMEOUT,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
        except subprocess.TimeoutExpired:
            _unavailable(f"building the environment took over {BUILD_TIMEOUT} s")
        if installed.returncode != 0:
            _unavailable(f"pip install {REQUIREMENT} failed: {installed.stderr.strip()[-500:]}")
    probe = _run(
        [str(python), "-c", "from importlib.metadata import version; print(version('mcp'))"],
        60,
    )
    if probe.returncode != 0 or not probe.stdout.strip().startswith("1."):
        _unavailable(f"{python} has no mcp 1.x: {probe.stdout.strip()} {probe.stderr[-300:]}")
    return python


@pytest.fixture
def gateway(upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    services = [
        make_service(
            "echo", upstream.url, usage_prompt="POST JSON to /anything", openapi_url="/openapi"
        )
    ]
    with serve_gateway(services) as running:
        yield running


def test_sdk_1x_client_initializes_lists_and_calls_through_the_gateway(
    sdk1_python: Path, gateway: RunningGateway, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    try:
        ran = _run(
            [str(sdk1_python), str(script), f"{gateway.url}/r/mcp", gateway.key],
            CLIENT_TIMEOUT,
            cwd=tmp_path,  # never import this checkout's packages by accident
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 1.x client did not finish in {CLIENT_TIMEOUT} s")
    assert ran.returncode == 0, ran.stderr[-3000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])

    assert seen["sdk_version"].startswith("1.")
    assert seen["protocol_version"] == "2025-11-25"
    assert seen["session_id"] is None  # stateless: no session minted
    assert seen["server"] == "invoke-middleware"
    assert "call_container_service" in seen["instructions"]

    tools = seen["tools"]
    assert set(tools) == {
        "list_container_services",
        "get_container_service",
        "call_container_service",
    }
    assert tools["call_container_service"]["required"][0] == "service_slug"
    assert tools["call_container_service"]["output_required"] == [
        "status_code",
        "headers",
        "body_base64",
    ]
    assert tools["list_container_services"]["read_only"] is True
    assert tools["call_container_service"]["read_only"] is False

    assert seen["listed"] == ["echo"]
    assert seen["got"]["service"]["usage_prompt"] == "POST JSON to /anything"
    assert seen["got"]["openapi"]["status"] == "included"

    called = seen["called"]
    assert called["is_error"] is False
    assert called["structured"]["status_code"] == 200
    echoed = json.loads(called["texts"][1])  # the UTF-8 body as its own text block
    assert echoed["target"] == "/anything?from=sdk1"
    assert base64.b64decode(echoed["body_base64"]) == b'{"hello":"v1"}'
    (forwarded,) = [r for r in upstream.received if r.target == "/anything?from=sdk1"]
    assert forwarded.body == b'{"hello":"v1"}'
    assert forwarded.header("Authorization") is None

    refused = seen["refused"]
    assert refused["is_error"] is True
    assert "service_not_found" in refused["texts"][0]
    assert not [r for r in upstream.received if r.target == "/"]
