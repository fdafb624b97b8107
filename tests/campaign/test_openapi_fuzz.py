"""Fuzzing the public contract: every operation of ``schemas/openapi.json``, through the real
middleware, with a real credential of a team whose running service has a real upstream.

Schemathesis generates requests from the document (path parameters steered half the time to
the caller's running service, a stopped one and another team's, so that relays really happen;
MCP bodies steered to well-formed tool calls). For every answer:

- nothing is a 5xx: the upstream (:func:`~tests.campaign.conftest.answering_app`) never
  fails, so a 5xx could only be the gateway's own;
- an answer the gateway produced (all of them, except a relayed container's response, which
  the document declares as ``default`` and tells apart by the absence of ``X-Invoke-Error``)
  has a declared status, a declared content type, a body valid against its schema and the
  declared headers.

Short form: a few dozen examples per operation. ``INVOKE_CAMPAIGN=long``: a thousand.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from invoke_middleware import (
    ERROR_MARKER_HEADER,
    REQUEST_ID_HEADER,
    CredentialKind,
    InMemoryServiceRegistry,
    InvokeMiddleware,
    ServiceStatus,
)
from tests.campaign.conftest import answering_app, record_figures, scale
from tests.toolkit.world import OTHER_TEAM, TEAM, host_app, make_service
from tests.upstreams import serve_wsgi

DOCUMENT = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"
SLUGS = ("echo", "asleep", "theirs")
CATCH_ALL = "/r/containers/{slug}/{tail}"

schema = schemathesis.openapi.from_path(DOCUMENT)


@schema.hook("flatmap_path_parameters")
def _steer_slugs(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Half the time, a slug that exists: the caller's running service, a stopped one, or
    another team's (which must look exactly like a missing one)."""
    if not path_parameters or "slug" not in path_parameters:
        return st.just(path_parameters)
    return st.one_of(
        st.just(path_parameters),
        st.sampled_from(SLUGS).map(lambda slug: {**path_parameters, "slug": slug}),
    )


def _envelopes() -> st.SearchStrategy[dict[str, Any]]:
    """Invoke envelopes, valid more often than not, as an agent would write them."""
    segment = st.text(alphabet="abcxyz09-._~%/?#;", min_size=0, max_size=12)
    return st.fixed_dictionaries(
        {
            "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
            "path": segment.map(lambda tail: "/" + tail),
        },
        optional={
            "body_base64": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
            "headers": st.dictionaries(
                st.sampled_from(["Accept", "Content-Type", "X-Custom", "Authorization"]),
                st.one_of(st.text(max_size=10), st.lists(st.text(max_size=5), max_size=2)),
                max_size=3,
            ),
        },
    )


def _mcp_messages() -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed JSON-RPC messages of the handshake era, tool calls first among them."""
    ids = st.one_of(st.integers(0, 1000), st.text(max_size=8))
    call = st.builds(
        lambda slug, envelope: {
            "name": "call_container_service",
            "arguments": {"service_slug": slug, **envelope},
        },
        st.sampled_from([*SLUGS, "missing-one"]),
        _envelopes(),
    )
    get = st.sampled_from(SLUGS).map(
        lambda slug: {"name": "get_container_service", "arguments": {"service_slug": slug}}
    )
    listing = st.just({"name": "list_container_services", "arguments": {}})
    initialize = st.just(
        {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "1"},
        }
    )
    return st.one_of(
        st.builds(
            lambda id_, params: {
                "jsonrpc": "2.0",
                "id": id_,
                "method": "tools/call",
                "params": params,
            },
            ids,
            st.one_of(call, get, listing),
        ),
        st.builds(
            lambda id_, params: {
                "jsonrpc": "2.0",
                "id": id_,
                "method": "initialize",
                "params": params,
            },
            ids,
            initialize,
        ),
        st.builds(lambda id_: {"jsonrpc": "2.0", "id": id_, "method": "tools/list"}, ids),
        st.just({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )


@schema.hook("flatmap_body")
def _steer_bodies(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Half the invoke envelopes and MCP messages are shaped like a real caller's."""
    path = context.operation.path
    if body is None:
        return st.just(body)
    if path == "/r/invoke/{slug}":
        return st.one_of(st.just(body), _envelopes())
    if path == "/r/mcp":
        return st.one_of(st.just(body), _mcp_messages())
    return st.just(body)


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[Any, str]]:
    """The wrapped host (a WSGI app) and an integration key of :data:`TEAM`."""
    with serve_wsgi(answering_app) as url:
        registry = InMemoryServiceRegistry()
        registry.add(make_service("echo", url, usage_prompt="Echoes the request."))
        registry.add(make_service("asleep", url, status=ServiceStatus.STOPPED))
        registry.add(make_service("theirs", url, team=OTHER_TEAM))
        host = host_app()
        middleware = InvokeMiddleware(host.wsgi_app, registry=registry)
        host.wsgi_app = middleware  # type: ignore[method-assign]
        key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
        try:
            yield host, key
        finally:
            middleware.close()
            record_figures(
                "fuzz",
                {
                    "requests": sum(STATUSES.values()),
                    "operations": len({key.rsplit(" ", 1)[0] for key in STATUSES}),
                    "statuses": dict(sorted(STATUSES.items())),
                },
            )


#: How many answers of each status each operation got ("POST /r/mcp 200": 17).
STATUSES: Counter[str] = Counter()

CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def check_answer(case: Case[Any], response: Response) -> None:
    """No 5xx; and whatever the gateway itself answered is what the document declares."""
    status = response.status_code
    marker = response.headers.get(ERROR_MARKER_HEADER.lower())
    assert status < 500, (status, marker, response.text[:300])
    assert response.headers.get(REQUEST_ID_HEADER.lower()), "every response has X-Request-ID"
    if case.operation.path == CATCH_ALL and marker is None and status not in (405,):
        # The container's own answer ("default"): relayed unchanged, no schema of ours.
        assert case.path_parameters is not None
        assert case.path_parameters["slug"] == "echo", "only the running service relays"
        return
    case.validate_response(response, checks=CONFORMANCE)


@schema.parametrize()
@settings(
    max_examples=scale(25, 1000),
    deadline=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_conforms_to_the_document(case: Case[Any], gateway: tuple[Any, str]) -> None:
    app, key = gateway
    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": f"fuzz-{uuid.uuid4().hex[:12]}"}
    response = case.call(app=app, headers=headers)
    STATUSES[f"{case.method} {case.operation.path} {response.status_code}"] += 1
    check_answer(case, response)


def test_mcp_batch_answer_is_declared_by_the_document(gateway: tuple[Any, str]) -> None:
    app, key = gateway
    batch: Any = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    ]
    case = schema["/r/mcp"]["POST"].Case(body=batch, media_type="application/json")
    response = case.call(app=app, headers={"Authorization": f"Bearer {key}"})

    assert response.status_code == 200
    assert [item["id"] for item in response.json()] == [1, 2]
    case.validate_response(response, checks=CONFORMANCE)
