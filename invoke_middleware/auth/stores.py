"""The stores auth resolvers read: credentials and team memberships.

Both are protocols; the in-memory implementations here are the defaults, and
:mod:`invoke_middleware.store.sql` implements both on a database.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from invoke_middleware.auth.keys import KeyKind
from invoke_middleware.auth.principal import Role


@dataclass(frozen=True, kw_only=True)
class CredentialRecord:
    """A stored credential: never the key, only its public prefix and its hash.

    ``user_id`` is ``None`` for integration credentials (bound to the team alone).
    """

    id: uuid.UUID
    kind: KeyKind
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


class CredentialStore(Protocol):
    """Where ``sk-``/``dk-``/``ak-`` credentials live."""

    def find_by_prefix(self, prefix: str) -> Sequence[CredentialRecord]:
        """Every record whose prefix is ``prefix`` (normally zero or one)."""
        ...

    def issue(
        self,
        kind: KeyKind,
        *,
        team_id: uuid.UUID,
        user_id: str | None = None,
        name: str = "",
        expires_at: dt.datetime | None = None,
    ) -> IssuedCredential:
        """Create a credential and return its raw key, once."""
        ...

    def revoke(self, credential_id: uuid.UUID) -> bool:
        """Revoke for good; ``False`` when there is no such credential."""
        ...

    def touch(self, credential_id: uuid.UUID, when: dt.datetime) -> None:
        """Record that the credential was used at ``when``."""
        ...

    def list(self, team_id: uuid.UUID) -> Sequence[CredentialRecord]:
        """A team's credentials, revoked ones included, oldest first."""
        ...


class MembershipStore(Protocol):
    """Who is in which team, with which role."""

    def role_of(self, team_id: uuid.UUID, user_id: str) -> Role | None:
        """The role of ``user_id`` in ``team_id``, or ``None`` when not a member."""
        ...

    def set_role(self, team_id: uuid.UUID, user_id: str, role: Role) -> None: ...

    def remove(self, team_id: uuid.UUID, user_id: str) -> bool: ...

    def list(self, team_id: uuid.UUID) -> Sequence[Membership]: ...
