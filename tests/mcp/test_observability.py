"""MCP tool calls are relays like any other: the relay log, the metrics and the hooks see an
``invoke`` relay carrying the MCP request's ``X-Request-ID``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from invoke_middleware import PipelineSettings, RelayLogger
from invoke_middleware.metrics import RelayMetrics
from tests.mcp.conftest import Agent, StatelessAgent
from tests.toolkit.world import TEAM, World, make_service

ACCESS_LOG = "tests.mcp.access"


def relays_total(registry: CollectorRegistry, route: str, status_class: str, code: str) -> float:
    labels = {
        "route": route,
        "service_type": "deployed",
        "status_class": status_class,
        "error_code": code,
    }
    return registry.get_sample_value("invoke_relays_total", labels) or 0.0


def observe(make_world: Callable[..., World], **options: Any) -> tuple[World, CollectorRegistry]:
    """A world whose relays are logged by :class:`RelayLogger` and counted by the metrics."""
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    world = make_world(
        before_relay=[metrics.before_relay],
        after_relay=[RelayLogger(logging.getLogger(ACCESS_LOG)), metrics.after_relay],
        **options,
    )
    return world, registry


@pytest.fixture
def observed(make_world: Callable[..., World]) -> tuple[World, CollectorRegistry]:
    return observe(make_world)


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_a_tool_call_is_logged_and_counted_as_an_invoke_relay_with_the_request_id(
    observed: tuple[World, CollectorRegistry], caplog: pytest.LogCaptureFixture, era: str
) -> None:
    world, registry = observed
    agent = Agent(world, version="2025-11-25") if era == "handshake" else StatelessAgent(world)
    arguments = {"service_slug": "echo", "method": "PUT", "path": "/items/7?token=secret"}
    with caplog.at_level(logging.INFO, logger=ACCESS_LOG):
        response = agent.call("call_container_service", arguments, **{"X-Request-ID": "mcp-42"})
    assert response.json["result"]["isError"] is False
    request_id = response.headers["X-Request-ID"]
    assert request_id == "mcp-42"  # the caller's safe id, kept as on every route

    (record,) = [r for r in caplog.records if r.name == ACCESS_LOG]
    assert record.request_id == request_id  # type: ignore[attr-defined]
    assert record.route == "invoke"  # type: ignore[attr-defined]
    assert record.slug == "echo"  # type: ignore[attr-defined]
    assert record.method == "PUT"  # type: ignore[attr-defined]
    assert record.path == "/items/7"  # type: ignore[attr-defined]
    assert record.team == str(TEAM)  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]
    assert "secret" not in record.getMessage()

    assert relays_total(registry, "invoke", "2xx", "") == 1
    assert registry.get_sample_value("invoke_relays_in_flight", {"route": "invoke"}) == 0
    assert world.finished[-1].started.request_id == request_id
    assert world.upstream.received[-1].header("X-Request-ID") == request_id


def test_the_openapi_fetch_of_get_container_service_is_a_relay_under_the_same_id(
    observed: tuple[World, CollectorRegistry], caplog: pytest.LogCaptureFixture
) -> None:
    world, registry = observed
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    agent = Agent(world, version="2025-11-25")
    with caplog.at_level(logging.INFO, logger=ACCESS_LOG):
        response = agent.call("get_container_service", {"service_slug": "documented"})
    # Reading the metadata is no relay; fetching the document is one, under the same id.
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOG]
    assert record.request_id == response.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert record.path == "/openapi.json"  # type: ignore[attr-defined]
    assert relays_total(registry, "invoke", "2xx", "") == 1


def test_a_tool_call_refused_after_the_relay_started_is_logged_with_its_error_code(
    make_world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    world, registry = observe(make_world, settings=PipelineSettings(max_response_body_bytes=16))
    agent = Agent(world, version="2025-11-25")
    arguments = {"service_slug": "echo", "method": "GET", "path": "/bytes/64"}
    with caplog.at_level(logging.INFO, logger=ACCESS_LOG):
        response = agent.call("call_container_service", arguments)
    result = response.json["result"]
    assert result["isError"] is True
    assert "response_too_large" in result["content"][0]["text"]
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOG]
    assert record.error == "response_too_large"  # type: ignore[attr-defined]
    assert record.request_id == response.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert relays_total(registry, "invoke", "5xx", "response_too_large") == 1
