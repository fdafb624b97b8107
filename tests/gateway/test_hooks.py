"""Relay hooks (issue: hooks): who, what, how much and how long; never bodies or secrets."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

import pytest

from invoke_middleware import CredentialKind, PipelineSettings, RelayFinished, RelayStarted, hooks
from tests.toolkit.world import World, make_service
from tests.upstreams import RawUpstream


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


def test_an_invoke_to_a_service_that_is_down_sent_no_bytes(world: World) -> None:
    world.upstream.server.shutdown()
    world.upstream.server.server_close()
    body = base64.b64encode(b"x" * 100_000).decode()
    world.invoke("echo", {"method": "POST", "path": "/", "body_base64": body}, status=502)
    [finished] = world.finished
    assert (finished.bytes_in, finished.bytes_out) == (0, 0)


def test_an_invoke_response_over_the_cap_reports_the_bytes_received(
    make_world: Callable[..., World], raw_upstream: RawUpstream
) -> None:
    world = make_world(
        services=[make_service("raw", raw_upstream.url)],
        settings=PipelineSettings(max_response_body_bytes=40),
    )
    # Five events of 21 bytes in chunked coding, without a length: refused past the cap.
    res = world.invoke("raw", {"method": "GET", "path": "/sse?count=5&interval=0"}, status=502)
    assert res.headers["X-Invoke-Error"] == "response_too_large"
    [finished] = world.finished
    assert finished.error_code == "response_too_large"
    assert 40 < finished.bytes_out <= 5 * 21


def test_an_invoke_response_cut_off_reports_the_bytes_received(
    make_world: Callable[..., World], raw_upstream: RawUpstream
) -> None:
    world = make_world(services=[make_service("raw", raw_upstream.url)])
    # 100 of the 1000 bytes its Content-Length declares, then the connection closes.
    world.invoke("raw", {"method": "GET", "path": "/truncate"}, status=502)
    [finished] = world.finished
    assert (finished.error_code, finished.bytes_out) == ("upstream_error", 100)


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


def test_a_hook_failing_on_every_relay_is_logged_once_per_interval(
    make_world: Callable[..., World],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(hooks._failures, "clock", lambda: now[0])

    def broken(event: RelayFinished) -> None:
        raise ValueError("hook bug")

    world = make_world(after_relay=[broken])
    with caplog.at_level(logging.ERROR, logger="invoke_middleware.hooks"):
        for _ in range(5):
            assert world.relay("echo/x").status_int == 200
        now[0] += hooks._failures.interval
        assert world.relay("echo/x").status_int == 200
    logged = [r.getMessage() for r in caplog.records if "hook" in r.getMessage()]
    assert len(logged) == 2, logged
    assert "more failures" not in logged[0]
    assert logged[1].endswith("; 4 more failures of it not logged since the last")
    assert all(r.exc_info for r in caplog.records)


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
