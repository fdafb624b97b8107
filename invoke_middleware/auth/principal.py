"""Who is calling: the :class:`Principal` an auth resolver returns."""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from enum import StrEnum


class CredentialKind(StrEnum):
    """What kind of credential a caller presents (the README's "Auth" section).

    A user's ``JWT``, or a key a credential store issued: ``INTEGRATION`` keys (``sk-``) belong
    to a team, ``DEVICE`` keys (``dk-``) act for a user, ``AGENT`` keys (``ak-``) may not call
    the gateway at all. A key starts with its kind's :attr:`key_prefix`, and :meth:`of_key`
    reads the kind back from a key.
    """

    JWT = "jwt"
    DEVICE = "device"
    INTEGRATION = "integration"
    AGENT = "agent"

    @property
    def key_prefix(self) -> str | None:
        """What every key of this kind starts with (``"sk-"``), or ``None`` for ``JWT``."""
        return _KEY_PREFIXES.get(self)

    @classmethod
    def of_key(cls, token: str) -> CredentialKind | None:
        """The kind ``token`` claims by its prefix, or ``None`` when it is not a stored key."""
        for kind, prefix in _KEY_PREFIXES.items():
            if token.startswith(prefix):
                return kind
        return None

    @classmethod
    def of(cls, token: str) -> CredentialKind | None:
        """Deprecated spelling of :meth:`of_key` (from when key kinds were ``KeyKind``)."""
        warnings.warn(
            "CredentialKind.of (KeyKind.of) is deprecated; use CredentialKind.of_key",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls.of_key(token)

    @classmethod
    def _missing_(cls, value: object) -> CredentialKind | None:
        # The values of the former KeyKind were the key prefixes, and the SQL store's kind
        # column still holds them: CredentialKind("sk-") is INTEGRATION.
        for kind, prefix in _KEY_PREFIXES.items():
            if value == prefix:
                return kind
        return None


_KEY_PREFIXES = {
    CredentialKind.INTEGRATION: "sk-",
    CredentialKind.DEVICE: "dk-",
    CredentialKind.AGENT: "ak-",
}


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
