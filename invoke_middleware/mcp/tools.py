"""The MCP endpoint's three tools: their definitions, and how their results are shaped.

The input schema of ``call_container_service`` is the bundled invoke-request JSON Schema with a
``service_slug`` property added, and its output schema is the bundled invoke-response schema:
both are read from the package at import (:func:`invoke_middleware.envelope.load_schema`), so
the tool and ``POST /r/invoke/{slug}`` cannot drift apart. The slug rule comes from the bundled
service schema, the service list from the service-list schema.

Each revision of the protocol knows a subset of a tool's fields (``annotations`` since
2025-03-26, ``title`` and ``outputSchema`` since 2025-06-18) and of a result's
(``structuredContent`` since 2025-06-18): :func:`tool_definitions` and :func:`tool_result` give
each revision only what it defines. :func:`call_result` puts a container's body into a result
once in each form an agent reads (base64 for exact bytes, text when it is UTF-8), never more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from invoke_middleware.envelope import load_schema
from invoke_middleware.mcp.protocol import at_least

LIST_TOOL: Final = "list_container_services"
GET_TOOL: Final = "get_container_service"
CALL_TOOL: Final = "call_container_service"

_SERVICE_SCHEMA: Final = load_schema("service.schema.json")
_SLUG_SCHEMA: Final = {
    **_SERVICE_SCHEMA["properties"]["slug"],
    "description": "The service's slug, as list_container_services returns it.",
}


def _service_schema() -> dict[str, Any]:
    # Inlined, never referenced by URI: clients must not dereference network $refs.
    schema = load_schema("service.schema.json")
    schema.pop("$schema", None)
    schema.pop("$id", None)
    return schema


def _list_output_schema() -> dict[str, Any]:
    schema = load_schema("service-list.schema.json")
    schema.pop("$id", None)
    schema["properties"]["services"]["items"] = _service_schema()
    return schema


def _call_input_schema() -> dict[str, Any]:
    schema = load_schema("invoke-request.schema.json")
    # Not the invoke request any more: it gains a property, so it loses the id and the
    # examples (which lack the slug); the rules themselves are untouched.
    schema.pop("$id", None)
    schema.pop("examples", None)
    schema["title"] = "Call a container service"
    schema["description"] = (
        "The service to call and the HTTP request to send it: the invoke envelope of "
        "POST /r/invoke/{slug} plus service_slug."
    )
    schema["properties"] = {"service_slug": _SLUG_SCHEMA, **schema["properties"]}
    schema["required"] = ["service_slug", *schema["required"]]
    return schema


def _call_output_schema() -> dict[str, Any]:
    return load_schema("invoke-response.schema.json")


def _get_output_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["service", "openapi"],
        "additionalProperties": False,
        "properties": {
            "service": _service_schema(),
            "openapi": {
                "description": (
                    "The service's OpenAPI document, fetched through the gateway when the "
                    "service declares one and is running."
                ),
                "type": "object",
                "required": ["status"],
                "additionalProperties": False,
                "properties": {
                    "status": {
                        "description": (
                            "included: the document is in 'document' (JSON) or 'text'; "
                            "not_declared: the service has no openapi_url; not_running: the "
                            "service cannot be reached now; unavailable: fetching it failed, "
                            "'error' says why."
                        ),
                        "enum": ["included", "not_declared", "not_running", "unavailable"],
                    },
                    "document": {"description": "The document, when it is JSON."},
                    "text": {"description": "The document, when it is not JSON.", "type": "string"},
                    "error": {"description": "Why it is unavailable.", "type": "string"},
                },
            },
        },
    }


@dataclass(frozen=True, kw_only=True)
class ToolDefinition:
    """One tool as the newest revision describes it."""

    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    annotations: dict[str, Any]

    def for_version(self, version: str) -> dict[str, Any]:
        """The tool object of ``tools/list`` in revision ``version``."""
        tool: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        if at_least(version, "2025-03-26"):
            tool["annotations"] = {"title": self.title, **self.annotations}
        if at_least(version, "2025-06-18"):
            tool["title"] = self.title
            tool["outputSchema"] = self.output_schema
        return tool


TOOLS: Final = (
    ToolDefinition(
        name=LIST_TOOL,
        title="List container services",
        description=(
            "List the container services of your team: slug, display name, type, status, "
            "usage_prompt (how to use the service) and openapi_url. Start here; then read a "
            "service with get_container_service and call it with call_container_service. Only "
            "services whose service_status is 'running' can be called."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema=_list_output_schema(),
        annotations={"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False},
    ),
    ToolDefinition(
        name=GET_TOOL,
        title="Get a container service",
        description=(
            "Read one service's public metadata (usage_prompt, openapi_url, service_status, "
            "service_type) and, when it declares an OpenAPI document and is running, that "
            "document, so you know which paths, methods and bodies it accepts before calling it."
        ),
        input_schema={
            "type": "object",
            "properties": {"service_slug": _SLUG_SCHEMA},
            "required": ["service_slug"],
            "additionalProperties": False,
        },
        output_schema=_get_output_schema(),
        annotations={"readOnlyHint": True, "idempotentHint": True, "openWorldHint": True},
    ),
    ToolDefinition(
        name=CALL_TOOL,
        title="Call a container service",
        description=(
            "Send one HTTP request to a running service of your team and get its response: "
            "status_code, headers and the body in body_base64 (plus the body as text when it "
            "is UTF-8). Give service_slug, method and path (starting with '/', query allowed); "
            "send a body as standard base64 in body_base64, with its Content-Type in headers. "
            "A service's own error status (4xx, 5xx) is a normal result; gateway refusals "
            "(unknown service, not running, invalid path, too large, timeout) are tool errors "
            "whose text names the code."
        ),
        input_schema=_call_input_schema(),
        output_schema=_call_output_schema(),
        annotations={
            "readOnlyHint": False,
            "destructiveHint": True,
            "idempotentHint": False,
            "openWorldHint": True,
        },
    ),
)

TOOLS_BY_NAME: Final = {tool.name: tool for tool in TOOLS}


def tool_definitions(version: str) -> list[dict[str, Any]]:
    """Every tool, in a fixed order, as revision ``version`` describes tools."""
    return [tool.for_version(version) for tool in TOOLS]


# allow_nan=False: JSON has no NaN or infinities; writing them would make a text block that
# no client parses.
_TEXT_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _dumps(value: object) -> str:
    return _TEXT_JSON.encode(value)


def tool_result(
    version: str,
    structured: dict[str, Any],
    *,
    extra_text: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A successful ``tools/call`` result: the structured value, its JSON as a text block
    (the only form before 2025-06-18), then ``extra_text`` blocks."""
    content = [{"type": "text", "text": _dumps(structured)}]
    content.extend({"type": "text", "text": text} for text in extra_text)
    result: dict[str, Any] = {"content": content, "isError": False}
    if at_least(version, "2025-06-18"):
        result["structuredContent"] = structured
    return result


