"""The stores auth resolvers read: credentials and team memberships.

Both are protocols; the in-memory implementations here are the defaults, and
:mod:`invoke_middleware.store.sql` implements both on a database. Every store issues keys
through :func:`new_credential`, so the rules of issuing are the same whatever the store.

Example::

    credentials = InMemoryCredentialStore()
    issued = credentials.issue(CredentialKind.INTEGRATION, team_id=team_id, name="ci")
    print(issued.key)  # shown once; the store keeps only issued.record.prefix and a hash
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from invoke_middleware.auth.keys import generate_key, hash_key, key_prefix
from invoke_middleware.auth.principal import CredentialKind, Role

#: A source of the current time, timezone-aware (UTC). Injectable for tests.
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The current time in UTC, timezone-aware (the default :data:`Clock`)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, kw_only=True)
class CredentialRecord:
    """A stored credential: never the key, only its public prefix and its hash.

    ``user_id`` is ``None`` for integration credentials (bound to the team alone).
    """

    id: uuid.UUID
    kind: CredentialKind
    prefix: str
    key_hash: str = field(repr=False)
    team_id: uuid.UUID
    user_id: str | None = None
    name: str = ""
    created_at: dt.datetime
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = None

    def is_usable(self, now: dt.datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, kw_only=True)
class IssuedCredential:
    """A freshly issued credential: the raw ``key`` exists only here, once."""

    key: str = field(repr=False)
    record: CredentialRecord


@dataclass(frozen=True, kw_only=True)
class Membership:
    """A user's role in a team."""

    team_id: uuid.UUID
    user_id: str
    role: Role


#: How many keys :func:`new_credential` draws before giving up on finding a free prefix. A
#: prefix carries 9 random characters (54 bits), so even one clash is vanishingly rare; several
#: in a row mean the random source is broken.
MAX_PREFIX_ATTEMPTS = 5


def check_owner(kind: CredentialKind, user_id: str | None) -> None:
    """Raise :class:`ValueError` unless ``user_id`` suits a credential of ``kind``.

    Integration (``sk-``) credentials belong to the team alone; device (``dk-``) credentials
    act for a user and need one. :func:`new_credential` checks this for every store.
    """
    if kind is CredentialKind.INTEGRATION and user_id is not None:
        raise ValueError("an integration credential belongs to a team, not to a user")
    if kind is CredentialKind.DEVICE and not user_id:
        raise ValueError("a device credential needs a user_id")


def require_aware(when: dt.datetime | None, name: str) -> None:
    """Raise :class:`ValueError` when ``when`` is a naive datetime (``None`` passes).

    A naive time has no instant: stores would compare it with the clock's aware time and fail
    at the first request, or read it back shifted by the server's time zone.
    """
    if when is not None and when.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def new_credential(
    kind: CredentialKind,
    *,
    team_id: uuid.UUID,
    user_id: str | None = None,
    name: str = "",
    expires_at: dt.datetime | None = None,
    created_at: dt.datetime,
    prefix_taken: Callable[[str], bool],
) -> IssuedCredential:
    """A new credential for a store to save: the rules every ``issue`` follows, in one place.

    ``kind`` must be a key kind, and ``user_id`` suit it (:func:`check_owner`); both times
    must be timezone-aware and are kept in UTC. A key whose public prefix ``prefix_taken``
    reports as already used is drawn again, so that a prefix normally finds one record; after
    :data:`MAX_PREFIX_ATTEMPTS` draws this raises :class:`RuntimeError`.
    """
    kind = CredentialKind(kind)
    check_owner(kind, user_id)
    require_aware(expires_at, "expires_at")
    require_aware(created_at, "created_at")
    for _ in range(MAX_PREFIX_ATTEMPTS):
        key = generate_key(kind)
        if not prefix_taken(key_prefix(key)):
            break
    else:
        raise RuntimeError(f"no free key prefix in {MAX_PREFIX_ATTEMPTS} random draws")
    record = CredentialRecord(
        id=uuid.uuid4(),
        kind=kind,
        prefix=key_prefix(key),
        key_hash=hash_key(key),
        team_id=team_id,
        user_id=user_id,
        name=name,
        created_at=created_at.astimezone(dt.UTC),
        expires_at=None if expires_at is None else expires_at.astimezone(dt.UTC),
    )
    return IssuedCredential(key=key, record=record)


