"""A Flask host app wrapped by the middleware, in front of a real loopback upstream.

Two teams, users of every role, one integration key per team, and a service in each
lifecycle status. Tests drive it through WebTest (lint on, warnings are errors).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import flask
import pytest
import webtest

from invoke_middleware import (
    InMemoryServiceRegistry,
    InvokeMiddleware,
    PipelineSettings,
    Service,
    ServiceStatus,
    ServiceType,
)
from invoke_middleware.auth.keys import KeyKind
from invoke_middleware.auth.principal import Role
from invoke_middleware.hooks import RelayFinished, RelayStarted
from tests.gateway.recording_upstream import RecordingUpstream, recording_upstream

TEAM = uuid.UUID("019abc12-4567-7890-abcd-ef1234567891")
OTHER_TEAM = uuid.UUID("019abc12-4567-7890-abcd-000000000002")


def make_service(
    slug: str,
    url: str,
    *,
    team: uuid.UUID = TEAM,
    status: ServiceStatus = ServiceStatus.RUNNING,
    **extra: Any,
) -> Service:
    return Service(
        id=uuid.uuid4(),
        team_id=team,
        slug=slug,
        display_name=slug.title(),
        service_type=ServiceType.DEPLOYED,
        service_status=status,
        upstream_url=url,
        **extra,
    )


def host_app() -> flask.Flask:
    """A host whose own routes overlap the runtime prefix."""
    app = flask.Flask("host")
    app.config["seen_environs"] = []

    @app.route("/r/other")
    def other() -> str:
        return "host: other"

    @app.route("/r/invokeX")
    def invoke_x() -> str:
        return "host: invokeX"

    @app.route("/r/containers-x")
    def containers_x() -> str:
        return "host: containers-x"

    @app.route("/hello", methods=["GET", "POST"])
    def hello() -> flask.Response:
        app.config["seen_environs"].append(flask.request.environ)
        response = flask.make_response("hello from host", 201)
        response.headers["X-Host"] = "1"
        response.set_cookie("session", "abc")
        return response

    return app


@dataclass
class World:
    upstream: RecordingUpstream
    middleware: InvokeMiddleware
    app: webtest.TestApp
    host: flask.Flask
    registry: InMemoryServiceRegistry
    keys: dict[str, str] = field(default_factory=dict)
    started: list[RelayStarted] = field(default_factory=list)
    finished: list[RelayFinished] = field(default_factory=list)

    def auth(self, key: str = "sk") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def invoke(self, slug: str, envelope: dict[str, Any], *, key: str = "sk", **kw: Any) -> Any:
        headers = {**self.auth(key), **kw.pop("headers", {})}
        return self.app.post_json(f"/r/invoke/{slug}", envelope, headers=headers, **kw)


def build_world(upstream: RecordingUpstream, **options: Any) -> World:
    registry = InMemoryServiceRegistry()
    registry.add(make_service("echo", upstream.url))
    registry.add(make_service("based", upstream.url + "/base"))
    registry.add(make_service("theirs", upstream.url, team=OTHER_TEAM))
    for status in ServiceStatus:
        if status is not ServiceStatus.RUNNING:
            registry.add(make_service(f"svc-{status.value}", upstream.url, status=status))
    started: list[RelayStarted] = []
    finished: list[RelayFinished] = []
    host = host_app()
    options.setdefault("settings", PipelineSettings())
    middleware = InvokeMiddleware(
        host.wsgi_app,
        registry=registry,
        before_relay=[*options.pop("before_relay", ()), started.append],
        after_relay=[*options.pop("after_relay", ()), finished.append],
        **options,
    )
    host.wsgi_app = middleware  # type: ignore[method-assign]
    world = World(
        upstream=upstream,
        middleware=middleware,
        app=webtest.TestApp(host),
        host=host,
        registry=registry,
        started=started,
        finished=finished,
    )
    creds, members = middleware.credentials, middleware.memberships
    world.keys["sk"] = creds.issue(KeyKind.INTEGRATION, team_id=TEAM).key
    world.keys["sk-other"] = creds.issue(KeyKind.INTEGRATION, team_id=OTHER_TEAM).key
    for role in Role:
        members.set_role(TEAM, f"user-{role.value}", role)
        world.keys[role.value] = creds.issue(
            KeyKind.DEVICE, team_id=TEAM, user_id=f"user-{role.value}"
        ).key
    world.keys["ak"] = creds.issue(KeyKind.AGENT, team_id=TEAM, user_id="user-owner").key
    return world


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


@pytest.fixture
def make_world(upstream: RecordingUpstream) -> Iterator[Callable[..., World]]:
    """Build worlds with custom middleware options; their transports close afterwards."""
    built: list[World] = []

    def make(**options: Any) -> World:
        built.append(build_world(upstream, **options))
        return built[-1]

    yield make
    for each in built:
        each.middleware.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()
