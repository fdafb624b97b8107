"""The tables of the SQL store, on SQLAlchemy Core.

Four tables, each prefixed ``invoke_`` so they can live next to a host application's own:

- ``invoke_services``: one row per service, unique on ``(team_id, slug)``, which is also what
  every gateway lookup uses;
- ``invoke_credentials``: the public prefix and SHA-256 of each key (never the key), indexed on
  the prefix the credential resolver looks up, and on the team for listing;
- ``invoke_memberships``: a user's role in a team, keyed by ``(team_id, user_id)``;
- ``invoke_team_limits``: a team's own rate and concurrency limits, keyed by team.

UUIDs use the portable :class:`~sqlalchemy.types.Uuid` type (native on PostgreSQL, 32 hex
characters on SQLite). Timestamps go through :class:`UTCDateTime`, so they are always written
in UTC and read back timezone-aware whatever the backend keeps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from invoke_middleware.auth.keys import PREFIX_LENGTH
from invoke_middleware.auth.principal import CredentialKind, Role
from invoke_middleware.registry import MAX_EXTERNAL_URL_LENGTH, ServiceStatus, ServiceType

#: Slugs are at most 100 characters (see ``registry.is_valid_slug``).
MAX_SLUG_LENGTH = 100

#: Long enough for the subject of any identity provider seen in practice.
MAX_USER_ID_LENGTH = 255

#: Constraint and index names are explicit so that a later migration can refer to them.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones and hands back naive values,
    which are UTC because this type only ever writes UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime) or value.utcoffset() is None:
            raise ValueError("timestamps must be timezone-aware datetimes")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _one_of(column: str, values: Iterable[str]) -> str:
    allowed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({allowed})"


#: What the credentials' ``kind`` column holds: each key kind's prefix (``sk-``, ``dk-``,
#: ``ak-``), as it always has, so existing databases keep working. ``CredentialKind("sk-")``
#: reads a stored value back.
STORED_KINDS = tuple(kind.key_prefix for kind in CredentialKind if kind.key_prefix is not None)


services = sa.Table(
    "invoke_services",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("team_id", sa.Uuid(), nullable=False),
    sa.Column("slug", sa.String(MAX_SLUG_LENGTH), nullable=False),
    sa.Column("display_name", sa.Text(), nullable=False),
    sa.Column("service_type", sa.String(16), nullable=False),
    sa.Column("service_status", sa.String(16), nullable=False),
    sa.Column("upstream_url", sa.Text(), nullable=True),
    sa.Column("external_url", sa.String(MAX_EXTERNAL_URL_LENGTH), nullable=True),
    sa.Column("external_auth_credential_id", sa.Text(), nullable=True),
    sa.Column("usage_prompt", sa.Text(), nullable=True),
    sa.Column("openapi_url", sa.Text(), nullable=True),
    sa.Column("connect_timeout", sa.Float(), nullable=True),
    sa.Column("read_timeout", sa.Float(), nullable=True),
    sa.Column("total_timeout", sa.Float(), nullable=True),
    # The service's own limits (README, "Fair share"); NULL keeps the gateway-wide setting.
    # Added after the first release: SQLStore.init() adds them to an existing table.
    sa.Column("max_in_flight", sa.Integer(), nullable=True),
    sa.Column("rate_amount", sa.Integer(), nullable=True),
    sa.Column("rate_window", sa.Integer(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("team_id", "slug"),
    sa.CheckConstraint(_one_of("service_type", ServiceType), name="service_type"),
    sa.CheckConstraint(_one_of("service_status", ServiceStatus), name="service_status"),
)

credentials = sa.Table(
    "invoke_credentials",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("kind", sa.String(3), nullable=False),
    sa.Column("prefix", sa.String(PREFIX_LENGTH), nullable=False, index=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("team_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("user_id", sa.String(MAX_USER_ID_LENGTH), nullable=True),
    sa.Column("name", sa.Text(), nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_one_of("kind", STORED_KINDS), name="kind"),
)

#: Nullable columns added to a table after it was first released, which ``init`` adds to an
#: existing database and which reads do without until then.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "invoke_services": ("max_in_flight", "rate_amount", "rate_window"),
}

#: A team's own limits (README, "Fair share"), over the configured ones; NULL keeps them.
#: Added after the first release: ``SQLStore.init()`` creates it in an existing database.
team_limits = sa.Table(
    "invoke_team_limits",
    metadata,
    sa.Column("team_id", sa.Uuid(), primary_key=True),
    sa.Column("max_in_flight", sa.Integer(), nullable=True),
    sa.Column("rate_amount", sa.Integer(), nullable=True),
    sa.Column("rate_window", sa.Integer(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

memberships = sa.Table(
    "invoke_memberships",
    metadata,
    sa.Column("team_id", sa.Uuid(), primary_key=True),
    sa.Column("user_id", sa.String(MAX_USER_ID_LENGTH), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.CheckConstraint(_one_of("role", Role), name="role"),
)
