"""Revocation, expiry, role changes and removals apply on the very next request
(docs/contract.md §7).

Every test runs twice: with the JWT resolver's verified-token cache off, and on
(``cache_size=100``); a cached token must still meet the user's current role.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from invoke_middleware import CredentialKind, JWTResolver, MembershipStore, Role
from tests.auth_matrix.conftest import assert_refused, hs256_resolver, user_token
from tests.toolkit.world import TEAM, World, user

MEMBER = user(Role.MEMBER)

KINDS = [
    pytest.param(CredentialKind.INTEGRATION, id="sk"),
    pytest.param(CredentialKind.DEVICE, id="dk"),
]


@pytest.fixture(params=[0, 100], ids=["token-cache-off", "token-cache-on"])
def cache_size(request: pytest.FixtureRequest) -> int:
    size: int = request.param
    return size


@pytest.fixture
def world(make_auth_world: Callable[..., World], cache_size: int) -> World:
    def resolver(members: MembershipStore) -> JWTResolver:
        return hs256_resolver(members, cache_size=cache_size)

    built = make_auth_world(jwt_resolver=resolver)
    built.reset()
    return built


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every JWT whose signature was checked, in order."""
    checked: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        checked.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return checked


def issue(world: World, kind: CredentialKind, user_id: str | None = MEMBER) -> tuple[str, Any]:
    """A key of ``kind`` in the team (a device key for ``user_id``): the raw key and its id."""
    issued = world.credentials.issue(
        kind, team_id=TEAM, user_id=None if kind is CredentialKind.INTEGRATION else user_id
    )
    return issued.key, issued.record.id


def invoke(world: World, token: str) -> Any:
    world.reset()
    return world.send("invoke", token=token, team=str(TEAM))


def assert_invoked(world: World, response: Any) -> None:
    assert response.status_int == 200, response.text
    assert len(world.upstream.received) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_revoked_key_is_refused_on_the_very_next_request(
    world: World, kind: CredentialKind
) -> None:
    key, key_id = issue(world, kind)
    sibling, _ = issue(world, kind)
    assert_invoked(world, invoke(world, key))

    assert world.credentials.revoke(key_id)

    assert_refused(world, invoke(world, key), 401, "unauthenticated")
    world.reset()
    assert_refused(world, world.send("list", token=key), 401, "unauthenticated")
    # Only that key: another of the same team and kind still works.
    assert_invoked(world, invoke(world, sibling))


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_expired_to_the_past_is_refused_on_the_very_next_request(
    world: World, kind: CredentialKind
) -> None:
    key, key_id = issue(world, kind)
    now = dt.datetime.now(dt.UTC)
    assert world.credentials.expire(key_id, now + dt.timedelta(hours=1))
    assert_invoked(world, invoke(world, key))

    assert world.credentials.expire(key_id, now - dt.timedelta(seconds=1))

    assert_refused(world, invoke(world, key), 401, "unauthenticated")
    world.reset()
    assert_refused(world, world.send("catch_all", token=key), 401, "unauthenticated")


def test_a_device_key_follows_its_users_role_both_ways(world: World) -> None:
    key, _ = issue(world, CredentialKind.DEVICE)
    assert_invoked(world, invoke(world, key))

    world.memberships.set_role(TEAM, MEMBER, Role.VIEWER)
    assert_refused(world, invoke(world, key), 403, "forbidden")
    world.reset()
    assert world.send("list", token=key).status_int == 200

    world.memberships.set_role(TEAM, MEMBER, Role.MEMBER)
    assert_invoked(world, invoke(world, key))


def test_a_device_key_whose_user_left_the_team_is_forbidden_on_the_next_request(
    world: World,
) -> None:
    key, _ = issue(world, CredentialKind.DEVICE)
    assert_invoked(world, invoke(world, key))

    assert world.memberships.remove(TEAM, MEMBER)

    assert_refused(world, invoke(world, key), 403, "forbidden")
    world.reset()
    assert_refused(world, world.send("list", token=key), 403, "forbidden")


def test_a_user_token_follows_the_users_role_both_ways(
    world: World, cache_size: int, verifications: list[str]
) -> None:
    token = user_token(Role.MEMBER)
    assert_invoked(world, invoke(world, token))

    world.memberships.set_role(TEAM, MEMBER, Role.VIEWER)
    assert_refused(world, invoke(world, token), 403, "forbidden")

    world.memberships.set_role(TEAM, MEMBER, Role.MEMBER)
    assert_invoked(world, invoke(world, token))

    # With the cache on, the signature was checked once: the role was read every time.
    assert len(verifications) == (1 if cache_size else 3)


def test_a_user_token_of_a_user_who_left_the_team_is_forbidden_on_the_next_request(
    world: World, cache_size: int, verifications: list[str]
) -> None:
    token = user_token(Role.MEMBER)
    assert_invoked(world, invoke(world, token))

    assert world.memberships.remove(TEAM, MEMBER)

    assert_refused(world, invoke(world, token), 403, "forbidden")
    world.reset()
    assert_refused(world, world.send("get", token=token, team=str(TEAM)), 403, "forbidden")

    world.memberships.set_role(TEAM, MEMBER, Role.MEMBER)
    assert_invoked(world, invoke(world, token))
    assert len(verifications) == (1 if cache_size else 4)


def test_a_role_change_reaches_every_credential_of_the_user_at_once(world: World) -> None:
    token = user_token(Role.MEMBER)
    key, _ = issue(world, CredentialKind.DEVICE)
    assert_invoked(world, invoke(world, token))
    assert_invoked(world, invoke(world, key))

    world.memberships.set_role(TEAM, MEMBER, Role.VIEWER)

    assert_refused(world, invoke(world, token), 403, "forbidden")
    assert_refused(world, invoke(world, key), 403, "forbidden")
