"""Who may call what (docs/contract.md §7, §8), cell by cell, through the real middleware.

Every credential kind, by every role, on every route, in every team situation. The expected answer
of each cell comes from :func:`expected`, written from the tables of docs/contract.md §7, not from
the code.

Team situations:

- ``own``: ``X-Team-ID`` is the caller's team, the slug is that team's ``echo``;
- ``other``: ``X-Team-ID`` is the caller's team, the slug ``theirs`` belongs to another team;
- ``missing``: no ``X-Team-ID``;
- ``malformed``: ``X-Team-ID`` is not a UUID;
- ``elsewhere``: ``X-Team-ID`` names another team, where the user is not a member (the other
  team has its own ``echo``, so honouring the header would reach the wrong service).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import webtest

from invoke_middleware import CredentialKind, Role
from invoke_middleware.auth.keys import generate_key
from invoke_middleware.testing import mint_jwt
from tests.auth_matrix.conftest import OUR_BASE, assert_refused, user_token
from tests.toolkit.world import INVOKE_ENVELOPE, OTHER_TEAM, RELAY_BODY, TEAM, World, user

ROUTES = ("invoke", "catch_all", "list", "get")
SITUATIONS = ("own", "other", "missing", "malformed", "elsewhere")
#: Role labels; ``none`` is a user who is not a member of the team.
USER_ROLES = ("owner", "admin", "member", "viewer", "none")
#: Tokens that are no credential at all, each with the identity it pretends to have.
BAD_CREDENTIALS = (
    ("forged-jwt", "owner"),
    ("unknown-sk", "integration"),
    ("malformed-dk", "owner"),
    ("no-auth", "anonymous"),
)


@dataclass(frozen=True)
class Outcome:
    """What a cell must answer: a status, and the error ``code`` when it is refused."""

    status: int
    code: str | None = None


ALLOWED = Outcome(200)
UNAUTHENTICATED = Outcome(401, "unauthenticated")
FORBIDDEN = Outcome(403, "forbidden")
NOT_FOUND = Outcome(404, "service_not_found")


def expected(kind: str, role: str, route: str, situation: str) -> Outcome:
    """The contract's answer (docs/contract.md §7, §8) for one cell.

    §7: ``ak-`` keys and anything that is not a valid credential are 401. A JWT acts in the
    ``X-Team-ID`` team (missing → 400 ``missing_team``, malformed → 400); ``sk-`` and ``dk-``
    act in their own team and ignore the header. A user who is not a member of the team is
    403; invoke and relay need Member or above (a Viewer gets 403), list and get any role;
    integration keys may do everything in their team. §8: another team's slug is 404, as if
    it did not exist.
    """
    if kind in ("ak", *(name for name, _ in BAD_CREDENTIALS)):
        return UNAUTHENTICATED
    if kind == "jwt":
        if situation == "missing":
            return Outcome(400, "missing_team")
        if situation == "malformed":
            return Outcome(400, "invalid_request")
        if situation == "elsewhere":
            return FORBIDDEN
    if role == "none":
        return FORBIDDEN
    if situation == "other" and route != "list":
        return NOT_FOUND
    if route in ("invoke", "catch_all") and role == "viewer":
        return FORBIDDEN
    return ALLOWED


def _situations(route: str) -> tuple[str, ...]:
    # Listing names no service, so "another team's service" is not a situation it has.
    return tuple(s for s in SITUATIONS if route != "list" or s != "other")


def _identities() -> Iterator[tuple[str, str]]:
    for kind in ("jwt", "dk", "ak"):
        for role in USER_ROLES:
            yield kind, role
    yield "sk", "integration"
    yield from BAD_CREDENTIALS


CELL_VALUES = [
    (kind, role, route, situation)
    for kind, role in _identities()
    for route in ROUTES
    for situation in _situations(route)
]
CELLS = [pytest.param(*cell, id="-".join(cell)) for cell in CELL_VALUES]


def _role(label: str) -> Role | None:
    return None if label == "none" else Role(label)


@dataclass(frozen=True)
class Caller:
    """The tokens of every identity in the matrix, issued once into the module's world."""

    keys: dict[tuple[str, str], str]

    def token(self, kind: str, role: str) -> str | None:
        if kind == "jwt":
            return user_token(_role(role))
        if kind == "forged-jwt":
            forger_secret = "not-the-gateway-secret-" + "f" * 40
            return mint_jwt(secret_or_private_key=forger_secret, sub=user(Role.OWNER))
        if kind == "no-auth":
            return None
        return self.keys[(kind, role)]


