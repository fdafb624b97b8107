"""Discovery never shows where a service lives or how the gateway authenticates to it.

``GET /r/containers`` and ``GET /r/containers/{slug}`` answer with metadata only: not the
deployed service's upstream URL, not an external service's URL, not its credential reference
(docs/contract.md §2). Checked on the raw response text, for every kind of caller allowed to list.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from invoke_middleware import CredentialKind, Role, Service, ServiceStatus, ServiceType
from tests.auth_matrix.conftest import user_token
from tests.toolkit.world import TEAM, World

EXTERNAL_URL = "https://partner.example/hidden-base-7f3a"
CREDENTIAL_REFERENCE = "vault:partner-token-91c2"
PRIVATE_FIELDS = ("upstream_url", "external_url", "external_auth_credential_id")


@pytest.fixture(scope="module")
def world(make_auth_world: Callable[..., World]) -> World:
    built = make_auth_world()
    built.registry.add(
        Service(
            id=uuid.uuid4(),
            team_id=TEAM,
            slug="partner",
            display_name="Partner",
            service_type=ServiceType.EXTERNAL,
            service_status=ServiceStatus.RUNNING,
            external_url=EXTERNAL_URL,
            external_auth_credential_id=CREDENTIAL_REFERENCE,
        )
    )
    return built


CALLERS: list[Any] = [
    pytest.param(lambda w: (user_token(Role.VIEWER), str(TEAM)), id="jwt-viewer"),
    pytest.param(lambda w: (user_token(Role.OWNER), str(TEAM)), id="jwt-owner"),
    pytest.param(lambda w: (w.issue(CredentialKind.DEVICE, Role.VIEWER), None), id="dk-viewer"),
    pytest.param(lambda w: (w.issue(CredentialKind.INTEGRATION), None), id="sk"),
]

REQUESTS = [
    pytest.param("list", "echo", id="list"),
    pytest.param("get", "echo", id="get-deployed"),
    pytest.param("get", "partner", id="get-external"),
]


@pytest.mark.parametrize(("route", "slug"), REQUESTS)
@pytest.mark.parametrize("make_caller", CALLERS)
def test_discovery_never_shows_upstreams_or_credential_references(
    world: World,
    make_caller: Callable[[World], tuple[str, str | None]],
    route: str,
    slug: str,
) -> None:
    world.reset()
    token, team = make_caller(world)

    response = world.send(route, slug=slug, token=token, team=team)

    assert response.status_int == 200, response.text
    text = response.text
    for secret in (world.upstream.url, "127.0.0.1", EXTERNAL_URL, "partner.example"):
        assert secret not in text
    assert CREDENTIAL_REFERENCE not in text
    for name in PRIVATE_FIELDS:
        assert name not in text
    if route == "list":
        assert [s["slug"] for s in response.json["services"]] == ["echo", "partner"]
    else:
        assert response.json["slug"] == slug
    assert world.upstream.received == []
