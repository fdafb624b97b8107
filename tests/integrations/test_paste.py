"""The PasteDeploy filter, in a pipeline loaded from an ini file, in front of a real upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import webtest
from paste.deploy import loadapp

from invoke_middleware import InvokeMiddleware
from invoke_middleware.auth.keys import CredentialKind
from invoke_middleware.config import ConfigError
from invoke_middleware.store import SQLStore
from tests.integrations.helpers import (
    TEAM,
    bearer,
    check_invoke,
    check_refused_without_key,
    check_relay,
    pyramid_host,
    register_echo,
    same_response,
)
from tests.toolkit.upstream import RecordingUpstream

PREFIX = "/api/v1"

PIPELINE = """\
[pipeline:main]
pipeline = invoke host

[filter:invoke]
use = egg:invoke_middleware#invoke
invoke.prefix = /api/v1
invoke.database_url = {database_url}
invoke.service_cache_ttl = 0
invoke.max_relay_body_bytes = 16
invoke.problem_json = yes
{extra}

[app:host]
use = call:tests.integrations.helpers:pyramid_host
"""


def write_ini(
    directory: Path, extra: str = "", database_url: str = "sqlite:///%(here)s/invoke.db"
) -> str:
    path = directory / "gateway.ini"
    path.write_text(PIPELINE.format(extra=extra, database_url=database_url))
    return f"config:{path}"


@pytest.fixture
def key(tmp_path: Path, upstream: RecordingUpstream) -> str:
    """The store the ini names, set up as an operator would: tables, a service, a key."""
    with SQLStore(f"sqlite:///{tmp_path}/invoke.db") as store:
        store.init()
        register_echo(store.services, upstream.url)
        return store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key


@pytest.fixture
def pipeline(tmp_path: Path, key: str) -> Iterator[InvokeMiddleware]:
    app = loadapp(write_ini(tmp_path))
    yield app
    app.close()


def test_filter_entry_point_wraps_the_app_with_the_middleware(
    pipeline: InvokeMiddleware,
) -> None:
    assert isinstance(pipeline, InvokeMiddleware)
    assert pipeline.router.prefix == PREFIX


def test_pipeline_relays_invoke_and_catch_all_to_the_upstream(
    pipeline: InvokeMiddleware, key: str
) -> None:
    client = webtest.TestApp(pipeline)

    check_invoke(client, key, PREFIX)
    check_relay(client, key, PREFIX)
    check_refused_without_key(client, PREFIX)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/", id="home"),
        pytest.param("POST", "/api/v1/profile", id="route-under-the-prefix"),
        pytest.param("GET", "/missing", id="host-404"),
    ],
)
def test_host_routes_answer_exactly_as_without_the_filter(
    pipeline: InvokeMiddleware, method: str, path: str
) -> None:
    plain = webtest.TestApp(pyramid_host())
    wrapped = webtest.TestApp(pipeline)
    options = {"body": b"a=1"} if method == "POST" else {}

    expected = plain.request(path, method=method, expect_errors=True, **options)
    actual = wrapped.request(path, method=method, expect_errors=True, **options)

    assert same_response(expected, actual)


def test_string_settings_are_converted_and_applied(pipeline: InvokeMiddleware, key: str) -> None:
    client = webtest.TestApp(pipeline)

    response = client.post(
        f"{PREFIX}/r/containers/echo/upload", b"x" * 17, headers=bearer(key), status=413
    )

    assert response.content_type == "application/problem+json"
    assert pipeline.pipeline.settings.max_relay_body_bytes == 16


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        pytest.param("invoke.max_invoke_body_bytes = 1.5", "invoke.max_invoke_body_bytes",
                     "positive integer", id="float-for-int"),
        pytest.param("invoke.connect_timeout = 0", "invoke.connect_timeout",
                     "more than 0", id="zero-timeout"),
        pytest.param("invoke.trusted_proxy_hops = two", "invoke.trusted_proxy_hops",
                     "an integer", id="not-an-int"),
        pytest.param("invoke.jwt.algorithms = HS256", "invoke.jwt.secret",
                     "set exactly one of", id="jwt-without-key"),
        pytest.param("invoke.pseudonym = my gateway", "invoke.pseudonym",
                     "RFC 9110 token", id="pseudonym-with-space"),
        pytest.param("invoke.relay_timeout = 5", "invoke.relay_timeout",
                     "unknown setting", id="unknown"),
        pytest.param("prefix = /x", "prefix", "write it as invoke.prefix", id="unprefixed"),
    ],
)  # fmt: skip
def test_bad_setting_stops_loading_with_a_message_naming_it(
    tmp_path: Path, key: str, line: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        loadapp(write_ini(tmp_path, extra=line))

    assert caught.value.key == key
    assert message in str(caught.value)


def test_unsupported_database_stops_loading(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, database_url="mysql://db.example/invoke")

    with pytest.raises(ConfigError, match=r"^invoke\.database_url: only sqlite"):
        loadapp(ini)
