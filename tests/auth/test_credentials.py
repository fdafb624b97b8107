from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence

import pytest

from invoke_middleware.auth import (
    CredentialKind,
    CredentialRecord,
    CredentialResolver,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    Role,
    generate_key,
)
from invoke_middleware.errors import ForbiddenError, UnauthenticatedError
from tests.auth.helpers import FakeClock, gateway_request

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")
OTHER_TEAM = uuid.UUID("22222222-2222-4222-8222-222222222222")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> InMemoryCredentialStore:
    return InMemoryCredentialStore(clock=clock)


@pytest.fixture
def memberships() -> InMemoryMembershipStore:
    members = InMemoryMembershipStore()
    members.set_role(TEAM, "dev", Role.MEMBER)
    return members


@pytest.fixture
def resolver(
    store: InMemoryCredentialStore, memberships: InMemoryMembershipStore, clock: FakeClock
) -> CredentialResolver:
    return CredentialResolver(store, memberships, clock=clock)


def test_integration_key_authenticates_as_its_team_without_role(
    store: InMemoryCredentialStore, resolver: CredentialResolver
) -> None:
    issued = store.issue(CredentialKind.INTEGRATION, team_id=TEAM)

    principal = resolver(gateway_request(token=issued.key))

    assert principal is not None
    assert principal.kind is CredentialKind.INTEGRATION
    assert principal.team_id == TEAM
    assert principal.user_id is None
    assert principal.role is None
    assert principal.credential_id == issued.record.prefix
    assert issued.key[12:] not in repr(principal)


def test_device_key_authenticates_as_its_user_with_the_current_role(
    store: InMemoryCredentialStore, resolver: CredentialResolver
) -> None:
    issued = store.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="dev")

    principal = resolver(gateway_request(token=issued.key))

    assert principal is not None
    assert principal.kind is CredentialKind.DEVICE
    assert (principal.team_id, principal.user_id, principal.role) == (TEAM, "dev", Role.MEMBER)


@pytest.mark.parametrize(
    "team_header",
    [
        pytest.param(str(OTHER_TEAM), id="another-team"),
        pytest.param("not-a-uuid", id="malformed"),
        pytest.param(None, id="missing"),
    ],
)
@pytest.mark.parametrize(
    ("kind", "user_id"),
    [
        pytest.param(CredentialKind.INTEGRATION, None, id="sk"),
        pytest.param(CredentialKind.DEVICE, "dev", id="dk"),
    ],
)
def test_credential_team_comes_from_the_record_and_x_team_id_is_ignored(
    store: InMemoryCredentialStore,
    resolver: CredentialResolver,
    kind: CredentialKind,
    user_id: str | None,
    team_header: str | None,
) -> None:
    key = store.issue(kind, team_id=TEAM, user_id=user_id).key

    principal = resolver(gateway_request(token=key, team=team_header))

    assert principal is not None
    assert principal.team_id == TEAM


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Basic c2stYWJj", id="basic-scheme"),
        pytest.param("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", id="jwt"),
        pytest.param("Bearer pk-" + "a" * 43, id="other-prefix"),
    ],
)
def test_tokens_without_a_credential_prefix_are_not_this_resolvers(
    resolver: CredentialResolver, authorization: str | None
) -> None:
    headers = [] if authorization is None else [("Authorization", authorization)]

    assert resolver(gateway_request(headers=headers)) is None


