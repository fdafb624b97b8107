"""ANY /r/containers/{slug}/{tail}: the catch-all relay (docs/contract.md §4), through WebTest
against a real loopback upstream. Streaming, timing and large bodies are in tests/integration/."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
from collections.abc import Callable
from urllib.parse import quote

import pytest
from werkzeug.test import Client

from invoke_middleware import PipelineSettings
from tests.toolkit.servers import serve_waitress
from tests.toolkit.upstream import repeating_bytes
from tests.toolkit.world import World


@pytest.mark.parametrize(
    ("url", "target"),
    [
        pytest.param("/r/containers/echo/", "/", id="root"),
        pytest.param("/r/containers/echo/a/b", "/a/b", id="nested"),
        pytest.param("/r/containers/echo/a?x=1&y=%2F", "/a?x=1&y=%2F", id="raw-query"),
        pytest.param("/r/containers/echo/a%20b", "/a%20b", id="encoded-space"),
        pytest.param("/r/containers/echo/invoke", "/invoke", id="container-invoke"),
        pytest.param("/r/containers/based/v1", "/base/v1", id="base-path"),
    ],
)
def test_path_and_query_reach_the_container_unchanged(world: World, url: str, target: str) -> None:
    res = world.app.get(url, headers=world.auth())
    assert res.status_int == 200
    assert world.upstream.last().target == target


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods_are_forwarded(world: World, method: str) -> None:
    res = world.app.request(
        "/r/containers/echo/m", method=method, headers=world.auth(), body=b"data"
    )
    assert json.loads(res.body)["method"] == method
    # A body is relayed as sent whatever the method, a GET's included.
    assert world.upstream.last().body == b"data"


def test_caller_credentials_and_team_are_not_forwarded(world: World) -> None:
    world.app.get(
        "/r/containers/echo/x",
        headers={
            **world.auth(),
            "X-Team-ID": "019abc12-4567-7890-abcd-ef1234567891",
            "Proxy-Authorization": "Basic eA==",
            "Proxy-Foo": "1",
            "X-App": "kept",
            "Cookie": "c=1",
        },
    )
    received = world.upstream.last()
    names = received.header_names()
    assert {"authorization", "x-team-id", "proxy-authorization", "proxy-foo"}.isdisjoint(names)
    assert received.header("X-App") == "kept"
    assert received.header("Cookie") == "c=1"


def test_status_headers_and_body_come_back_unchanged(world: World) -> None:
    res = world.app.get("/r/containers/echo/status/418", headers=world.auth(), status=418)
    assert res.body == b'{"status":true}'
    assert "X-Invoke-Error" not in res.headers


def test_a_relayed_answer_varies_by_the_callers_credentials(world: World) -> None:
    # One URL is another service for each team that has the slug: a shared cache keeping a
    # container's "public" answer by URL alone handed it to the other team.
    res = world.relay("echo/fields?Cache-Control=public%2C%20max-age%3D300&Vary=Accept")
    assert res.headers.getall("Vary") == ["Accept", "Authorization, X-Team-ID"]
    assert res.headers["Cache-Control"] == "public, max-age=300"


def test_binary_download_is_byte_exact(world: World) -> None:
    res = world.app.get("/r/containers/echo/bytes/300000", headers=world.auth())
    assert res.body == repeating_bytes(300000)
    assert res.headers["Content-Length"] == "300000"


def test_binary_upload_is_byte_exact(world: World) -> None:
    payload = bytes(range(256)) * 4096
    world.app.post("/r/containers/echo/up", payload, headers=world.auth())
    assert world.upstream.last().body == payload


@pytest.mark.parametrize(
    ("size", "from_file"),
    [
        pytest.param(100 * 1024, False, id="in-memory"),
        pytest.param(3 * 1024 * 1024 + 7, True, id="spooled-to-a-file"),
    ],
)
def test_a_body_waitress_spooled_to_a_file_goes_upstream_from_it_byte_exact(
    world: World, monkeypatch: pytest.MonkeyPatch, size: int, from_file: bool
) -> None:
    # waitress reads a body whole before calling the app, into a temporary file past 512 KiB:
    # the transport sends it from there (os.sendfile), not through Python's memory.
    sent_from_files: list[int] = []
    sendfile = os.sendfile

    def counted(out: int, fd: int, offset: int, count: int) -> int:
        sent = sendfile(out, fd, offset, count)
        sent_from_files.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counted)
    payload = random.Random(size).randbytes(size)

    with serve_waitress(world.host) as url:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=20)
        try:
            connection.request("POST", "/r/containers/echo/up", payload, world.auth())
            status = connection.getresponse().status
        finally:
            connection.close()

    assert status == 200
    assert world.upstream.last().body == payload
    assert world.finished[-1].bytes_in == size
    assert sum(sent_from_files) == (size if from_file else 0)


def test_gzip_passes_untouched(world: World) -> None:
    # WebTest decodes gzip responses itself, so this one goes through werkzeug's client.
    res = Client(world.host).get("/r/containers/echo/gzip", headers=world.auth())
    assert res.headers["Content-Encoding"] == "gzip"
    assert res.headers["Content-Length"] == str(len(res.data))
    assert gzip.decompress(res.data) == b"compressed payload " * 20
    res.close()


def test_redirect_is_returned_not_followed(world: World) -> None:
    res = world.app.get("/r/containers/echo/redirect", headers=world.auth(), status=302)
    assert res.headers["Location"] == "/elsewhere"
    assert len(world.upstream.received) == 1


def test_head_keeps_the_length_and_sends_no_body(world: World) -> None:
    res = world.app.head("/r/containers/echo/bytes/1234", headers=world.auth())
    assert res.headers["Content-Length"] == "1234"
    assert res.body == b""


def test_hop_by_hop_fields_and_fake_markers_are_dropped(world: World) -> None:
    res = world.app.get("/r/containers/echo/hop", headers=world.auth())
    assert res.headers["X-Kept"] == "yes"
    for name in ("X-Private", "Keep-Alive", "X-Invoke-Error"):
        assert name not in res.headers
    assert res.headers["X-Request-ID"]


_ORIGIN_WIDE = {
    "NEL": '{"report_to":"team-a","max_age":31536000,"success_fraction":1.0}',
    "Report-To": '{"group":"team-a","max_age":31536000,"endpoints":[{"url":"https://a.test/r"}]}',
    "Service-Worker-Allowed": "/",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Alt-Svc": 'h3=":443"; ma=86400',
    "Accept-CH": "Sec-CH-UA-Model",
    "Critical-CH": "Sec-CH-UA-Model",
    "Set-Login": "logged-in",
}


@pytest.mark.parametrize("sandbox_pages", [False, True])
def test_fields_a_browser_applies_to_the_whole_origin_are_not_relayed(
    make_world: Callable[..., World], sandbox_pages: bool
) -> None:
    # The origin is every team's and the host's: one container must not set for all of them
    # where the browser reports their URLs, which worker serves them, or how they are reached.
    world = make_world(settings=PipelineSettings(sandbox_pages=sandbox_pages))
    query = "&".join(f"{name}={quote(value)}" for name, value in _ORIGIN_WIDE.items())
    relayed = world.relay(f"echo/fields?{query}&X-Kept=yes")
    assert relayed.headers["X-Kept"] == "yes"
    assert [name for name in _ORIGIN_WIDE if name in relayed.headers] == []
    # The invoke route hands them over as data, which no browser applies.
    envelope = world.invoke("echo", {"method": "GET", "path": f"/fields?{query}"}).json
    assert envelope["headers"]["nel"] == _ORIGIN_WIDE["NEL"]


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
def test_trace_and_connect_are_405(world: World, method: str) -> None:
    # WebTest's lint refuses CONNECT itself, so this goes through werkzeug's client.
    res = Client(world.host).open("/r/containers/echo/x", method=method, headers=world.auth())
    assert res.status_code == 405
    assert res.json is not None
    assert res.json["code"] == "method_not_allowed"
    res.close()
    assert world.upstream.received == []


def test_websocket_upgrade_is_501(world: World) -> None:
    res = world.app.get(
        "/r/containers/echo/ws",
        headers={**world.auth(), "Connection": "Upgrade", "Upgrade": "websocket"},
        status=501,
    )
    assert res.json["code"] == "upgrade_not_supported"
    assert world.upstream.received == []


def test_content_length_over_the_cap_is_413_before_anything_is_sent(
    make_world: Callable[..., World],
) -> None:
    world = make_world(settings=PipelineSettings(max_relay_body_bytes=100))
    res = world.app.post("/r/containers/echo/up", b"x" * 101, headers=world.auth(), status=413)
    assert res.json["code"] == "payload_too_large"
    assert world.upstream.received == []
    world.app.post("/r/containers/echo/up", b"x" * 100, headers=world.auth())
    assert world.upstream.last().body == b"x" * 100


def test_a_request_that_already_passed_the_gateway_is_a_loop(world: World) -> None:
    res = world.app.get(
        "/r/containers/echo/x",
        headers={**world.auth(), "Via": "1.1 proxy-a, 1.1 invoke-middleware"},
        status=508,
    )
    assert res.json["code"] == "loop_detected"
    assert world.upstream.received == []


def test_via_of_other_proxies_is_extended(world: World) -> None:
    world.app.get("/r/containers/echo/x", headers={**world.auth(), "Via": "1.1 proxy-a"})
    via = world.upstream.last().header("Via") or ""
    assert via.startswith("1.1 proxy-a")
    assert via.endswith("invoke-middleware")
