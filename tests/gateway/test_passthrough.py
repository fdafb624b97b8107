"""Everything that is not a runtime route reaches the host untouched (docs/contract.md §1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest
import webtest

from invoke_middleware import InvokeMiddleware
from tests.toolkit.world import World, host_app

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/r/other", "host: other", id="r-other"),
        pytest.param("/r/invokeX", "host: invokeX", id="r-invokeX"),
        pytest.param("/r/containers-x", "host: containers-x", id="r-containers-x"),
    ],
)
def test_overlapping_host_routes_are_the_hosts(world: World, path: str, body: str) -> None:
    res = world.app.get(path)
    assert res.text == body
    assert "X-Request-ID" not in res.headers
    assert world.upstream.received == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/r/invoke", id="invoke-without-slug"),
        pytest.param("/r/invoke/", id="invoke-empty-slug"),
        pytest.param("/r/invoke/a/b", id="invoke-nested"),
        pytest.param("/r/containers/", id="containers-empty-slug"),
        pytest.param("/nothing", id="unknown"),
    ],
)
def test_paths_outside_the_route_table_get_the_hosts_404(world: World, path: str) -> None:
    res = world.app.get(path, status=404)
    assert "X-Invoke-Error" not in res.headers


def test_host_response_bytes_are_identical_with_and_without_the_middleware(world: World) -> None:
    bare = webtest.TestApp(host_app())
    wrapped = world.app.post("/hello", b"payload", headers={"Authorization": "Bearer x"})
    direct = bare.post("/hello", b"payload", headers={"Authorization": "Bearer x"})
    assert wrapped.status == direct.status
    assert wrapped.headerlist == direct.headerlist
    assert wrapped.body == direct.body


def test_the_host_receives_the_same_environ_object() -> None:
    seen: list[Any] = []

    def host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    sent: list[Any] = []
    middleware = InvokeMiddleware(host)

    def outer(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        sent.append(environ)
        return middleware(environ, start_response)

    webtest.TestApp(outer).get("/r/other")
    assert seen[0] is sent[0]
    middleware.close()


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("/caf\xe9", id="non-ascii"),  # PATH_INFO would hold "/caf\xc3\xa9"
        pytest.param("/caf%C3%A9", id="escape"),  # servers decode it before PATH_INFO
        pytest.param("/a b", id="space"),
        pytest.param("/a?b", id="query"),
        pytest.param("/a#b", id="fragment"),
        pytest.param("/a\\b", id="backslash"),
        pytest.param("api", id="relative"),
    ],
)
def test_a_prefix_no_request_could_match_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix must"):
        InvokeMiddleware(host_app, prefix=prefix)


def test_prefix_moves_the_runtime_routes(make_world: Any) -> None:
    world = make_world(prefix="/api/v1")
    res = world.app.get("/api/v1/r/containers", headers=world.auth())
    assert res.json["services"]
    assert world.app.get("/r/containers", status=404).text != res.text
    out = world.app.post_json(
        "/api/v1/r/invoke/echo", {"method": "GET", "path": "/x"}, headers=world.auth()
    )
    assert out.json["status_code"] == 200
    assert world.upstream.last().target == "/x"
