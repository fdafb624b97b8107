"""The bundled JSON Schemas and OpenAPI document: valid, self-contained, and true to the code."""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from invoke_middleware import errors
from invoke_middleware.envelope import encode_response, load_schema
from invoke_middleware.mcp.protocol import INVALID_REQUEST, JSONRPCError
from invoke_middleware.registry import Service, ServiceStatus, ServiceType

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = resources.files("invoke_middleware.schemas")
DOCUMENT_NAMES = sorted(r.name for r in BUNDLE.iterdir() if r.name.endswith(".json"))
SCHEMA_NAMES = [name for name in DOCUMENT_NAMES if name.endswith(".schema.json")]
ID_BASE = "https://invoke-middleware.dev/schemas/"


def registry() -> Registry[Any]:
    return Registry().with_resources(
        (ID_BASE + name, DRAFT202012.create_resource(load_schema(name))) for name in SCHEMA_NAMES
    )


def validator(
    schema: dict[str, Any], *, base: str = ID_BASE + "openapi.json"
) -> Draft202012Validator:
    """A validator for ``schema``, which may ``$ref`` any bundled schema by file name."""
    anchored = {"$id": base, **schema}
    return Draft202012Validator(
        anchored, registry=registry(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def schema_validator(name: str) -> Draft202012Validator:
    return validator(load_schema(name), base=ID_BASE + name)


def messages(instance: Any, checker: Draft202012Validator) -> list[str]:
    return sorted(error.message for error in checker.iter_errors(instance))


def every_gateway_error_class() -> list[type[errors.GatewayError]]:
    # Every module that defines one is imported by this one (the MCP endpoint's protocol
    # error included), so that the list does not depend on which test modules ran first.
    found: list[type[errors.GatewayError]] = [errors.GatewayError]
    for cls in found:
        found.extend(cls.__subclasses__())
    return found


def instantiate(cls: type[errors.GatewayError]) -> errors.GatewayError:
    if issubclass(cls, errors.MethodNotAllowedError):
        return cls(["POST"])
    if issubclass(cls, JSONRPCError):
        return cls(INVALID_REQUEST, "Invalid Request.")
    return cls()


# --- the documents themselves ----------------------------------------------------------------


def test_bundle_holds_every_schema_of_the_source_folder() -> None:
    assert sorted(p.name for p in (ROOT / "schemas").glob("*.json")) == DOCUMENT_NAMES
    assert set(DOCUMENT_NAMES) >= {
        "error.schema.json",
        "invoke-request.schema.json",
        "invoke-response.schema.json",
        "openapi.json",
        "service-list.schema.json",
        "service.schema.json",
    }


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == ID_BASE + name
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_examples_validate(name: str) -> None:
    schema = load_schema(name)
    checker = schema_validator(name)
    for example in schema.get("examples", []):
        assert messages(example, checker) == []


def test_openapi_document_is_valid_openapi_3_1() -> None:
    with resources.as_file(BUNDLE.joinpath("openapi.json")) as path:
        document = json.loads(path.read_text())
        validate_openapi(document, base_uri=path.as_uri())
    assert document["openapi"].startswith("3.1.")


def test_openapi_version_is_the_package_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert load_schema("openapi.json")["info"]["version"] == pyproject["project"]["version"]


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def resolve_pointer(document: Any, pointer: str) -> Any:
    if not pointer:
        return document
    assert pointer.startswith("/"), pointer
    for escaped in pointer[1:].split("/"):
        token = escaped.replace("~1", "/").replace("~0", "~")
        document = document[int(token)] if isinstance(document, list) else document[token]
    return document


@pytest.mark.parametrize("name", DOCUMENT_NAMES)
def test_every_ref_resolves_inside_the_bundle(name: str) -> None:
    found = list(refs(load_schema(name)))
    for ref in found:
        target, _, fragment = ref.partition("#")
        assert "/" not in target, f"{ref} leaves the bundle"
        document = load_schema(target or name)
        resolve_pointer(document, fragment)


def test_openapi_refers_to_every_bundled_schema() -> None:
    found = {ref.partition("#")[0] for ref in refs(load_schema("openapi.json"))} - {""}
    assert found == set(SCHEMA_NAMES)


# --- the routes ------------------------------------------------------------------------------


def test_openapi_describes_every_runtime_route() -> None:
    paths = load_schema("openapi.json")["paths"]
    methods = {
        path: set(item) - {"summary", "description", "parameters"} for path, item in paths.items()
    }
    assert methods == {
        "/r/invoke/{slug}": {"post"},
        "/r/containers": {"get"},
        "/r/containers/{slug}": {"get"},
        "/r/containers/{slug}/{tail}": {
            "get",
            "put",
            "post",
            "delete",
            "options",
            "head",
            "patch",
            "trace",
        },
        "/r/mcp": {"post", "get", "delete"},
    }


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in load_schema("openapi.json")["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield path, method, operation


def test_every_operation_is_behind_bearer_auth_and_takes_the_team_header() -> None:
    document = load_schema("openapi.json")
    assert document["security"] == [{"bearerAuth": []}]
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method, operation in operations():
        if method == "trace":
            continue
        item_parameters = document["paths"][path].get("parameters", [])
        parameters = [*item_parameters, *operation.get("parameters", [])]
        assert {"$ref": "#/components/parameters/TeamID"} in parameters, (path, method)


def test_team_header_is_an_optional_uuid() -> None:
    parameter = load_schema("openapi.json")["components"]["parameters"]["TeamID"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == (
        "X-Team-ID",
        "header",
        False,
    )
    assert parameter["schema"] == {"type": "string", "format": "uuid"}


def test_invoke_operation_uses_the_envelope_schemas() -> None:
    operation = load_schema("openapi.json")["paths"]["/r/invoke/{slug}"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert (body, answer) == (
        {"$ref": "invoke-request.schema.json"},
        {"$ref": "invoke-response.schema.json"},
    )


def response_schema(status: int) -> dict[str, Any] | None:
    """The OpenAPI component response schema for a gateway error status, if any is declared."""
    document = load_schema("openapi.json")
    for response in document["components"]["responses"].values():
        schema = response["content"]["application/json"]["schema"]
        codes = schema["allOf"][1]["properties"]["code"]["enum"]
        statuses = {cls.status for cls in every_gateway_error_class() if cls.code in codes}
        if statuses == {status}:
            return dict(schema)
    return None


# --- the error bodies ------------------------------------------------------------------------


def test_error_schema_codes_are_exactly_the_gateway_error_codes() -> None:
    enum = load_schema("error.schema.json")["properties"]["code"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == {cls.code for cls in every_gateway_error_class()}


@pytest.mark.parametrize("renderer", [errors.render_error, errors.render_problem])
@pytest.mark.parametrize("cls", every_gateway_error_class(), ids=lambda cls: cls.__name__)
def test_rendered_gateway_error_validates_against_error_schema(
    cls: type[errors.GatewayError], renderer: errors.ErrorRenderer
) -> None:
    rendered = renderer(instantiate(cls), request_id="req-1")
    assert messages(json.loads(rendered.body), schema_validator("error.schema.json")) == []


@pytest.mark.parametrize("cls", every_gateway_error_class(), ids=lambda cls: cls.__name__)
def test_rendered_gateway_error_matches_the_openapi_response_for_its_status(
    cls: type[errors.GatewayError],
) -> None:
    schema = response_schema(cls.status)
    assert schema is not None, f"no OpenAPI response declared for {cls.status}"
    for renderer in (errors.render_error, errors.render_problem):
        body = json.loads(renderer(instantiate(cls), request_id="req-1").body)
        assert messages(body, validator(schema)) == []


def test_openapi_error_response_refuses_a_code_of_another_status() -> None:
    schema = response_schema(404)
    assert schema is not None
    body = json.loads(errors.render_error(errors.ForbiddenError(), request_id="r").body)
    assert messages(body, validator(schema)) != []


def test_validation_error_with_details_validates() -> None:
    error = errors.InvalidRequestError(
        details=[errors.ErrorDetail(pointer="/method", message="is required")]
    )
    body = json.loads(errors.render_error(error, request_id="r").body)
    assert body["details"] == [{"pointer": "/method", "message": "is required"}]
    assert messages(body, schema_validator("error.schema.json")) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"error_message": "x", "code": "teapot", "request_id": "r"}, id="unknown-code"
        ),
        pytest.param({"error_message": "x", "code": "forbidden"}, id="no-request-id"),
        pytest.param(
            {"error_message": "x", "code": "forbidden", "request_id": "r", "trace": "..."},
            id="extra-member",
        ),
        pytest.param(
            {
                "error_message": "x",
                "code": "forbidden",
                "request_id": "r",
                "details": [{"pointer": ""}],
            },
            id="detail-without-message",
        ),
    ],
)
def test_error_schema_refuses(body: dict[str, Any]) -> None:
    assert messages(body, schema_validator("error.schema.json")) != []


# --- the success bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        pytest.param(
            201,
            {"Content-Type": "application/json", "Set-Cookie": ["a=1", "b=2"]},
            b"{}",
            id="spec",
        ),
        pytest.param(500, {}, b"", id="container-error-empty"),
        pytest.param(100, {"X-A": ["1"]}, bytes(range(256)), id="binary"),
        pytest.param(599, {"Via": ["1.1 a", "1.1 b"]}, b"x", id="repeated"),
    ],
)
def test_encoded_response_validates(status: int, headers: dict[str, Any], body: bytes) -> None:
    payload = json.loads(encode_response(status, headers, body))
    assert messages(payload, schema_validator("invoke-response.schema.json")) == []


