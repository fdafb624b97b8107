"""A pooled connection carries one tenant's exchanges and nothing else.

Whatever an upstream sends past the end of a response (in the same write, in a later one, in
the TLS layer's buffer, as a body after a ``HEAD`` answer), the next request is answered by
its own response: another tenant's never shares the connection, and the same tenant's only
gets it back when nothing is left on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import requests.adapters

from invoke_middleware.transport import HTTPTransport, RequestsTransport, Transport
from tests.upstreams import TLSFiles

from ._helpers import fetch
from ._hostile import HostileUpstream, serve_hostile

SCHEMES = [pytest.param("http", id="plain"), pytest.param("https", id="tls")]
KINDS = [pytest.param("http", id="http-transport"), pytest.param("requests", id="requests")]

#: Each hostile answer: (method, path). The late ones plant their bytes 50 ms after.
HOSTILE = [
    pytest.param("GET", "/surplus?word=first", id="surplus-same-write"),
    pytest.param("GET", "/surplus-split?word=first", id="surplus-own-write"),
    pytest.param("GET", "/late?word=first", id="late-bytes"),
    pytest.param("HEAD", "/head-body", id="body-after-head"),
    pytest.param("HEAD", "/head-body?late=1", id="late-body-after-head"),
]


@pytest.fixture(params=SCHEMES)
def hostile(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[HostileUpstream]:
    context = tls_files.server_context() if request.param == "https" else None
    with serve_hostile(context) as upstream:
        yield upstream


@pytest.fixture(params=KINDS)
def transport(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[Transport]:
    kind: Transport
    if request.param == "http":
        kind = HTTPTransport(ca_bundle=tls_files.ca_cert)
    else:
        kind = RequestsTransport(ca_bundle=tls_files.ca_cert)
    yield kind
    kind.close()


def _say(transport: Transport, upstream: HostileUpstream, word: str, tenant: str) -> bytes:
    _, body = fetch(transport, "GET", f"{upstream.url}/say?word={word}", tenant=tenant)
    return body


def _provoke(
    transport: Transport, upstream: HostileUpstream, method: str, path: str, tenant: str
) -> None:
    fetch(transport, method, upstream.url + path, tenant=tenant)
    if "late" in path:
        # The planted bytes are on their way before the next request is sent.
        assert upstream.late_sent.wait(10)


@pytest.mark.parametrize(("method", "path"), HOSTILE)
def test_another_tenant_gets_its_own_answer_after_a_hostile_one(
    transport: Transport, hostile: HostileUpstream, method: str, path: str
) -> None:
    _provoke(transport, hostile, method, path, tenant="team-a")

    assert _say(transport, hostile, "team-b", tenant="team-b") == b"team-b"


@pytest.mark.parametrize(("method", "path"), HOSTILE)
def test_same_tenant_gets_its_own_answer_after_a_hostile_one(
    transport: Transport, hostile: HostileUpstream, method: str, path: str
) -> None:
    _provoke(transport, hostile, method, path, tenant="team-a")

    assert _say(transport, hostile, "again", tenant="team-a") == b"again"


@pytest.mark.parametrize(("method", "path"), HOSTILE)
def test_connection_with_bytes_past_its_response_is_not_reused(
    transport: Transport, hostile: HostileUpstream, method: str, path: str
) -> None:
    _provoke(transport, hostile, method, path, tenant="team-a")
    _say(transport, hostile, "again", tenant="team-a")

    assert hostile.connections_accepted == 2


def test_two_tenants_never_share_a_pooled_connection(
    transport: Transport, hostile: HostileUpstream
) -> None:
    for _ in range(3):
        for tenant in ("team-a", "team-b"):
            assert _say(transport, hostile, tenant, tenant=tenant) == tenant.encode()

    # One kept-alive connection per tenant, each reused: never one for both.
    assert hostile.connections_accepted == 2


def test_one_tenant_reuses_its_pooled_connection(
    transport: Transport, hostile: HostileUpstream
) -> None:
    for word in ("one", "two", "three"):
        assert _say(transport, hostile, word, tenant="team-a") == word.encode()

    assert hostile.connections_accepted == 1


def test_idle_connections_kept_in_all_are_bounded(
    hostile: HostileUpstream, tls_files: TLSFiles
) -> None:
    with HTTPTransport(max_idle_connections=1, ca_bundle=tls_files.ca_cert) as transport:
        _say(transport, hostile, "a", tenant="team-a")
        _say(transport, hostile, "b", tenant="team-b")  # kept; team-a's is closed
        _say(transport, hostile, "b", tenant="team-b")
        _say(transport, hostile, "a", tenant="team-a")

    assert hostile.connections_accepted == 3


class _MarkedAdapter(requests.adapters.HTTPAdapter):
    """An adapter subclass with a setting of its own, as hosts write them."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        super().__init__(pool_maxsize=2)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        assert self.marker == "mine"
        super().init_poolmanager(*args, **kwargs)


def test_tenant_pools_of_a_mounted_adapter_subclass_keep_its_settings(
    hostile: HostileUpstream, tls_files: TLSFiles
) -> None:
    with requests.Session() as session:
        session.mount(hostile.url, _MarkedAdapter("mine"))
        transport = RequestsTransport(session, ca_bundle=tls_files.ca_cert)
        try:
            for tenant in ("team-a", "team-b", "team-a"):
                assert _say(transport, hostile, tenant, tenant=tenant) == tenant.encode()
        finally:
            transport.close()

    assert hostile.connections_accepted == 2
