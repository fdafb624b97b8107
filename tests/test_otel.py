"""OpenTelemetry tracing through the real middleware, in front of the loopback upstream.

Spans are caught by the SDK's in-memory exporter (see :mod:`tests.otel_spans`); every test
goes through :func:`invoke_middleware.otel.instrument`, the host's Flask app and WebTest, or
drives the traced WSGI app by hand where the order of events matters (streaming).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from werkzeug.test import EnvironBuilder

from invoke_middleware.otel import TracingTransport, instrument
from invoke_middleware.testing import MockTransport, make_response
from invoke_middleware.transport.base import UpstreamRequest
from tests.otel_spans import (
    CALLER_SPAN_ID,
    CALLER_TRACE_ID,
    CALLER_TRACEPARENT,
    Spans,
    trace_world,
    traceparent_of,
)
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.world import World, make_service

SECRET_QUERY = "access_token=qs-secret-7f3a"
#: A caller's whole trace context: its span, its vendors' state, and baggage of its own.
CALLER_CONTEXT = {
    "traceparent": CALLER_TRACEPARENT,
    "tracestate": "vendor=abc",
    "baggage": "tenant=secret-team",
}


@pytest.fixture
def spans(world: World) -> Spans:
    return trace_world(world)


def everything_recorded(span: ReadableSpan) -> str:
    """Every name, attribute and status text of ``span``, as one string to search."""
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "status": span.status.description,
            "events": [event.name for event in span.events],
        },
        default=str,
    )


def test_an_invoke_makes_a_server_span_named_by_its_route_and_a_client_span_under_it(
    world: World, spans: Spans
) -> None:
    world.invoke("echo", {"method": "GET", "path": "/items"})

    server = spans.one(SpanKind.SERVER)
    client = spans.one(SpanKind.CLIENT)
    assert server.name == "POST /r/invoke/{slug}"
    assert client.name == "GET"
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/r/invoke/{slug}",
        "url.scheme": "http",
        "network.protocol.version": "1.0",
        "http.response.status_code": 200,
        "http.response.header.x-request-id": (world.upstream.last().header("X-Request-ID"),),
    }
    host, port = world.upstream.url.removeprefix("http://").split(":")
    assert dict(client.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "server.address": host,
        "server.port": int(port),
        "http.response.status_code": 200,
    }
    assert server.status.status_code is StatusCode.UNSET
    assert client.status.status_code is StatusCode.UNSET


def test_the_upstream_receives_the_client_span_s_traceparent(world: World, spans: Spans) -> None:
    world.relay("echo/items")

    client = spans.one(SpanKind.CLIENT)
    assert world.upstream.last().header("traceparent") == traceparent_of(client)


def test_the_server_span_joins_the_caller_s_trace(world: World, spans: Spans) -> None:
    world.relay("echo/items", headers={"traceparent": CALLER_TRACEPARENT})

    server = spans.one(SpanKind.SERVER)
    client = spans.one(SpanKind.CLIENT)
    assert server.parent is not None
    assert server.parent.span_id == CALLER_SPAN_ID
    assert server.context.trace_id == CALLER_TRACE_ID
    assert client.context.trace_id == CALLER_TRACE_ID
    # The caller's traceparent is replaced by the gateway's, not sent twice.
    received = world.upstream.last()
    assert [value for name, value in received.headers if name.lower() == "traceparent"] == [
        traceparent_of(client)
    ]


def test_the_caller_s_tracestate_travels_on_and_its_baggage_does_not_join_the_trace(
    world: World, spans: Spans
) -> None:
    world.invoke(
        "echo",
        {"method": "GET", "path": "/x"},
        headers=CALLER_CONTEXT,
    )

    received = world.upstream.last()
    assert received.header("traceparent") == traceparent_of(spans.one(SpanKind.CLIENT))
    assert received.header("tracestate") == "vendor=abc"
    # The invoke route forwards only the envelope's headers: the outer baggage stays out.
    assert received.header("baggage") is None


@pytest.mark.parametrize("trust", [True, False], ids=["trusted", "untrusted"])
def test_a_relay_carries_the_gateway_s_trace_context_and_no_other(
    make_world: Callable[..., World], trust: bool
) -> None:
    # The propagator's fields are the gateway's to write: a caller's baggage would pass for
    # context the gateway set, and its tracestate beside a new trace's traceparent would
    # pair two traces.
    world = make_world()
    spans = trace_world(world, trust_incoming_context=trust)
    world.relay(
        "echo/items",
        headers=CALLER_CONTEXT,
    )

    received = world.upstream.last()
    assert received.header("traceparent") == traceparent_of(spans.one(SpanKind.CLIENT))
    assert received.header("tracestate") == ("vendor=abc" if trust else None)
    assert received.header("baggage") is None


@pytest.mark.parametrize(
    ("path", "template", "method"),
    [
        pytest.param(
            "/r/containers/echo/a/b", "/r/containers/{slug}/{tail}", "GET", id="catch-all"
        ),
        pytest.param("/r/containers/echo", "/r/containers/{slug}", "GET", id="get"),
        pytest.param("/r/containers", "/r/containers", "GET", id="list"),
        pytest.param("/r/invoke/echo", "/r/invoke/{slug}", "GET", id="invoke-wrong-method"),
    ],
)
def test_server_spans_are_named_by_the_route_template_never_the_path(
    world: World, spans: Spans, path: str, template: str, method: str
) -> None:
    world.app.request(path, method=method, headers=world.auth(), expect_errors=True)

    server = spans.one(SpanKind.SERVER)
    assert server.name == f"{method} {template}"
    assert (server.attributes or {})["http.route"] == template


def test_the_route_template_carries_the_prefix(
    make_world: Callable[..., World],
) -> None:
    world = make_world(prefix="/api/v1")
    spans = trace_world(world)

    world.app.get("/api/v1/r/containers/echo/x", headers=world.auth())

    assert spans.one(SpanKind.SERVER).name == "GET /api/v1/r/containers/{slug}/{tail}"


def test_the_host_s_own_routes_make_no_span(world: World, spans: Spans) -> None:
    assert world.app.get("/hello").text == "hello from host"
    assert spans.all() == ()


def test_no_span_records_the_query_the_key_or_the_caller_s_authorization(
    world: World, spans: Spans
) -> None:
    key = world.keys["sk"]
    world.relay(f"echo/private/path?{SECRET_QUERY}", headers={"Cookie": "session=cookie-secret"})
    world.invoke(
        "echo",
        {"method": "GET", "path": f"/x?{SECRET_QUERY}", "headers": {"Authorization": "Bearer up"}},
    )

    assert len(spans.all()) == 4
    for span in spans.all():
        recorded = everything_recorded(span)
        for secret in (key, "qs-secret", "cookie-secret", "Bearer", "private"):
            assert secret not in recorded, (span.name, secret)


def test_an_unauthenticated_request_records_the_gateway_s_code(world: World, spans: Spans) -> None:
    res = world.app.get("/r/containers/echo/x", status=401)
    assert_gateway_error(res, 401, "unauthenticated")

    server = spans.one(SpanKind.SERVER)
    attributes = server.attributes or {}
    assert attributes["http.response.status_code"] == 401
    assert attributes["error.type"] == "unauthenticated"
    # A 4xx is the caller's mistake: the server span is not failed (HTTP semantic conventions).
    assert server.status.status_code is StatusCode.UNSET
    assert spans.of_kind(SpanKind.CLIENT) == []


def test_an_unknown_service_records_the_gateway_s_code(world: World, spans: Spans) -> None:
    world.relay("nope/x", status=404)

    attributes = spans.one(SpanKind.SERVER).attributes or {}
    assert attributes["http.response.status_code"] == 404
    assert attributes["error.type"] == "service_not_found"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_refused_upstream_fails_both_spans_with_upstream_unreachable(
    make_world: Callable[..., World],
) -> None:
    world = make_world(services=[make_service("down", f"http://127.0.0.1:{closed_port()}")])
    spans = trace_world(world)

    res = world.relay("down/x", status=502)
    assert_gateway_error(res, 502, "upstream_unreachable")

    server = spans.one(SpanKind.SERVER)
    client = spans.one(SpanKind.CLIENT)
    for span in (server, client):
        assert (span.attributes or {})["error.type"] == "upstream_unreachable"
        assert span.status.status_code is StatusCode.ERROR
        # No exception event: its chained causes could quote the upstream URL.
        assert span.events == ()
    assert "http.response.status_code" not in (client.attributes or {})
    assert (server.attributes or {})["http.response.status_code"] == 502


def test_a_container_error_status_fails_the_client_span_with_the_status(
    world: World, spans: Spans
) -> None:
    world.relay("echo/status/503", status=503)

    client = spans.one(SpanKind.CLIENT)
    assert (client.attributes or {})["http.response.status_code"] == 503
    assert (client.attributes or {})["error.type"] == "503"
    assert client.status.status_code is StatusCode.ERROR
    server = spans.one(SpanKind.SERVER)
    # The container's own 503 is relayed: not the gateway's error, so no gateway code.
    assert (server.attributes or {})["error.type"] == "503"


def call_app(world: World, path: str, method: str = "GET") -> Any:
    """Call the traced host as a WSGI server would; return its response body unread."""
    environ = EnvironBuilder(
        path=path, method=method, headers=list(world.auth().items())
    ).get_environ()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    return world.host.wsgi_app(environ, start_response)


def test_a_streamed_response_s_spans_end_only_after_the_body_is_read_and_closed(
    world: World, spans: Spans
) -> None:
    body = call_app(world, "/r/containers/echo/events")
    chunks = iter(body)
    assert next(chunks) == b"data: first\n\n"
    # The upstream holds its second event: the exchange is not over.
    assert spans.all() == ()

    world.upstream.release.set()
    assert b"".join(chunks) == b"data: second\n\n"
    assert [span.kind for span in spans.all()] == [SpanKind.CLIENT]

    body.close()
    server = spans.one(SpanKind.SERVER)
    client = spans.one(SpanKind.CLIENT)
    assert server.end_time is not None
    assert client.end_time is not None
    assert client.end_time <= server.end_time


def test_a_body_closed_before_its_end_ends_both_spans(world: World, spans: Spans) -> None:
    body = call_app(world, "/r/containers/echo/events")
    assert next(iter(body)) == b"data: first\n\n"
    body.close()

    assert {span.kind for span in spans.all()} == {SpanKind.CLIENT, SpanKind.SERVER}


def test_without_an_sdk_the_upstream_receives_exactly_what_it_did_untraced(
    make_world: Callable[..., World],
) -> None:
    # The API alone, as a host without an SDK has it: no provider was ever set.
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    plain, traced = make_world(), make_world()
    traced.host.wsgi_app = instrument(traced.middleware)  # type: ignore[method-assign]

    seen = []
    for world in (plain, traced):
        world.relay("echo/x", headers={"traceparent": CALLER_TRACEPARENT, "X-Request-ID": "r1"})
        world.invoke(
            "echo",
            {"method": "GET", "path": "/x"},
            headers={"traceparent": CALLER_TRACEPARENT, "X-Request-ID": "r2"},
        )
        seen.append([(received.target, received.headers) for received in world.upstream.received])
        world.reset()

    assert seen[0] == seen[1]
    assert seen[0][0][1].count(("Traceparent", CALLER_TRACEPARENT)) == 1
    assert "traceparent" not in {name.lower() for name, _ in seen[0][1][1]}


def test_instrument_wraps_each_transport_once_and_keeps_a_shared_one_shared(
    make_world: Callable[..., World],
) -> None:
    echo = MockTransport(lambda request: make_response(200))
    world = make_world(transport=echo, egress_transport=echo)

    instrument(world.middleware)
    instrument(world.middleware)

    pipeline = world.middleware.pipeline
    assert isinstance(pipeline.transport, TracingTransport)
    assert pipeline.transport.inner is echo
    assert pipeline.egress_transport is pipeline.transport


def test_an_unknown_method_is_reported_as_other(make_world: Callable[..., World]) -> None:
    world = make_world()
    spans = trace_world(world)

    body = call_app(world, "/r/containers/echo/x", "PROPFIND")
    assert b"PROPFIND" in b"".join(body)
    body.close()

    assert len(spans.all()) == 2

    for span in spans.all():
        attributes = span.attributes or {}
        assert attributes["http.request.method"] == "_OTHER"
        assert attributes["http.request.method_original"] == "PROPFIND"
        assert span.name.startswith("HTTP")


def test_an_unknown_method_is_recorded_cut_to_a_bounded_length(
    make_world: Callable[..., World],
) -> None:
    world = make_world()
    spans = trace_world(world)

    call_app(world, "/r/containers/echo/x", "X" * 60_000).close()

    attributes = spans.one(SpanKind.SERVER).attributes or {}
    assert attributes["http.request.method_original"] == "X" * 32


def test_a_tracing_transport_of_its_own_closes_its_inner_transport() -> None:
    inner = MockTransport(lambda request: make_response(200))
    with TracingTransport(inner) as transport:
        response = transport.send(
            UpstreamRequest(method="GET", url="http://127.0.0.1:1/", headers=())
        )
        assert response.status == 200
    assert inner.closed
