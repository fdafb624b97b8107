"""OpenTelemetry tracing for the runtime routes: a server span per request, a client span per
upstream exchange, and W3C trace context passed on to the container.

Needs the ``otel`` extra (``pip install 'invoke_middleware[otel]'``), which is only
``opentelemetry-api``: the host brings the SDK and its exporter, as with any instrumented
library. Usage::

    from invoke_middleware import InvokeMiddleware
    from invoke_middleware.otel import instrument

    middleware = InvokeMiddleware(app.wsgi_app, registry=registry, prefix="/api/v1")
    app.wsgi_app = instrument(middleware)

:func:`instrument` wraps the pipeline's transports in :class:`TracingTransport` and the
middleware in :class:`TracingMiddleware`; both can be composed by hand instead (pass
``transport=TracingTransport(HTTPTransport())`` to the middleware, then wrap it).

What is recorded follows the HTTP semantic conventions, kept to low-cardinality, caller-safe
values: the server span is named by its route template (``POST /r/invoke/{slug}``), never the
path; neither span carries the query, the path, a header value, a key or a team's secret.
Errors carry the gateway's error code (``upstream_unreachable``, ``unauthenticated``) in
``error.type``; exceptions are not recorded as events, since their chained causes may quote
an upstream URL. Without an SDK (the API's no-op tracer) nothing changes: no span, no header.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter, TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "invoke_middleware.otel needs opentelemetry-api; "
        "install the otel extra: pip install 'invoke_middleware[otel]'"
    ) from exc

from invoke_middleware._bodies import close_body
from invoke_middleware.errors import ERROR_MARKER_HEADER, REQUEST_ID_HEADER, as_gateway_error
from invoke_middleware.routing import RouteKind, Router
from invoke_middleware.transport.base import (
    Closeable,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from invoke_middleware.middleware import InvokeMiddleware

__all__ = ["TracingMiddleware", "TracingTransport", "instrument"]

#: The instrumentation scope spans are reported under.
SCOPE = "invoke_middleware"

#: Methods the HTTP semantic conventions name; any other is reported as ``_OTHER`` (a span
#: name and attribute may not grow with whatever method a caller invents).
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)

_DEFAULT_PORTS = {"http": 80, "https": 443}

_ERROR_MARKER_KEY = ERROR_MARKER_HEADER.lower()
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower()


#: The longest ``http.request.method_original`` recorded; a longer method is cut. A method
#: of 60,000 characters (an unauthenticated request) was kept whole on its span, and an
#: exporter's queue holds thousands of spans.
_MAX_METHOD_ORIGINAL = 32


def _method_attributes(method: str) -> dict[str, str]:
    if method in _KNOWN_METHODS:
        return {"http.request.method": method}
    return {
        "http.request.method": "_OTHER",
        "http.request.method_original": method[:_MAX_METHOD_ORIGINAL],
    }


def _tracer(provider: TracerProvider | None) -> trace.Tracer:
    # Without a provider the global one is used, resolved when spans start: a host may set
    # it after building the gateway.
    return trace.get_tracer(SCOPE, tracer_provider=provider)


class _SpanEnd:
    """Ends a span once, whichever of "body read to its end", "failed" or "closed" comes
    first."""

    __slots__ = ("_ended", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._ended = False

    def fail(self, error: BaseException) -> None:
        """Mark the span failed with the gateway's code for ``error``."""
        _mark_error(self.span, as_gateway_error(error).code)

    def __call__(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end()


def _mark_error(span: Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


# -- client side ---------------------------------------------------------------------------


class TracingTransport(Closeable):
    """A transport that makes a client span around each exchange of ``inner``.

    The span is named by the method (``GET``) and carries ``http.request.method``,
    ``server.address``, ``server.port``, ``url.scheme`` and ``http.response.status_code``;
    a status of 400 or more, or a failure, sets ``error.type`` (the status, or the gateway's
    error code such as ``upstream_timeout``) and the error status. It ends when the response
    body has been read to its end, fails, or is closed, so it covers a streamed download.

    The span's context is written into the request's headers by ``propagator`` (the global
    one, W3C ``traceparent``/``tracestate`` by default), replacing any the caller sent, so the
    container's own spans join the trace. Only the span goes in: baggage that a caller sent
    the gateway is not passed on. When no span is being made (no SDK, or nothing to join),
    the request goes out exactly as it came.
    """

    def __init__(
        self,
        inner: Transport,
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.inner = inner
        self._tracer = _tracer(tracer_provider)
        self._propagator = propagator

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request`` through ``inner`` inside a client span."""
        method = request.method
        span = self._tracer.start_span(
            method if method in _KNOWN_METHODS else "HTTP",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
        )
        span_context = span.get_span_context()
        # A remote context is the API's no-op tracer handing back the caller's own: there is
        # no span of ours to announce, and the request stays as it was.
        if span_context.is_valid and not span_context.is_remote:
            request = self._with_context(request, span)
        if not span.is_recording():
            return self.inner.send(request)
        span.set_attributes(_client_attributes(request))
        end = _SpanEnd(span)
        try:
            response = self.inner.send(request)
        except BaseException as error:
            end.fail(error)
            end()
            raise
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 400:
            _mark_error(span, str(response.status))
        return _traced_response(response, end)

    def _with_context(self, request: UpstreamRequest, span: Span) -> UpstreamRequest:
        carrier: dict[str, str] = {}
        propagator = self._propagator or propagate.get_global_textmap()
        # A fresh context holding only our span: nothing else of the gateway's context
        # (baggage extracted from the caller's request, say) leaves with the request.
        propagator.inject(carrier, context=trace.set_span_in_context(span, otel_context.Context()))
        # Every field the propagator speaks is the gateway's to write: a caller's baggage or
        # tracestate, which it does not inject, would otherwise pass beside its traceparent.
        replaced = {name.lower() for name in (*propagator.fields, *carrier)}
        kept = tuple(field for field in request.headers if field[0].lower() not in replaced)
        if not carrier and len(kept) == len(request.headers):
            return request
        return replace(request, headers=kept + tuple(carrier.items()))

    def close(self) -> None:
        """Close ``inner``."""
        self.inner.close()


def _client_attributes(request: UpstreamRequest) -> dict[str, Any]:
    # The URL's path and query are left out: they are the caller's and may carry tokens.
    parts = urlsplit(request.url)
    scheme = parts.scheme
    attributes: dict[str, Any] = _method_attributes(request.method)
    attributes["url.scheme"] = scheme
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # pragma: no cover - the gateway builds URLs from checked records
        port = None
    if port is not None:
        attributes["server.port"] = port
    return attributes


def _traced_response(response: UpstreamResponse, end: _SpanEnd) -> UpstreamResponse:
    def chunks() -> Iterator[bytes]:
        try:
            yield from response
        except Exception as error:
            end.fail(error)
            end()
            raise
        end()

    def close() -> None:
        try:
            response.close()
        finally:
            end()

    return UpstreamResponse(
        status=response.status,
        reason=response.reason,
        headers=response.headers,
        chunks=chunks(),
        close=close,
        content_length=response.content_length,
    )


# -- server side ---------------------------------------------------------------------------


def _environ_key(field: str) -> str:
    """``traceparent`` -> ``HTTP_TRACEPARENT`` (PEP 3333)."""
    return "HTTP_" + field.upper().replace("-", "_")


class _EnvironGetter(Getter["WSGIEnvironment"]):
    """Reads propagation fields (``traceparent``) from a WSGI environ."""

    def get(self, carrier: WSGIEnvironment, key: str) -> list[str] | None:
        value = carrier.get(_environ_key(key))
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: WSGIEnvironment) -> list[str]:
        return [key[5:].lower().replace("_", "-") for key in carrier if key.startswith("HTTP_")]


_ENVIRON_GETTER = _EnvironGetter()


class TracingMiddleware:
    """Makes a server span for each request to the runtime routes of ``app``.

    ``app`` is an :class:`~invoke_middleware.InvokeMiddleware` (or anything that serves the
    runtime routes under ``prefix``); other paths pass through untouched, spanless. The span
    is named ``{method} {route}`` with the route template (``GET /r/containers/{slug}/{tail}``)
    and carries ``http.route``, ``http.request.method``, ``url.scheme``,
    ``network.protocol.version``, ``http.response.status_code`` and the
    ``X-Request-ID`` (``http.response.header.x-request-id``), which joins it to the relay log.
    An error the gateway produced sets ``error.type`` to its code; a status of 500 or more
    also sets the error status. The span ends when the server closes the response body.

    The caller's trace context (``traceparent``) is extracted with ``propagator`` (the global
    one by default) unless ``trust_incoming_context`` is false; when a span is already current
    (the host's own instrumentation wraps this one), it is the parent instead. Under a
    ``ParentBased`` sampler the caller's sampled flag then decides whether the request is
    recorded (before it is authenticated): with callers not trusted with the tracing
    budget, pass ``trust_incoming_context=False``.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        prefix: str = "",
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        trust_incoming_context: bool = True,
    ) -> None:
        self.app = app
        self.router = Router(prefix)
        base = self.router.prefix
        self.routes: dict[RouteKind, str] = {
            RouteKind.INVOKE: f"{base}/r/invoke/{{slug}}",
            RouteKind.CATCH_ALL: f"{base}/r/containers/{{slug}}/{{tail}}",
            RouteKind.LIST: f"{base}/r/containers",
            RouteKind.GET: f"{base}/r/containers/{{slug}}",
            RouteKind.MCP: f"{base}/r/mcp",
        }
        self._tracer = _tracer(tracer_provider)
        self._propagator = propagator
        self._trust_incoming_context = trust_incoming_context
        self._keys_of: tuple[TextMapPropagator, tuple[str, ...]] | None = None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        route = self.router.match(environ.get("PATH_INFO", "") or "/")
        if route is None:
            return self.app(environ, start_response)
        template = self.routes[route.kind]
        method = environ.get("REQUEST_METHOD", "GET").upper()
        attributes: dict[str, Any] = _method_attributes(method)
        attributes["http.route"] = template
        attributes["url.scheme"] = environ.get("wsgi.url_scheme", "http")
        protocol = environ.get("SERVER_PROTOCOL", "")
        if protocol.startswith("HTTP/"):
            attributes["network.protocol.version"] = protocol[5:]
        span = self._tracer.start_span(
            f"{method if method in _KNOWN_METHODS else 'HTTP'} {template}",
            context=self._parent(environ),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        if not span.is_recording() and not span.get_span_context().is_valid:
            # No SDK and no trace to join: nothing to record, nothing to pass on.
            return self.app(environ, start_response)
        # Current while the gateway handles the request: the client spans of its upstream
        # exchanges (relays, MCP tool calls) become this span's children.
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            if not span.is_recording():
                return self.app(environ, start_response)
            end = _SpanEnd(span)
            try:
                body = self.app(environ, _recording_start_response(span, start_response))
            except BaseException as error:
                end.fail(error)
                end()
                raise
            return _TracedBody(body, end)
        finally:
            otel_context.detach(token)

    def _parent(self, environ: WSGIEnvironment) -> otel_context.Context | None:
        if trace.get_current_span().get_span_context().is_valid:
            return None
        if not self._trust_incoming_context:
            return otel_context.Context()
        propagator = self._propagator or propagate.get_global_textmap()
        empty = otel_context.Context()
        # Most callers send no trace context: skip the propagator's parsing for them.
        if not any(key in environ for key in self._environ_keys(propagator)):
            return empty
        return propagator.extract(environ, context=empty, getter=_ENVIRON_GETTER)

    def _environ_keys(self, propagator: TextMapPropagator) -> tuple[str, ...]:
        # The global propagator may be replaced at any time: the keys are those of the last
        # one seen (a propagator builds its ``fields`` anew on each read).
        cached = self._keys_of
        if cached is None or cached[0] is not propagator:
            cached = (propagator, tuple(_environ_key(field) for field in propagator.fields))
            self._keys_of = cached
        return cached[1]

    def close(self) -> None:
        """Close ``app`` when it can be (the middleware's transports)."""
        close = getattr(self.app, "close", None)
        if close is not None:
            close()


def _recording_start_response(span: Span, start_response: StartResponse) -> StartResponse:
    def recording(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Any:
        code = int(status[:3])
        span.set_attribute("http.response.status_code", code)
        error_code = None
        for name, value in headers:
            key = name.lower()
            if key == _ERROR_MARKER_KEY:
                error_code = value
            elif key == _REQUEST_ID_KEY:
                span.set_attribute("http.response.header.x-request-id", (value,))
        # Server spans: a 4xx is the caller's doing, not a failure of the server (HTTP
        # semantic conventions), but the gateway's code still says which refusal it was.
        if error_code is not None:
            span.set_attribute("error.type", error_code)
        if code >= 500:
            _mark_error(span, error_code or str(code))
        return start_response(status, headers, exc_info)

    return recording


class _TracedBody:
    """The response body, ending the server span when the server closes it (PEP 3333)."""

    __slots__ = ("_body", "_end")

    def __init__(self, body: Iterable[bytes], end: _SpanEnd) -> None:
        self._body = body
        self._end = end

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except Exception as error:
            # A relay that failed mid-stream: the server aborts the connection.
            self._end.fail(error)
            raise

    def close(self) -> None:
        try:
            close_body(self._body)
        finally:
            self._end()


# -- wiring --------------------------------------------------------------------------------


def instrument(
    middleware: InvokeMiddleware,
    *,
    tracer_provider: TracerProvider | None = None,
    propagator: TextMapPropagator | None = None,
    trust_incoming_context: bool = True,
) -> TracingMiddleware:
    """Trace ``middleware``: wrap its pipeline's transports in :class:`TracingTransport` and
    return it wrapped in a :class:`TracingMiddleware` (serve that instead).

    A transport that already traces is left as it is, and one object serving both deployed
    and external services stays one object.
    """
    pipeline = middleware.pipeline
    shared = pipeline.egress_transport is pipeline.transport

    def traced(transport: Transport) -> Transport:
        if isinstance(transport, TracingTransport):
            return transport
        return TracingTransport(transport, tracer_provider=tracer_provider, propagator=propagator)

    pipeline.transport = traced(pipeline.transport)
    pipeline.egress_transport = pipeline.transport if shared else traced(pipeline.egress_transport)
    return TracingMiddleware(
        middleware,
        prefix=middleware.router.prefix,
        tracer_provider=tracer_provider,
        propagator=propagator,
        trust_incoming_context=trust_incoming_context,
    )
