"""The Pyramid include, through a real Pyramid host and a real loopback upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.events import ApplicationCreated, NewRequest, NewResponse
from pyramid.exceptions import ConfigurationError
from pyramid.router import default_execution_policy
from webob import Request

from invoke_middleware import InMemoryServiceRegistry, InvokeMiddleware
from invoke_middleware.config import ConfigError
from invoke_middleware.hooks import RelayStarted
from invoke_middleware.pyramid import get_middleware
from tests.integrations.helpers import (
    SLUG,
    add_pyramid_routes,
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

#: Requests the host answers, one of them a near miss of a runtime route.
HOST_REQUESTS = [
    pytest.param("GET", "/", id="home"),
    pytest.param("GET", "/api/v1/profile", id="route-under-the-prefix"),
    pytest.param("POST", "/api/v1/profile", id="post-with-body"),
    pytest.param("GET", "/api/v1/r/invokes", id="near-miss-of-a-runtime-route"),
    pytest.param("GET", "/missing", id="host-404"),
]


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


# --- a host with a tween and subscribers of the usual kinds ----------------------------

HOST_SEEN = "tests.host_seen"


def body_reading_tween(handler: Any, registry: Any) -> Any:
    """A host tween such as an audit or CSRF check: it reads the whole request body."""

    def tween(request: Any) -> Any:
        registry[HOST_SEEN].append(("tween", request.path, len(request.body)))
        return handler(request)

    return tween


def body_reading_subscriber(event: NewResponse) -> None:
    """A host ``NewResponse`` subscriber such as an ETag or size logger: it reads the whole
    response body, and marks the response."""
    event.request.registry[HOST_SEEN].append(
        ("new_response", event.request.path, len(event.response.body))
    )
    event.response.headers["X-Host-Subscriber"] = "ran"


def busy_host(settings: dict[str, Any], *, gateway: bool) -> Any:
    """The Pyramid host, with the gateway included first when ``gateway``, then a tween in
    Pyramid's default place and a ``NewResponse`` subscriber; ``registry[HOST_SEEN]`` lists
    what they saw."""
    with Configurator(settings=settings) as config:
        if gateway:
            config.include("invoke_middleware.pyramid")
        config.add_tween(f"{__name__}.body_reading_tween")
        config.add_subscriber(body_reading_subscriber, NewResponse)
        add_pyramid_routes(config)
        config.registry[HOST_SEEN] = []
        return config.make_wsgi_app()


def make_busy_app(routers: list[Any], settings: dict[str, Any] = SETTINGS) -> Any:
    router = busy_host(settings, gateway=True)
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


@pytest.mark.parametrize(("method", "path"), HOST_REQUESTS)
def test_host_routes_answer_exactly_as_without_the_include(
    method: str, path: str, routers: list[Any]
) -> None:
    plain = webtest.TestApp(pyramid_host(**SETTINGS))
    wrapped = webtest.TestApp(make_app(routers))
    options = {"body": b"some=body"} if method == "POST" else {}

    expected = plain.request(path, method=method, expect_errors=True, **options)
    actual = wrapped.request(path, method=method, expect_errors=True, **options)

    assert same_response(expected, actual)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(make_app, id="plain-host"),
        pytest.param(make_busy_app, id="host-with-body-reading-tween-and-subscriber"),
    ],
)
def test_relayed_response_streams_each_chunk_as_the_upstream_sends_it(
    make: Callable[[list[Any]], Any], upstream: RecordingUpstream, routers: list[Any]
) -> None:
    router = make(routers)
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


def test_host_tween_added_after_the_include_never_sees_a_runtime_request(
    upstream: RecordingUpstream, routers: list[Any]
) -> None:
    router = make_busy_app(routers, {**SETTINGS, "invoke.max_relay_body_bytes": "1000"})
    key = seed(get_middleware(router.registry), upstream.url)
    client = webtest.TestApp(router)

    check_relay(client, key, PREFIX)
    # Over the gateway's cap: refused before anything reads the body.
    client.put(
        f"{PREFIX}/r/containers/{SLUG}/upload",
        params=b"x" * 100_000,
        headers=bearer(key),
        status=413,
    )

    assert router.registry[HOST_SEEN] == []


@pytest.mark.parametrize(
    ("method", "path", "keyed", "status"),
    [
        pytest.param("GET", f"{PREFIX}/r/containers/{SLUG}/", True, 200, id="relayed"),
        pytest.param("GET", f"{PREFIX}/r/containers", True, 200, id="discovery"),
        pytest.param("GET", f"{PREFIX}/r/containers/{SLUG}/", False, 401, id="gateway-401"),
        pytest.param("GET", f"{PREFIX}/r/containers/missing/", True, 404, id="gateway-404"),
        pytest.param("POST", f"{PREFIX}/r/invoke/{SLUG}", True, 415, id="gateway-415"),
    ],
)
def test_new_response_subscriber_never_runs_for_a_runtime_response(
    method: str,
    path: str,
    keyed: bool,
    status: int,
    upstream: RecordingUpstream,
    routers: list[Any],
) -> None:
    router = make_busy_app(routers)
    key = seed(get_middleware(router.registry), upstream.url)

    response = webtest.TestApp(router).request(
        path, method=method, headers=bearer(key) if keyed else {}, expect_errors=True
    )

    assert response.status_int == status
    assert "X-Host-Subscriber" not in response.headers
    assert router.registry[HOST_SEEN] == []


@pytest.mark.parametrize(("method", "path"), HOST_REQUESTS)
def test_host_requests_go_through_the_hosts_tweens_and_subscribers_as_without_the_include(
    method: str, path: str, routers: list[Any]
) -> None:
    plain = busy_host(SETTINGS, gateway=False)
    wrapped = make_busy_app(routers)
    options = {"body": b"some=body"} if method == "POST" else {}

    expected = webtest.TestApp(plain).request(path, method=method, expect_errors=True, **options)
    actual = webtest.TestApp(wrapped).request(path, method=method, expect_errors=True, **options)

    assert same_response(expected, actual)
    assert actual.headers["X-Host-Subscriber"] == "ran"
    assert wrapped.registry[HOST_SEEN] == plain.registry[HOST_SEEN]
    assert [seen[:2] for seen in wrapped.registry[HOST_SEEN]] == [
        ("tween", path),
        ("new_response", path),
    ]


@pytest.mark.parametrize("policy_first", [True, False], ids=["before-include", "after-include"])
def test_host_execution_policy_runs_for_host_requests_only(
    policy_first: bool, upstream: RecordingUpstream, routers: list[Any]
) -> None:
    seen: list[str] = []

    def host_policy(environ: dict[str, Any], router: Any) -> Any:
        seen.append(environ["PATH_INFO"])
        return default_execution_policy(environ, router)

    with Configurator(settings=SETTINGS) as config:
        if policy_first:
            config.set_execution_policy(host_policy)
        config.include("invoke_middleware.pyramid")
        if not policy_first:
            config.set_execution_policy(host_policy)
        add_pyramid_routes(config)
        router = config.make_wsgi_app()
    routers.append(router)
    key = seed(get_middleware(router.registry), upstream.url)
    client = webtest.TestApp(router)

    check_relay(client, key, PREFIX)
    check_refused_without_key(client, PREFIX)
    client.get("/")

    assert seen == ["/"]


def test_execution_policy_set_in_a_later_commit_fails_make_wsgi_app() -> None:
    config = Configurator(settings=SETTINGS)
    config.include("invoke_middleware.pyramid")
    config.commit()
    config.set_execution_policy(default_execution_policy)

    with pytest.raises(ConfigurationError, match="execution policy was set in a commit after"):
        config.make_wsgi_app()


def test_middleware_is_ready_for_the_hosts_application_created_subscribers(
    routers: list[Any],
) -> None:
    prefixes: list[str] = []

    def on_created(event: ApplicationCreated) -> None:
        prefixes.append(get_middleware(event.app.registry).router.prefix)

    with Configurator(settings=SETTINGS) as config:
        config.add_subscriber(on_created, ApplicationCreated)
        config.include("invoke_middleware.pyramid")
        routers.append(config.make_wsgi_app())

    assert prefixes == [PREFIX]


def test_two_apps_made_from_one_configuration_share_one_middleware(routers: list[Any]) -> None:
    # They share the registry, which holds the middleware: a second one would leave the
    # first one's pooled connections and limiter open, used by no one.
    with Configurator(settings=SETTINGS) as config:
        config.include("invoke_middleware.pyramid")
        routers.append(config.make_wsgi_app())
        first = get_middleware(routers[-1].registry)
        routers.append(config.make_wsgi_app())

    assert get_middleware(routers[-1].registry) is first


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
