"""Lifecycles: transports and responses are context managers whose exit calls ``close()``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pytest
import requests

from invoke_middleware.transport import (
    HTTPTransport,
    RequestsTransport,
    Transport,
    UpstreamRequest,
    WSGITransport,
)
from tests.toolkit.upstream import repeating_bytes
from tests.upstreams import RawUpstream

from ._helpers import QUICK, fetch

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def _get(url: str) -> UpstreamRequest:
    return UpstreamRequest(method="GET", url=url, headers=(), timeouts=QUICK)


def test_leaving_the_with_block_of_a_read_response_keeps_its_connection(
    wire: Transport, raw_upstream: RawUpstream
) -> None:
    for _ in range(2):
        with wire.send(_get(raw_upstream.url + "/download?size=1000")) as response:
            assert b"".join(response) == repeating_bytes(1000)

    assert raw_upstream.connections_accepted == 1


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(10, id="body-in-hand-with-the-head"),
        pytest.param(1 << 20, id="body-still-to-come"),
    ],
)
def test_a_closed_response_yields_nothing_more(
    wire: Transport, raw_upstream: RawUpstream, size: int
) -> None:
    response = wire.send(_get(raw_upstream.url + f"/download?size={size}"))

    response.close()

    assert list(response) == []


def test_http_transport_is_closed_when_its_with_block_ends(raw_upstream: RawUpstream) -> None:
    with HTTPTransport() as transport:
        _, body = fetch(transport, "GET", raw_upstream.url + "/download?size=10")

    assert body == repeating_bytes(10)
    with pytest.raises(RuntimeError, match="closed"):
        transport.send(_get(raw_upstream.url + "/download?size=10"))


def _record_session_closes(monkeypatch: pytest.MonkeyPatch) -> list[requests.Session]:
    """Every ``requests.Session.close()`` call from now on, by the session closed."""
    closed: list[requests.Session] = []

    def close(session: requests.Session) -> None:
        closed.append(session)

    monkeypatch.setattr(requests.Session, "close", close)
    return closed


def test_requests_transport_closes_the_session_it_created_when_its_with_block_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = _record_session_closes(monkeypatch)

    with RequestsTransport():
        assert closed == []

    assert len(closed) == 1


def test_requests_transport_leaves_a_session_it_was_given_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = _record_session_closes(monkeypatch)
    session = requests.Session()

    with RequestsTransport(session):
        pass

    assert closed == []


def test_requests_transport_refuses_a_session_with_proxies() -> None:
    session = requests.Session()
    session.proxies = {"http": "http://proxy.internal:3128"}

    with pytest.raises(ValueError, match="proxies"):
        RequestsTransport(session)
    session.close()


def test_leaving_the_with_block_of_a_wsgi_response_closes_the_applications_iterable() -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield from (b"first", b"second")

        def close(self) -> None:
            closed.append(True)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Body()

    with WSGITransport(app) as transport, transport.send(_get("http://svc.internal/")) as response:
        assert next(iter(response)) == b"first"
        assert closed == []

    assert closed == [True]
