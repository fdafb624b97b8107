"""No byte meant for one team reaches another: the gateway's pooled connections to an origin
two teams share are never shared between the teams (see the README's security notes)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import pytest

from invoke_middleware import HTTPTransport
from tests.toolkit.world import OTHER_TEAM, World, make_service
from tests.transport._hostile import HostileUpstream, serve_hostile
from tests.upstreams import TLSFiles, tls_files  # noqa: F401  (fixture)


@pytest.fixture(params=[pytest.param(False, id="plain"), pytest.param(True, id="tls")])
def hostile(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[HostileUpstream]:  # noqa: F811
    with serve_hostile(tls_files.server_context() if request.param else None) as upstream:
        yield upstream


@pytest.fixture
def shared_origin(
    make_world: Callable[..., World],
    hostile: HostileUpstream,
    tls_files: TLSFiles,  # noqa: F811
) -> World:
    """``echo`` of the team and ``theirs`` of the other team, both at the hostile upstream."""
    return make_world(
        services=[
            make_service("echo", hostile.url),
            make_service("theirs", hostile.url, team=OTHER_TEAM),
        ],
        transport=HTTPTransport(ca_bundle=tls_files.ca_cert),
    )


def _relay(world: World, slug: str, key: str, tail: str) -> bytes:
    response = world.app.get(f"/r/containers/{slug}/{tail}", headers=world.auth(key))
    assert response.status_int == 200
    return response.body


def _invoke(world: World, slug: str, key: str, path: str) -> bytes:
    response = world.invoke(slug, {"method": "GET", "path": "/" + path}, key=key)
    return base64.b64decode(json.loads(response.body)["body_base64"])


ROUTES = [pytest.param(_relay, id="catch-all"), pytest.param(_invoke, id="invoke")]


@pytest.mark.parametrize("call", ROUTES)
def test_teams_sharing_an_origin_never_share_a_connection(
    shared_origin: World, hostile: HostileUpstream, call: Callable[..., bytes]
) -> None:
    for _ in range(2):
        assert call(shared_origin, "echo", "sk", "say?word=ours") == b"ours"
        assert call(shared_origin, "theirs", "sk-other", "say?word=theirs") == b"theirs"

    assert hostile.connections_accepted == 2


@pytest.mark.parametrize("call", ROUTES)
def test_bytes_an_upstream_plants_for_the_next_caller_never_reach_another_team(
    shared_origin: World, call: Callable[..., bytes]
) -> None:
    call(shared_origin, "echo", "sk", "surplus-split?word=ours")

    assert call(shared_origin, "theirs", "sk-other", "say?word=theirs") == b"theirs"
