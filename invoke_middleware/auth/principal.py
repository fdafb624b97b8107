"""Who is calling: the :class:`Principal` an auth resolver returns."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum


class CredentialKind(StrEnum):
    """What kind of credential authenticated the caller (SPEC §7)."""

    JWT = "jwt"
    DEVICE = "device"
    INTEGRATION = "integration"


class Role(StrEnum):
    """A user's role in a team. Compare with :meth:`at_least`; highest first: Owner, Admin,
    Member, Viewer."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        """Whether this role is ``other`` or higher."""
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


@dataclass(frozen=True, kw_only=True)
class Principal:
    """An authenticated caller acting in one team.

    ``user_id`` and ``role`` are ``None`` for integration credentials, which are bound to a
    team and take no part in the role hierarchy. ``credential_id`` names the credential (the
    key's public prefix, or the token's ``jti`` when it has one), never the secret itself.
    """

    kind: CredentialKind
    team_id: uuid.UUID
    user_id: str | None = None
    role: Role | None = None
    credential_id: str | None = None
