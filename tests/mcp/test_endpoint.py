"""The MCP endpoint through the real middleware: transport, both eras, JSON-RPC discipline."""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from invoke_middleware import PipelineSettings
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.envelope import load_schema
from invoke_middleware.mcp._json import _STRING, encode_utf8, nesting_exceeds
from invoke_middleware.mcp.endpoint import MAX_BATCH_MESSAGES, MAX_MESSAGE_DEPTH
from tests.mcp.conftest import (
    STATELESS,
    Agent,
    StatelessAgent,
    renderer_without_marker,
    stateless_meta,
    tool_calls,
)
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.world import World

INIT = {"capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
#: A notification no server can accept: MCP's params are always an object.
UNACCEPTABLE = {"jsonrpc": "2.0", "method": "notifications/initialized", "params": []}
#: The origin whose pages :func:`page_world` lets call the endpoint.
PAGE_ORIGIN = "https://app.example"


def error_code(response: Any) -> int:
    return int(response.json["error"]["code"])


def page_world(make_world: Callable[..., World], **options: Any) -> World:
    """A world whose MCP endpoint lets pages of :data:`PAGE_ORIGIN` call it."""
    settings = PipelineSettings(mcp_allowed_origins=(PAGE_ORIGIN,))
    return make_world(settings=settings, **options)


def field_names(value: str) -> set[str]:
    """The field names a CORS field lists, in lower case."""
    return {name.strip().lower() for name in value.split(",")}


# -- transport ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "delete"])
def test_get_and_delete_are_405_with_allow_post(world: World, method: str) -> None:
    response = getattr(world.app, method)("/r/mcp", headers=world.auth(), status=405)
    assert response.headers["Allow"] == "POST"
    assert response.headers["X-Request-ID"]


def test_initialize_mints_no_session(agent: Agent) -> None:
    response = agent.request("initialize", {"protocolVersion": "2025-11-25", **INIT})
    assert "Mcp-Session-Id" not in response.headers
    assert response.content_type == "application/json"


def test_a_notification_is_202_with_no_body(agent: Agent) -> None:
    response = agent.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, status=202)
    assert response.body == b""
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize("version", ["2025-11-25", STATELESS])
def test_a_notification_the_server_cannot_accept_is_400_and_answered_by_no_response(
    world: World, version: str
) -> None:
    refused = Agent(world, version=version).post(UNACCEPTABLE, status=400)
    assert error_code(refused) == -32602
    assert refused.json["id"] is None  # no id to echo: null, as JSON-RPC 2.0 says


def test_a_batch_answers_no_notification(world: World) -> None:
    agent = Agent(world)  # no header: 2025-03-26
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert agent.post([UNACCEPTABLE, ping]).json == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    # Notifications only: one the server cannot accept is refused as it is alone.
    refused = agent.post([UNACCEPTABLE], status=400)
    assert error_code(refused) == -32602
    assert refused.json["id"] is None  # no id to echo: null, as JSON-RPC 2.0 says
    # A notification named initialize is not the initialize request: accepted, unanswered.
    accepted = agent.post([{"jsonrpc": "2.0", "method": "initialize"}], status=202)
    assert accepted.body == b""
    initialize = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", **INIT},
    }
    (refusal,) = agent.post([initialize]).json
    assert refusal["id"] == 2
    assert refusal["error"]["code"] == -32600


def test_a_client_response_is_202_in_the_handshake_era_and_400_in_the_stateless_one(
    agent: Agent, modern: StatelessAgent
) -> None:
    message = {"jsonrpc": "2.0", "id": 7, "result": {}}
    agent.post(message, status=202)
    refused = modern.post(message, status=400, **{"MCP-Protocol-Version": STATELESS})
    assert error_code(refused) == -32600


def test_an_event_stream_only_client_gets_one_sse_event(agent: Agent) -> None:
    response = agent.request("ping", Accept="text/event-stream")
    assert response.content_type == "text/event-stream"
    event = response.text
    assert event.startswith("event: message\ndata: ")
    assert event.endswith("\n\n")
    assert json.loads(event.split("data: ", 1)[1])["result"] == {}


def test_a_client_accepting_neither_json_nor_sse_is_406(agent: Agent) -> None:
    agent.request("ping", Accept="text/html", status=406)