def test_spec_example_response_validates() -> None:
    example = {
        "status_code": 201,
        "headers": {"content-type": "application/json", "set-cookie": ["a=1", "b=2"]},
        "body_base64": "eyJvayI6dHJ1ZX0=",
    }
    assert messages(example, schema_validator("invoke-response.schema.json")) == []


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"status_code": 200, "headers": {}}, id="body-missing"),
        pytest.param({"status_code": 99, "headers": {}, "body_base64": ""}, id="status-99"),
        pytest.param({"status_code": 600, "headers": {}, "body_base64": ""}, id="status-600"),
        pytest.param({"status_code": "200", "headers": {}, "body_base64": ""}, id="status-string"),
        pytest.param(
            {"status_code": 200, "headers": {"Content-Type": "x"}, "body_base64": ""},
            id="upper-case-name",
        ),
        pytest.param(
            {"status_code": 200, "headers": {"x-a\n": "x"}, "body_base64": ""}, id="name-newline"
        ),
        pytest.param(
            {"status_code": 200, "headers": {"x-a": ["x"]}, "body_base64": ""}, id="array-of-one"
        ),
        pytest.param(
            {"status_code": 200, "headers": {"x-a": 1}, "body_base64": ""}, id="value-number"
        ),
        pytest.param(
            {"status_code": 200, "headers": {}, "body_base64": "-_-_"}, id="url-safe-body"
        ),
        pytest.param(
            {"status_code": 200, "headers": {}, "body_base64": "Q=QQ"}, id="inner-padding"
        ),
        pytest.param({"status_code": 200, "headers": {}, "body_base64": "QQ== "}, id="body-space"),
        pytest.param(
            {"status_code": 200, "headers": {}, "body_base64": "", "x": 1}, id="extra-member"
        ),
    ],
)
def test_response_schema_refuses(payload: dict[str, Any]) -> None:
    assert messages(payload, schema_validator("invoke-response.schema.json")) != []


