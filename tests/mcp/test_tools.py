"""The three tools, answered by the pipeline against the real loopback upstream."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from invoke_middleware import (
    Limiter,
    LimitSettings,
    PipelineSettings,
    Rate,
    ServiceStatus,
)
from invoke_middleware.errors import StoreUnavailableError, UpstreamError
from invoke_middleware.mcp.endpoint import (
    MAX_BATCH_MESSAGES,
    OPENAPI_MAX_BYTES,
    OPENAPI_MAX_DEPTH,
    OpenAPIDocument,
)
from invoke_middleware.request import CLIENT_GONE_KEY
from invoke_middleware.testing import make_response
from invoke_middleware.transport.base import Timeouts, UpstreamRequest, UpstreamResponse
from tests.mcp.conftest import (
    Agent,
    StatelessAgent,
    container_world,
    renderer_without_marker,
    tool_calls,
)
from tests.toolkit.world import World, make_service


def result_of(response: Any) -> dict[str, Any]:
    result: dict[str, Any] = response.json["result"]
    return result


def test_list_shows_only_the_credential_s_team(agent: Agent) -> None:
    services = result_of(agent.call("list_container_services", {}))["structuredContent"]
    slugs = {s["slug"] for s in services["services"]}
    assert "echo" in slugs
    assert "theirs" not in slugs
    other = Agent(agent.world, key="sk-other", version="2025-11-25")
    theirs = result_of(other.call("list_container_services", {}))["structuredContent"]
    assert [s["slug"] for s in theirs["services"]] == ["theirs"]


def test_get_returns_metadata_and_the_openapi_document_fetched_once(world: World) -> None:
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    agent = Agent(world, version="2025-11-25")
    first = result_of(agent.call("get_container_service", {"service_slug": "documented"}))
    second = result_of(agent.call("get_container_service", {"service_slug": "documented"}))
    service = first["structuredContent"]["service"]
    assert service["openapi_url"] == "/openapi.json"
    assert "upstream_url" not in service
    openapi = first["structuredContent"]["openapi"]
    assert openapi["status"] == "included"
    assert openapi["document"]["target"] == "/openapi.json"  # the upstream echoes its request
    assert second["structuredContent"] == first["structuredContent"]
    fetched = [r for r in world.upstream.received if r.target == "/openapi.json"]
    assert len(fetched) == 1  # cached briefly
    assert fetched[0].header("Authorization") is None


def test_an_openapi_failure_is_reported_not_fatal(world: World) -> None:
    world.registry.add(make_service("broken-doc", world.upstream.url, openapi_url="/status/500"))
    world.registry.add(
        make_service(
            "sleeping",
            world.upstream.url,
            openapi_url="/openapi.json",
            status=ServiceStatus.STOPPED,
        )
    )
    agent = Agent(world, version="2025-11-25")
    broken = result_of(agent.call("get_container_service", {"service_slug": "broken-doc"}))
    assert not broken["isError"]
    assert broken["structuredContent"]["openapi"]["status"] == "unavailable"
    assert "500" in broken["structuredContent"]["openapi"]["error"]
    sleeping = result_of(agent.call("get_container_service", {"service_slug": "sleeping"}))
    assert sleeping["structuredContent"]["openapi"] == {"status": "not_running"}
    assert sleeping["structuredContent"]["service"]["service_status"] == "stopped"


def test_call_relays_the_envelope_and_adds_a_utf8_body_as_text(agent: Agent) -> None:
    body = base64.b64encode("héllo".encode()).decode()
    arguments = {
        "service_slug": "echo",
        "method": "PUT",
        "path": "/items/1?x=y",
        "headers": {"Content-Type": "text/plain", "Authorization": "Bearer for-the-container"},
        "body_base64": body,
    }
    result = result_of(agent.call("call_container_service", arguments))
    assert result["isError"] is False
    structured = result["structuredContent"]
    assert structured["status_code"] == 200
    # The body follows as text: the JSON text block does not carry it in base64 again.
    described = {key: value for key, value in structured.items() if key != "body_base64"}
    assert json.loads(result["content"][0]["text"]) == described
    echoed = json.loads(result["content"][1]["text"])
    assert echoed["method"] == "PUT"
    assert echoed["target"] == "/items/1?x=y"
    received = agent.world.upstream.received[-1]
    assert received.body == "héllo".encode()
    assert received.header("Authorization") == "Bearer for-the-container"
    assert received.header("Mcp-Method") is None


def test_a_binary_body_stays_base64_only(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/bytes/300"}
    result = result_of(agent.call("call_container_service", arguments))
    assert len(result["content"]) == 1
    assert len(base64.b64decode(result["structuredContent"]["body_base64"])) == 300
    # A client that reads only the text blocks still gets the bytes.
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]


def test_a_utf8_body_is_carried_once_as_base64_and_once_as_text(
    agent: Agent, modern: StatelessAgent
) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/copies"}
    for client in (agent, modern):
        response = client.call("call_container_service", arguments)
        result = result_of(response)
        encoded = result["structuredContent"]["body_base64"]
        assert response.text.count(encoded) == 1
        assert base64.b64decode(encoded).decode() == result["content"][1]["text"]


@pytest.mark.parametrize(
    ("body", "as_text"),
    [
        pytest.param("\x01" * 100_000, False, id="controls"),
        pytest.param("a\x00" * 50_000, False, id="nul"),
        pytest.param("line\tcell\r\n" * 10_000, True, id="tabs-and-line-ends"),
    ],
)
def test_a_body_of_control_characters_is_not_added_as_text(
    make_world: Callable[..., World], body: str, as_text: bool
) -> None:
    # Escaped in the answer's JSON, each control character took 6 bytes: a 100 KB body came
    # back as 870 KB, and held 17 times its size in memory on the way.
    def answer(request: UpstreamRequest) -> UpstreamResponse:
        return make_response(200, body=body.encode())

    world, _ = container_world(make_world, answer)
    agent = Agent(world, version="2025-11-25")
    arguments = {"service_slug": "echo", "method": "GET", "path": "/text"}
    response = agent.call("call_container_service", arguments)
    result = result_of(response)
    assert base64.b64decode(result["structuredContent"]["body_base64"]) == body.encode()
    assert len(result["content"]) == (2 if as_text else 1)
    if not as_text:
        # The base64 twice, as for any binary body (structured, and in the JSON text block).
        assert len(response.body) < 3 * len(body)


def test_a_container_error_status_is_a_normal_result(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/status/503"}
    result = result_of(agent.call("call_container_service", arguments))
    assert result["isError"] is False
    assert result["structuredContent"]["status_code"] == 503


def test_gateway_refusals_are_tool_errors_naming_the_code(modern: StatelessAgent) -> None:
    cases = {
        "service_not_found": {"service_slug": "theirs", "method": "GET", "path": "/"},
        "service_not_running": {"service_slug": "svc-stopped", "method": "GET", "path": "/"},
        "invalid_path": {"service_slug": "echo", "method": "GET", "path": "/a/../b"},
    }
    for code, arguments in cases.items():
        result = result_of(modern.call("call_container_service", arguments))
        assert result["isError"] is True
        assert result["resultType"] == "complete"
        assert code in result["content"][0]["text"]
        assert json.loads(result["content"][1]["text"])["code"] == code
    assert not [r for r in modern.world.upstream.received if r.target == "/a/../b"]


def test_invalid_arguments_are_protocol_errors_before_2025_11_25_and_tool_errors_after(
    world: World,
) -> None:
    arguments = {"service_slug": "echo", "method": "BREW", "path": "/"}
    old = Agent(world, version="2025-06-18").call("call_container_service", arguments)
    assert old.json["error"]["code"] == -32602
    assert old.json["error"]["data"][0]["pointer"] == "/method"
    new = Agent(world, version="2025-11-25").call("call_container_service", arguments)
    assert new.json["result"]["isError"] is True
    missing = Agent(world, version="2025-11-25").call("get_container_service", {})
    assert missing.json["result"]["isError"] is True


@pytest.mark.parametrize(
    "slug",
    [
        pytest.param("NOT A SLUG", id="not-a-slug"),
        pytest.param("echo\n", id="a-trailing-newline"),
        pytest.param("-echo", id="a-leading-dash"),
        pytest.param("ec", id="too-short"),
    ],
)
@pytest.mark.parametrize(
    ("tool", "rest"),
    [
        pytest.param("get_container_service", {}, id="get"),
        pytest.param("call_container_service", {"method": "GET", "path": "/"}, id="call"),
    ],
)
def test_a_slug_that_breaks_the_input_schema_is_invalid_arguments(
    world: World, tool: str, rest: dict[str, Any], slug: str
) -> None:
    # The tools' input schemas give service_slug the slug pattern: a slug that breaks it is
    # the caller's arguments to fix, not a service the gateway could not find.
    arguments = {"service_slug": slug, **rest}
    old = Agent(world, version="2025-06-18").call(tool, arguments).json["error"]
    assert old["code"] == -32602
    assert old["data"][0]["pointer"] == "/service_slug"
    new = result_of(Agent(world, version="2025-11-25").call(tool, arguments))
    assert new["isError"] is True
    error = json.loads(new["content"][1]["text"])
    assert error["code"] == "invalid_arguments"
    assert error["details"][0]["pointer"] == "/service_slug"
    assert world.started == []
    assert world.upstream.received == []


def test_a_number_too_large_for_a_float_is_invalid_arguments_that_name_it(world: World) -> None:
    # 1e400 parses as an infinity, which no JSON text can carry on to the invoke route.
    message = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
        b'"call_container_service","arguments":{"service_slug":"echo","method":"GET",'
        b'"path":"/","headers":{"x":[1e400]}}}}'
    )
    detail = {"pointer": "/headers/x/0", "message": "is not a finite number"}
    old = Agent(world, version="2025-06-18").post_raw(message).json["error"]
    assert old["code"] == -32602
    assert "finite" in old["message"]
    assert old["data"] == [detail]
    new = result_of(Agent(world, version="2025-11-25").post_raw(message))
    assert new["isError"] is True
    error = json.loads(new["content"][1]["text"])
    assert error["code"] == "invalid_arguments"
    assert error["details"] == [detail]
    assert world.upstream.received == []


def test_refusals_are_read_from_the_error_whatever_the_host_s_renderer_writes(
    make_world: Callable[..., World],
) -> None:
    world = make_world(error_renderer=renderer_without_marker)
    cases = {
        "service_not_found": {"service_slug": "theirs", "method": "GET", "path": "/"},
        "service_not_running": {"service_slug": "svc-stopped", "method": "GET", "path": "/"},
        "invalid_path": {"service_slug": "echo", "method": "GET", "path": "/a/../b"},
    }
    for client in (Agent(world, version="2025-11-25"), StatelessAgent(world)):
        for code, arguments in cases.items():
            result = result_of(client.call("call_container_service", arguments))
            assert result["isError"] is True
            assert json.loads(result["content"][1]["text"])["code"] == code
        brewed = {"service_slug": "echo", "method": "BREW", "path": "/"}
        invalid = json.loads(
            result_of(client.call("call_container_service", brewed))["content"][1]["text"]
        )
        assert invalid["code"] == "invalid_arguments"
        assert invalid["details"][0]["pointer"] == "/method"
    assert world.upstream.received == []
    # The REST routes still answer with the host's renderer.
    rest = world.app.get("/r/containers/theirs", headers=world.auth(), status=404)
    assert rest.json == {"message": "Service not found."}


def test_a_limit_s_retry_after_is_read_from_the_error_whatever_the_renderer(
    make_world: Callable[..., World],
) -> None:
    limiter = Limiter(LimitSettings(credential_rate=Rate(amount=1, window=3600)))
    world = make_world(error_renderer=renderer_without_marker, limiter=limiter)
    agent = Agent(world, version="2025-11-25")
    arguments = {"service_slug": "echo", "method": "GET", "path": "/"}
    assert result_of(agent.call("call_container_service", arguments))["isError"] is False
    refused = json.loads(
        result_of(agent.call("call_container_service", arguments))["content"][1]["text"]
    )
    assert refused["code"] == "rate_limited"
    assert refused["status"] == 429
    assert int(refused["retry_after"]) >= 1


def test_a_store_that_cannot_answer_is_a_tool_error_to_retry(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: object) -> None:
        raise StoreUnavailableError

    monkeypatch.setattr(agent.world.registry, "list", down)
    monkeypatch.setattr(agent.world.registry, "get", down)
    for tool, arguments in [
        ("list_container_services", {}),
        ("get_container_service", {"service_slug": "echo"}),
        ("call_container_service", {"service_slug": "echo", "method": "GET", "path": "/"}),
    ]:
        result = result_of(agent.call(tool, arguments))
        assert result["isError"] is True
        refused = json.loads(result["content"][1]["text"])
        assert (refused["code"], refused["status"], refused["retry_after"]) == (
            "store_unavailable",
            503,
            "1",
        )
    assert agent.world.upstream.received == []


def test_a_message_holds_one_slot_of_its_team_however_many_calls_it_makes(
    make_world: Callable[..., World],
) -> None:
    # The message holds its team's slot from reading its body to writing its answer; its tool
    # calls run on its thread, under their services' caps alone. Taking the team's slot again
    # for each call, a team allowed one request at a time could call nothing.
    limiter = Limiter(LimitSettings(team_max_in_flight=1, service_max_in_flight=1))
    world = make_world(limiter=limiter)
    agent = Agent(world, version="2025-11-25")
    arguments = {"service_slug": "echo", "method": "GET", "path": "/"}
    assert result_of(agent.call("call_container_service", arguments))["isError"] is False
    assert limiter.in_flight == 0  # the answer was written: every slot is back


def test_no_call_is_made_for_a_caller_that_left(world: World) -> None:
    # As the REST routes: a server that can tell (the ASGI adapter) says so in the environ.
    agent = Agent(world, version="2025-11-25", environ={CLIENT_GONE_KEY: lambda: True})
    arguments = {"service_slug": "echo", "method": "POST", "path": "/order"}
    answer = agent.call("call_container_service", arguments, status=503)
    assert answer.body == b""
    assert world.upstream.received == []


def serving(document: bytes, status: int = 200) -> Callable[[UpstreamRequest], UpstreamResponse]:
    """A container that answers every request with ``status`` and ``document`` as JSON."""

    def answer(request: UpstreamRequest) -> UpstreamResponse:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(document)))]
        return make_response(status, headers=headers, body=document)

    return answer


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(nested(OPENAPI_MAX_DEPTH + 1), id="nested-past-the-limit"),
        pytest.param(b'{"openapi": "3.1.0", "x": NaN}', id="nan"),
        pytest.param(b'{"openapi": "3.1.0", "x": 1e400}', id="a-number-too-large"),
    ],
)
def test_an_openapi_document_that_cannot_be_written_back_is_returned_as_text(
    make_world: Callable[..., World], document: bytes
) -> None:
    world, transport = container_world(make_world, serving(document))
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    for client in (Agent(world, version="2025-11-25"), StatelessAgent(world)):
        for _ in range(2):
            result = result_of(client.call("get_container_service", {"service_slug": "documented"}))
            assert result["isError"] is False
            openapi = result["structuredContent"]["openapi"]
            assert openapi == {"status": "included", "text": document.decode()}
    assert len(transport.requests) == 1  # kept, and served from the cache since


def test_get_answers_whatever_the_depth_of_the_openapi_document(
    make_world: Callable[..., World],
) -> None:
    # Up to the parser's own limit: a document the parser takes, nested a few levels short of
    # what the encoder can write from where the result is written, must not fail the call.
    def answer(request: UpstreamRequest) -> UpstreamResponse:
        return serving(nested(int(request.url.rsplit("/", 1)[1])))(request)

    world, _ = container_world(make_world, answer)
    agent = Agent(world, version="2025-11-25")
    limit = sys.getrecursionlimit()
    for depth in range(limit - 400, limit):
        slug = f"deep-{depth}"
        world.registry.add(make_service(slug, world.upstream.url, openapi_url=f"/doc/{depth}"))
        result = result_of(agent.call("get_container_service", {"service_slug": slug}))
        assert result["structuredContent"]["openapi"]["status"] == "included", depth


def test_an_openapi_document_at_the_depth_limit_is_returned_as_json(
    make_world: Callable[..., World],
) -> None:
    world, _ = container_world(make_world, serving(nested(OPENAPI_MAX_DEPTH)))
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    agent = Agent(world, version="2025-11-25")
    result = result_of(agent.call("get_container_service", {"service_slug": "documented"}))
    assert "document" in result["structuredContent"]["openapi"]


def test_the_openapi_documents_of_a_batch_share_its_response_cap(
    make_world: Callable[..., World],
) -> None:
    document = json.dumps({"openapi": "3.1.0", "info": {"title": "x" * 40_000}}).encode()
    world, transport = container_world(
        make_world,
        serving(document),
        settings=PipelineSettings(max_response_body_bytes=64 * 1024),
    )
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    batch = tool_calls("get_container_service", {"service_slug": "documented"}, 3)
    answers = Agent(world).post(batch).json  # no header: 2025-03-26, text blocks only
    openapi = [json.loads(a["result"]["content"][0]["text"])["openapi"] for a in answers]
    assert openapi[0]["status"] == "included"
    for refused in openapi[1:]:
        assert refused["status"] == "unavailable"
        assert "a request of its own" in refused["error"]
    assert len(transport.requests) == 1


@pytest.mark.parametrize(
    ("status", "size", "limit"),
    [
        pytest.param(500, 40 * 1024, 64 * 1024, id="an-error-status"),
        pytest.param(200, OPENAPI_MAX_BYTES + 1, 2 * OPENAPI_MAX_BYTES, id="too-large-to-return"),
    ],
)
def test_failed_openapi_fetches_count_against_the_batch_s_response_cap(
    make_world: Callable[..., World], status: int, size: int, limit: int
) -> None:
    world, transport = container_world(
        make_world,
        serving(b"x" * size, status),
        settings=PipelineSettings(max_response_body_bytes=limit),
    )
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    batch = tool_calls("get_container_service", {"service_slug": "documented"}, MAX_BATCH_MESSAGES)
    answers = Agent(world).post(batch).json  # no header: 2025-03-26, text blocks only
    openapi = [json.loads(a["result"]["content"][0]["text"])["openapi"] for a in answers]
    assert {document["status"] for document in openapi} == {"unavailable"}
    # What the service sent was read, returned or not: the second fetch took the batch past
    # the cap, and no later one was made.
    assert len(transport.requests) == 2
    assert all("a request of its own" in document["error"] for document in openapi[2:])


def test_the_openapi_cache_holds_a_bounded_number_of_bytes(world: World) -> None:
    endpoint = world.middleware.pipeline.mcp
    largest = OpenAPIDocument(utf8=b"{}", is_json=True, size=OPENAPI_MAX_BYTES)
    for n in range(40):
        endpoint.remember_openapi(("key", n), largest)
    kept = [n for n in range(40) if endpoint.cached_openapi(("key", n)) is not None]
    assert kept == list(range(8, 40))


def test_tool_calls_run_the_pipeline_with_the_gateway_s_request_id(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/traced"}
    response = agent.call("call_container_service", arguments)
    request_id = response.headers["X-Request-ID"]
    world = agent.world
    assert world.started[-1].request_id == request_id
    assert world.started[-1].route == "invoke"
    assert world.finished[-1].status == 200
    assert world.upstream.received[-1].header("X-Request-ID") == request_id


def test_a_looping_request_is_refused_by_the_pipeline(agent: Agent) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/loop"}
    response = agent.call("call_container_service", arguments, Via="1.1 invoke-middleware")
    assert "loop_detected" in response.json["result"]["content"][0]["text"]


def test_an_openapi_document_is_charged_at_the_size_it_is_written_back_in(
    make_world: Callable[..., World],
) -> None:
    # "1e15" comes back as 1000000000000000.0: 60 KiB of them were charged 60 KiB, and a
    # batch carried 3.8 times that in each of its answers, from the cache, again and again.
    document = b"[" + b",".join([b"1e15"] * 12_000) + b"]"
    world, transport = container_world(
        make_world,
        serving(document),
        settings=PipelineSettings(max_response_body_bytes=128 * 1024),
    )
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    agent = Agent(world, version="2025-11-25")
    for _ in range(2):  # fetched, then from the cache
        result = result_of(agent.call("get_container_service", {"service_slug": "documented"}))
        openapi = result["structuredContent"]["openapi"]
        assert openapi["status"] == "unavailable"
        assert "a request of its own" in openapi["error"]
    assert len(transport.requests) == 1


def test_a_text_body_beyond_ascii_is_carried_at_its_own_size(
    make_world: Callable[..., World],
) -> None:
    # Escaped, each 4-byte character took 12 bytes: a call came back 4.3 times its body.
    body = "😀".encode() * 50_000
    world, _ = container_world(make_world, serving(body))
    agent = Agent(world, version="2025-11-25")
    answer = agent.call(
        "call_container_service", {"service_slug": "echo", "method": "GET", "path": "/"}
    )
    result = result_of(answer)
    assert result["isError"] is False
    # Twice as text (the content block and the structured result), once as base64.
    assert len(answer.body) < len(body) * (2 + 4 / 3) + 4096


def test_a_caller_that_leaves_while_a_call_waits_for_its_slot_ends_the_request(
    make_world: Callable[..., World], caplog: pytest.LogCaptureFixture
) -> None:
    # Gone between the endpoint's look and the pipeline's: the pipeline's bare 503 was read as
    # the call's JSON, and the request failed as an internal error, with a traceback.
    limiter = Limiter(LimitSettings(service_max_in_flight=1))
    world = make_world(limiter=limiter)
    looks = iter([False])  # here at the endpoint's look; gone from then on
    agent = Agent(world, version="2025-11-25", environ={CLIENT_GONE_KEY: lambda: next(looks, True)})
    arguments = {"service_slug": "echo", "method": "GET", "path": "/"}
    answer = agent.call("call_container_service", arguments, status=503)
    assert answer.body == b""
    assert world.upstream.received == []
    assert "failed" not in caplog.text
    assert limiter.in_flight == 0


# -- what one request's tool calls may read and take, in all ---------------------------


def test_an_openapi_document_of_control_characters_is_not_returned(
    make_world: Callable[..., World],
) -> None:
    # Each would be written as a 6-byte escape, in the result and again in its text block.
    world, _ = container_world(make_world, serving(b"\x01" * 4096))
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    result = result_of(
        Agent(world, version="2025-11-25").call(
            "get_container_service", {"service_slug": "documented"}
        )
    )
    openapi = result["structuredContent"]["openapi"]
    assert openapi["status"] == "unavailable"
    assert "control characters" in openapi["error"]


def test_an_openapi_text_is_charged_at_the_size_it_is_written_in(
    make_world: Callable[..., World],
) -> None:
    # 40 KiB of quotes is not JSON: carried as a JSON string, each is written as two bytes,
    # 80 KiB in all, past the cap of 64 KiB.
    world, transport = container_world(
        make_world,
        serving(b'"' * 40 * 1024),
        settings=PipelineSettings(max_response_body_bytes=64 * 1024),
    )
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    agent = Agent(world, version="2025-11-25")
    result = result_of(agent.call("get_container_service", {"service_slug": "documented"}))
    openapi = result["structuredContent"]["openapi"]
    assert openapi["status"] == "unavailable"
    assert "a request of its own" in openapi["error"]
    assert len(transport.requests) == 1


def test_a_response_cut_off_counts_what_was_read_against_the_batch(
    make_world: Callable[..., World],
) -> None:
    # Each call reads 40 KiB before the body fails: nothing is returned, but what was read
    # is counted. The second call may read only what is left of the cap of 64 KiB, and no
    # call after it is made (16 calls read 16 times 40 KiB).
    def cut_off(request: UpstreamRequest) -> UpstreamResponse:
        return make_response(
            200, chunks=[b"x" * 40 * 1024, UpstreamError("The service's response ended early.")]
        )

    limit = 64 * 1024
    world, transport = container_world(
        make_world, cut_off, settings=PipelineSettings(max_response_body_bytes=limit)
    )
    arguments = {"service_slug": "echo", "method": "GET", "path": "/"}
    answers = Agent(world).post(tool_calls("call_container_service", arguments, 16)).json
    refusals = [json.loads(answer["result"]["content"][1]["text"]) for answer in answers]
    assert [refusal["code"] for refusal in refusals[:2]] == ["upstream_error", "response_too_large"]
    assert "past 65536 bytes of responses in all" in refusals[1]["error_message"]
    assert all("the call was not made" in refusal["error_message"] for refusal in refusals[2:])
    assert len(transport.requests) == 2


def test_the_calls_of_a_batch_share_one_total_timeout(make_world: Callable[..., World]) -> None:
    # Each call takes 0.6 s, the gateway's total timeout is 1 s: the second call is given
    # what is left of it, and none after it is made (16 calls took 9.6 s).
    def slow(request: UpstreamRequest) -> UpstreamResponse:
        time.sleep(0.6)
        return make_response(200, headers=[("Content-Length", "2")], body=b"{}")

    settings = PipelineSettings(timeouts=Timeouts(connect=1, read=1, total=1))
    world, transport = container_world(make_world, slow, settings=settings)
    arguments = {"service_slug": "echo", "method": "GET", "path": "/"}
    started = time.monotonic()
    answers = Agent(world).post(tool_calls("call_container_service", arguments, 16)).json
    took = time.monotonic() - started

    assert len(transport.requests) == 2
    first, second = (request.timeouts.total for request in transport.requests)
    assert first is not None
    assert 0.9 < first <= 1
    assert second is not None
    assert second < 0.5
    refusals = [json.loads(answer["result"]["content"][1]["text"]) for answer in answers[2:]]
    assert {refusal["code"] for refusal in refusals} == {"upstream_timeout"}
    assert all("the call was not made" in refusal["error_message"] for refusal in refusals)
    assert took < 3


def test_an_envelope_the_invoke_route_accepts_is_accepted_as_a_tool_call(
    make_world: Callable[..., World],
) -> None:
    # 300,000 bytes of body and a header of 25,000 "é": within the envelope cap in UTF-8, but
    # not once each "é" is escaped to 6 bytes, as the tool call's envelope was.
    world = make_world(settings=PipelineSettings(max_invoke_body_bytes=300_000))
    envelope = {
        "method": "POST",
        "path": "/anything",
        "body_base64": base64.b64encode(b"x" * 300_000).decode(),
        "headers": {"X-Name": "é" * 25_000, "Content-Type": "text/plain"},
    }
    raw = json.dumps(envelope, ensure_ascii=False).encode()
    assert (
        len(raw)
        <= world.middleware.pipeline.settings.max_envelope_bytes
        < len(json.dumps(envelope).encode())
    )
    result = result_of(
        Agent(world, version="2025-11-25").call(
            "call_container_service", {"service_slug": "echo", **envelope}
        )
    )
    assert result["isError"] is False
    assert world.upstream.last().header("X-Name") == "é" * 25_000


def test_a_request_at_the_field_cap_can_call_a_tool(make_world: Callable[..., World]) -> None:
    # The tool call's request carries the caller's fields and the gateway's request id: the
    # caller's, checked at the endpoint, are not checked again with the gateway's added (a
    # caller that sent no Accept, at the cap, had every call refused 431).
    world = make_world(settings=PipelineSettings(max_header_count=30))
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "call_container_service",
            "arguments": {"service_slug": "echo", "method": "GET", "path": "/"},
        },
    }
    fields = {**world.auth(), "MCP-Protocol-Version": "2025-11-25"}
    sent = len(world.app.post_json("/r/mcp", message, headers=fields).request.headers)
    fields.update({f"X-Filler-{n}": "1" for n in range(30 - sent)})
    response = world.app.post_json("/r/mcp", message, headers=fields)
    assert len(response.request.headers) == 30
    assert "Accept" not in response.request.headers
    assert result_of(response)["isError"] is False
