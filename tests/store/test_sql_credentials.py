"""The SQL store's credentials, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from invoke_middleware.auth.keys import PREFIX_LENGTH, hash_key
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.store import SQLCredentialStore, SQLStore
from tests.auth.credential_contract import CredentialCreationContract
from tests.store.conftest import Backend

TEAM = uuid.UUID("6f1b1c52-0c39-4d8e-9d55-3c3f3f0e7a01")
OTHER_TEAM = uuid.UUID("0b6e0bb0-55d5-4a3e-8a43-7f0b8f7c1c02")
START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class SteppingNow:
    """A wall clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self._times: Iterator[dt.datetime] = (START + dt.timedelta(seconds=n) for n in range(10**6))

    def __call__(self) -> dt.datetime:
        return next(self._times)


@pytest.fixture
def store(backend: Backend) -> SQLStore:
    return backend.open_store(now=SteppingNow())


class TestSQLCredentialCreation(CredentialCreationContract):
    @pytest.fixture
    def credentials(self, store: SQLStore) -> SQLCredentialStore:
        return store.credentials


def test_issue_stamps_created_at_with_the_stores_now(store: SQLStore) -> None:
    issued = store.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="u")

    assert issued.record.created_at == START
    assert store.credentials.get(issued.record.id) == issued.record


def test_only_the_prefix_and_hash_are_stored(backend: Backend, store: SQLStore) -> None:
    issued = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM, name="ci")

    with store.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM invoke_credentials")).all()
    stored = " ".join(str(value) for row in rows for value in row)
    secret_part = issued.key[PREFIX_LENGTH:]

    assert len(rows) == 1
    assert issued.record.prefix in stored
    assert hash_key(issued.key) in stored
    assert issued.key not in stored
    assert secret_part not in stored


@pytest.mark.parametrize(
    ("kind", "user_id", "stored"),
    [
        pytest.param(CredentialKind.INTEGRATION, None, "sk-", id="integration"),
        pytest.param(CredentialKind.DEVICE, "u", "dk-", id="device"),
        pytest.param(CredentialKind.AGENT, "u", "ak-", id="agent"),
    ],
)
def test_the_kind_column_holds_the_key_prefix_as_existing_databases_do(
    store: SQLStore, kind: CredentialKind, user_id: str | None, stored: str
) -> None:
    issued = store.credentials.issue(kind, team_id=TEAM, user_id=user_id)

    with store.engine.connect() as connection:
        column = connection.execute(sa.text("SELECT kind FROM invoke_credentials")).scalar_one()
    found = store.credentials.get(issued.record.id)

    assert column == stored
    assert found is not None
    assert found.kind is kind


def test_find_by_prefix_returns_the_stored_record(backend: Backend, store: SQLStore) -> None:
    issued = store.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="u")
    store.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="u")

    found = backend.open_store().credentials.find_by_prefix(issued.record.prefix)

    assert list(found) == [issued.record]
    assert not store.credentials.find_by_prefix("dk-nosuchone")


def test_get_finds_a_credential_by_id(store: SQLStore) -> None:
    issued = store.credentials.issue(CredentialKind.AGENT, team_id=TEAM, user_id="u")

    assert store.credentials.get(issued.record.id) == issued.record
    assert store.credentials.get(uuid.uuid4()) is None


def test_a_revocation_is_seen_by_another_store_at_once(backend: Backend, store: SQLStore) -> None:
    gateway = backend.open_store()
    issued = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    (before,) = gateway.credentials.find_by_prefix(issued.record.prefix)
    assert before.is_usable(START)

    assert store.credentials.revoke(issued.record.id) is True

    (after,) = gateway.credentials.find_by_prefix(issued.record.prefix)
    assert after.revoked_at is not None
    assert not after.is_usable(START)


def test_revoking_twice_keeps_the_first_time(store: SQLStore) -> None:
    issued = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    store.credentials.revoke(issued.record.id)
    first = store.credentials.get(issued.record.id)

    assert store.credentials.revoke(issued.record.id) is True

    assert store.credentials.get(issued.record.id) == first


def test_revoking_an_unknown_credential_reports_false(store: SQLStore) -> None:
    assert store.credentials.revoke(uuid.uuid4()) is False


def test_expire_sets_the_expiry_seen_by_another_store(backend: Backend, store: SQLStore) -> None:
    gateway = backend.open_store()
    issued = store.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="u")
    when = START + dt.timedelta(hours=1)

    assert store.credentials.expire(issued.record.id, when) is True
    assert store.credentials.expire(uuid.uuid4(), when) is False

    (record,) = gateway.credentials.find_by_prefix(issued.record.prefix)
    assert record.expires_at == when
    assert record.is_usable(when - dt.timedelta(seconds=1))
    assert not record.is_usable(when)


def test_touch_records_the_latest_use(store: SQLStore) -> None:
    issued = store.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="u")
    later = START + dt.timedelta(minutes=5)

    store.credentials.touch(issued.record.id, later)
    store.credentials.touch(issued.record.id, START + dt.timedelta(minutes=1))

    record = store.credentials.get(issued.record.id)
    assert record is not None
    assert record.last_used_at == later


def test_list_shows_a_teams_credentials_oldest_first_revoked_included(store: SQLStore) -> None:
    first = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM, name="first")
    second = store.credentials.issue(
        CredentialKind.DEVICE, team_id=TEAM, user_id="u", name="second"
    )
    store.credentials.issue(CredentialKind.INTEGRATION, team_id=OTHER_TEAM, name="elsewhere")
    store.credentials.revoke(first.record.id)

    listed = store.credentials.list(TEAM)

    assert [c.name for c in listed] == ["first", "second"]
    assert listed[0].revoked_at is not None
    assert listed[1] == second.record
