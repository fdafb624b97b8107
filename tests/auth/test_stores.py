from __future__ import annotations

import uuid

import pytest

from invoke_middleware.auth import (
    CredentialKind,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    Membership,
    Role,
)
from tests.auth.credential_contract import CredentialCreationContract
from tests.auth.helpers import FakeClock

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")
OTHER_TEAM = uuid.UUID("22222222-2222-4222-8222-222222222222")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> InMemoryCredentialStore:
    return InMemoryCredentialStore(clock=clock)


class TestInMemoryCredentialCreation(CredentialCreationContract):
    @pytest.fixture
    def credentials(self, store: InMemoryCredentialStore) -> InMemoryCredentialStore:
        return store


def test_issued_keys_are_all_different(store: InMemoryCredentialStore) -> None:
    keys = {store.issue(CredentialKind.INTEGRATION, team_id=TEAM).key for _ in range(50)}

    assert len(keys) == 50


def test_revoke_is_irreversible(store: InMemoryCredentialStore, clock: FakeClock) -> None:
    record = store.issue(CredentialKind.INTEGRATION, team_id=TEAM).record
    revoked_at = clock.now

    assert store.revoke(record.id) is True
    clock.advance(60)
    assert store.revoke(record.id) is True
    store.expire(record.id, clock.now + (clock.now - revoked_at) * 1000)

    (stored,) = store.find_by_prefix(record.prefix)
    assert stored.revoked_at == revoked_at
    assert not stored.is_usable(clock.now)


def test_revoke_and_expire_report_an_unknown_credential(store: InMemoryCredentialStore) -> None:
    assert store.revoke(uuid.uuid4()) is False
    assert store.expire(uuid.uuid4(), FakeClock().now) is False


def test_expire_makes_the_credential_unusable_from_then_on(
    store: InMemoryCredentialStore, clock: FakeClock
) -> None:
    record = store.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="u").record
    store.expire(record.id, clock.now)

    (stored,) = store.find_by_prefix(record.prefix)
    assert stored.expires_at == clock.now
    assert not stored.is_usable(clock.now)


def test_touch_only_moves_last_used_forward(
    store: InMemoryCredentialStore, clock: FakeClock
) -> None:
    record = store.issue(CredentialKind.INTEGRATION, team_id=TEAM).record
    later = clock.now.replace(hour=5)

    store.touch(record.id, later)
    store.touch(record.id, clock.now)

    (stored,) = store.find_by_prefix(record.prefix)
    assert stored.last_used_at == later


def test_list_returns_the_teams_credentials_oldest_first_revoked_included(
    store: InMemoryCredentialStore, clock: FakeClock
) -> None:
    first = store.issue(CredentialKind.INTEGRATION, team_id=TEAM, name="first").record
    clock.advance(1)
    store.issue(CredentialKind.INTEGRATION, team_id=OTHER_TEAM, name="elsewhere")
    clock.advance(1)
    second = store.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="u", name="second").record
    store.revoke(first.id)

    assert [r.name for r in store.list(TEAM)] == [first.name, second.name]


def test_membership_store_sets_changes_and_removes_roles() -> None:
    memberships = InMemoryMembershipStore(
        [Membership(team_id=TEAM, user_id="ann", role=Role.OWNER)]
    )
    memberships.set_role(TEAM, "bob", Role.VIEWER)
    memberships.set_role(TEAM, "bob", Role.ADMIN)
    memberships.set_role(OTHER_TEAM, "cy", Role.MEMBER)

    assert memberships.role_of(TEAM, "bob") is Role.ADMIN
    assert memberships.role_of(OTHER_TEAM, "bob") is None
    assert [(m.user_id, m.role) for m in memberships.list(TEAM)] == [
        ("ann", Role.OWNER),
        ("bob", Role.ADMIN),
    ]
    assert memberships.remove(TEAM, "bob") is True
    assert memberships.remove(TEAM, "bob") is False
    assert memberships.role_of(TEAM, "bob") is None