def test_a_body_that_is_not_json_typed_is_415(world: World) -> None:
    world.app.post("/r/mcp", "{}", headers=world.auth(), content_type="text/plain", status=415)


def test_a_body_with_a_content_coding_is_415(agent: Agent) -> None:
    refused = agent.post_raw(b"{}", status=415, **{"Content-Encoding": "gzip"})
    assert refused.headers["Accept-Encoding"] == "identity"


def test_an_origin_not_on_the_allow_list_is_403(agent: Agent) -> None:
    response = agent.request("ping", Origin="http://evil.example", status=403)
    assert response.headers["X-Request-ID"]


def test_an_allowed_origin_is_served(make_world: Any) -> None:
    settings = PipelineSettings(mcp_allowed_origins=("https://app.example",))
    agent = Agent(make_world(settings=settings), version="2025-11-25")
    agent.request("ping", Origin="https://APP.example")
    agent.request("ping", Origin="https://other.example", status=403)


def test_a_preflight_from_an_allowed_origin_is_answered_without_credentials(
    make_world: Callable[..., World],
) -> None:
    world = page_world(make_world)
    # What a 2026-07-28 client's page asks to send, a user token's team among it.
    requested = "authorization, content-type, mcp-protocol-version, mcp-method, mcp-name, x-team-id"
    preflight = {
        "Origin": PAGE_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": requested,
    }
    response = world.app.options("/r/mcp", headers=preflight, status=204)
    assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    allowed = field_names(response.headers["Access-Control-Allow-Headers"])
    assert field_names(requested) | {"accept", "x-request-id"} <= allowed
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert response.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Content-Length" not in response.headers
    assert response.body == b""
    assert world.started == []
    assert world.upstream.received == []


@pytest.mark.parametrize(
    ("headers", "status", "granted"),
    [
        pytest.param(
            {"Origin": "https://other.example", "Access-Control-Request-Method": "POST"},
            403,
            None,
            id="another-origin",
        ),
        pytest.param({"Access-Control-Request-Method": "POST"}, 405, None, id="no-origin"),
        pytest.param({"Origin": PAGE_ORIGIN}, 405, PAGE_ORIGIN, id="not-a-preflight"),
    ],
)
def test_any_other_options_request_keeps_its_refusal(
    make_world: Callable[..., World], headers: dict[str, str], status: int, granted: str | None
) -> None:
    response = page_world(make_world).app.options("/r/mcp", headers=headers, status=status)
    assert_gateway_error(response, status, "forbidden" if status == 403 else "method_not_allowed")
    assert response.headers.get("Access-Control-Allow-Origin") == granted


@pytest.mark.parametrize(
    "renderer",
    [pytest.param(None, id="the-gateway-s"), pytest.param(renderer_without_marker, id="a-host-s")],
)
def test_every_answer_to_an_allowed_origin_lets_the_page_read_it(
    make_world: Callable[..., World], renderer: Any
) -> None:
    world = page_world(make_world, **({} if renderer is None else {"error_renderer": renderer}))
    page = Agent(world, version="2025-11-25", headers={"Origin": PAGE_ORIGIN})
    arguments = {"service_slug": "echo", "method": "GET", "path": "/"}
    answers = [
        page.request("ping"),
        page.call("call_container_service", arguments),
        page.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, status=202),
        page.request("ping", status=400, **{"MCP-Protocol-Version": "2099-01-01"}),
        page.request("ping", Authorization="", status=401),
        page.request("ping", Accept="text/html", status=406),
    ]
    for response in answers:
        assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        assert response.headers["Vary"] == "Origin"
        exposed = field_names(response.headers["Access-Control-Expose-Headers"])
        assert {"x-request-id", "x-invoke-error", "retry-after", "www-authenticate"} <= exposed
        assert "Access-Control-Allow-Credentials" not in response.headers
    # A caller that is no page gets none of it.
    plain = Agent(world, version="2025-11-25").request("ping")
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_a_page_reads_its_431_and_500_too(make_world: Callable[..., World]) -> None:
    def failing(request: object) -> None:
        raise RuntimeError("a host resolver's bug")

    settings = PipelineSettings(mcp_allowed_origins=(PAGE_ORIGIN,), max_header_count=20)
    world = make_world(settings=settings)
    page = Agent(world, version="2025-11-25", headers={"Origin": PAGE_ORIGIN})
    padding = {f"X-Pad-{index}": "x" for index in range(30)}
    too_many = page.request("ping", status=431, **padding)
    preflight = world.app.options(
        "/r/mcp",
        headers={"Origin": PAGE_ORIGIN, "Access-Control-Request-Method": "POST", **padding},
        status=431,
    )
    broken = Agent(
        make_world(settings=settings, resolvers=[failing]),
        version="2025-11-25",
        headers={"Origin": PAGE_ORIGIN},
    ).request("ping", status=500)
    for response in (too_many, preflight, broken):
        assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        assert response.headers["X-Invoke-Error"]
    assert broken.headers["X-Invoke-Error"] == "internal_error"


