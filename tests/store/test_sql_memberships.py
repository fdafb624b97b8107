"""The SQL store's team memberships, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from invoke_middleware.auth.principal import Role
from invoke_middleware.auth.stores import Membership
from invoke_middleware.store import SQLStore
from tests.store.conftest import Backend

TEAM = uuid.UUID("6f1b1c52-0c39-4d8e-9d55-3c3f3f0e7a01")
OTHER_TEAM = uuid.UUID("0b6e0bb0-55d5-4a3e-8a43-7f0b8f7c1c02")


@pytest.mark.parametrize("role", [pytest.param(role, id=role.value) for role in Role])
def test_a_role_that_was_set_is_read_back(store: SQLStore, role: Role) -> None:
    store.memberships.set_role(TEAM, "alice", role)

    assert store.memberships.role_of(TEAM, "alice") is role


def test_a_non_member_has_no_role(store: SQLStore) -> None:
    store.memberships.set_role(OTHER_TEAM, "alice", Role.OWNER)

    assert store.memberships.role_of(TEAM, "alice") is None
    assert store.memberships.role_of(OTHER_TEAM, "bob") is None


def test_set_role_replaces_the_previous_role(store: SQLStore) -> None:
    store.memberships.set_role(TEAM, "alice", Role.OWNER)
    store.memberships.set_role(TEAM, "alice", Role.VIEWER)

    assert store.memberships.list(TEAM) == [
        Membership(team_id=TEAM, user_id="alice", role=Role.VIEWER)
    ]


def test_set_role_rejects_an_unknown_role(store: SQLStore) -> None:
    with pytest.raises(ValueError, match="superuser"):
        store.memberships.set_role(TEAM, "alice", "superuser")  # type: ignore[arg-type]


def test_a_role_change_is_seen_by_another_store_at_once(backend: Backend, store: SQLStore) -> None:
    gateway = backend.open_store()
    store.memberships.set_role(TEAM, "alice", Role.MEMBER)
    assert gateway.memberships.role_of(TEAM, "alice") is Role.MEMBER

    store.memberships.set_role(TEAM, "alice", Role.VIEWER)
    assert gateway.memberships.role_of(TEAM, "alice") is Role.VIEWER

    store.memberships.remove(TEAM, "alice")
    assert gateway.memberships.role_of(TEAM, "alice") is None


def test_remove_reports_whether_there_was_a_membership(store: SQLStore) -> None:
    store.memberships.set_role(TEAM, "alice", Role.ADMIN)
    store.memberships.set_role(OTHER_TEAM, "alice", Role.ADMIN)

    assert store.memberships.remove(TEAM, "alice") is True
    assert store.memberships.remove(TEAM, "alice") is False
    assert store.memberships.role_of(OTHER_TEAM, "alice") is Role.ADMIN


def test_list_shows_a_teams_members_by_user_id(store: SQLStore) -> None:
    store.memberships.set_role(TEAM, "carol", Role.VIEWER)
    store.memberships.set_role(TEAM, "alice", Role.OWNER)
    store.memberships.set_role(OTHER_TEAM, "bob", Role.MEMBER)

    assert [(m.user_id, m.role) for m in store.memberships.list(TEAM)] == [
        ("alice", Role.OWNER),
        ("carol", Role.VIEWER),
    ]
    assert not store.memberships.list(uuid.uuid4())
