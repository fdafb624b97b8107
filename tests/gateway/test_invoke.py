"""POST /r/invoke/{slug}: the structured envelope (docs/contract.md §3), through a Flask host and
WebTest against a real loopback upstream."""

from __future__ import annotations

import base64
import gc
import gzip
import io
import json
import tracemalloc
import weakref
from collections.abc import Callable

import pytest

from invoke_middleware import (
    ERROR_MARKER_HEADER,
    PipelineSettings,
    UpstreamRequest,
    UpstreamResponse,
)
from invoke_middleware.request import PipelineRequest
from invoke_middleware.testing import MockTransport, make_response
from tests.toolkit.upstream import repeating_bytes
from tests.toolkit.world import World


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def test_success_wraps_the_container_answer(world: World) -> None:
    res = world.invoke(
        "echo",
        {
            "method": "POST",
            "path": "/api/generate?stream=true",
            "body_base64": b64(b'{"x":1}'),
            "headers": {"Content-Type": "application/json"},
        },
    )
    assert res.status_int == 200
    assert res.content_type == "application/json"
    assert set(res.json) == {"status_code", "headers", "body_base64"}
    assert res.json["status_code"] == 200
    received = world.upstream.last()
    assert received.method == "POST"
    assert received.target == "/api/generate?stream=true"
    assert received.body == b'{"x":1}'
    assert received.header("Content-Type") == "application/json"
    assert res.headers["X-Request-ID"]


def test_binary_body_round_trips_byte_exact(world: World) -> None:
    payload = bytes(range(256)) * 8
    res = world.invoke("echo", {"method": "PUT", "path": "/blob", "body_base64": b64(payload)})
    assert world.upstream.last().body == payload
    echoed = json.loads(unb64(res.json["body_base64"]))
    assert unb64(echoed["body_base64"]) == payload