# -- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "owner", "ak"], ids=["missing", "device", "agent"])
def test_only_integration_keys_are_admitted_by_default(world: World, key: str | None) -> None:
    agent = Agent(world, version="2025-11-25")
    if key is None:
        agent.headers["Authorization"] = ""
    else:
        agent.key = key
    response = agent.request("tools/list", status=401)
    # No OAuth server: a bare challenge, no resource_metadata to discover.
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["X-Request-ID"]


def test_a_setting_admits_device_keys_with_their_role(make_world: Any) -> None:
    kinds = frozenset({CredentialKind.INTEGRATION, CredentialKind.DEVICE})
    world = make_world(settings=PipelineSettings(mcp_credential_kinds=kinds))
    member = Agent(world, key="member", version="2025-11-25")
    assert not member.call("list_container_services", {}).json["result"]["isError"]
    viewer = Agent(world, key="viewer", version="2025-11-25")
    # A Viewer may list but not invoke: the pipeline's policy, reported as a tool error.
    called = viewer.call(
        "call_container_service", {"service_slug": "echo", "method": "GET", "path": "/"}
    )
    assert called.json["result"]["isError"]
    assert "forbidden" in called.json["result"]["content"][0]["text"]


# -- handshake era ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "answered"),
    [
        ("2024-11-05", "2024-11-05"),
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2026-07-28", "2025-11-25"),
        ("1999-01-01", "2025-11-25"),
    ],
)
def test_initialize_echoes_a_supported_version_else_the_latest(
    world: World, requested: str, answered: str
) -> None:
    response = Agent(world).request("initialize", {"protocolVersion": requested, **INIT})
    result = response.json["result"]
    assert result["protocolVersion"] == answered
    assert result["capabilities"] == {"tools": {}}
    assert result["serverInfo"]["name"] == "invoke-middleware"
    assert "resultType" not in result


def test_an_unsupported_protocol_version_header_is_400_with_the_supported_list(
    agent: Agent,
) -> None:
    response = agent.request("tools/list", status=400, **{"MCP-Protocol-Version": "2099-01-01"})
    error = response.json["error"]
    assert error["code"] == -32022
    assert error["data"]["requested"] == "2099-01-01"
    assert "2025-11-25" in error["data"]["supported"]
    assert STATELESS in error["data"]["supported"]
    # Judged before anything the message holds.
    malformed = {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": []}
    refused = agent.post(malformed, status=400, **{"MCP-Protocol-Version": "2099-01-01"})
    assert error_code(refused) == -32022
    assert refused.json["id"] == 9


def test_tool_fields_follow_the_revision(world: World) -> None:
    def tools(version: str) -> dict[str, Any]:
        listed = Agent(world, version=version).request("tools/list").json["result"]["tools"]
        return {tool["name"]: tool for tool in listed}

    old = tools("2024-11-05")["call_container_service"]
    assert set(old) == {"name", "description", "inputSchema"}
    assert "title" not in tools("2025-03-26")["call_container_service"]
    assert tools("2025-03-26")["call_container_service"]["annotations"]["openWorldHint"]
    new = tools("2025-06-18")
    assert new["list_container_services"]["annotations"]["readOnlyHint"] is True
    assert new["call_container_service"]["annotations"]["readOnlyHint"] is False
    assert new["call_container_service"]["outputSchema"] == load_schema(
        "invoke-response.schema.json"
    )


def test_the_call_input_schema_is_the_invoke_schema_plus_the_slug(agent: Agent) -> None:
    listed = agent.request("tools/list").json["result"]["tools"]
    schema = next(t for t in listed if t["name"] == "call_container_service")["inputSchema"]
    invoke = load_schema("invoke-request.schema.json")
    assert schema["required"] == ["service_slug", *invoke["required"]]
    assert {k: v for k, v in schema["properties"].items() if k != "service_slug"} == invoke[
        "properties"
    ]
    assert schema["$defs"] == invoke["$defs"]
    assert schema["additionalProperties"] is False


def test_structured_content_appears_from_2025_06_18(world: World) -> None:
    old = Agent(world, version="2025-03-26").call("list_container_services", {})
    assert "structuredContent" not in old.json["result"]
    new = Agent(world, version="2025-06-18").call("list_container_services", {})
    assert new.json["result"]["structuredContent"]["services"]


def test_a_batch_is_answered_in_2025_03_26_only(world: World) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
    ]
    answers = Agent(world).post(batch).json  # no header: 2025-03-26
    assert [a["id"] for a in answers] == [1, 2]
    assert answers[0]["result"] == {}
    assert answers[1]["error"]["code"] == -32601
    refused = Agent(world, version="2025-06-18").post(batch, status=400)
    assert error_code(refused) == -32600


