"""Every line the gateway logs is one line without control characters, whatever a caller sent.

Hostile values (CR, LF, NUL, ESC, DEL, C1 controls, U+2028 and U+2029) go into messages,
arguments, exceptions and relay events on each of the package's loggers; each record, formatted
the way a plain-text handler formats it, must stay one line (a traceback, when there is one,
follows its message as exactly one more line).
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import invoke_middleware
from invoke_middleware import PipelineRequest, Principal, RelayFinished, RelayStarted, logging_hook
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.hooks import call_hooks
from invoke_middleware.limits import LimitEvent, LimitKind, LimitOutcome
from invoke_middleware.logging_hook import (
    GATEWAY_LOGGERS,
    ControlCharacterFilter,
    RelayLogger,
    escape_control,
)
from tests.toolkit.world import TEAM, World, make_service

#: Every character a log reader may take as a line end or a terminal command.
CONTROLS = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]))
HOSTILE = "/a\r\nrelay status=200 forged\x00\x1b[2J\x7f\x85\u2028\u2029\x1c-end"
_ANY_CONTROL = re.compile(f"[{re.escape(CONTROLS)}]")
FORMATTER = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def assert_safe(record: logging.LogRecord) -> None:
    """``record``, formatted, is one line (two with a traceback or a stack) of no control
    characters but the formatter's own line breaks."""
    lines = FORMATTER.format(record).split("\n")
    extra = int(bool(record.exc_info)) + int(bool(record.stack_info))
    assert len(lines) == 1 + extra, lines
    for line in lines:
        assert _ANY_CONTROL.search(line) is None, line
        assert len(line.splitlines()) == 1, line


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        pytest.param("/plain path é ✓", "/plain path é ✓", id="printable-kept"),
        pytest.param("a\\nb", "a\\nb", id="backslash-kept"),
        pytest.param("a\r\nb", "a\\r\\nb", id="crlf"),
        pytest.param("\t", "\\t", id="tab"),
        pytest.param("\x00", "\\u0000", id="nul"),
        pytest.param("\x1b[31m", "\\u001b[31m", id="esc"),
        pytest.param("\x7f", "\\u007f", id="del"),
        pytest.param("\x85\x9f", "\\u0085\\u009f", id="c1"),
        pytest.param("\u2028\u2029", "\\u2028\\u2029", id="line-and-paragraph-separators"),
    ],
)
def test_escape_control_writes_control_characters_as_json_escapes(text: str, escaped: str) -> None:
    assert escape_control(text) == escaped


def test_escape_control_escapes_every_control_character_and_nothing_else() -> None:
    for code in range(0x3000):
        char = chr(code)
        if char in CONTROLS:
            assert _ANY_CONTROL.search(escape_control(char)) is None
            assert json.loads(f'"{escape_control(char)}"') == char
        else:
            assert escape_control(char) == char


def test_text_without_control_characters_is_returned_as_is() -> None:
    text = "relay request_id=r1 path=/x"
    assert escape_control(text) is text


EMITTERS: list[tuple[str, Callable[[logging.Logger], None]]] = [
    ("percent-s-argument", lambda log: log.warning("value %s", HOSTILE)),
    ("percent-r-argument", lambda log: log.warning("value %r", HOSTILE)),
    ("preformatted-message", lambda log: log.warning("value " + HOSTILE)),
    ("object-argument", lambda log: log.warning("error: %s", ValueError(HOSTILE))),
    ("exception-message", lambda log: log.warning("failed", exc_info=ValueError(HOSTILE))),
    ("stack", lambda log: log.warning("here %s", HOSTILE, stack_info=True)),
]


@pytest.mark.parametrize("name", GATEWAY_LOGGERS)
@pytest.mark.parametrize("emit", [pytest.param(emit, id=emit_id) for emit_id, emit in EMITTERS])
def test_every_gateway_logger_writes_hostile_values_on_one_line(
    name: str, emit: Callable[[logging.Logger], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=name)
    emit(logging.getLogger(name))
    [record] = caplog.records
    assert_safe(record)
    # Escaped, not dropped: the value can still be read back.
    assert "forged" in record.getMessage() or "forged" in (record.exc_text or "")


def test_an_exception_logged_the_usual_way_is_escaped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="invoke_middleware")
    try:
        raise KeyError(HOSTILE)
    except KeyError:
        logging.getLogger("invoke_middleware").exception("unexpected failure")
    [record] = caplog.records
    assert_safe(record)
    assert FORMATTER.format(record).split("\n")[1].startswith("Traceback (most recent call")


def test_ordinary_records_keep_their_format_and_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Handlers that group records by their format string (error trackers) keep working.
    caplog.set_level(logging.WARNING, logger="invoke_middleware")
    logging.getLogger("invoke_middleware").warning("relay aborted mid-stream: %s", "timeout")
    [record] = caplog.records
    assert (record.msg, record.args) == ("relay aborted mid-stream: %s", ("timeout",))


def test_every_logger_of_the_package_is_protected() -> None:
    # Each logging.getLogger("...") of the package's source is listed, and has the filter.
    root = Path(invoke_middleware.__file__).parent
    names = set()
    for source in root.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.add(node.args[0].value)
    assert names
    assert names <= set(GATEWAY_LOGGERS)
    for name in GATEWAY_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, ControlCharacterFilter) for f in filters) == 1


