"""Upstream answers a WSGI server must not be handed as they are: the gateway shapes them,
under any server. A field the servers refuse (``Trailers`` and the other hop-by-hop names) is
dropped and the body relayed; a ``101`` to a caller that asked for no upgrade is a 502."""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Callable, Iterator

import pytest

from invoke_middleware import PipelineSettings, Timeouts
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.servers import serve_waitress, serve_wsgiref
from tests.toolkit.world import World, make_service
from tests.transport._hostile import HostileUpstream, serve_hostile
from tests.upstreams import RawUpstream

SERVERS = [pytest.param(serve_wsgiref, id="wsgiref"), pytest.param(serve_waitress, id="waitress")]


@pytest.fixture
def hostile() -> Iterator[HostileUpstream]:
    with serve_hostile() as upstream:
        yield upstream


@pytest.fixture
def world(make_world: Callable[..., World], hostile: HostileUpstream) -> World:
    return make_world(services=[make_service("echo", hostile.url)])


class _Reply:
    """A reply read off the socket, in the shape ``assert_gateway_error`` reads."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.getheaders()
        self.header = response.getheader
        self.body = response.read()


def _get(url: str, path: str, world: World, *, method: str = "GET", body: bytes = b"") -> _Reply:
    host = url.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=20)
    try:
        headers = {**world.auth(), "Content-Type": "application/json"}
        connection.request(method, path, body=body or None, headers=headers)
        return _Reply(connection.getresponse())
    finally:
        connection.close()


@pytest.mark.parametrize("serve", SERVERS)
def test_fields_a_wsgi_server_refuses_are_dropped_and_the_body_relayed(
    world: World, serve: Callable[..., contextlib.AbstractContextManager[str]]
) -> None:
    with serve(world.host) as url:
        reply = _get(url, "/r/containers/echo/trailers", world)

    assert reply.status == 200
    assert reply.body == b"hello"
    names = {name.lower() for name, _ in reply.headers}
    assert "trailers" not in names
    assert "x-hop" not in names
    assert reply.header("X-Kept") == "yes"
    assert world.finished[-1].status == 200


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize("route", ["catch-all", "invoke"])
def test_a_101_to_a_caller_that_asked_for_no_upgrade_is_a_502(
    world: World, serve: Callable[..., contextlib.AbstractContextManager[str]], route: str
) -> None:
    with serve(world.host) as url:
        if route == "catch-all":
            reply = _get(url, "/r/containers/echo/switch", world)
        else:
            envelope = b'{"method": "GET", "path": "/switch"}'
            reply = _get(url, "/r/invoke/echo", world, method="POST", body=envelope)

    assert_gateway_error(reply, 502, "upstream_error", hidden=["hello", "Switching"])
    assert world.finished[-1].error_code == "upstream_error"


@pytest.mark.parametrize("serve", SERVERS)
def test_an_upstream_that_fails_before_its_first_body_byte_is_the_gateway_s_error(
    make_world: Callable[..., World],
    raw_upstream: RawUpstream,
    serve: Callable[..., contextlib.AbstractContextManager[str]],
) -> None:
    # The head came, then nothing past the read timeout. Servers send the response's head
    # with its first body byte, so nothing had reached the client: it was the server's own
    # HTML 500; it is the gateway's 504 in its format.
    timeouts = Timeouts(connect=2.0, read=0.3, total=10.0)
    world = make_world(
        services=[make_service("drip", raw_upstream.url)],
        settings=PipelineSettings(timeouts=timeouts),
    )
    with serve(world.host) as url:
        reply = _get(url, "/r/containers/drip/drip?count=3&interval=2", world)
    assert_gateway_error(reply, 504, "upstream_timeout")
    assert (world.finished[-1].status, world.finished[-1].error_code) == (504, "upstream_timeout")
