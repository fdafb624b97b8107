"""What every credential store's ``issue`` does, written once and run against each store.

A test module subclasses :class:`CredentialCreationContract` as ``Test...`` and gives it a
``credentials`` fixture: the in-memory store in ``tests/auth/test_stores.py``, the SQL store on
SQLite and PostgreSQL in ``tests/store/test_sql_credentials.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import uuid
from collections.abc import Iterator

import pytest

from invoke_middleware.auth import stores
from invoke_middleware.auth.keys import PREFIX_LENGTH, key_matches
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.auth.stores import MAX_PREFIX_ATTEMPTS, CredentialStore

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")

KEY_KINDS = [
    pytest.param(CredentialKind.INTEGRATION, None, id="integration"),
    pytest.param(CredentialKind.DEVICE, "user-1", id="device"),
    pytest.param(CredentialKind.AGENT, "user-1", id="agent"),
]


def _keys(*keys: str) -> Iterator[str]:
    """Stands in for ``generate_key``: the given keys, then fresh ones."""
    yield from keys
    for n in itertools.count():
        yield f"sk-fresh{n:04d}" + "a" * 35


class CredentialCreationContract:
    """The rules of ``CredentialStore.issue``; subclasses provide ``credentials``."""

    @pytest.mark.parametrize(("kind", "user_id"), KEY_KINDS)
    def test_issue_returns_the_raw_key_once_and_stores_only_its_prefix_and_hash(
        self, credentials: CredentialStore, kind: CredentialKind, user_id: str | None
    ) -> None:
        issued = credentials.issue(kind, team_id=TEAM, user_id=user_id, name="laptop")

        record = issued.record
        assert CredentialKind.of_key(issued.key) is kind
        assert (record.kind, record.team_id, record.user_id, record.name) == (
            kind,
            TEAM,
            user_id,
            "laptop",
        )
        assert record.prefix == issued.key[:PREFIX_LENGTH]
        assert key_matches(issued.key, record.key_hash)
        secret_part = issued.key[PREFIX_LENGTH:]
        assert all(secret_part not in str(v) for v in dataclasses.asdict(record).values())
        assert secret_part not in repr(issued)
        assert list(credentials.find_by_prefix(record.prefix)) == [record]

    def test_issue_takes_the_kind_by_its_name(self, credentials: CredentialStore) -> None:
        issued = credentials.issue("integration", team_id=TEAM)  # type: ignore[arg-type]

        assert issued.record.kind is CredentialKind.INTEGRATION

    @pytest.mark.parametrize(
        ("kind", "user_id", "message"),
        [
            pytest.param(
                CredentialKind.INTEGRATION, "u", "belongs to a team", id="integration-with-user"
            ),
            pytest.param(CredentialKind.DEVICE, None, "needs a user_id", id="device-without-user"),
            pytest.param(CredentialKind.JWT, "u", "not keys", id="jwt"),
        ],
    )
    def test_issue_refuses_an_owner_that_does_not_suit_the_kind(
        self,
        credentials: CredentialStore,
        kind: CredentialKind,
        user_id: str | None,
        message: str,
    ) -> None:
        with pytest.raises(ValueError, match=message):
            credentials.issue(kind, team_id=TEAM, user_id=user_id)

        assert not credentials.list(TEAM)

    def test_issue_refuses_a_naive_expiry(self, credentials: CredentialStore) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            credentials.issue(
                CredentialKind.INTEGRATION, team_id=TEAM, expires_at=dt.datetime(2030, 1, 1)
            )

        assert not credentials.list(TEAM)

    def test_issued_times_are_kept_in_utc_as_the_same_instant(
        self, credentials: CredentialStore
    ) -> None:
        paris_evening = dt.datetime(2030, 6, 1, 20, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))

        record = credentials.issue(
            CredentialKind.INTEGRATION, team_id=TEAM, expires_at=paris_evening
        ).record

        (found,) = credentials.find_by_prefix(record.prefix)
        assert found == record
        assert found.expires_at == paris_evening
        assert found.expires_at is not None
        assert found.expires_at.tzinfo is dt.UTC
        assert found.created_at.tzinfo is dt.UTC

    @pytest.mark.parametrize("method", ["expire", "touch"])
    def test_expire_and_touch_refuse_naive_times(
        self, credentials: CredentialStore, method: str
    ) -> None:
        record = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).record

        with pytest.raises(ValueError, match="timezone-aware"):
            getattr(credentials, method)(record.id, dt.datetime(2030, 1, 1))

        assert list(credentials.find_by_prefix(record.prefix)) == [record]

    def test_a_key_whose_prefix_is_taken_is_drawn_again(
        self, credentials: CredentialStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).record
        clashing = first.prefix + "b" * 35
        keys = _keys(clashing, clashing)
        monkeypatch.setattr(stores, "generate_key", lambda kind: next(keys))

        second = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)

        assert second.key == "sk-fresh0000" + "a" * 35
        assert list(credentials.find_by_prefix(first.prefix)) == [first]

    def test_issue_gives_up_when_every_draw_clashes(
        self, credentials: CredentialStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).record
        keys = _keys(*[first.prefix + "b" * 35] * MAX_PREFIX_ATTEMPTS)
        monkeypatch.setattr(stores, "generate_key", lambda kind: next(keys))

        with pytest.raises(RuntimeError, match="no free key prefix"):
            credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)

        assert list(credentials.list(TEAM)) == [first]
