"""Worlds with both auth resolvers, for the auth matrix.

The middleware asks a :class:`CredentialResolver` (``sk-``/``dk-``/``ak-`` keys) and then a
:class:`JWTResolver`; both read the same membership store. Two teams each own a service
called ``echo`` on the same recording loopback upstream, under different base paths
(``/ours`` and ``/theirs``), so a request that reached the wrong team's service would show in
the upstream's record. The other team also owns ``theirs``, which this team cannot see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest

from invoke_middleware import (
    CredentialResolver,
    HTTPTransport,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    JWTResolver,
    MembershipStore,
    Role,
    Transport,
)
from invoke_middleware.testing import mint_jwt
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.upstream import RecordingUpstream, recording_upstream
from tests.toolkit.world import (
    OTHER_TEAM,
    World,
    build_world,
    make_service,
    user,
)

SECRET = "auth-matrix-hs256-secret-" + "k" * 40
OUR_BASE = "/ours"
THEIR_BASE = "/theirs"
#: A member of the other team, so that team is not empty.
STRANGER = "stranger"

JWTFactory = Callable[[MembershipStore], JWTResolver]


def hs256_resolver(memberships: MembershipStore, **options: Any) -> JWTResolver:
    """The HS256 resolver most tests use, with :data:`SECRET`."""
    return JWTResolver(memberships, key=SECRET, algorithms=["HS256"], **options)


def user_token(role: Role | None, **claims: Any) -> str:
    """An HS256 token, signed with :data:`SECRET`, for the user holding ``role``."""
    return mint_jwt(secret_or_private_key=SECRET, sub=user(role), **claims)


def build_auth_world(
    upstream: RecordingUpstream,
    *,
    transport: Transport,
    jwt_resolver: JWTFactory = hs256_resolver,
) -> World:
    """A fresh world with both resolvers: every role of :data:`TEAM` filled.

    ``transport`` is shared, so building a world costs no new TLS context; its owner closes it.
    """
    credentials = InMemoryCredentialStore()
    memberships = InMemoryMembershipStore()
    memberships.set_role(OTHER_TEAM, STRANGER, Role.OWNER)
    return build_world(
        upstream,
        services=[
            make_service("echo", upstream.url + OUR_BASE),
            make_service("echo", upstream.url + THEIR_BASE, team=OTHER_TEAM),
            make_service("theirs", upstream.url + THEIR_BASE, team=OTHER_TEAM),
        ],
        credentials=credentials,
        memberships=memberships,
        resolvers=[CredentialResolver(credentials, memberships), jwt_resolver(memberships)],
        transport=transport,
        egress_transport=transport,
    )


def assert_refused(world: World, response: webtest.TestResponse, status: int, code: str) -> None:
    """The gateway itself refused: its error body and marker, and nothing went upstream."""
    assert_gateway_error(response, status, code)
    assert world.upstream.received == []
    assert world.started == []
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    else:
        assert "WWW-Authenticate" not in response.headers


@pytest.fixture(scope="module")
def matrix_upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


@pytest.fixture(scope="module")
def make_auth_world(
    matrix_upstream: RecordingUpstream,
) -> Iterator[Callable[..., World]]:
    """Build worlds on the module's upstream and one transport, closed with the module."""
    transport = HTTPTransport()

    def make(**options: Any) -> World:
        return build_auth_world(matrix_upstream, transport=transport, **options)

    yield make
    transport.close()
