"""The relay log and the Prometheus metrics, fed by the hooks of a real middleware in front of
a Flask host and a recording loopback upstream."""

from __future__ import annotations

import base64
import importlib
import json
import logging
import re
import socket
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from invoke_middleware import (
    Principal,
    RelayFinished,
    RelayStarted,
)
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.logging_hook import FIELDS, RelayLogger
from invoke_middleware.metrics import RelayMetrics
from tests.toolkit.world import TEAM, World, make_service

LOGGER = "tests.observability.relay"
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


def _refused_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def make_gateway(make_world: Callable[..., World]) -> Callable[..., World]:
    """Worlds with one more service, ``down``, where nothing listens."""

    def make(**hooks: Any) -> World:
        world = make_world(**hooks)
        world.registry.add(make_service("down", _refused_url()))
        return world

    return make


def parse_line(message: str) -> dict[str, str]:
    """Split a relay line into its fields, unquoting JSON-quoted values."""
    assert message.startswith("relay ")
    rest = message[len("relay ") :]
    fields = {}
    for match in _FIELD.finditer(rest):
        raw = match.group(2)
        fields[match.group(1)] = json.loads(raw) if raw.startswith('"') else raw
    # Nothing outside the matched fields but the single spaces between them.
    assert len(" ".join(m.group(0) for m in _FIELD.finditer(rest))) == len(rest)
    return fields


def relay_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


# -- the relay log -----------------------------------------------------------------------------


