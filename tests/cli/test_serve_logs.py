"""Every line ``serve`` writes is one record: control characters a caller puts in a path
(percent-encoded CR/LF, escape sequences) are written escaped, under both engines."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys

import pytest

from invoke_middleware._server import EscapingFormatter
from tests.cli.conftest import Workspace, running_gateway
from tests.cli.test_server_limits import ENGINES, set_server
from tests.toolkit.upstream import RecordingUpstream

#: asctime [pid] LEVEL logger: message, and nothing else on the line.
_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] [A-Z]+ [\w.]+: [^\x00-\x1f\x7f]*")

FORGED = "x%0d%0a2030-01-01 00:00:00,000 [1] INFO invoke_middleware.access: relay forged=1%1b[2J"


def _raw_get(root: str, target: str, key: str) -> None:
    host, port = root.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        while sock.recv(65536):
            pass


@pytest.mark.parametrize("engine", ENGINES)
def test_every_line_serve_writes_is_one_escaped_record(
    workspace: Workspace, upstream: RecordingUpstream, engine: str
) -> None:
    set_server(workspace, engine=engine)
    workspace.add_service("hello", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        for target in (f"/r/containers/hello/{FORGED}", f"/{FORGED}", f"/healthz?{FORGED}"):
            _raw_get(gateway.url if target.startswith("/r/") else gateway.root, target, key)
        _raw_get(gateway.root, "/r/containers/hello/ok", key)
    lines = gateway.log.read_text().splitlines()
    assert len(lines) >= 3  # serving, at least one relay, stopped
    for line in lines:
        assert _LINE.fullmatch(line), line
    assert not any("forged=1" in line and " relay " in line.split(": ", 1)[0] for line in lines)


def test_the_formatter_keeps_a_traceback_on_its_record_line() -> None:
    try:
        raise ValueError("bad\r\nvalue")
    except ValueError:
        record = logging.LogRecord(
            "t", logging.ERROR, "f", 1, "path %s", ("/a\nb",), sys.exc_info()
        )
    line = EscapingFormatter("%(message)s").format(record)
    assert "\n" not in line
    assert "\r" not in line
    assert line.startswith("path /a\\nb\\nTraceback")
    assert (
        EscapingFormatter("%(message)s").format(logging.makeLogRecord({"msg": "\x1b[2J\u2028"}))
        == "\\u001b[2J\\u2028"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_with_log_format_json_every_line_serve_writes_is_one_json_object(
    workspace: Workspace, upstream: RecordingUpstream, engine: str
) -> None:
    # gunicorn's own lines (starting, booting workers, stopping) included.
    set_server(workspace, engine=engine, workers=1, log_format="json")
    workspace.add_service("hello", upstream.url)
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        _raw_get(gateway.url, f"/r/containers/hello/{FORGED}", key)
        _raw_get(gateway.url, "/r/containers/hello/ok?secret=1", key)
    records = [json.loads(line) for line in gateway.log.read_text().splitlines()]
    relays = [record for record in records if record["message"] == "relay"]
    assert [(r["path"], r["status"]) for r in relays] == [("/ok", 200)]  # the query never
    assert {"time", "level", "logger"} <= set(relays[0])
    assert any("serving on" in record["message"] for record in records)
