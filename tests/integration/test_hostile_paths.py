"""Every hostile path of docs/contract.md §5, sent through a real server to a real upstream, is
refused with 400 and never reaches the container: in the invoke envelope and on the raw
catch-all."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.hostile_paths import HOSTILE_PATHS, RELAY_SAFE
from tests.integration.gateway import (
    RunningGateway,
    exchange,
    serve_gateway,
)
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.upstream import RecordingUpstream, recording_upstream
from tests.toolkit.world import make_service

ENVELOPE_CASES = [pytest.param(path, id=case_id) for case_id, path in HOSTILE_PATHS]
RELAY_CASES = [
    pytest.param(path, id=case_id) for case_id, path in HOSTILE_PATHS if case_id in RELAY_SAFE
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


@pytest.fixture(scope="module")
def gateway(upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    with serve_gateway([make_service("echo", upstream.url + "/base")]) as running:
        yield running


def _schema_refuses(path: str) -> bool:
    # docs/contract.md §3: the envelope's path begins with "/" but not "//" and has at most 2048
    # characters.
    return not path.startswith("/") or path.startswith("//") or len(path) > 2048


@pytest.mark.parametrize("path", ENVELOPE_CASES)
def test_hostile_path_in_the_envelope_is_refused_before_the_upstream(
    gateway: RunningGateway, upstream: RecordingUpstream, path: str
) -> None:
    before = len(upstream.received)
    reply = exchange(
        gateway,
        "POST",
        "/r/invoke/echo",
        [("Content-Type", "application/json")],
        json.dumps({"method": "GET", "path": path}).encode(),
    )
    code = "invalid_request" if _schema_refuses(path) else "invalid_path"
    payload = assert_gateway_error(reply, 400, code)
    if code == "invalid_request":
        assert any(detail["pointer"] == "/path" for detail in payload["details"])
    assert len(upstream.received) == before


@pytest.mark.parametrize("path", RELAY_CASES)
def test_hostile_path_on_the_catch_all_is_refused_before_the_upstream(
    gateway: RunningGateway, upstream: RecordingUpstream, path: str
) -> None:
    before = len(upstream.received)
    reply = exchange(gateway, "GET", "/r/containers/echo" + path)
    assert_gateway_error(reply, 400, "invalid_path")
    assert len(upstream.received) == before


def test_every_relay_safe_case_is_replayed_on_the_catch_all() -> None:
    assert {case.id for case in RELAY_CASES} == RELAY_SAFE
    assert len(ENVELOPE_CASES) == len(HOSTILE_PATHS) >= 40


@pytest.mark.parametrize(
    ("path", "target"),
    [
        pytest.param("/plain", "/base/plain", id="plain"),
        pytest.param("/a/b.c?x=1&y=%2F", "/base/a/b.c?x=1&y=%2F", id="query-keeps-escapes"),
        pytest.param("/%41%42", "/base/%41%42", id="harmless-escapes"),
        pytest.param("/a//b", "/base/a//b", id="inner-empty-segment"),
    ],
)
def test_benign_path_reaches_the_upstream_through_both_routes(
    gateway: RunningGateway, upstream: RecordingUpstream, path: str, target: str
) -> None:
    before = len(upstream.received)
    reply = exchange(
        gateway,
        "POST",
        "/r/invoke/echo",
        [("Content-Type", "application/json")],
        json.dumps({"method": "GET", "path": path}).encode(),
    )
    assert reply.status == 200
    assert json.loads(reply.body)["status_code"] == 200
    reply = exchange(gateway, "GET", "/r/containers/echo" + path)
    assert reply.status == 200
    assert [r.target for r in upstream.received[before:]] == [target, target]
