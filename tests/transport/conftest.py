"""Fixtures for the transport tests: real upstreams on loopback, one transport per kind."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from invoke_middleware.transport import (
    HTTPTransport,
    RequestsTransport,
    Transport,
    WSGITransport,
)
from tests.upstreams import (  # noqa: F401  (fixtures)
    httpbin_url,
    raw_upstream,
    scripted_app,
    scripted_url,
    tls_files,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


@dataclass(frozen=True, kw_only=True)
class Upstreams:
    """One transport, and the base URLs under which it reaches httpbin and the scripted app."""

    transport: Transport
    httpbin: str
    scripted: str
    host_header: str  # what the httpbin URL's Host header reads


def _by_host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    import httpbin  # type: ignore[import-untyped]

    if environ["SERVER_NAME"] == "httpbin.test":
        result: Iterable[bytes] = httpbin.app(environ, start_response)
        return result
    return scripted_app(environ, start_response)


WIRE_KINDS = [pytest.param("http", id="http"), pytest.param("requests", id="requests")]
ALL_KINDS = [*WIRE_KINDS, pytest.param("wsgi", id="wsgi")]


def wire_transport(kind: str) -> Transport:
    """A socket transport of the given kind with its defaults."""
    return HTTPTransport() if kind == "http" else RequestsTransport()


@pytest.fixture(params=ALL_KINDS)
def upstreams(request: pytest.FixtureRequest) -> Iterator[Upstreams]:
    """Each transport in turn, over real servers (or in process, for the WSGI transport)."""
    kind: str = request.param
    if kind == "wsgi":
        transport: Transport = WSGITransport(_by_host)
        yield Upstreams(
            transport=transport,
            httpbin="http://httpbin.test",
            scripted="http://scripted.test",
            host_header="httpbin.test",
        )
    else:
        httpbin_url: str = request.getfixturevalue("httpbin_url")
        scripted_url: str = request.getfixturevalue("scripted_url")
        transport = wire_transport(kind)
        yield Upstreams(
            transport=transport,
            httpbin=httpbin_url,
            scripted=scripted_url,
            host_header=httpbin_url.removeprefix("http://"),
        )
    transport.close()


@pytest.fixture(params=WIRE_KINDS)
def wire(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """Each socket transport in turn."""
    transport = wire_transport(request.param)
    yield transport
    transport.close()
