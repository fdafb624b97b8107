"""Host apps, seeding and the relay checks shared by the integration tests."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import flask
import webtest
from pyramid.config import Configurator
from pyramid.response import Response

from invoke_middleware import Service, ServiceStatus, ServiceType
from invoke_middleware.auth.keys import CredentialKind
from tests.toolkit.upstream import Received

TEAM = uuid.UUID("0190aa00-0000-7000-8000-000000000001")
SLUG = "echo"


def register_echo(registry: Any, upstream_url: str) -> Service:
    """Add a running deployed service ``echo`` of :data:`TEAM` at ``upstream_url``."""
    service = Service(
        id=uuid.uuid4(),
        team_id=TEAM,
        slug=SLUG,
        display_name="Echo",
        service_type=ServiceType.DEPLOYED,
        service_status=ServiceStatus.RUNNING,
        upstream_url=upstream_url,
    )
    registry.add(service)
    return service


def issue_key(credentials: Any) -> str:
    """Issue an ``sk-`` integration key of :data:`TEAM` and return the raw key."""
    key: str = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM, name="tests").key
    return key


def seed(middleware: Any, upstream_url: str) -> str:
    """Register the echo service in ``middleware``'s registry; return a fresh ``sk-`` key."""
    register_echo(middleware.registry, upstream_url)
    return issue_key(middleware.credentials)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def check_invoke(app: webtest.TestApp, key: str, prefix: str = "") -> None:
    """A structured invoke reaches the upstream and its answer comes back enveloped."""
    envelope = {
        "method": "POST",
        "path": "/things?colour=blue",
        "headers": {"Content-Type": "text/plain", "X-Trace": "t-1"},
        "body_base64": base64.b64encode(b"hello upstream").decode(),
    }
    response = app.post_json(f"{prefix}/r/invoke/{SLUG}", envelope, headers=bearer(key))
    assert response.status_int == 200
    assert response.json["status_code"] == 200
    assert response.json["headers"]["x-upstream"] == "loopback"
    echo = Received.from_json(base64.b64decode(response.json["body_base64"]))
    assert echo.method == "POST"
    assert echo.target == "/things?colour=blue"
    assert echo.body == b"hello upstream"
    assert echo.header("X-Trace") == "t-1"
    assert echo.header("Authorization") is None


def check_relay(app: webtest.TestApp, key: str, prefix: str = "") -> None:
    """The catch-all relays method, path, query and body, without the caller's key."""
    response = app.put(
        f"{prefix}/r/containers/{SLUG}/files/report.txt?version=2",
        params=b"new contents",
        headers={**bearer(key), "Content-Type": "text/plain"},
    )
    assert response.status_int == 200
    assert response.headers["X-Upstream"] == "loopback"
    assert response.headers["X-Request-ID"]
    echo = Received.from_json(response.body)
    assert echo.method == "PUT"
    assert echo.target == "/files/report.txt?version=2"
    assert echo.body == b"new contents"
    assert echo.header("Authorization") is None


def check_refused_without_key(app: webtest.TestApp, prefix: str = "") -> None:
    response = app.get(f"{prefix}/r/containers/{SLUG}/", status=401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def same_response(first: webtest.TestResponse, second: webtest.TestResponse) -> bool:
    """Whether two responses carry the same status, header list and body bytes."""
    return (first.status, first.headerlist, first.body) == (
        second.status,
        second.headerlist,
        second.body,
    )


# --- host apps -----------------------------------------------------------------------


def flask_host() -> flask.Flask:
    """A Flask host with routes of its own, one of them under the runtime prefix."""
    app = flask.Flask("host")

    @app.get("/")
    def home() -> str:
        return "host home"

    @app.route("/api/v1/profile", methods=["GET", "POST"])
    def profile() -> flask.Response:
        response = flask.jsonify(user="ada", sent=flask.request.get_data(as_text=True))
        response.headers["X-Host"] = "flask"
        response.set_cookie("session", "abc")
        return response

    return app


def add_pyramid_routes(config: Any) -> None:
    """The Pyramid host's own routes, one of them under the runtime prefix."""

    def home(request: Any) -> Response:
        return Response("host home", content_type="text/plain")

    def profile(request: Any) -> Response:
        response = Response(json_body={"user": "ada", "sent": request.text})
        response.headers["X-Host"] = "pyramid"
        response.set_cookie("session", "abc")
        return response

    config.add_route("home", "/")
    config.add_view(home, route_name="home")
    config.add_route("profile", "/api/v1/profile")
    config.add_view(profile, route_name="profile")


def pyramid_host(global_config: Any = None, **settings: Any) -> Any:
    """A Pyramid host without the gateway (also a PasteDeploy app factory)."""
    with Configurator(settings=settings) as config:
        add_pyramid_routes(config)
        return config.make_wsgi_app()


def pyramid_host_with_gateway(settings: dict[str, Any], **collaborators: Any) -> Any:
    """The same Pyramid host, with ``config.include("invoke_middleware.pyramid")``."""
    with Configurator(settings=settings) as config:
        config.include("invoke_middleware.pyramid")
        if collaborators:
            config.set_invoke_collaborators(**collaborators)
        add_pyramid_routes(config)
        return config.make_wsgi_app()
