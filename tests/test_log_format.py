"""The relay log as JSON: real relays through the middleware, every line written parsed.

The gateway's loggers (``invoke_middleware`` and below, the relay log included) write through
one handler with :class:`~invoke_middleware.log_format.JSONFormatter` into a buffer; each test
reads back every line and holds each to the same guarantees as the ``key=value`` line.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from invoke_middleware import CredentialKind, Role
from invoke_middleware.log_format import JSONFormatter
from invoke_middleware.logging_hook import FIELDS, RelayLogger, escape_control
from tests.toolkit.world import TEAM, World, make_service

SECRET_QUERY = "token=query-secret-91c2"


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """What the gateway's loggers write, one JSON object per line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    gateway_logger = logging.getLogger("invoke_middleware")
    level = gateway_logger.level
    gateway_logger.addHandler(handler)
    gateway_logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        gateway_logger.removeHandler(handler)
        gateway_logger.setLevel(level)


@pytest.fixture
def gateway(make_world: Callable[..., World]) -> World:
    """A world whose relays are logged, with ``down``, a service where nothing listens."""
    world = make_world(after_relay=[RelayLogger()])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    world.registry.add(make_service("down", f"http://127.0.0.1:{port}"))
    return world


def every_line(log: io.StringIO) -> list[dict[str, Any]]:
    """Each line written, parsed; the text is ASCII and holds no line break but its ends."""
    text = log.getvalue()
    if not text:
        return []
    assert text.isascii()
    assert "\r" not in text
    assert text.endswith("\n")
    documents = [json.loads(line) for line in text[:-1].split("\n")]
    for document in documents:
        assert isinstance(document, dict)
        assert {"time", "level", "logger", "message"} <= set(document)
    return documents


def relays(log: io.StringIO) -> list[dict[str, Any]]:
    """The relay lines among every line written, checked to carry exactly the relay fields."""
    found = [line for line in every_line(log) if line["logger"] == "invoke_middleware.access"]
    for line in found:
        assert line["message"] == "relay"
        assert list(line) == ["time", "level", "logger", "message", *FIELDS]
    return found


def test_a_relay_is_one_json_line_with_the_relay_fields(gateway: World, log: io.StringIO) -> None:
    res = gateway.relay(f"echo/items/42?{SECRET_QUERY}", headers={"X-Request-ID": "req-1"})

    [line] = relays(log)
    assert line["level"] == "INFO"
    assert line["request_id"] == "req-1"
    assert line["route"] == "catch_all"
    assert line["team"] == str(TEAM)
    assert line["user"] is None
    assert line["slug"] == "echo"
    assert line["method"] == "GET"
    assert line["path"] == "/items/42"
    assert line["status"] == 200
    assert line["bytes_in"] == 0
    assert line["bytes_out"] == len(res.body)
    assert isinstance(line["duration_ms"], float)
    assert line["error"] is None


def test_no_line_carries_the_query_the_key_a_header_or_a_body(
    gateway: World, log: io.StringIO
) -> None:
    gateway.app.post(
        f"/r/containers/echo/upload?{SECRET_QUERY}",
        b"body-secret-3b1d",
        headers={**gateway.auth(), "Cookie": "session=cookie-secret"},
    )
    gateway.invoke("echo", {"method": "GET", "path": f"/x?{SECRET_QUERY}"})

    assert len(relays(log)) == 2
    text = log.getvalue()
    for secret in ("query-secret", "body-secret", "cookie-secret", gateway.keys["sk"]):
        assert secret not in text


def test_an_upstream_failure_is_logged_with_the_gateway_s_code(
    gateway: World, log: io.StringIO
) -> None:
    gateway.relay("down/x", status=502)

    [line] = relays(log)
    assert line["status"] == 502
    assert line["error"] == "upstream_unreachable"
    assert line["slug"] == "down"


def test_refused_requests_write_only_valid_lines(gateway: World, log: io.StringIO) -> None:
    gateway.app.get("/r/containers/echo/x", status=401)
    gateway.relay("theirs/x", status=404)
    gateway.relay("svc-stopped/x", status=409)

    # A refusal starts no relay; whatever else is written is still one object per line.
    assert relays(log) == []


HOSTILE_PATHS = [
    pytest.param("/a\r\nrelay status=200 forged", id="crlf"),
    pytest.param("/a\nb", id="lf"),
    pytest.param("/a\u2028b", id="line-separator"),
    pytest.param('/a"}{"status":200', id="quote-brace"),
    pytest.param("/a\x1b[2Jb\x00", id="escape-and-nul"),
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_hostile_path_is_refused_before_any_relay_line(
    gateway: World, log: io.StringIO, path: str
) -> None:
    res = gateway.invoke("echo", {"method": "GET", "path": path}, expect_errors=True)

    assert res.headers["X-Invoke-Error"] in ("invalid_path", "invalid_request")
    assert relays(log) == []


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_hostile_path_in_a_record_stays_inside_its_field(log: io.StringIO, path: str) -> None:
    fields: dict[str, object] = dict.fromkeys(FIELDS)
    fields["path"] = path
    logging.getLogger("invoke_middleware.access").info("relay", extra=fields)

    [line] = relays(log)
    assert line["path"] == path
    assert line["status"] is None


def test_a_hostile_user_id_stays_inside_its_field(gateway: World, log: io.StringIO) -> None:
    user = 'evil\r\n{"level": "ERROR"}\u2028\x00'
    gateway.memberships.set_role(TEAM, user, Role.MEMBER)
    key = gateway.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id=user).key

    gateway.relay("echo/x", headers={"Authorization": f"Bearer {key}"})

    [line] = relays(log)
    # The relay logger escapes control characters in what it records; JSON keeps that text.
    assert line["user"] == escape_control(user)
    assert line["level"] == "INFO"


def test_a_record_that_kept_a_query_loses_it(log: io.StringIO) -> None:
    fields: dict[str, object] = dict.fromkeys(FIELDS)
    fields["path"] = f"/x?{SECRET_QUERY}"
    logging.getLogger("invoke_middleware.access").info("relay", extra=fields)

    [line] = relays(log)
    assert line["path"] == "/x"


def test_other_records_keep_their_message_and_traceback(log: io.StringIO) -> None:
    logger = logging.getLogger("invoke_middleware.test")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("failed %s", "here")

    [line] = every_line(log)
    assert line["level"] == "ERROR"
    assert line["message"] == "failed here"
    assert "RuntimeError: boom\nsecond line" in line["exc_info"]