# -- JSON-RPC discipline ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b"{nope", -32700, id="not-json"),
        pytest.param(b'{"a": 1, "a": 2}', -32700, id="repeated-member"),
        pytest.param(b"\xff", -32700, id="not-utf8"),
        pytest.param(b"[" * 100_000, -32700, id="deep"),
        pytest.param(b'"text"', -32600, id="not-an-object"),
        pytest.param(b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600, id="version"),
        pytest.param(b'{"jsonrpc": "2.0", "id": null, "method": "ping"}', -32600, id="null-id"),
        pytest.param(b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', -32600, id="float-id"),
        pytest.param(b'{"jsonrpc": "2.0", "id": 1}', -32600, id="no-method"),
    ],
)
def test_malformed_messages_are_400_with_their_code(world: World, body: bytes, code: int) -> None:
    for version in ("2025-11-25", STATELESS):
        response = world.app.post(
            "/r/mcp",
            body,
            headers={**world.auth(), "MCP-Protocol-Version": version},
            content_type="application/json",
            status=400,
        )
        assert error_code(response) == code
        assert "Traceback" not in response.text
        assert response.headers["X-Request-ID"]


def nested_call(arrays: int, *, stateless: bool = False) -> bytes:
    """A ``call_container_service`` message whose header value nests ``arrays`` arrays, as
    text: the message nests four levels more (itself, params, arguments, headers)."""
    meta = json.dumps(stateless_meta())[1:-1] + "," if stateless else ""
    return (
        '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{' + meta + '"name":'
        '"call_container_service","arguments":{"service_slug":"echo","method":"GET",'
        '"path":"/","headers":{"x":' + "[" * arrays + "]" * arrays + "}}}}"
    ).encode()


@pytest.mark.parametrize(
    "depth",
    [
        pytest.param(MAX_MESSAGE_DEPTH + 1, id="one-past-the-limit"),
        pytest.param(987, id="near-the-parser-s-limit"),
    ],
)
def test_a_message_nested_past_the_limit_is_a_parse_error_in_both_eras(
    agent: Agent, depth: int
) -> None:
    refusals = [
        agent.post_raw(nested_call(depth - 4), status=400),
        agent.post_raw(
            nested_call(depth - 4, stateless=True),
            status=400,
            **{
                "MCP-Protocol-Version": STATELESS,
                "Mcp-Method": "tools/call",
                "Mcp-Name": "call_container_service",
            },
        ),
    ]
    for response in refusals:
        assert error_code(response) == -32700
        assert f"{MAX_MESSAGE_DEPTH} deep" in response.json["error"]["message"]
    assert agent.world.upstream.received == []


def test_a_message_at_the_depth_limit_is_answered_alone_and_in_a_batch(world: World) -> None:
    message = nested_call(MAX_MESSAGE_DEPTH - 4)
    # An array is no header value: the invoke schema's refusal, not a parse error.
    alone = Agent(world, version="2025-11-25").post_raw(message).json["result"]
    assert json.loads(alone["content"][1]["text"])["code"] == "invalid_arguments"
    # The batch's own array does not count against its messages.
    (answer,) = Agent(world).post_raw(b"[" + message + b"]").json  # no header: 2025-03-26
    assert answer["error"]["code"] == -32602


