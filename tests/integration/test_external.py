"""External services (docs/contract.md §2, §5): reached over verified TLS through the egress
transport, with ``Authorization`` from the secret resolver replacing whatever the caller sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from invoke_middleware import HTTPTransport, Service
from tests.integration.gateway import RunningGateway, exchange, serve_gateway
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.servers import serve_wsgi
from tests.toolkit.world import TEAM, make_external_service
from tests.upstreams import TLSFiles

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SECRET = "Bearer upstream-secret-7f3a"
CREDENTIAL_ID = "vault:external-api"


@dataclass
class TLSUpstream:
    """A WSGI app served over TLS that records the target and ``Authorization`` of each request.

    werkzeug joins a repeated field's values with commas, so a duplicate would show.
    """

    url: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        target = environ["PATH_INFO"] + (
            "?" + environ["QUERY_STRING"] if environ["QUERY_STRING"] else ""
        )
        self.seen.append((target, environ.get("HTTP_AUTHORIZATION")))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
        return [b"external"]


@pytest.fixture
def tls_upstream(tls_files: TLSFiles) -> Iterator[TLSUpstream]:
    upstream = TLSUpstream()
    with serve_wsgi(upstream, ssl_context=tls_files.server_context()) as url:
        upstream.url = url
        yield upstream


def external_service(url: str, credential_id: str | None = CREDENTIAL_ID) -> Service:
    return make_external_service("partner", url + "/v2", credential_id=credential_id)


def secrets(credential_id: str) -> str | None:
    return {CREDENTIAL_ID: SECRET}.get(credential_id)


def _invoke(gateway: RunningGateway, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    reply = exchange(
        gateway,
        "POST",
        "/r/invoke/partner",
        [("Content-Type", "application/json")],
        json.dumps({"method": "GET", "path": "/items?page=2", "headers": headers}).encode(),
    )
    return reply.status, json.loads(reply.body)


def test_external_service_gets_the_resolved_secret_over_the_private_ca(
    tls_upstream: TLSUpstream, tls_files: TLSFiles
) -> None:
    with serve_gateway(
        [external_service(tls_upstream.url)],
        egress_transport=HTTPTransport(ca_bundle=tls_files.ca_cert),
        secret_resolver=secrets,
    ) as gateway:
        status, payload = _invoke(gateway, {"Authorization": "Bearer caller-value"})
        relayed = exchange(gateway, "GET", "/r/containers/partner/items?page=2")
    assert status == 200
    assert payload["status_code"] == 200
    assert relayed.status == 200
    assert relayed.body == b"external"
    # Once per request, and only the resolved value: neither the envelope's nor the
    # gateway credential of the catch-all caller.
    assert tls_upstream.seen == [("/v2/items?page=2", SECRET)] * 2
    assert SECRET.encode() not in relayed.body + json.dumps(payload).encode()


class TeamSecrets:
    """A host's resolver that keeps each team's secrets to that team's services."""

    def __init__(self) -> None:
        self.asked: list[tuple[uuid.UUID, str | None]] = []

    def secret_for(self, service: Service) -> str | None:
        self.asked.append((service.team_id, service.external_auth_credential_id))
        owned = {(TEAM, CREDENTIAL_ID): SECRET}
        return owned.get((service.team_id, service.external_auth_credential_id or ""))

    def __call__(self, credential_id: str) -> str | None:
        raise AssertionError("a resolver with secret_for is asked with the service")


def test_a_service_secret_resolver_is_told_the_service(
    tls_upstream: TLSUpstream, tls_files: TLSFiles
) -> None:
    resolver = TeamSecrets()
    with serve_gateway(
        [external_service(tls_upstream.url)],
        egress_transport=HTTPTransport(ca_bundle=tls_files.ca_cert),
        secret_resolver=resolver,
    ) as gateway:
        relayed = exchange(gateway, "GET", "/r/containers/partner/items")
    assert relayed.status == 200
    assert resolver.asked == [(TEAM, CREDENTIAL_ID)]
    assert tls_upstream.seen == [("/v2/items", SECRET)]


def test_external_service_behind_an_unknown_ca_is_unreachable(
    tls_upstream: TLSUpstream,
) -> None:
    # The default egress transport trusts the system store only, which lacks the private CA.
    with serve_gateway([external_service(tls_upstream.url)], secret_resolver=secrets) as gateway:
        relayed = exchange(gateway, "GET", "/r/containers/partner/items")
        status, payload = _invoke(gateway, {})
    assert_gateway_error(
        relayed, 502, "upstream_unreachable", hidden=["CERTIFICATE", "certificate"]
    )
    assert (status, payload["code"]) == (502, "upstream_unreachable")
    assert tls_upstream.seen == []


def test_missing_secret_is_a_502_and_nothing_reaches_the_service(
    tls_upstream: TLSUpstream, tls_files: TLSFiles
) -> None:
    credential_id = "vault:revoked"  # the resolver knows nothing of it
    with serve_gateway(
        [external_service(tls_upstream.url, credential_id)],
        egress_transport=HTTPTransport(ca_bundle=tls_files.ca_cert),
        secret_resolver=secrets,
    ) as gateway:
        relayed = exchange(gateway, "GET", "/r/containers/partner/items")
        status, payload = _invoke(gateway, {"Authorization": "Bearer caller-value"})
    assert_gateway_error(relayed, 502, "upstream_error", hidden=[credential_id])
    assert (status, payload["code"]) == (502, "upstream_error")
    assert tls_upstream.seen == []


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(SECRET + "\n", id="line-feed"),
        pytest.param("Bearer a\rb", id="carriage-return"),
        pytest.param("Bearer \u20ac", id="beyond-latin-1"),
    ],
)
def test_a_secret_that_cannot_be_sent_is_a_502_not_the_callers_fault(
    tls_upstream: TLSUpstream, tls_files: TLSFiles, secret: str
) -> None:
    with serve_gateway(
        [external_service(tls_upstream.url)],
        egress_transport=HTTPTransport(ca_bundle=tls_files.ca_cert),
        secret_resolver=lambda credential_id: secret,
    ) as gateway:
        relayed = exchange(gateway, "GET", "/r/containers/partner/items")
        status, payload = _invoke(gateway, {})
    assert_gateway_error(relayed, 502, "upstream_error", hidden=[secret.strip()])
    assert (status, payload["code"]) == (502, "upstream_error")
    assert tls_upstream.seen == []


def test_missing_secret_resolver_is_a_502_and_nothing_reaches_the_service(
    tls_upstream: TLSUpstream, tls_files: TLSFiles
) -> None:
    with serve_gateway(
        [external_service(tls_upstream.url)],
        egress_transport=HTTPTransport(ca_bundle=tls_files.ca_cert),
    ) as gateway:
        relayed = exchange(gateway, "GET", "/r/containers/partner/items")
    assert_gateway_error(relayed, 502, "upstream_error", hidden=[CREDENTIAL_ID])
    assert tls_upstream.seen == []


def test_external_service_without_a_credential_reference_gets_the_caller_value(
    tls_upstream: TLSUpstream, tls_files: TLSFiles
) -> None:
    with serve_gateway(
        [external_service(tls_upstream.url, credential_id=None)],
        egress_transport=HTTPTransport(ca_bundle=tls_files.ca_cert),
        secret_resolver=secrets,
    ) as gateway:
        status, payload = _invoke(gateway, {"Authorization": "Bearer caller-value"})
    assert (status, payload["status_code"]) == (200, 200)
    assert tls_upstream.seen == [("/v2/items?page=2", "Bearer caller-value")]