@pytest.fixture(scope="module")
def world(make_auth_world: Any) -> World:
    built: World = make_auth_world()
    return built


@pytest.fixture(scope="module")
def caller(world: World) -> Caller:
    keys: dict[tuple[str, str], str] = {}
    for role in USER_ROLES:
        keys[("dk", role)] = world.issue(CredentialKind.DEVICE, _role(role))
        keys[("ak", role)] = world.issue(CredentialKind.AGENT, _role(role))
    keys[("sk", "integration")] = world.issue(CredentialKind.INTEGRATION)
    keys[("unknown-sk", "integration")] = generate_key(CredentialKind.INTEGRATION)
    # The right prefix and an owner's key, cut short: no longer a well-formed key.
    keys[("malformed-dk", "owner")] = keys[("dk", "owner")][:20]
    return Caller(keys)


@pytest.fixture(scope="module")
def unauthenticated_message(world: World) -> str:
    """The message of a request without any credentials; every 401 must say the same."""
    response = world.send("list", team=str(TEAM))
    assert response.status_int == 401
    message: str = response.json["error_message"]
    return message


@pytest.fixture
def matrix(world: World) -> World:
    world.reset()
    return world


def _request_for(situation: str) -> dict[str, Any]:
    if situation == "other":
        return {"slug": "theirs", "team": str(TEAM)}
    if situation == "missing":
        return {"team": None}
    if situation == "malformed":
        return {"team": "not-a-team-id"}
    if situation == "elsewhere":
        return {"team": str(OTHER_TEAM)}
    return {"team": str(TEAM)}


def _assert_allowed(world: World, route: str, response: webtest.TestResponse) -> None:
    assert response.status_int == 200, response.text
    received = world.upstream.received
    if route == "list":
        assert received == []
        services = response.json["services"]
        assert [s["slug"] for s in services] == ["echo"]
        assert {s["team_id"] for s in services} == {str(TEAM)}
    elif route == "get":
        assert received == []
        assert response.json["slug"] == "echo"
        assert response.json["team_id"] == str(TEAM)
    elif route == "invoke":
        assert response.json["status_code"] == 200
        assert [(r.method, r.target) for r in received] == [
            (INVOKE_ENVELOPE["method"], OUR_BASE + INVOKE_ENVELOPE["path"])
        ]
    else:
        assert [(r.method, r.target, r.body) for r in received] == [
            ("POST", OUR_BASE + "/x", RELAY_BODY)
        ]
    for forwarded in received:
        # The caller's credentials and team are the gateway's, never the container's (§3, §4).
        assert forwarded.header("Authorization") is None
        assert forwarded.header("X-Team-ID") is None


@pytest.mark.parametrize(("kind", "role", "route", "situation"), CELLS)
def test_each_cell_answers_what_the_spec_says(
    matrix: World,
    caller: Caller,
    unauthenticated_message: str,
    kind: str,
    role: str,
    route: str,
    situation: str,
) -> None:
    want = expected(kind, role, route, situation)
    token = caller.token(kind, role)

    response = matrix.send(route, token=token, **_request_for(situation))

    if want.status == 200:
        _assert_allowed(matrix, route, response)
        return
    assert want.code is not None
    assert_refused(matrix, response, want.status, want.code)
    if token is not None:
        assert token not in response.text
    if want.status == 401:
        assert response.json["error_message"] == unauthenticated_message


def test_the_matrix_covers_every_kind_role_route_and_situation() -> None:
    ids = {"-".join(cell) for cell in CELL_VALUES}
    assert "jwt-viewer-invoke-own" in ids
    assert "sk-integration-catch_all-elsewhere" in ids
    assert "dk-none-get-other" in ids
    assert not any(i.endswith("-list-other") for i in ids)
    # jwt, dk and ak for each of 5 roles, sk, and the bad credentials: 19 cells each.
    assert len(ids) == (3 * len(USER_ROLES) + 1 + len(BAD_CREDENTIALS)) * 19
    statuses = {expected(*cell).status for cell in CELL_VALUES}
    assert statuses == {200, 400, 401, 403, 404}
