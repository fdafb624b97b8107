"""The Flask extension, through a real Flask host and a real loopback upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import webtest

from invoke_middleware import InMemoryServiceRegistry, InvokeMiddleware
from invoke_middleware.auth.keys import CredentialKind
from invoke_middleware.auth.principal import Role
from invoke_middleware.config import ConfigError
from invoke_middleware.flask import EXTENSION_KEY, InvokeExtension
from invoke_middleware.hooks import RelayFinished
from invoke_middleware.store import SQLStore
from invoke_middleware.testing import mint_jwt
from tests.integrations.helpers import (
    TEAM,
    bearer,
    check_invoke,
    check_refused_without_key,
    check_relay,
    flask_host,
    issue_key,
    register_echo,
    same_response,
    seed,
)
from tests.toolkit.upstream import RecordingUpstream

PREFIX = "/api/v1"
JWT_SECRET = "flask-test-secret-of-at-least-32-bytes!"


@pytest.fixture
def middlewares() -> Iterator[list[InvokeMiddleware]]:
    """Middlewares made by a test, closed after it."""
    made: list[InvokeMiddleware] = []
    yield made
    for middleware in made:
        middleware.close()


def wrapped_host(middlewares: list[InvokeMiddleware], **config: Any) -> Any:
    app = flask_host()
    app.config.update({"INVOKE_PREFIX": PREFIX, **config})
    middlewares.append(InvokeExtension().init_app(app))
    return app


def test_extension_relays_invoke_and_catch_all_to_the_upstream(
    upstream: RecordingUpstream, middlewares: list[InvokeMiddleware]
) -> None:
    app = wrapped_host(middlewares)
    key = seed(app.extensions[EXTENSION_KEY], upstream.url)
    client = webtest.TestApp(app)

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
def test_host_routes_answer_exactly_as_without_the_extension(
    method: str, path: str, middlewares: list[InvokeMiddleware]
) -> None:
    plain = webtest.TestApp(flask_host())
    wrapped = webtest.TestApp(wrapped_host(middlewares))
    options = {"body": b"some=body"} if method == "POST" else {}

    expected = plain.request(path, method=method, expect_errors=True, **options)
    actual = wrapped.request(path, method=method, expect_errors=True, **options)

    assert same_response(expected, actual)


def test_init_app_wraps_wsgi_app_and_keeps_the_middleware_in_extensions(
    middlewares: list[InvokeMiddleware],
) -> None:
    app = flask_host()
    inner = app.wsgi_app
    middleware = InvokeExtension().init_app(app)
    middlewares.append(middleware)

    assert app.wsgi_app is middleware
    assert app.extensions["invoke_middleware"] is middleware
    assert middleware.app == inner


def test_one_extension_serves_several_apps_with_the_same_collaborators(
    upstream: RecordingUpstream, middlewares: list[InvokeMiddleware]
) -> None:
    registry = InMemoryServiceRegistry()
    register_echo(registry, upstream.url)
    finished: list[RelayFinished] = []
    invoke = InvokeExtension(registry=registry, after_relay=[finished.append])
    first, second = flask_host(), flask_host()
    second.config["INVOKE_PREFIX"] = PREFIX
    for app in (first, second):
        middlewares.append(invoke.init_app(app))

    for app, prefix in ((first, ""), (second, PREFIX)):
        key = issue_key(app.extensions[EXTENSION_KEY].credentials)
        check_relay(webtest.TestApp(app), key, prefix)

    assert [event.started.route for event in finished] == ["catch_all", "catch_all"]
    assert all(m.registry is registry for m in middlewares)


def test_init_app_twice_on_one_app_is_refused(middlewares: list[InvokeMiddleware]) -> None:
    app = flask_host()
    middlewares.append(InvokeExtension().init_app(app))

    with pytest.raises(RuntimeError, match="already has invoke_middleware"):
        InvokeExtension().init_app(app)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param("INVOKE_MAX_RELAY_BODY_BYTES", "lots", "positive integer", id="not-an-int"),
        pytest.param("INVOKE_MAX_HEADER_COUNT", True, "positive integer", id="bool-for-int"),
        pytest.param("INVOKE_PROBLEM_JSON", "maybe", "boolean", id="not-a-bool"),
        pytest.param("INVOKE_PREFX", "/x", "did you mean INVOKE_PREFIX", id="typo"),
        pytest.param("INVOKE_JWT_ALGORITHMS", [1], "algorithm names", id="list-of-non-strings"),
    ],
)
def test_bad_config_fails_init_app_naming_the_flask_key(key: str, value: Any, message: str) -> None:
    app = flask_host()
    app.config[key] = value

    with pytest.raises(ConfigError, match=message) as caught:
        InvokeExtension(app)

    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert EXTENSION_KEY not in app.extensions


def test_native_flask_values_configure_the_gateway(
    upstream: RecordingUpstream, middlewares: list[InvokeMiddleware]
) -> None:
    app = wrapped_host(
        middlewares,
        INVOKE_PROBLEM_JSON=True,
        INVOKE_MAX_RELAY_BODY_BYTES=4,
        INVOKE_TOTAL_TIMEOUT=None,  # None leaves the default
    )
    key = seed(app.extensions[EXTENSION_KEY], upstream.url)
    client = webtest.TestApp(app)

    refused = client.get(f"{PREFIX}/r/containers/echo/", status=401)
    too_big = client.post(f"{PREFIX}/r/containers/echo/", b"12345", headers=bearer(key), status=413)

    assert refused.content_type == "application/problem+json"
    assert too_big.json["code"] == "payload_too_large"


def test_database_url_serves_services_and_keys_from_the_sql_store(
    tmp_path: Any, upstream: RecordingUpstream, middlewares: list[InvokeMiddleware]
) -> None:
    url = f"sqlite:///{tmp_path / 'invoke.db'}"
    with SQLStore(url) as store:
        store.init()
        register_echo(store.services, upstream.url)
        issued = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    app = wrapped_host(middlewares, INVOKE_DATABASE_URL=url, INVOKE_SERVICE_CACHE_TTL=0)
    client = webtest.TestApp(app)

    check_relay(client, issued.key, PREFIX)
    app.extensions[EXTENSION_KEY].credentials.revoke(issued.record.id)
    client.get(f"{PREFIX}/r/containers/echo/", headers=bearer(issued.key), status=401)


def test_jwt_settings_authenticate_users_against_the_shared_memberships(
    upstream: RecordingUpstream, middlewares: list[InvokeMiddleware]
) -> None:
    app = wrapped_host(middlewares, INVOKE_JWT_ALGORITHMS=["HS256"], INVOKE_JWT_SECRET=JWT_SECRET)
    middleware = app.extensions[EXTENSION_KEY]
    key = seed(middleware, upstream.url)
    middleware.memberships.set_role(TEAM, "user-1", Role.MEMBER)
    token = mint_jwt(secret_or_private_key=JWT_SECRET, sub="user-1")
    client = webtest.TestApp(app)

    as_user = client.get(
        f"{PREFIX}/r/containers/echo/hi", headers={**bearer(token), "X-Team-ID": str(TEAM)}
    )
    as_integration = client.get(f"{PREFIX}/r/containers/echo/hi", headers=bearer(key))

    assert as_user.json["target"] == "/hi"
    assert as_integration.json["target"] == "/hi"