def test_brackets_inside_strings_are_no_nesting(agent: Agent) -> None:
    brackets = "[{" * 200 + '\\"' + "]}" * 10
    arguments = {"service_slug": "echo", "method": "GET", "path": "/", "headers": {"X": brackets}}
    result = agent.call("call_container_service", arguments).json["result"]
    assert result["isError"] is False
    assert agent.world.upstream.received[-1].header("X") == brackets


def test_a_string_left_open_is_read_once_to_the_end_of_the_text(agent: Agent) -> None:
    # Before a message is parsed its strings are cut out to measure its nesting. A string
    # that never closes is read to the end once; were it not taken as a string, the search
    # would start again after its quote, and ``"\"\"\"…`` cost the square of its length.
    opened = b'"' + b'\\"' * 100_000
    match = _STRING.match(opened)
    assert match is not None
    assert match.end() == len(opened)
    assert not nesting_exceeds(b"[" * (MAX_MESSAGE_DEPTH + 1) + opened, MAX_MESSAGE_DEPTH)
    # Through the endpoint: not JSON, whatever its size.
    response = agent.post_raw(b"[" * (MAX_MESSAGE_DEPTH + 1) + opened, status=400)
    assert error_code(response) == -32700
    assert agent.world.upstream.received == []


def test_unknown_methods_and_tools_have_each_era_s_status(
    agent: Agent, modern: StatelessAgent
) -> None:
    assert error_code(agent.request("resources/list")) == -32601  # 200
    assert error_code(modern.request("resources/list", status=404)) == -32601
    assert error_code(agent.call("no_such_tool", {})) == -32602
    assert error_code(modern.call("no_such_tool", {}, status=400)) == -32602


def test_ping_exists_in_the_handshake_era_only(agent: Agent, modern: StatelessAgent) -> None:
    assert agent.request("ping").json["result"] == {}
    modern.request("ping", status=404)
    modern.request("initialize", {"protocolVersion": "2025-11-25", **INIT}, status=404)


def test_an_internal_failure_is_an_internal_error_without_a_traceback(
    agent: Agent, modern: StatelessAgent, world: World
) -> None:
    def broken(team_id: Any) -> list[Any]:
        raise RuntimeError("registry down: secret detail")

    world.registry.list = broken  # type: ignore[method-assign]
    for response in (
        agent.call("list_container_services", {}),
        modern.call("list_container_services", {}, status=500),
    ):
        assert error_code(response) == -32603
        assert "secret detail" not in response.text


# -- stateless era ---------------------------------------------------------------------


def test_server_discover_lists_versions_and_caching_hints(modern: StatelessAgent) -> None:
    result = modern.request("server/discover").json["result"]
    assert result["resultType"] == "complete"
    assert result["supportedVersions"][-1] == STATELESS
    assert result["capabilities"] == {"tools": {}}
    assert result["ttlMs"] > 0
    assert result["cacheScope"] == "public"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "invoke-middleware"


def test_stateless_results_carry_result_type_and_private_list_hints(
    modern: StatelessAgent,
) -> None:
    listed = modern.request("tools/list").json["result"]
    assert listed["resultType"] == "complete"
    assert listed["cacheScope"] == "private"
    assert listed["ttlMs"] >= 0
    called = modern.call("list_container_services", {}).json["result"]
    assert called["resultType"] == "complete"


def test_missing_request_meta_is_invalid_params(modern: StatelessAgent) -> None:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = modern.post(
        message, status=400, **{"MCP-Protocol-Version": STATELESS, "Mcp-Method": "tools/list"}
    )
    assert error_code(response) == -32602


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Mcp-Method": "tools/list"}, id="method-mismatch"),
        pytest.param({"Mcp-Name": "get_container_service"}, id="name-mismatch"),
        pytest.param({"Mcp-Name": "=?base64?!!!?="}, id="bad-sentinel"),
    ],
)
def test_mirrored_header_mismatches_are_400_header_mismatch(
    modern: StatelessAgent, headers: dict[str, str]
) -> None:
    response = modern.call("list_container_services", {}, headers=headers, status=400)
    assert error_code(response) == -32020


