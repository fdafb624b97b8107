from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest

from invoke_middleware.auth import (
    InMemoryMembershipStore,
    JWTResolver,
    Role,
    VerifiedToken,
    VerifiedTokenCache,
)
from invoke_middleware.errors import ForbiddenError, UnauthenticatedError
from invoke_middleware.testing import mint_jwt
from tests.auth.helpers import FakeEpochClock, gateway_request

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")
SECRET = "cache-secret-" + "c" * 40
START = 2_000_000_000.0


def verified(expires_at: float, subject: str = "alice") -> VerifiedToken:
    return VerifiedToken(subject=subject, token_id=None, expires_at=expires_at)


def test_a_cached_token_is_served_until_its_exp_and_not_at_it() -> None:
    clock = FakeEpochClock(START)
    cache = VerifiedTokenCache(10, max_age=3600, clock=clock)
    cache.put("token", verified(START + 60))

    clock.now = START + 59.9
    assert cache.get("token") == verified(START + 60)
    clock.now = START + 60
    assert cache.get("token") is None
    assert len(cache) == 0


def test_an_entry_never_outlives_max_age_even_with_a_distant_exp() -> None:
    clock = FakeEpochClock(START)
    cache = VerifiedTokenCache(10, max_age=30, clock=clock)
    cache.put("token", verified(START + 86_400))

    clock.now = START + 30

    assert cache.get("token") is None


def test_an_already_expired_token_is_not_cached() -> None:
    clock = FakeEpochClock(START)
    cache = VerifiedTokenCache(10, clock=clock)

    cache.put("token", verified(START - 1))

    assert len(cache) == 0


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = VerifiedTokenCache(2, clock=FakeEpochClock(START))
    cache.put("a", verified(START + 60, "a"))
    cache.put("b", verified(START + 60, "b"))
    assert cache.get("a") is not None

    cache.put("c", verified(START + 60, "c"))

    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None


@pytest.mark.parametrize(
    "options",
    [pytest.param({"max_entries": 0}, id="no-entries"), pytest.param({"max_age": 0}, id="no-age")],
)
def test_a_cache_that_could_hold_nothing_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        VerifiedTokenCache(**{"max_entries": 1, **options})


class DecodeCounter:
    """Counts the signature verifications the resolver performs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = jwt.decode

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counting)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> DecodeCounter:
    return DecodeCounter(monkeypatch)


@pytest.fixture
def memberships() -> InMemoryMembershipStore:
    members = InMemoryMembershipStore()
    members.set_role(TEAM, "alice", Role.MEMBER)
    return members


def test_a_cached_token_is_verified_once_but_its_role_is_read_on_every_request(
    memberships: InMemoryMembershipStore, decodes: DecodeCounter
) -> None:
    resolver = JWTResolver(memberships, key=SECRET, algorithms=["HS256"], cache_size=100)
    request = gateway_request(
        token=mint_jwt(secret_or_private_key=SECRET, sub="alice"), team=str(TEAM)
    )

    first = resolver(request)
    memberships.set_role(TEAM, "alice", Role.VIEWER)
    second = resolver(request)
    memberships.remove(TEAM, "alice")
    with pytest.raises(ForbiddenError):
        resolver(request)

    assert decodes.calls == 1
    assert first is not None
    assert first.role is Role.MEMBER
    assert second is not None
    assert second.role is Role.VIEWER


def test_failures_are_never_cached(
    memberships: InMemoryMembershipStore, decodes: DecodeCounter
) -> None:
    resolver = JWTResolver(memberships, key=SECRET, algorithms=["HS256"], cache_size=100)
    expired = mint_jwt(secret_or_private_key=SECRET, sub="alice", exp=int(time.time()) - 10)

    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            resolver(gateway_request(token=expired, team=str(TEAM)))

    assert decodes.calls == 2


def test_a_cached_token_is_verified_again_once_its_exp_is_reached(
    memberships: InMemoryMembershipStore, decodes: DecodeCounter
) -> None:
    now = time.time()
    clock = FakeEpochClock(now)
    resolver = JWTResolver(
        memberships,
        key=SECRET,
        algorithms=["HS256"],
        cache_size=100,
        cache_max_age=3600,
        clock=clock,
    )
    exp = int(now) + 600
    request = gateway_request(
        token=mint_jwt(secret_or_private_key=SECRET, sub="alice", exp=exp), team=str(TEAM)
    )

    resolver(request)
    clock.now = exp - 1
    resolver(request)
    assert decodes.calls == 1

    clock.now = exp
    resolver(request)
    assert decodes.calls == 2


def test_a_resolver_without_cache_verifies_every_request(
    memberships: InMemoryMembershipStore, decodes: DecodeCounter
) -> None:
    resolver = JWTResolver(memberships, key=SECRET, algorithms=["HS256"])
    request = gateway_request(
        token=mint_jwt(secret_or_private_key=SECRET, sub="alice"), team=str(TEAM)
    )

    resolver(request)
    resolver(request)

    assert decodes.calls == 2