def _agent_key(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    return store.issue(CredentialKind.AGENT, team_id=TEAM, user_id="dev").key


def _unknown_key(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    return generate_key(CredentialKind.INTEGRATION)


def _wrong_secret(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    key = store.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    return key[:12] + generate_key(CredentialKind.INTEGRATION)[12:]


def _revoked(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    issued = store.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="dev")
    store.revoke(issued.record.id)
    return issued.key


def _expired(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    return store.issue(CredentialKind.INTEGRATION, team_id=TEAM, expires_at=clock.now).key


def _too_short(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    return store.issue(CredentialKind.INTEGRATION, team_id=TEAM).key[:-1]


def _too_long(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    return "sk-" + "A" * 200


def _not_url_safe(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    key = store.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    return key[:20] + "+" + key[21:]


def _prefix_only(store: InMemoryCredentialStore, clock: FakeClock) -> str:
    return "dk-"


REFUSED = [
    pytest.param(_agent_key, id="agent-key"),
    pytest.param(_unknown_key, id="unknown"),
    pytest.param(_wrong_secret, id="right-prefix-wrong-secret"),
    pytest.param(_revoked, id="revoked"),
    pytest.param(_expired, id="expired"),
    pytest.param(_too_short, id="too-short"),
    pytest.param(_too_long, id="too-long"),
    pytest.param(_not_url_safe, id="not-url-safe"),
    pytest.param(_prefix_only, id="prefix-only"),
]


@pytest.mark.parametrize("make_key", REFUSED)
def test_bad_credentials_are_refused_with_one_and_the_same_401(
    store: InMemoryCredentialStore,
    resolver: CredentialResolver,
    clock: FakeClock,
    make_key: Callable[[InMemoryCredentialStore, FakeClock], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = make_key(store, clock)
    caplog.set_level(logging.DEBUG, logger="invoke_middleware")

    with pytest.raises(UnauthenticatedError) as refused:
        resolver(gateway_request(token=key, team=str(TEAM)))

    assert refused.value.message == UnauthenticatedError.default_message
    assert refused.value.headers == (("WWW-Authenticate", "Bearer"),)
    assert "credential refused" in caplog.text
    secret_part = key[12:]
    assert not secret_part or secret_part not in caplog.text


def test_revocation_applies_on_the_very_next_call(
    store: InMemoryCredentialStore, resolver: CredentialResolver
) -> None:
    issued = store.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    assert resolver(gateway_request(token=issued.key)) is not None

    store.revoke(issued.record.id)

    with pytest.raises(UnauthenticatedError):
        resolver(gateway_request(token=issued.key))


def test_expiry_applies_from_the_expiry_instant(
    store: InMemoryCredentialStore, resolver: CredentialResolver, clock: FakeClock
) -> None:
    key = store.issue(
        CredentialKind.INTEGRATION, team_id=TEAM, expires_at=clock.now + dt.timedelta(1)
    ).key
    assert resolver(gateway_request(token=key)) is not None

    clock.advance(dt.timedelta(days=1).total_seconds())

    with pytest.raises(UnauthenticatedError):
        resolver(gateway_request(token=key))


def test_device_role_changes_apply_on_the_very_next_call(
    store: InMemoryCredentialStore,
    memberships: InMemoryMembershipStore,
    resolver: CredentialResolver,
) -> None:
    key = store.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="dev").key
    request = gateway_request(token=key)
    principal = resolver(request)
    assert principal is not None
    assert principal.role is Role.MEMBER

    memberships.set_role(TEAM, "dev", Role.VIEWER)
    principal = resolver(request)

    assert principal is not None
    assert principal.role is Role.VIEWER


def test_device_key_of_a_removed_member_is_forbidden_on_the_very_next_call(
    store: InMemoryCredentialStore,
    memberships: InMemoryMembershipStore,
    resolver: CredentialResolver,
) -> None:
    key = store.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="dev").key
    assert resolver(gateway_request(token=key)) is not None

    memberships.remove(TEAM, "dev")

    with pytest.raises(ForbiddenError):
        resolver(gateway_request(token=key))


class CountingStore(InMemoryCredentialStore):
    """Delegates to an in-memory store and counts ``touch`` calls."""

    def __init__(self, inner: InMemoryCredentialStore, *, fail_touch: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.touches: list[dt.datetime] = []
        self.fail_touch = fail_touch

    def find_by_prefix(self, prefix: str) -> Sequence[CredentialRecord]:
        return self.inner.find_by_prefix(prefix)

    def touch(self, credential_id: uuid.UUID, when: dt.datetime) -> None:
        self.touches.append(when)
        if self.fail_touch:
            raise ConnectionError("database gone")
        self.inner.touch(credential_id, when)


def test_last_used_is_written_at_most_once_a_minute_per_key(
    store: InMemoryCredentialStore, memberships: InMemoryMembershipStore, clock: FakeClock
) -> None:
    counting = CountingStore(store)
    resolver = CredentialResolver(counting, memberships, clock=clock)
    first = store.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    second = store.issue(CredentialKind.DEVICE, team_id=TEAM, user_id="dev")
    start = clock.now

    for _ in range(3):
        resolver(gateway_request(token=first.key))
    resolver(gateway_request(token=second.key))
    clock.advance(59)
    resolver(gateway_request(token=first.key))
    clock.advance(1)
    resolver(gateway_request(token=first.key))

    assert counting.touches == [start, start, start + dt.timedelta(seconds=60)]
    (record,) = store.find_by_prefix(first.record.prefix)
    assert record.last_used_at == start + dt.timedelta(seconds=60)


def test_a_failed_last_used_write_does_not_refuse_the_caller(
    store: InMemoryCredentialStore,
    memberships: InMemoryMembershipStore,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    counting = CountingStore(store, fail_touch=True)
    resolver = CredentialResolver(counting, memberships, clock=clock)
    issued = store.issue(CredentialKind.INTEGRATION, team_id=TEAM)

    principal = resolver(gateway_request(token=issued.key))

    assert principal is not None
    assert counting.touches == [clock.now]
    assert "could not record the use" in caplog.text
    assert issued.key[12:] not in caplog.text


def test_a_record_whose_kind_differs_from_the_key_prefix_is_refused(
    store: InMemoryCredentialStore, memberships: InMemoryMembershipStore, clock: FakeClock
) -> None:
    issued = store.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    forged = dataclasses.replace(issued.record, kind=CredentialKind.DEVICE, user_id="dev")

    class OneRecord(CountingStore):
        def find_by_prefix(self, prefix: str) -> Sequence[CredentialRecord]:
            return [forged]

    resolver = CredentialResolver(OneRecord(store), memberships, clock=clock)

    with pytest.raises(UnauthenticatedError):
        resolver(gateway_request(token=issued.key))
