"""Errors the gateway produces itself (docs/contract.md §8): one shape, a marker, a request id, no
leaks."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from invoke_middleware import (
    ERROR_MARKER_HEADER,
    PipelineSettings,
    ServiceStatus,
    StoreUnavailableError,
)
from invoke_middleware.errors import GatewayError, RenderedError
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.world import World


@pytest.mark.parametrize("status", [s for s in ServiceStatus if s is not ServiceStatus.RUNNING])
@pytest.mark.parametrize("route", ["invoke", "catch_all"])
def test_a_service_that_is_not_running_is_409_naming_its_status(
    world: World, status: ServiceStatus, route: str
) -> None:
    slug = f"svc-{status.value}"
    if route == "invoke":
        res = world.invoke(slug, {"method": "GET", "path": "/"}, status=409)
    else:
        res = world.app.get(f"/r/containers/{slug}/", headers=world.auth(), status=409)
    body = assert_gateway_error(res, 409, "service_not_running")
    assert status.value in str(body["error_message"])
    assert world.upstream.received == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Basic dXNlcjpwdw=="}, id="basic"),
        pytest.param({"Authorization": "Bearer sk-unknown"}, id="malformed-sk"),
        pytest.param({"Authorization": "Bearer sk-" + "A" * 43}, id="unknown-sk"),
        pytest.param({"Authorization": "Bearer"}, id="empty-bearer"),
    ],
)
def test_unauthenticated_callers_get_one_401(world: World, headers: dict[str, str]) -> None:
    res = world.app.post_json(
        "/r/invoke/echo", {"method": "GET", "path": "/"}, headers=headers, status=401
    )
    body = assert_gateway_error(res, 401, "unauthenticated")
    assert body["error_message"] == "Missing or invalid credentials."
    assert res.headers["WWW-Authenticate"] == "Bearer"
    assert world.upstream.received == []


def test_agent_keys_are_refused(world: World) -> None:
    res = world.app.get("/r/containers", headers=world.auth("ak"), status=401)
    assert_gateway_error(res, 401, "unauthenticated")


def test_viewer_may_list_but_not_invoke(world: World) -> None:
    world.app.get("/r/containers", headers=world.auth("viewer"))
    res = world.invoke("echo", {"method": "GET", "path": "/"}, key="viewer", status=403)
    assert_gateway_error(res, 403, "forbidden")
    assert world.upstream.received == []


def test_invalid_path_in_the_envelope_is_400_invalid_path(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/a/%2e%2e/b"}, status=400)
    assert_gateway_error(res, 400, "invalid_path")
    assert world.upstream.received == []


def test_too_many_headers_is_431(make_world: Callable[..., World]) -> None:
    world = make_world(settings=PipelineSettings(max_header_count=5))
    headers = {**world.auth(), **{f"X-H{i}": "v" for i in range(6)}}
    res = world.app.get("/r/containers", headers=headers, status=431)
    assert_gateway_error(res, 431, "request_header_fields_too_large")


def test_refused_connection_is_502_unreachable(world: World) -> None:
    world.upstream.server.shutdown()
    world.upstream.server.server_close()
    res = world.invoke("echo", {"method": "GET", "path": "/"}, status=502)
    body = assert_gateway_error(res, 502, "upstream_unreachable")
    assert "Errno" not in str(body["error_message"])
    assert "refused" not in str(body["error_message"]).lower()


def test_problem_json_is_available(make_world: Callable[..., World]) -> None:
    world = make_world(settings=PipelineSettings(problem_json=True))
    res = world.app.get("/r/containers/missing", headers=world.auth(), status=404)
    assert res.content_type == "application/problem+json"
    assert res.json["status"] == 404
    assert res.json["type"].endswith("service_not_found")
    assert res.json["code"] == "service_not_found"


def test_the_status_line_and_the_problem_title_use_one_rfc_9110_phrase(
    make_world: Callable[..., World],
) -> None:
    world = make_world(settings=PipelineSettings(problem_json=True, max_relay_body_bytes=10))
    res = world.app.post("/r/containers/echo/up", b"x" * 11, headers=world.auth(), status=413)
    assert res.status == "413 Content Too Large"
    assert res.json["title"] == "Content Too Large"


def test_a_custom_renderer_renders_every_error(make_world: Callable[..., World]) -> None:
    def renderer(error: GatewayError, *, request_id: str) -> RenderedError:
        body = f"{error.code}:{request_id}".encode()
        return RenderedError(
            status=error.status,
            headers=(("Content-Type", "text/plain"), ("Content-Length", str(len(body)))),
            body=body,
        )

    world = make_world(error_renderer=renderer)
    res = world.app.get("/r/containers/missing", headers=world.auth(), status=404)
    assert res.text.startswith("service_not_found:")


def test_an_unexpected_failure_is_a_500_without_details(
    make_world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    def broken_resolver(request: object) -> None:
        raise RuntimeError("database password is hunter2")

    world = make_world(resolvers=[broken_resolver])
    with caplog.at_level(logging.ERROR, logger="invoke_middleware"):
        res = world.app.get("/r/containers", status=500)
    body = assert_gateway_error(res, 500, "internal_error")
    assert "hunter2" not in res.text
    assert body["error_message"] == "The gateway failed to handle the request."
    assert any("hunter2" in r.exc_text for r in caplog.records if r.exc_text)


@pytest.mark.parametrize("route", ["invoke", "catch_all", "list", "get"])
def test_a_registry_of_its_own_that_cannot_answer_is_503_to_retry(
    world: World, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    # The store protocols' contract: StoreUnavailableError from any of them is a 503.
    def down(*_: object) -> None:
        raise StoreUnavailableError

    monkeypatch.setattr(world.registry, "get", down)
    monkeypatch.setattr(world.registry, "list", down)
    answer = world.send(route, token=world.keys["sk"])
    assert_gateway_error(answer, 503, "store_unavailable")
    assert answer.headers["Retry-After"] == "1"
    assert world.upstream.received == []


@pytest.mark.parametrize(
    "length",
    [
        pytest.param("\u00b2", id="superscript-two"),
        pytest.param("+3", id="plus-sign"),
        pytest.param("3x", id="trailing-letter"),
        pytest.param("-1", id="negative"),
    ],
)
def test_an_unparsable_content_length_is_400_not_a_lost_body(world: World, length: str) -> None:
    environ = EnvironBuilder(
        path="/r/containers/echo/up", method="POST", data=b"abc", headers=world.auth()
    ).get_environ()
    environ["CONTENT_LENGTH"] = length
    response = Response.from_app(world.middleware, environ)
    assert response.status_code == 400
    assert response.headers[ERROR_MARKER_HEADER] == "invalid_request"
    assert response.headers["X-Request-ID"]
    assert world.upstream.received == []


def test_too_many_envelope_headers_is_431(make_world: Callable[..., World]) -> None:
    world = make_world(settings=PipelineSettings(max_header_count=20))
    headers = {f"X-H{i}": "v" for i in range(21)}
    res = world.invoke("echo", {"method": "GET", "path": "/", "headers": headers}, status=431)
    assert_gateway_error(res, 431, "request_header_fields_too_large")
    assert world.upstream.received == []
