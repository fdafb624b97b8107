"""The Pyramid include, through a real Pyramid host and a real loopback upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.events import NewRequest
from webob import Request

from invoke_middleware import InMemoryServiceRegistry, InvokeMiddleware
from invoke_middleware.config import ConfigError
from invoke_middleware.hooks import RelayStarted
from invoke_middleware.pyramid import get_middleware
from tests.integrations.helpers import (
    bearer,
    check_invoke,
    check_refused_without_key,
    check_relay,
    issue_key,
    pyramid_host,
    pyramid_host_with_gateway,
    register_echo,
    same_response,
    seed,
)
from tests.toolkit.upstream import MAX_HOLD, RecordingUpstream

PREFIX = "/api/v1"
SETTINGS = {"invoke.prefix": PREFIX, "pyramid.reload_templates": "false"}


@pytest.fixture
def routers() -> Iterator[list[Any]]:
    """Pyramid apps with the gateway made by a test; their middlewares are closed after it."""
    made: list[Any] = []
    yield made
    for router in made:
        get_middleware(router.registry).close()


def make_app(routers: list[Any], settings: dict[str, Any] = SETTINGS, **collaborators: Any) -> Any:
    router = pyramid_host_with_gateway(settings, **collaborators)
    routers.append(router)
    return router


def test_include_relays_invoke_and_catch_all_to_the_upstream(
    upstream: RecordingUpstream, routers: list[Any]
) -> None:
    router = make_app(routers)
    key = seed(get_middleware(router.registry), upstream.url)
    client = webtest.TestApp(router)

    check_invoke(client, key, PREFIX)
    check_relay(client, key, PREFIX)
    check_refused_without_key(client, PREFIX)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/", id="home"),
        pytest.param("GET", "/api/v1/profile", id="route-under-the-prefix"),
        pytest.param("POST", "/api/v1/profile", id="post-with-body"),
        pytest.param("GET", "/api/v1/r/invokes", id="near-miss-of-a-runtime-route"),
        pytest.param("GET", "/missing", id="host-404"),
    ],
)
def test_host_routes_answer_exactly_as_without_the_include(
    method: str, path: str, routers: list[Any]
) -> None:
    plain = webtest.TestApp(pyramid_host(**SETTINGS))
    wrapped = webtest.TestApp(make_app(routers))
    options = {"body": b"some=body"} if method == "POST" else {}

    expected = plain.request(path, method=method, expect_errors=True, **options)
    actual = wrapped.request(path, method=method, expect_errors=True, **options)

    assert same_response(expected, actual)


def test_relayed_response_streams_each_chunk_as_the_upstream_sends_it(
    upstream: RecordingUpstream, routers: list[Any]
) -> None:
    router = make_app(routers)
    key = seed(get_middleware(router.registry), upstream.url)
    request = Request.blank(f"{PREFIX}/r/containers/echo/events", headers=bearer(key))
    started: list[str] = []

    body = router(request.environ, lambda status, headers, exc_info=None: started.append(status))
    try:
        chunks = iter(body)
        first = next(chunks)
        # The upstream holds its second event until released: the first one got here while
        # the upstream was still sending, so nothing buffered the body.
        held = not upstream.second_event_sent.is_set()
        upstream.release.set()
        rest = b"".join(chunks)
    finally:
        body.close()

    assert started == ["200 OK"]
    assert first == b"data: first\n\n"
    assert held
    assert rest == b"data: second\n\n"
    assert upstream.second_event_sent.wait(MAX_HOLD)


def test_relayed_headers_are_written_as_the_upstream_sent_them(
    upstream: RecordingUpstream, routers: list[Any]
) -> None:
    router = make_app(routers)
    key = seed(get_middleware(router.registry), upstream.url)

    response = webtest.TestApp(router).get(
        f"{PREFIX}/r/containers/echo/redirect", headers=bearer(key), status=302
    )

    # WebOb would make a relative Location absolute; the relay keeps the upstream's value.
    assert response.headers["Location"] == "/elsewhere"


def test_runtime_requests_bypass_pyramid_request_handling(
    upstream: RecordingUpstream, routers: list[Any]
) -> None:
    seen: list[str] = []
    with Configurator(settings=SETTINGS) as config:
        config.include("invoke_middleware.pyramid")
        config.add_subscriber(lambda event: seen.append(event.request.path), NewRequest)
        config.add_route("home", "/")
        config.add_view(lambda request: {"ok": True}, route_name="home", renderer="json")
        router = config.make_wsgi_app()
    routers.append(router)
    key = seed(get_middleware(router.registry), upstream.url)
    client = webtest.TestApp(router)

    check_relay(client, key, PREFIX)
    client.get("/")

    assert seen == ["/"]


def test_collaborators_directive_passes_objects_to_the_middleware(
    upstream: RecordingUpstream, routers: list[Any]
) -> None:
    registry = InMemoryServiceRegistry()
    register_echo(registry, upstream.url)
    started: list[RelayStarted] = []
    router = make_app(routers, registry=registry, before_relay=[started.append])
    middleware = get_middleware(router.registry)

    check_relay(webtest.TestApp(router), issue_key(middleware.credentials), PREFIX)

    assert middleware.registry is registry
    assert [(event.route, event.service.slug) for event in started] == [("catch_all", "echo")]


def test_middleware_is_reachable_only_once_the_app_is_made() -> None:
    with Configurator(settings=SETTINGS) as config:
        config.include("invoke_middleware.pyramid")
        with pytest.raises(LookupError):
            get_middleware(config.registry)
        router = config.make_wsgi_app()
    middleware = get_middleware(router.registry)
    try:
        assert isinstance(middleware, InvokeMiddleware)
        assert middleware.router.prefix == PREFIX
    finally:
        middleware.close()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param("invoke.prefix", "api", "a path starting with '/'", id="relative-prefix"),
        pytest.param("invoke.read_timeout", "soon", "seconds", id="not-a-number"),
        pytest.param("invoke.trusted_proxy_hops", "-1", "0 or more", id="negative"),
        pytest.param("invoke.max_header_byte", "10", "did you mean", id="typo"),
    ],
)
def test_bad_setting_fails_the_include_naming_the_key(key: str, value: str, message: str) -> None:
    with Configurator(settings={key: value}) as config, pytest.raises(ConfigError) as caught:
        config.include("invoke_middleware.pyramid")

    assert caught.value.key == key
    assert message in str(caught.value)