def test_a_missing_mirrored_header_is_a_header_mismatch(world: World) -> None:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {"_meta": stateless_meta()},
    }
    response = Agent(world, version=STATELESS).post(message, status=400)
    assert error_code(response) == -32020
    headerless = Agent(world).post(message, status=400)
    assert error_code(headerless) == -32020


def test_a_meta_version_that_differs_from_the_header_is_a_mismatch(world: World) -> None:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {"_meta": stateless_meta("2025-11-25")},
    }
    response = Agent(world, version=STATELESS).post(
        message, status=400, **{"Mcp-Method": "tools/list"}
    )
    assert error_code(response) == -32020


def test_a_base64_encoded_name_header_is_decoded(modern: StatelessAgent) -> None:
    encoded = "=?base64?" + base64.b64encode(b"list_container_services").decode() + "?="
    response = modern.call("list_container_services", {}, headers={"Mcp-Name": encoded})
    assert response.json["result"]["isError"] is False


def test_the_settings_table_configures_origins_and_credential_kinds() -> None:
    from invoke_middleware.config import ConfigError, parse_flask_config, parse_settings

    config = parse_settings(
        {
            "invoke.mcp_allowed_origins": "https://App.example, http://localhost:3000",
            "invoke.mcp_credential_kinds": "sk dk",
        }
    )
    assert config.settings.mcp_allowed_origins == ("https://app.example", "http://localhost:3000")
    assert config.settings.mcp_credential_kinds == {
        CredentialKind.INTEGRATION,
        CredentialKind.DEVICE,
    }
    flask = parse_flask_config({"INVOKE_MCP_CREDENTIAL_KINDS": ["jwt"]})
    assert flask.settings.mcp_credential_kinds == {CredentialKind.JWT}
    for key, bad in [
        ("invoke.mcp_allowed_origins", "https://app.example/"),
        ("invoke.mcp_allowed_origins", "app.example"),
        ("invoke.mcp_credential_kinds", "ak"),
    ]:
        with pytest.raises(ConfigError, match=key):
            parse_settings({key: bad})


def test_a_batch_longer_than_the_cap_is_refused_whole(world: World) -> None:
    arguments = {"service_slug": "echo", "method": "GET", "path": "/"}
    batch = tool_calls("call_container_service", arguments, MAX_BATCH_MESSAGES + 1)
    refused = Agent(world).post(batch, status=400)  # no header: 2025-03-26
    assert error_code(refused) == -32600
    assert world.upstream.received == []
    answered = Agent(world).post(batch[:MAX_BATCH_MESSAGES]).json
    assert len(answered) == MAX_BATCH_MESSAGES
    assert len(world.upstream.received) == MAX_BATCH_MESSAGES


def test_the_tool_results_of_a_batch_carry_at_most_one_invoke_s_response_cap(
    make_world: Any,
) -> None:
    limit = 64 * 1024
    world = make_world(settings=PipelineSettings(max_response_body_bytes=limit))
    arguments = {"service_slug": "echo", "method": "GET", "path": f"/bytes/{40 * 1024}"}
    batch = tool_calls("call_container_service", arguments, MAX_BATCH_MESSAGES)
    response = Agent(world).post(batch)  # no header: 2025-03-26
    results = [answer["result"] for answer in response.json]
    assert results[0]["isError"] is False
    refusals = [json.loads(result["content"][1]["text"]) for result in results[1:]]
    assert {refusal["code"] for refusal in refusals} == {"response_too_large"}
    # The second call was made and its answer took the batch past the cap; no call after it
    # reached the service.
    assert "The service answered" in refusals[0]["error_message"]
    assert all("the call was not made" in refusal["error_message"] for refusal in refusals[1:])
    assert len(world.upstream.received) == 2
    # Sixteen answers of 40 KiB came to 16 times the base64 of each (874 KB).
    assert len(response.body) < 2 * limit