class CredentialStore(Protocol):
    """Where ``sk-``/``dk-``/``ak-`` credentials live.

    A store that cannot answer now raises
    :class:`~invoke_middleware.errors.StoreUnavailableError` from :meth:`find_by_prefix`: the
    request is answered 503 with ``Retry-After``, not 401, so a client keeps its key."""

    def find_by_prefix(self, prefix: str) -> Sequence[CredentialRecord]:
        """Every record whose prefix is ``prefix`` (normally zero or one)."""
        ...

    def issue(
        self,
        kind: CredentialKind,
        *,
        team_id: uuid.UUID,
        user_id: str | None = None,
        name: str = "",
        expires_at: dt.datetime | None = None,
    ) -> IssuedCredential:
        """Create a credential and return its raw key, once (see :func:`new_credential`).

        Raises :class:`ValueError` for a ``user_id`` that does not suit ``kind`` or a naive
        ``expires_at``.
        """
        ...

    def revoke(self, credential_id: uuid.UUID) -> bool:
        """Revoke for good; ``False`` when there is no such credential."""
        ...

    def expire(self, credential_id: uuid.UUID, when: dt.datetime) -> bool:
        """Make the credential unusable from ``when`` (timezone-aware) on; ``False`` when
        there is none."""
        ...

    def touch(self, credential_id: uuid.UUID, when: dt.datetime) -> None:
        """Record that the credential was used at ``when``."""
        ...

    def list(self, team_id: uuid.UUID) -> Sequence[CredentialRecord]:
        """A team's credentials, revoked ones included, oldest first."""
        ...


class MembershipStore(Protocol):
    """Who is in which team, with which role.

    A store that cannot answer now raises
    :class:`~invoke_middleware.errors.StoreUnavailableError` from :meth:`role_of` (503)."""

    def role_of(self, team_id: uuid.UUID, user_id: str) -> Role | None:
        """The role of ``user_id`` in ``team_id``, or ``None`` when not a member."""
        ...

    def set_role(self, team_id: uuid.UUID, user_id: str, role: Role) -> None:
        """Make ``user_id`` a member of ``team_id`` with ``role`` (or change the role)."""
        ...

    def remove(self, team_id: uuid.UUID, user_id: str) -> bool:
        """End the membership; ``False`` when ``user_id`` was not a member."""
        ...

    def list(self, team_id: uuid.UUID) -> Sequence[Membership]:
        """A team's memberships, in the order they were created."""
        ...


class InMemoryCredentialStore:
    """A thread-safe :class:`CredentialStore` in a dict; the default, and handy in tests.

    ``clock`` stamps ``created_at`` and ``revoked_at``; it must give timezone-aware times.
    """

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[uuid.UUID, CredentialRecord] = {}
        self._by_prefix: dict[str, list[uuid.UUID]] = {}

    def find_by_prefix(self, prefix: str) -> Sequence[CredentialRecord]:
        with self._lock:
            return [self._records[i] for i in self._by_prefix.get(prefix, ())]

    def issue(
        self,
        kind: CredentialKind,
        *,
        team_id: uuid.UUID,
        user_id: str | None = None,
        name: str = "",
        expires_at: dt.datetime | None = None,
    ) -> IssuedCredential:
        with self._lock:
            issued = new_credential(
                kind,
                team_id=team_id,
                user_id=user_id,
                name=name,
                expires_at=expires_at,
                created_at=self._clock(),
                prefix_taken=self._by_prefix.__contains__,
            )
            record = issued.record
            self._records[record.id] = record
            self._by_prefix.setdefault(record.prefix, []).append(record.id)
        return issued

    def revoke(self, credential_id: uuid.UUID) -> bool:
        with self._lock:
            record = self._records.get(credential_id)
            if record is None:
                return False
            if record.revoked_at is None:
                self._records[credential_id] = replace(record, revoked_at=self._clock())
            return True

    def expire(self, credential_id: uuid.UUID, when: dt.datetime) -> bool:
        require_aware(when, "when")
        with self._lock:
            record = self._records.get(credential_id)
            if record is None:
                return False
            self._records[credential_id] = replace(record, expires_at=when)
            return True

    def touch(self, credential_id: uuid.UUID, when: dt.datetime) -> None:
        require_aware(when, "when")
        with self._lock:
            record = self._records.get(credential_id)
            if record is None:
                return
            if record.last_used_at is None or when > record.last_used_at:
                self._records[credential_id] = replace(record, last_used_at=when)

    def list(self, team_id: uuid.UUID) -> Sequence[CredentialRecord]:
        with self._lock:
            records = [r for r in self._records.values() if r.team_id == team_id]
        return sorted(records, key=lambda r: r.created_at)


class InMemoryMembershipStore:
    """A thread-safe :class:`MembershipStore` in a dict; the default, and handy in tests."""

    def __init__(self, memberships: Sequence[Membership] = ()) -> None:
        self._lock = threading.Lock()
        self._roles: dict[tuple[uuid.UUID, str], Role] = {
            (m.team_id, m.user_id): m.role for m in memberships
        }

    def role_of(self, team_id: uuid.UUID, user_id: str) -> Role | None:
        with self._lock:
            return self._roles.get((team_id, user_id))

    def set_role(self, team_id: uuid.UUID, user_id: str, role: Role) -> None:
        with self._lock:
            self._roles[(team_id, user_id)] = role

    def remove(self, team_id: uuid.UUID, user_id: str) -> bool:
        with self._lock:
            return self._roles.pop((team_id, user_id), None) is not None

    def list(self, team_id: uuid.UUID) -> Sequence[Membership]:
        with self._lock:
            return [
                Membership(team_id=t, user_id=u, role=r)
                for (t, u), r in self._roles.items()
                if t == team_id
            ]