def _event(path: str) -> RelayFinished:
    started = RelayStarted(
        request_id="r1",
        route="catch_all",
        principal=Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, user_id=HOSTILE),
        service=make_service("echo", "http://127.0.0.1:9"),
        method="GET",
        path=path,
    )
    return RelayFinished(started=started, status=200, bytes_in=0, bytes_out=0, duration=0.001)


def test_relay_logger_on_any_logger_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    # A logger of the host's own, without the package's filter: RelayLogger escapes by itself.
    logger = logging.getLogger("tests.log_escaping.host")
    caplog.set_level(logging.INFO, logger=logger.name)
    RelayLogger(logger)(_event(HOSTILE))
    [record] = caplog.records
    assert_safe(record)
    line = record.getMessage()
    path = re.search(r' path=("(?:[^"\\]|\\.)*")', line)
    assert path is not None
    assert json.loads(path.group(1)) == HOSTILE
    # The attributes a structured handler reads are escaped the same way.
    attributes: Any = record
    assert attributes.path == escape_control(HOSTILE)
    assert attributes.user == escape_control(HOSTILE)


def test_a_failing_hook_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def hook(event: RelayFinished) -> None:
        raise RuntimeError(f"cannot handle {event.started.path}")

    caplog.set_level(logging.ERROR, logger="invoke_middleware.hooks")
    call_hooks([hook], _event(HOSTILE))
    [record] = caplog.records
    assert_safe(record)


def test_a_gateway_failure_caused_by_a_header_is_logged_on_one_line(
    make_world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    # A resolver with a bug that puts the caller's header in its exception message.
    def resolver(request: PipelineRequest) -> Principal | None:
        raise RuntimeError(f"bad header {request.headers.get('X-Thing')}")

    world = make_world(resolvers=[resolver])
    caplog.set_level(logging.DEBUG)
    hostile = "v\x1b[2J\x7f\x85\u2028 forged line"
    response = world.app.get(
        "/r/containers/echo/x", headers={"X-Thing": hostile}, expect_errors=True
    )
    assert response.status_int == 500
    records = [r for r in caplog.records if r.name.startswith("invoke_middleware")]
    assert records
    for record in records:
        assert_safe(record)
    assert any("forged line" in (r.exc_text or "") for r in records)


# -- the line of fields: told whole when every value is bare, one by one otherwise ------------

#: Characters of bare values, and the ones that make a value quoted (space, quote, backslash,
#: "=", controls, non-ASCII).
_FIELD_CHARACTERS = "aZ09._~/:@+,-" + ' "\\=\n\x00\u2028é'


@given(
    values=st.lists(
        st.one_of(st.none(), st.integers(-5, 10**6), st.text(_FIELD_CHARACTERS, max_size=6)),
        min_size=7,
        max_size=7,
    )
)
def test_a_limit_line_is_written_field_by_field_whatever_its_values(
    values: list[object],
) -> None:
    # on_limit's seven fields, set directly: the line must be what writing each value on its
    # own gives, and the record's attributes the values with their controls escaped.
    names = ["request_id", "route", "team", "user", "slug", "limit", "outcome"]
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("tests.log_escaping.fields")
    logger.setLevel(logging.INFO)
    logger.propagate = False

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logger.addHandler(handler)
    try:
        RelayLogger(logger)._log("limit %s", dict(zip(names, values, strict=True)))
    finally:
        logger.removeHandler(handler)
    [record] = records
    pairs = zip(names, values, strict=True)
    expected = " ".join(f"{name}={_one_value(value)}" for name, value in pairs)
    assert record.getMessage() == f"limit {expected}"
    for name, value in zip(names, values, strict=True):
        shown = escape_control(value) if isinstance(value, str) else value
        assert record.__dict__[name] == shown


def _one_value(value: object) -> str:
    """A value as the line writes it: bare when it is made of path characters only."""
    text = "-" if value is None else str(value)
    if re.fullmatch(r"[A-Za-z0-9._~/:@+,-]+", text):
        return text
    return escape_control(json.dumps(text, ensure_ascii=False))


def test_an_access_record_names_the_hook_as_its_origin(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.log_escaping.origin")
    caplog.set_level(logging.INFO, logger=logger.name)
    RelayLogger(logger)(_event("/plain"))
    [record] = caplog.records
    assert record.pathname == logging_hook.__file__
    assert record.funcName == "RelayLogger"
    assert record.module == "logging_hook"


def test_a_hostile_user_in_a_limit_record_is_escaped_in_its_attributes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.log_escaping.limit")
    caplog.set_level(logging.INFO, logger=logger.name)
    event = LimitEvent(
        request_id="r2",
        route="catch_all",
        principal=Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, user_id=HOSTILE),
        service=make_service("echo", "http://127.0.0.1:9"),
        outcome=LimitOutcome.REFUSED,
        limit=LimitKind.TEAM_IN_FLIGHT,
    )
    RelayLogger(logger).on_limit(event)
    [record] = caplog.records
    assert_safe(record)
    attributes: Any = record
    assert attributes.user == escape_control(HOSTILE)
    assert attributes.limit == "team_in_flight"
