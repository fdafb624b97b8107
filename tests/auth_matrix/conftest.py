"""A Flask host wrapped by the middleware with both auth resolvers, for the auth matrix.

The middleware asks a :class:`CredentialResolver` (``sk-``/``dk-``/``ak-`` keys) and then a
:class:`JWTResolver`; both read the same membership store. Two teams each own a service
called ``echo`` on the same recording loopback upstream, under different base paths
(``/ours`` and ``/theirs``), so a request that reached the wrong team's service would show in
the upstream's record. The other team also owns ``theirs``, which this team cannot see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import flask
import pytest
import webtest

from invoke_middleware import (
    ERROR_MARKER_HEADER,
    REQUEST_ID_HEADER,
    CredentialResolver,
    HTTPTransport,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    InMemoryServiceRegistry,
    InvokeMiddleware,
    JWTResolver,
    KeyKind,
    MembershipStore,
    RelayStarted,
    Role,
    Transport,
)
from invoke_middleware.testing import mint_jwt
from tests.gateway.conftest import OTHER_TEAM, TEAM, make_service
from tests.gateway.recording_upstream import RecordingUpstream, recording_upstream

__all__ = ["OTHER_TEAM", "TEAM"]

SECRET = "auth-matrix-hs256-secret-" + "k" * 40
OUR_BASE = "/ours"
THEIR_BASE = "/theirs"
#: A member of the other team, so that team is not empty.
STRANGER = "stranger"

#: What an invoke asks the container for, and what a relay sends it.
INVOKE_ENVELOPE = {"method": "GET", "path": "/x"}
RELAY_BODY = b"relay-body"

JWTFactory = Callable[[MembershipStore], JWTResolver]


def user(role: Role | None) -> str:
    """The user id holding ``role`` in :data:`TEAM` (``None``: a user in no team at all)."""
    return f"user-{role.value}" if role is not None else "user-none"


def hs256_resolver(memberships: MembershipStore, **options: Any) -> JWTResolver:
    """The HS256 resolver most tests use, with :data:`SECRET`."""
    return JWTResolver(memberships, key=SECRET, algorithms=["HS256"], **options)


def user_token(role: Role | None, **claims: Any) -> str:
    """An HS256 token, signed with :data:`SECRET`, for the user holding ``role``."""
    return mint_jwt(secret_or_private_key=SECRET, sub=user(role), **claims)


@dataclass
class AuthWorld:
    """The wrapped host, its stores and the upstream behind it."""

    app: webtest.TestApp
    middleware: InvokeMiddleware
    upstream: RecordingUpstream
    registry: InMemoryServiceRegistry
    credentials: InMemoryCredentialStore
    memberships: InMemoryMembershipStore
    started: list[RelayStarted] = field(default_factory=list)

    def reset(self) -> None:
        """Forget what earlier requests left in the upstream's record and the hooks."""
        self.upstream.received.clear()
        self.started.clear()

    def send(
        self,
        route: str,
        *,
        slug: str = "echo",
        token: str | None = None,
        team: str | None = None,
    ) -> webtest.TestResponse:
        """One request on ``route`` (``invoke``, ``relay``, ``list`` or ``get``)."""
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if team is not None:
            headers["X-Team-ID"] = team
        if route == "invoke":
            return self.app.post_json(
                f"/r/invoke/{slug}", INVOKE_ENVELOPE, headers=headers, expect_errors=True
            )
        if route == "catch_all":
            headers["Content-Type"] = "application/octet-stream"
            return self.app.post(
                f"/r/containers/{slug}/x", RELAY_BODY, headers=headers, expect_errors=True
            )
        if route == "list":
            return self.app.get("/r/containers", headers=headers, expect_errors=True)
        if route == "get":
            return self.app.get(f"/r/containers/{slug}", headers=headers, expect_errors=True)
        raise ValueError(f"unknown route {route!r}")


def build_auth_world(
    upstream: RecordingUpstream,
    *,
    transport: Transport,
    jwt_resolver: JWTFactory = hs256_resolver,
) -> AuthWorld:
    """A fresh host, middleware and stores: every role of :data:`TEAM` filled.

    ``transport`` is shared, so building a world costs no new TLS context; its owner closes it.
    """
    credentials = InMemoryCredentialStore()
    memberships = InMemoryMembershipStore()
    for role in Role:
        memberships.set_role(TEAM, user(role), role)
    memberships.set_role(OTHER_TEAM, STRANGER, Role.OWNER)
    registry = InMemoryServiceRegistry(
        [
            make_service("echo", upstream.url + OUR_BASE),
            make_service("echo", upstream.url + THEIR_BASE, team=OTHER_TEAM),
            make_service("theirs", upstream.url + THEIR_BASE, team=OTHER_TEAM),
        ]
    )
    started: list[RelayStarted] = []
    host = flask.Flask("auth-matrix-host")
    middleware = InvokeMiddleware(
        host.wsgi_app,
        registry=registry,
        credentials=credentials,
        memberships=memberships,
        resolvers=[CredentialResolver(credentials, memberships), jwt_resolver(memberships)],
        transport=transport,
        egress_transport=transport,
        before_relay=[started.append],
    )
    host.wsgi_app = middleware  # type: ignore[method-assign]
    return AuthWorld(
        app=webtest.TestApp(host),
        middleware=middleware,
        upstream=upstream,
        registry=registry,
        credentials=credentials,
        memberships=memberships,
        started=started,
    )


def issue_key(world: AuthWorld, kind: KeyKind, role: Role | None = None) -> str:
    """A raw key of ``kind`` in :data:`TEAM`; device and agent keys belong to ``role``'s user."""
    user_id = None if kind is KeyKind.INTEGRATION else user(role)
    return world.credentials.issue(kind, team_id=TEAM, user_id=user_id).key


def assert_refused(
    world: AuthWorld, response: webtest.TestResponse, status: int, code: str
) -> None:
    """The gateway itself refused: its error body and marker, and nothing went upstream."""
    assert response.status_int == status, response.text
    assert world.upstream.received == []
    assert world.started == []
    assert response.content_type == "application/json"
    body = response.json
    assert body["code"] == code
    assert response.headers[ERROR_MARKER_HEADER] == code
    assert response.headers[REQUEST_ID_HEADER] == body["request_id"]
    assert body["request_id"]
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
) -> Iterator[Callable[..., AuthWorld]]:
    """Build worlds on the module's upstream and one transport, closed with the module."""
    transport = HTTPTransport()

    def make(**options: Any) -> AuthWorld:
        return build_auth_world(matrix_upstream, transport=transport, **options)

    yield make
    transport.close()