def call_result(version: str, response: dict[str, Any], body_text: str | None) -> dict[str, Any]:
    """The result of ``call_container_service``: the invoke answer ``response``, and
    ``body_text``, the container's body when it is UTF-8, as a text block of its own.

    Before 2025-06-18 the text blocks are the only form: the answer's JSON, then the body.
    From 2025-06-18 on, ``structuredContent`` carries the answer; its JSON text block (which
    the revisions recommend, not require) then leaves ``body_base64`` out when the body
    follows as text, so that a body is in the result twice (base64 and text), not three times.
    """
    if body_text is None:
        return tool_result(version, response)
    if not at_least(version, "2025-06-18"):
        return tool_result(version, response, extra_text=(body_text,))
    described = {key: value for key, value in response.items() if key != "body_base64"}
    return {
        "content": [
            {"type": "text", "text": _dumps(described)},
            {"type": "text", "text": body_text},
        ],
        "isError": False,
        "structuredContent": response,
    }


def tool_error(message: str, details: dict[str, Any]) -> dict[str, Any]:
    """A ``tools/call`` result with ``isError: true``: a sentence and the gateway's error JSON,
    both as text, so that any revision's client and any model can read them. No structured
    content: it would have to match the output schema, which describes a success."""
    return {
        "content": [
            {"type": "text", "text": message},
            {"type": "text", "text": _dumps(details)},
        ],
        "isError": True,
    }