def test_a_call_refused_as_too_large_spends_the_batch_s_response_cap(make_world: Any) -> None:
    limit = 64 * 1024
    world = make_world(settings=PipelineSettings(max_response_body_bytes=limit))
    arguments = {"service_slug": "echo", "method": "GET", "path": f"/bytes/{limit + 1}"}
    batch = tool_calls("call_container_service", arguments, MAX_BATCH_MESSAGES)
    answers = Agent(world).post(batch).json  # no header: 2025-03-26
    refusals = [json.loads(answer["result"]["content"][1]["text"]) for answer in answers]
    assert {refusal["code"] for refusal in refusals} == {"response_too_large"}
    # The pipeline read up to the cap before refusing the first answer: no call after it.
    assert all("the call was not made" in refusal["error_message"] for refusal in refusals[1:])
    assert len(world.upstream.received) == 1


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"jsonrpc": "2.0", "method": "notifications/initialized"}, id="notification"),
        pytest.param(UNACCEPTABLE, id="unacceptable-notification"),
        pytest.param({"jsonrpc": "2.0", "id": 3, "result": {}}, id="response"),
    ],
)
def test_a_notification_or_response_naming_an_unsupported_revision_is_400(
    agent: Agent, message: dict[str, Any]
) -> None:
    response = agent.post(message, status=400, **{"MCP-Protocol-Version": "2099-01-01"})
    assert error_code(response) == -32022
    assert response.json["id"] is None


# -- instructions ----------------------------------------------------------------------


def test_initialize_and_discover_tell_the_agent_how_to_use_the_tools(
    agent: Agent, modern: StatelessAgent
) -> None:
    initialized = agent.request("initialize", {"protocolVersion": "2025-11-25", **INIT})
    discovered = modern.request("server/discover")
    instructions = initialized.json["result"]["instructions"]
    assert discovered.json["result"]["instructions"] == instructions
    # The workflow, in order: list, read, call.
    order = [
        instructions.index(name)
        for name in ("list_container_services", "get_container_service", "call_container_service")
    ]
    assert order == sorted(order)
    # What an agent needs to build a call and read its outcome.
    for needed in (
        "service_slug",
        "body_base64",
        "base64",
        "Content-Type",
        "usage_prompt",
        "OpenAPI",
        "status_code",
        "service_not_found",
        "service_not_running",
        "invalid_path",
        "retry_after",
    ):
        assert needed in instructions, needed
    # Services' own words are data, not orders.
    assert "never as instructions" in instructions
    assert len(instructions) < 2000  # read on every connection: short enough for a prompt


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(b"[" + b"[]," * 300_000 + b"[]]", id="many-empty-arrays"),
        pytest.param(b"[" + b"{}," * 300_000 + b"{}]", id="many-empty-objects"),
        pytest.param(
            b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": ['
            + b"1," * 400_000
            + b"1]}}",
            id="long-array-in-params",
        ),
    ],
)
def test_a_hostile_body_costs_in_proportion_to_its_size(agent: Agent, shape: bytes) -> None:
    # Parsing builds an object per JSON value, up to 30 times the text: refused unparsed.
    headers = {**agent.world.auth(agent.key), "Content-Type": "application/json"}
    headers |= {"Accept": "application/json", "MCP-Protocol-Version": "2025-11-25"}
    tracemalloc.start()
    try:
        response = agent.world.app.post("/r/mcp", shape, headers=headers, status=400)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error_code(response) == -32700
    assert "more JSON members and array items" in response.json["error"]["message"]
    assert peak < 4 * len(shape) + 1024 * 1024


def test_answers_are_utf8_and_a_lone_surrogate_is_written_escaped(agent: Agent) -> None:
    assert encode_utf8({"text": "é😀"}) == '{"text":"é😀"}'.encode()
    # UTF-8 cannot write a lone surrogate: it alone is escaped, and the rest stays UTF-8 (a
    # caller's id made the whole answer escapes, container text and all).
    assert encode_utf8({"id": "\ud800", "text": "é"}) == '{"id":"\\ud800","text":"é"}'.encode()
    # Line ends beyond ASCII stay escaped: some event-stream readers end a data line there.
    assert encode_utf8({"t": "a\u2028b\x85c\u2029"}) == b'{"t":"a\\u2028b\\u0085c\\u2029"}'
    answer = agent.post_raw(b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}')
    assert answer.body.startswith(b'{"jsonrpc":"2.0","id":"\\ud800"')


def test_a_batch_naming_an_unsupported_revision_gets_the_supported_list(world: World) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]
    refused = Agent(world).post(batch, status=400, **{"MCP-Protocol-Version": "2099-01-01"})
    assert error_code(refused) == -32022
    assert "2025-03-26" in refused.json["error"]["data"]["supported"]
