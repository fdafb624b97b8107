"""Every file in ``examples/``, run as a user would and relaying to a real upstream."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import webtest
from paste.deploy import loadapp

from invoke_middleware import InvokeMiddleware
from invoke_middleware.auth.keys import CredentialKind
from invoke_middleware.pyramid import get_middleware
from invoke_middleware.store import SQLStore
from tests.integrations.helpers import (
    TEAM,
    check_invoke,
    check_refused_without_key,
    check_relay,
    register_echo,
    seed,
)
from tests.toolkit.upstream import RecordingUpstream

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PREFIX = "/api/v1"


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples directory importable, as ``PYTHONPATH=examples`` makes it."""
    monkeypatch.syspath_prepend(str(EXAMPLES))


def load(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.fixture
def middlewares() -> Iterator[list[InvokeMiddleware]]:
    made: list[InvokeMiddleware] = []
    yield made
    for middleware in made:
        middleware.close()


def test_plain_wsgi_example_relays_and_serves_its_host_page(
    examples: None, tmp_path: Path, upstream: RecordingUpstream, middlewares: list[Any]
) -> None:
    app = load("plain_wsgi").make_app(f"sqlite:///{tmp_path / 'invoke.db'}")
    middlewares.append(app)
    key = seed(app, upstream.url)
    client = webtest.TestApp(app)

    check_invoke(client, key, PREFIX)
    check_relay(client, key, PREFIX)
    assert client.get("/").text == "Hello from the host application\n"


def test_flask_example_relays_and_serves_its_host_page(
    examples: None, tmp_path: Path, upstream: RecordingUpstream, middlewares: list[Any]
) -> None:
    app = load("flask_app").create_app({"INVOKE_DATABASE_URL": f"sqlite:///{tmp_path / 'f.db'}"})
    middleware = app.extensions["invoke_middleware"]
    middlewares.append(middleware)
    key = seed(middleware, upstream.url)
    client = webtest.TestApp(app)

    check_invoke(client, key, PREFIX)
    check_relay(client, key, PREFIX)
    check_refused_without_key(client, PREFIX)
    assert client.get("/").json == {"host": "flask example"}


@pytest.fixture
def pyramid_ini(examples: None, tmp_path: Path, upstream: RecordingUpstream) -> tuple[str, str]:
    """The example ini, copied as is next to a store set up by its operator; and a key."""
    shutil.copy(EXAMPLES / "pyramid.ini", tmp_path / "pyramid.ini")
    with SQLStore(f"sqlite:///{tmp_path / 'invoke.db'}") as store:
        store.init()
        register_echo(store.services, upstream.url)
        key = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    return f"config:{tmp_path / 'pyramid.ini'}", key


def test_pyramid_ini_pipeline_relays_through_the_paste_filter(
    pyramid_ini: tuple[str, str], middlewares: list[Any]
) -> None:
    uri, key = pyramid_ini
    app = loadapp(uri)
    middlewares.append(app)
    client = webtest.TestApp(app)

    assert isinstance(app, InvokeMiddleware)
    check_invoke(client, key, PREFIX)
    check_relay(client, key, PREFIX)
    assert client.get("/").text == "Hello from the Pyramid host\n"


def test_pyramid_ini_included_app_relays_through_the_include(
    pyramid_ini: tuple[str, str], middlewares: list[Any]
) -> None:
    uri, key = pyramid_ini
    router = loadapp(uri, name="included")
    middlewares.append(get_middleware(router.registry))
    client = webtest.TestApp(router)

    check_invoke(client, key, PREFIX)
    check_relay(client, key, PREFIX)
    check_refused_without_key(client, PREFIX)
    assert client.get("/").text == "Hello from the Pyramid host\n"
