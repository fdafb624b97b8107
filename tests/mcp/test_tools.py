"""The three tools, answered by the pipeline against the real loopback upstream."""

from __future__ import annotations

import base64
import json
from typing import Any

from invoke_middleware import ServiceStatus
from tests.mcp.conftest import Agent, StatelessAgent
from tests.toolkit.world import World, make_service


def result_of(response: Any) -> dict[str, Any]:
    result: dict[str, Any] = response.json["result"]
    return result


def test_list_shows_only_the_credential_s_team(agent: Agent) -> None:
    services = result_of(agent.call("list_container_services", {}))["structuredContent"]
    slugs = {s["slug"] for s in services["services"]}
    assert "echo" in slugs
    assert "theirs" not in slugs
    other = Agent(agent.world, key="sk-other", version="2025-11-25")
    theirs = result_of(other.call("list_container_services", {}))["structuredContent"]
    assert [s["slug"] for s in theirs["services"]] == ["theirs"]


def test_get_returns_metadata_and_the_openapi_document_fetched_once(world: World) -> None:
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    agent = Agent(world, version="2025-11-25")
    first = result_of(agent.call("get_container_service", {"service_slug": "documented"}))
    second = result_of(agent.call("get_container_service", {"service_slug": "documented"}))
    service = first["structuredContent"]["service"]
    assert service["openapi_url"] == "/openapi.json"
    assert "upstream_url" not in service
    openapi = first["structuredContent"]["openapi"]
    assert openapi["status"] == "included"
    assert openapi["document"]["target"] == "/openapi.json"  # the upstream echoes its request
    assert second["structuredContent"] == first["structuredContent"]
    fetched = [r for r in world.upstream.received if r.target == "/openapi.json"]
    assert len(fetched) == 1  # cached briefly
    assert fetched[0].header("Authorization") is None


def test_an_openapi_failure_is_reported_not_fatal(world: World) -> None:
    world.registry.add(make_service("broken-doc", world.upstream.url, openapi_url="/status/500"))
    world.registry.add(
        make_service(
            "sleeping",
            world.upstream.url,
            openapi_url="/openapi.json",
            status=ServiceStatus.STOPPED,
        )
    )
    agent = Agent(world, version="2025-11-25")
    broken = result_of(agent.call("get_container_service", {"service_slug": "broken-doc"}))
    assert not broken["isError"]
    assert broken["structuredContent"]["openapi"]["status"] == "unavailable"
    assert "500" in broken["structuredContent"]["openapi"]["error"]
    sleeping = result_of(agent.call("get_container_service", {"service_slug": "sleeping"}))
    assert sleeping["structuredContent"]["openapi"] == {"status": "not_running"}
    assert sleeping["structuredContent"]["service"]["service_status"] == "stopped"


def test_call_relays_the_envelope_and_adds_a_utf8_body_as_text(agent: Agent) -> None:
    body = base64.b64encode("héllo".encode()).decode()
    arguments = {
        "service_slug": "echo",
        "method": "PUT",
        "path": "/items/1?x=y",
        "headers": {"Content-Type": "text/plain", "Authorization": "Bearer for-the-container"},
        "body_base64": body,
    }
    result = result_of(agent.call("call_container_service", arguments))
    assert result["isError"] is False
    structured = result["structuredContent"]
    assert structured["status_code"] == 200
    assert json.loads(result["content"][0]["text"]) == structured
    echoed = json.loads(result["content"][1]["text"])
    assert echoed["method"] == "PUT"
    assert echoed["target"] == "/items/1?x=y"
    received = agent.world.upstream.received[-1]
    assert received.body == "héllo".encode()
    assert received.header("Authorization") == "Bearer for-the-container"
    assert received.header("Mcp-Method") is None


def test_a_binary_body_stays_base64_only(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/bytes/300"}
    result = result_of(agent.call("call_container_service", arguments))
    assert len(result["content"]) == 1
    assert len(base64.b64decode(result["structuredContent"]["body_base64"])) == 300


def test_a_container_error_status_is_a_normal_result(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/status/503"}
    result = result_of(agent.call("call_container_service", arguments))
    assert result["isError"] is False
    assert result["structuredContent"]["status_code"] == 503


def test_gateway_refusals_are_tool_errors_naming_the_code(modern: StatelessAgent) -> None:
    cases = {
        "service_not_found": {"service_slug": "theirs", "method": "GET", "path": "/"},
        "service_not_running": {"service_slug": "svc-stopped", "method": "GET", "path": "/"},
        "invalid_path": {"service_slug": "echo", "method": "GET", "path": "/a/../b"},
    }
    for code, arguments in cases.items():
        result = result_of(modern.call("call_container_service", arguments))
        assert result["isError"] is True
        assert result["resultType"] == "complete"
        assert code in result["content"][0]["text"]
        assert json.loads(result["content"][1]["text"])["code"] == code
    assert not [r for r in modern.world.upstream.received if r.target == "/a/../b"]


def test_invalid_arguments_are_protocol_errors_before_2025_11_25_and_tool_errors_after(
    world: World,
) -> None:
    arguments = {"service_slug": "echo", "method": "BREW", "path": "/"}
    old = Agent(world, version="2025-06-18").call("call_container_service", arguments)
    assert old.json["error"]["code"] == -32602
    assert old.json["error"]["data"][0]["pointer"] == "/method"
    new = Agent(world, version="2025-11-25").call("call_container_service", arguments)
    assert new.json["result"]["isError"] is True
    missing = Agent(world, version="2025-11-25").call("get_container_service", {})
    assert missing.json["result"]["isError"] is True


def test_tool_calls_run_the_pipeline_with_the_gateway_s_request_id(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/traced"}
    response = agent.call("call_container_service", arguments)
    request_id = response.headers["X-Request-ID"]
    world = agent.world
    assert world.started[-1].request_id == request_id
    assert world.started[-1].route == "invoke"
    assert world.finished[-1].status == 200
    assert world.upstream.received[-1].header("X-Request-ID") == request_id


def test_a_looping_request_is_refused_by_the_pipeline(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/loop"}
    response = agent.call("call_container_service", arguments, Via="1.1 invoke-middleware")
    assert "loop_detected" in response.json["result"]["content"][0]["text"]