def service(**overrides: Any) -> Service:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "team_id": uuid.uuid4(),
        "slug": "image-gen",
        "display_name": "Image generator",
        "service_type": ServiceType.DEPLOYED,
        "service_status": ServiceStatus.RUNNING,
        "upstream_url": "http://127.0.0.1:8080",
    }
    fields.update(overrides)
    return Service(**fields)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(service(), id="deployed"),
        pytest.param(
            service(
                service_type=ServiceType.EXTERNAL,
                upstream_url=None,
                external_url="https://api.example.com/v1",
                external_auth_credential_id="cred-1",
                usage_prompt="POST /generate with a prompt.",
                openapi_url="/openapi.json",
                service_status=ServiceStatus.STOPPED,
            ),
            id="external",
        ),
    ],
)
def test_service_metadata_validates(record: Service) -> None:
    metadata = record.public_metadata()
    assert messages(metadata, schema_validator("service.schema.json")) == []
    listing = {"services": [metadata, service(slug="abc").public_metadata()]}
    assert messages(listing, schema_validator("service-list.schema.json")) == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"team_id": "team-1"}, id="team-not-uuid"),
        pytest.param({"slug": "Image"}, id="slug-upper-case"),
        pytest.param({"slug": "ab"}, id="slug-too-short"),
        pytest.param({"slug": "image-gen\n"}, id="slug-trailing-newline"),
        pytest.param({"service_status": "paused"}, id="unknown-status"),
        pytest.param({"service_type": "local"}, id="unknown-type"),
        pytest.param({"upstream_url": "http://10.0.0.1"}, id="leaks-upstream"),
    ],
)
def test_service_schema_refuses(change: dict[str, Any]) -> None:
    metadata = {**service().public_metadata(), **change}
    assert messages(metadata, schema_validator("service.schema.json")) != []
    assert messages({"services": [metadata]}, schema_validator("service-list.schema.json")) != []


def test_service_list_refuses_a_bare_array() -> None:
    assert (
        messages([service().public_metadata()], schema_validator("service-list.schema.json")) != []
    )