def test_binary_response_comes_back_byte_exact(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/bytes/70000"})
    assert unb64(res.json["body_base64"]) == repeating_bytes(70000)


def test_container_error_status_is_still_an_outer_200(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/status/500"})
    assert res.status_int == 200
    assert res.json["status_code"] == 500
    assert ERROR_MARKER_HEADER not in res.headers


def test_two_set_cookie_fields_are_kept_apart(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/cookies"})
    assert res.json["headers"]["set-cookie"] == ["a=1; Path=/", "b=2"]


def test_gzip_body_passes_untouched_with_its_encoding(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/gzip"})
    assert res.json["headers"]["content-encoding"] == "gzip"
    assert gzip.decompress(unb64(res.json["body_base64"])) == b"compressed payload " * 20


def test_redirect_is_returned_not_followed(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/redirect"})
    assert res.json["status_code"] == 302
    assert res.json["headers"]["location"] == "/elsewhere"
    assert [r.target for r in world.upstream.received] == ["/redirect"]


def test_head_returns_an_empty_body(world: World) -> None:
    res = world.invoke("echo", {"method": "HEAD", "path": "/bytes/100"})
    assert res.json["status_code"] == 200
    assert res.json["body_base64"] == ""
    assert world.upstream.last().method == "HEAD"


def test_empty_body_is_an_empty_string(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/cookies"})
    assert res.json["body_base64"] == ""


def test_envelope_headers_are_forwarded_with_authorization(world: World) -> None:
    world.invoke(
        "echo",
        {
            "method": "GET",
            "path": "/",
            "headers": {
                "Authorization": "Bearer container-token",
                "X-Custom": ["one", "two"],
                "Connection": "close",
                "Transfer-Encoding": "chunked",
                "Host": "evil.example",
            },
        },
    )
    received = world.upstream.last()
    assert received.header("Authorization") == "Bearer container-token"
    assert [v for k, v in received.headers if k.lower() == "x-custom"] in (
        ["one", "two"],
        ["one, two"],
    )
    assert received.header("Host") == world.upstream.url.removeprefix("http://")
    assert received.header("Transfer-Encoding") is None


def test_outer_request_headers_are_never_forwarded(world: World) -> None:
    world.invoke(
        "echo",
        {"method": "GET", "path": "/"},
        headers={
            "X-Team-ID": "019abc12-4567-7890-abcd-ef1234567891",
            "Cookie": "session=host",
            "X-Outer": "1",
        },
    )
    received = world.upstream.last()
    assert received.header("Authorization") is None
    assert received.header("Cookie") is None
    assert received.header("X-Team-ID") is None
    assert received.header("X-Outer") is None


def test_gateway_adds_no_accept_encoding_or_user_agent(world: World) -> None:
    world.invoke(
        "echo",
        {"method": "GET", "path": "/"},
        headers={"User-Agent": "outer/1", "Accept-Encoding": "gzip"},
    )
    names = world.upstream.last().header_names()
    assert "accept-encoding" not in names
    assert "user-agent" not in names


def test_forwarding_headers_are_regenerated(world: World) -> None:
    world.invoke(
        "echo",
        {
            "method": "GET",
            "path": "/",
            "headers": {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil"},
        },
        extra_environ={"REMOTE_ADDR": "10.1.2.3"},
    )
    received = world.upstream.last()
    assert received.header("X-Forwarded-For") == "10.1.2.3"
    assert received.header("X-Forwarded-Proto") == "http"
    assert received.header("X-Forwarded-Host") == "localhost:80"
    assert "invoke-middleware" in (received.header("Via") or "")


def test_request_id_is_kept_when_safe_and_replaced_when_not(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/"}, headers={"X-Request-ID": "abc-123"})
    assert res.headers["X-Request-ID"] == "abc-123"
    assert world.upstream.last().header("X-Request-ID") == "abc-123"
    res = world.invoke("echo", {"method": "GET", "path": "/"}, headers={"X-Request-ID": "x" * 500})
    assert res.headers["X-Request-ID"] != "x" * 500
    assert world.upstream.last().header("X-Request-ID") == res.headers["X-Request-ID"]


def test_hop_by_hop_and_fake_markers_are_dropped_from_the_answer(world: World) -> None:
    res = world.invoke("echo", {"method": "GET", "path": "/hop"})
    headers = res.json["headers"]
    assert headers["x-kept"] == "yes"
    for name in ("connection", "x-private", "keep-alive", "x-invoke-error", "content-length"):
        assert name not in headers


def test_base_path_of_the_service_is_prefixed(world: World) -> None:
    world.invoke("based", {"method": "GET", "path": "/v1/x?q=1"})
    assert world.upstream.last().target == "/base/v1/x?q=1"


def test_response_over_the_cap_is_a_502_not_a_truncated_body(
    make_world: Callable[..., World],
) -> None:
    world = make_world(settings=PipelineSettings(max_response_body_bytes=1000))
    res = world.invoke("echo", {"method": "GET", "path": "/bytes/1001"}, status=502)
    assert res.json["code"] == "response_too_large"
    assert res.headers[ERROR_MARKER_HEADER] == "response_too_large"
    ok = world.invoke("echo", {"method": "GET", "path": "/bytes/1000"})
    assert len(unb64(ok.json["body_base64"])) == 1000


def test_a_body_trickled_in_tiny_pieces_costs_memory_in_proportion_to_its_size(
    make_world: Callable[..., World],
) -> None:
    """An upstream that sends its body a few bytes per segment hands the buffer one small
    piece per receive; kept in a list, each piece held some 40 bytes of object besides its
    own (a 512 KiB body of 2-byte pieces: 23 MB, 45 times the body)."""
    size = 512 * 1024

    def trickled(_request: UpstreamRequest) -> UpstreamResponse:
        return make_response(200, chunks=(b"ab" for _ in range(size // 2)))

    world = make_world(transport=MockTransport(trickled))
    tracemalloc.start()
    try:
        res = world.invoke("echo", {"method": "GET", "path": "/trickle"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert unb64(res.json["body_base64"]) == b"ab" * (size // 2)
    # The body, its base64 and the envelope's text, and WebTest's copy: some 5 times.
    assert peak < 8 * size + (1 << 20), peak


def test_a_buffered_answer_holds_its_base64_once(make_world: Callable[..., World]) -> None:
    # The body, then its base64 sent on in a piece of its own: no JSON text of the whole
    # answer and no bytes of that text besides (a 10 MiB body cost 50 MiB to answer).
    size = 4 * 1024 * 1024
    payload = repeating_bytes(size)

    def large(_request: UpstreamRequest) -> UpstreamResponse:
        return make_response(200, headers=[("Content-Length", str(size))], body=payload)

    world = make_world(transport=MockTransport(large))
    raw = json.dumps({"method": "GET", "path": "/large"}).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/r/invoke/echo",
        "SERVER_NAME": "gateway",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(raw),
        "CONTENT_LENGTH": str(len(raw)),
        "CONTENT_TYPE": "application/json",
        "HTTP_AUTHORIZATION": world.auth()["Authorization"],
    }
    sent = 0
    tracemalloc.start()
    try:
        answer = world.middleware(environ, lambda status, headers, exc_info=None: None)
        for piece in answer:  # as a server writes them, none kept
            sent += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0 < sent - len(base64.b64encode(payload)) < 200  # the base64 and a few members
    assert peak < 3.5 * size, peak  # it was 5 times


def test_decoded_body_over_the_limit_is_413(make_world: Callable[..., World]) -> None:
    world = make_world(settings=PipelineSettings(max_invoke_body_bytes=10))
    res = world.invoke(
        "echo", {"method": "POST", "path": "/", "body_base64": b64(b"x" * 11)}, status=413
    )
    assert res.json["code"] == "payload_too_large"
    assert world.upstream.received == []


def test_content_length_over_the_envelope_limit_is_413_before_reading(
    make_world: Callable[..., World],
) -> None:
    world = make_world(settings=PipelineSettings(max_invoke_body_bytes=10))
    big = {"method": "POST", "path": "/", "body_base64": b64(b"x" * 300_000)}
    res = world.invoke("echo", big, status=413)
    assert res.json["code"] == "payload_too_large"
    assert world.upstream.received == []


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("", id="missing"),
    ],
)
def test_non_json_body_is_415(world: World, content_type: str) -> None:
    res = world.app.post(
        "/r/invoke/echo",
        b'{"method":"GET","path":"/"}',
        headers={**world.auth(), "Content-Type": content_type},
        status=415,
    )
    assert res.json["code"] == "unsupported_media_type"
    assert world.upstream.received == []


@pytest.mark.parametrize("coding", ["gzip", " GZIP ", "identity, gzip"])
def test_a_body_with_a_content_coding_is_415(world: World, coding: str) -> None:
    # Not undone: a gzip envelope would be read as bytes that are not JSON (400), a plain one
    # labelled gzip as if it were not.
    res = world.app.post(
        "/r/invoke/echo",
        gzip.compress(b'{"method":"GET","path":"/"}'),
        headers={**world.auth(), "Content-Type": "application/json", "Content-Encoding": coding},
        status=415,
    )
    assert res.json["code"] == "unsupported_media_type"
    assert res.headers["Accept-Encoding"] == "identity"
    assert world.upstream.received == []
    # Said to be what it is, the body is read.
    identity = {**world.auth(), "Content-Encoding": "identity"}
    assert world.invoke("echo", {"method": "GET", "path": "/"}, headers=identity).status_int == 200


def test_json_with_charset_is_accepted(world: World) -> None:
    res = world.app.post(
        "/r/invoke/echo",
        b'{"method":"GET","path":"/"}',
        headers={**world.auth(), "Content-Type": "application/json; charset=utf-8"},
    )
    assert res.json["status_code"] == 200


def test_every_schema_violation_is_listed_with_its_pointer(world: World) -> None:
    res = world.invoke(
        "echo",
        {
            "method": "get",
            "path": "//evil",
            "extra": 1,
            "headers": {"Bad Name": "v", "X-Ok": "a\r\nb"},
        },
        status=400,
    )
    assert res.json["code"] == "invalid_request"
    pointers = {d["pointer"] for d in res.json["details"]}
    assert {"/method", "/path"} <= pointers
    assert any(p.startswith("/headers") for p in pointers)
    assert len(pointers) >= 4
    assert world.upstream.received == []


def test_bad_base64_is_400(world: World) -> None:
    res = world.invoke(
        "echo", {"method": "POST", "path": "/", "body_base64": "not base64!"}, status=400
    )
    assert res.json["code"] == "invalid_request"
    assert world.upstream.received == []


def test_get_on_the_invoke_route_is_405(world: World) -> None:
    res = world.app.get("/r/invoke/echo", headers=world.auth(), status=405)
    assert res.json["code"] == "method_not_allowed"
    assert res.headers["Allow"] == "POST"


def test_a_container_serving_invoke_is_reachable_through_the_catch_all(world: World) -> None:
    res = world.app.post("/r/containers/echo/invoke", b"raw", headers=world.auth())
    assert res.json["target"] == "/invoke"
    assert world.upstream.last().body == b"raw"


def test_header_values_beyond_latin1_are_400(world: World) -> None:
    res = world.invoke(
        "echo",
        {"method": "GET", "path": "/", "headers": {"X-A": "snow ☃", "X-B": ["ok", "日本"]}},
        status=400,
    )
    pointers = {d["pointer"] for d in res.json["details"]}
    assert pointers == {"/headers/X-A", "/headers/X-B/1"}
    assert world.upstream.received == []


def test_latin1_header_values_are_sent_as_octets(world: World) -> None:
    world.invoke("echo", {"method": "GET", "path": "/", "headers": {"X-A": "caf\u00e9"}})
    assert world.upstream.last().header("X-A") == "caf\u00e9"


def test_a_request_is_not_kept_once_answered(world: World) -> None:
    # A check of the request's fields was cached on the request, body and all: every
    # invoke stayed in memory, up to 4,096 of them.
    seen: list[weakref.ref[PipelineRequest]] = []
    pipeline = world.middleware.pipeline
    handle = pipeline.handle

    def recording(request: PipelineRequest, *args: object, **kwargs: object) -> object:
        seen.append(weakref.ref(request))
        return handle(request, *args, **kwargs)  # type: ignore[arg-type]

    pipeline.handle = recording  # type: ignore[method-assign]
    try:
        assert world.invoke("echo", {"method": "GET", "path": "/"}).status_int == 200
    finally:
        del pipeline.handle
    gc.collect()
    assert seen
    assert all(ref() is None for ref in seen)