def test_a_relay_writes_one_line_with_its_facts(
    make_gateway: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(after_relay=[RelayLogger(logging.getLogger(LOGGER))])
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = gateway.relay("echo/items/42?page=2", headers={"X-Request-ID": "req-123"})
    assert res.status_int == 200

    [record] = relay_records(caplog)
    assert record.levelno == logging.INFO
    fields = parse_line(record.getMessage())
    assert list(fields) == list(FIELDS)
    assert fields["request_id"] == "req-123"
    assert fields["route"] == "catch_all"
    assert fields["team"] == str(TEAM)
    assert fields["user"] == "-"
    assert fields["slug"] == "echo"
    assert fields["method"] == "GET"
    assert fields["path"] == "/items/42"
    assert fields["status"] == "200"
    assert fields["bytes_in"] == "0"
    assert int(fields["bytes_out"]) == len(res.body)
    assert float(fields["duration_ms"]) >= 0
    assert fields["error"] == "-"


def test_the_record_carries_the_fields_for_structured_handlers(
    make_gateway: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(after_relay=[RelayLogger(logging.getLogger(LOGGER))])
    caplog.set_level(logging.INFO, logger=LOGGER)
    gateway.app.post(
        "/r/containers/echo/upload",
        b"twelve bytes",
        headers=gateway.auth(),
    )
    [record] = relay_records(caplog)
    extra = {name: getattr(record, name) for name in FIELDS}
    assert extra["method"] == "POST"
    assert extra["path"] == "/upload"
    assert extra["status"] == 200
    assert extra["bytes_in"] == 12
    assert isinstance(extra["bytes_out"], int)
    assert extra["bytes_out"] > 0
    assert isinstance(extra["duration_ms"], float)
    assert extra["error"] is None
    assert extra["user"] is None


def test_an_invoke_is_logged_with_the_envelope_path_without_its_query(
    make_gateway: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(after_relay=[RelayLogger(logging.getLogger(LOGGER))])
    caplog.set_level(logging.INFO, logger=LOGGER)
    gateway.invoke("echo", {"method": "DELETE", "path": "/jobs/7?force=yes"})
    [record] = relay_records(caplog)
    fields = parse_line(record.getMessage())
    assert (fields["route"], fields["method"], fields["path"]) == ("invoke", "DELETE", "/jobs/7")


def test_a_failed_relay_is_logged_with_the_gateway_status_and_error_code(
    make_gateway: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(after_relay=[RelayLogger(logging.getLogger(LOGGER))])
    caplog.set_level(logging.INFO, logger=LOGGER)
    gateway.relay("down/health", status=502)
    [record] = relay_records(caplog)
    fields = parse_line(record.getMessage())
    assert (fields["status"], fields["error"]) == ("502", "upstream_unreachable")


def test_the_log_never_holds_the_key_the_query_or_a_body(
    make_gateway: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(after_relay=[RelayLogger(logging.getLogger(LOGGER))])
    caplog.set_level(logging.DEBUG)
    request_body = b"request-body-marker-6d1f"
    gateway.app.post(
        "/r/containers/echo/submit?token=query-secret-91c2",
        request_body,
        headers={**gateway.auth(), "X-Api-Key": "header-secret-4a7e"},
    )
    gateway.invoke(
        "echo",
        {
            "method": "POST",
            "path": "/submit?token=query-secret-91c2",
            "headers": {"X-Api-Key": "header-secret-4a7e"},
            "body_base64": base64.b64encode(request_body).decode(),
        },
    )
    records = relay_records(caplog)
    assert len(records) == 2
    # The upstream echoes the request back, so the response bodies held every secret too.
    secrets = [
        gateway.keys["sk"],
        gateway.keys["sk"][:12],
        "query-secret-91c2",
        "header-secret-4a7e",
    ]
    secrets.append(request_body.decode())
    secrets.append(base64.b64encode(request_body).decode())
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        for secret in secrets:
            assert secret not in text


def _event(**changes: Any) -> RelayFinished:
    """A finished relay; ``changes`` replace fields of it or of its started event."""
    started: dict[str, Any] = {
        "request_id": "r1",
        "route": "catch_all",
        "principal": Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM),
        "service": make_service("echo", "http://127.0.0.1:9"),
        "method": "GET",
        "path": "/x",
    }
    finished: dict[str, Any] = {"status": 200, "bytes_in": 0, "bytes_out": 2, "duration": 0.001}
    for name, value in changes.items():
        (started if name in started else finished)[name] = value
    return RelayFinished(started=RelayStarted(**started), **finished)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param('/a" status=500 error="forged', id="quote-and-fields"),
        pytest.param("/a status=500", id="space-and-field"),
        pytest.param("/a\nrelay request_id=forged status=500", id="newline"),
        pytest.param("/a\r\nstatus=500", id="crlf"),
        pytest.param("/a\u2028status=500", id="unicode-line-separator"),
        pytest.param('/a\\" status=500', id="backslash-quote"),
        pytest.param("/a=b", id="equals"),
        pytest.param("/%s%d%(x)s", id="format-directives"),
    ],
)
def test_a_hostile_path_cannot_forge_fields_or_lines(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    RelayLogger(logging.getLogger(LOGGER))(_event(path=path))
    [record] = relay_records(caplog)
    message = record.getMessage()
    assert message.isascii()
    assert "\n" not in message
    assert "\r" not in message
    fields = parse_line(message)
    assert list(fields) == list(FIELDS)
    assert fields["path"] == path
    assert fields["status"] == "200"
    assert fields["error"] == "-"


def test_the_query_is_dropped_even_when_an_event_carries_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    RelayLogger(logging.getLogger(LOGGER))(_event(path="/x?token=query-token-52e8"))
    [record] = relay_records(caplog)
    assert "query-token-52e8" not in record.getMessage()
    assert record.__dict__["path"] == "/x"


def test_the_logger_writes_at_its_level_and_nothing_below_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    RelayLogger(logging.getLogger(LOGGER), level=logging.DEBUG)(_event())
    assert relay_records(caplog) == []
    RelayLogger(logging.getLogger(LOGGER), level=logging.WARNING)(_event())
    [record] = relay_records(caplog)
    assert record.levelno == logging.WARNING


def test_the_default_logger_is_the_access_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="invoke_middleware.access")
    RelayLogger()(_event(request_id="default-logger"))
    access = [r for r in caplog.records if r.name == "invoke_middleware.access"]
    assert [r.__dict__["request_id"] for r in access] == ["default-logger"]


# -- the metrics -------------------------------------------------------------------------------


def metered(
    make_gateway: Callable[..., World], **extra_hooks: Any
) -> tuple[World, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    gateway = make_gateway(
        before_relay=[metrics.before_relay, *extra_hooks.get("before", [])],
        after_relay=[*extra_hooks.get("after", []), metrics.after_relay],
    )
    return gateway, registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_metrics_count_relays_by_route_type_status_class_and_error(
    make_gateway: Callable[..., World],
) -> None:
    gateway, registry = metered(make_gateway)
    gateway.relay("echo/a")
    gateway.relay("echo/b")
    gateway.relay("echo/status/404", status=404)
    gateway.relay("down/x", status=502)
    gateway.invoke("echo", {"method": "GET", "path": "/status/503"})

    def relays(route: str, status_class: str, error_code: str = "") -> float:
        return sample(
            registry,
            "invoke_relays_total",
            route=route,
            service_type="deployed",
            status_class=status_class,
            error_code=error_code,
        )

    assert relays("catch_all", "2xx") == 2
    assert relays("catch_all", "4xx") == 1
    assert relays("catch_all", "5xx", "upstream_unreachable") == 1
    assert relays("catch_all", "5xx") == 0
    # The container's own status, not the envelope's outer 200.
    assert relays("invoke", "5xx") == 1
    assert sample(registry, "invoke_relay_duration_seconds_count", route="catch_all") == 4
    assert sample(registry, "invoke_relay_duration_seconds_count", route="invoke") == 1
    assert sample(registry, "invoke_relay_duration_seconds_sum", route="catch_all") > 0


@pytest.mark.parametrize(
    ("path", "status_class"),
    [
        pytest.param("echo/anything", "2xx", id="ok"),
        pytest.param("echo/status/301", "3xx", id="redirect"),
        pytest.param("echo/status/418", "4xx", id="client-error"),
        pytest.param("echo/status/500", "5xx", id="server-error"),
    ],
)
def test_the_status_class_is_the_upstream_status_hundreds(
    make_gateway: Callable[..., World], path: str, status_class: str
) -> None:
    gateway, registry = metered(make_gateway)
    gateway.relay(path, status="*")
    labels = {"route": "catch_all", "service_type": "deployed", "error_code": ""}
    assert sample(registry, "invoke_relays_total", status_class=status_class, **labels) == 1


def test_metrics_count_body_bytes_each_way(make_gateway: Callable[..., World]) -> None:
    gateway, registry = metered(make_gateway)
    gateway.app.put(
        "/r/containers/echo/blob",
        b"x" * 1000,
        headers=gateway.auth(),
    )
    download = gateway.relay("echo/bytes/5000")
    assert len(download.body) == 5000
    assert sample(registry, "invoke_relay_request_bytes_total", route="catch_all") == 1000
    received = sample(registry, "invoke_relay_response_bytes_total", route="catch_all")
    assert received > 5000  # the echo of the upload, plus the download


def test_the_in_flight_gauge_counts_a_running_relay_and_returns_to_zero(
    make_gateway: Callable[..., World],
) -> None:
    seen: list[float] = []
    registry_box: list[CollectorRegistry] = []

    def probe(event: RelayStarted) -> None:
        seen.append(sample(registry_box[0], "invoke_relays_in_flight", route=event.route))

    gateway, registry = metered(make_gateway, before=[probe])
    registry_box.append(registry)
    gateway.relay("echo/one")
    gateway.invoke("echo", {"method": "GET", "path": "/two"})
    assert seen == [1.0, 1.0]
    assert sample(registry, "invoke_relays_in_flight", route="catch_all") == 0
    assert sample(registry, "invoke_relays_in_flight", route="invoke") == 0


def test_metric_labels_never_name_a_team_slug_user_or_path(
    make_gateway: Callable[..., World],
) -> None:
    gateway, registry = metered(make_gateway)
    gateway.relay("echo/unique-path-3b9e")
    allowed = {"route", "service_type", "status_class", "error_code", "le"}
    values: set[str] = set()
    for metric in registry.collect():
        for each in metric.samples:
            assert set(each.labels) <= allowed
            values.update(each.labels.values())
    assert not any(("echo" in v or "3b9e" in v or str(TEAM) in v) for v in values)


def test_the_namespace_prefixes_every_metric() -> None:
    registry = CollectorRegistry()
    RelayMetrics(registry, namespace="gateway")
    names = {metric.name for metric in registry.collect()}
    assert names
    assert all(name.startswith("gateway_") for name in names)


def test_importing_metrics_without_prometheus_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "invoke_middleware.metrics")
    with pytest.raises(ImportError, match=r"invoke_middleware\[metrics\]"):
        importlib.import_module("invoke_middleware.metrics")


# -- hooks that fail ---------------------------------------------------------------------------


def test_a_raising_hook_breaks_neither_the_relay_nor_the_hooks_after_it(
    make_gateway: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    def boom(event: object) -> None:
        raise RuntimeError("hook failure")

    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    gateway = make_gateway(
        before_relay=[boom, metrics.before_relay],
        after_relay=[boom, RelayLogger(logging.getLogger(LOGGER)), metrics.after_relay],
    )
    caplog.set_level(logging.INFO)
    res = gateway.relay("echo/still-works")
    assert res.status_int == 200
    assert json.loads(res.body)["target"] == "/still-works"
    assert len(relay_records(caplog)) == 1
    labels = {"route": "catch_all", "service_type": "deployed", "status_class": "2xx"}
    assert sample(registry, "invoke_relays_total", error_code="", **labels) == 1
    assert sample(registry, "invoke_relays_in_flight", route="catch_all") == 0
    failures = [r for r in caplog.records if r.name == "invoke_middleware.hooks"]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


def test_team_ids_are_logged_as_uuids(caplog: pytest.LogCaptureFixture) -> None:
    team = uuid.uuid4()
    caplog.set_level(logging.INFO, logger=LOGGER)
    principal = Principal(kind=CredentialKind.DEVICE, team_id=team, user_id="alice@example.com")
    RelayLogger(logging.getLogger(LOGGER))(_event(principal=principal))
    fields = parse_line(relay_records(caplog)[0].getMessage())
    assert (fields["team"], fields["user"]) == (str(team), "alice@example.com")
