"""The pipeline owns its transports: one default rule for each, closed once each."""

from __future__ import annotations

from invoke_middleware import InvokeMiddleware
from invoke_middleware.pipeline import Pipeline
from invoke_middleware.registry import InMemoryServiceRegistry
from invoke_middleware.testing import MockTransport, make_response
from invoke_middleware.transport.http import HTTPTransport


class CountingTransport(MockTransport):
    def __init__(self) -> None:
        super().__init__(lambda request: make_response(200))
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


def host_app(environ: object, start_response: object) -> list[bytes]:
    raise AssertionError("not reached")


def test_each_transport_left_out_is_an_http_transport_of_its_own() -> None:
    pipeline = Pipeline(registry=InMemoryServiceRegistry(), resolvers=[])
    assert isinstance(pipeline.transport, HTTPTransport)
    assert isinstance(pipeline.egress_transport, HTTPTransport)
    assert pipeline.egress_transport is not pipeline.transport
    pipeline.close()


def test_an_explicit_transport_does_not_become_the_egress_transport() -> None:
    transport = CountingTransport()
    middleware = InvokeMiddleware(host_app, transport=transport)
    assert middleware.pipeline.transport is transport
    assert isinstance(middleware.pipeline.egress_transport, HTTPTransport)
    middleware.close()
    assert transport.closes == 1


def test_closing_the_middleware_closes_each_transport_once() -> None:
    transport, egress = CountingTransport(), CountingTransport()
    InvokeMiddleware(host_app, transport=transport, egress_transport=egress).close()
    assert (transport.closes, egress.closes) == (1, 1)


def test_a_transport_passed_twice_is_closed_once() -> None:
    shared = CountingTransport()
    Pipeline(
        registry=InMemoryServiceRegistry(), resolvers=[], transport=shared, egress_transport=shared
    ).close()
    assert shared.closes == 1
