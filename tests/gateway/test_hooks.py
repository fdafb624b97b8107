"""Relay hooks (issue: hooks): who, what, how much and how long; never bodies or secrets."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

import pytest

from invoke_middleware import CredentialKind, RelayFinished, RelayStarted
from tests.toolkit.world import World


def test_hooks_see_an_invoke(world: World) -> None:
    body = b"12345"
    res = world.invoke(
        "echo",
        {"method": "POST", "path": "/p?secret=1", "body_base64": base64.b64encode(body).decode()},
    )
    [started] = world.started
    [finished] = world.finished
    assert finished.started is started
    assert started.route == "invoke"
    assert started.service.slug == "echo"
    assert started.principal.kind is CredentialKind.INTEGRATION
    assert started.request_id == res.headers["X-Request-ID"]
    assert started.method == "POST"
    assert started.path == "/p"
    assert finished.status == 200
    assert finished.bytes_in == 5
    assert finished.bytes_out > 0
    assert finished.duration >= 0
    assert finished.error_code is None


def test_hooks_see_a_streamed_relay_when_it_ends(world: World) -> None:
    world.app.post("/r/containers/echo/bytes/1000", b"abc", headers=world.auth())
    [finished] = world.finished
    assert finished.started.route == "catch_all"
    assert finished.started.path == "/bytes/1000"
    assert finished.bytes_in == 3
    assert finished.bytes_out == 1000


def test_hooks_see_an_upstream_failure(world: World) -> None:
    world.upstream.server.shutdown()
    world.upstream.server.server_close()
    world.invoke("echo", {"method": "GET", "path": "/"}, status=502)
    [finished] = world.finished
    assert finished.error_code == "upstream_unreachable"
    assert finished.status == 502


def test_the_finished_events_old_field_names_are_deprecated_aliases(world: World) -> None:
    world.invoke("echo", {"method": "GET", "path": "/"})
    [finished] = world.finished
    with pytest.warns(DeprecationWarning, match=r"RelayFinished\.started\.request_id"):
        assert finished.request_id == finished.started.request_id


def test_refused_requests_are_not_relays(world: World) -> None:
    world.invoke("echo", {"method": "GET", "path": "/"}, key="viewer", status=403)
    assert world.started == []
    assert world.finished == []


def test_events_hold_no_secret(world: World) -> None:
    world.invoke(
        "echo",
        {"method": "GET", "path": "/", "headers": {"Authorization": "Bearer container-secret"}},
    )
    text = repr(world.started) + repr(world.finished)
    assert world.keys["sk"] not in text
    assert "container-secret" not in text


def test_a_failing_hook_is_logged_and_the_relay_goes_on(
    make_world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: RelayStarted | RelayFinished) -> None:
        raise ValueError("hook bug")

    world = make_world(before_relay=[broken], after_relay=[broken])
    with caplog.at_level(logging.ERROR, logger="invoke_middleware.hooks"):
        res = world.invoke("echo", {"method": "GET", "path": "/"})
    assert res.json["status_code"] == 200
    assert len([r for r in caplog.records if "hook" in r.getMessage()]) == 2
