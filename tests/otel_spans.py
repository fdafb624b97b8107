"""Spans of a traced world, caught by the SDK's in-memory exporter.

:func:`trace_world` serves a world's host through :func:`invoke_middleware.otel.instrument`
with a tracer provider of its own (the global one is never set, so tests stay independent);
:class:`Spans` finds the finished spans a test asserts on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from invoke_middleware import InvokeMiddleware
from invoke_middleware.otel import TracingMiddleware, instrument
from tests.toolkit.world import World

#: A caller's trace context, as a W3C traceparent (sampled).
CALLER_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN_ID = 0xB7AD6B7169203331
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


@dataclass(frozen=True, kw_only=True)
class Spans:
    """The finished spans of one traced world."""

    exporter: InMemorySpanExporter

    def all(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()

    def of_kind(self, kind: SpanKind) -> list[ReadableSpan]:
        return [span for span in self.all() if span.kind is kind]

    def one(self, kind: SpanKind) -> ReadableSpan:
        """The only finished span of ``kind``."""
        found = self.of_kind(kind)
        assert len(found) == 1, [span.name for span in self.all()]
        return found[0]


def traced(middleware: InvokeMiddleware, **options: Any) -> tuple[TracingMiddleware, Spans]:
    """``middleware`` through the tracing wrappers, with a provider of its own; and where
    its spans land."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = instrument(middleware, tracer_provider=provider, **options)
    return traced, Spans(exporter=exporter)


def trace_world(world: World, **options: Any) -> Spans:
    """Serve ``world``'s host through the tracing wrappers (``options`` go to
    :func:`~invoke_middleware.otel.instrument`); return where its spans land."""
    world.host.wsgi_app, spans = traced(world.middleware, **options)  # type: ignore[method-assign]
    return spans


def traceparent_of(span: ReadableSpan) -> str:
    """The W3C traceparent that names ``span``, with its flags."""
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
