"""The SQL store: services, credentials and team memberships on SQLAlchemy Core.

A SQLite file is the embedded default; PostgreSQL (``postgresql+psycopg://...``) is for
deployments where several gateway processes or machines share one store. Tables are created by
an explicit :meth:`SQLStore.init`, which is safe to run again.

One :class:`SQLStore` owns the engine and hands out four views, one per protocol (the
protocols share method names such as ``list``, so one object cannot be all of them)::

    store = SQLStore("sqlite:///invoke.db")
    store.init()
    store.services      # a ServiceRegistry, plus add / set_status / set_limits / remove / list_all
    store.credentials   # a CredentialStore, plus get / expire
    store.memberships   # a MembershipStore
    store.team_limits   # a TeamLimitsSource, plus set / list_all

Service and team-limit lookups go through a short read-through cache (``service_cache_ttl``
seconds, 2 by default, ``0`` to disable), cleared at once by this store's own writes; a change
made elsewhere shows after at most the TTL. Credentials and memberships are never cached: a
revocation or a role change takes effect on the next request, in every process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from invoke_middleware._log_throttle import LogThrottle
from invoke_middleware._private_files import create_private_file
from invoke_middleware._toml_config import shown_url, sqlite_file
from invoke_middleware.auth.principal import CredentialKind, Role
from invoke_middleware.auth.stores import (
    CredentialRecord,
    IssuedCredential,
    Membership,
    new_credential,
    require_aware,
)
from invoke_middleware.errors import StoreUnavailableError
from invoke_middleware.limits import Rate, ServiceLimits, TeamLimits
from invoke_middleware.registry import Service, ServiceStatus, ServiceType, is_valid_slug
from invoke_middleware.store import _schema
from invoke_middleware.store._cache import TTLCache
from invoke_middleware.store._driver import DriverSelect
from invoke_middleware.store._watchdog import bound_reads, reading, watch_request_reads
from invoke_middleware.transport.base import Timeouts

logger = logging.getLogger("invoke_middleware.store")

__all__ = [
    "DEFAULT_SERVICE_CACHE_TTL",
    "DuplicateServiceError",
    "SQLCredentialStore",
    "SQLMembershipStore",
    "SQLServiceRegistry",
    "SQLStore",
    "SQLTeamLimits",
    "create_engine",
]

DEFAULT_SERVICE_CACHE_TTL = 2.0

#: How long a SQLite connection waits for another writer before giving up.
DEFAULT_SQLITE_BUSY_TIMEOUT = 5.0

_SUPPORTED_BACKENDS = ("sqlite", "postgresql")

#: The limits a service or a team may have of its own, by their attribute names.
LIMIT_FIELDS = frozenset({"rate", "max_in_flight"})

# The reads a request makes, built once with bound parameters: building a statement and its
# cache key on every call cost more than running it (a credential lookup on SQLite took
# 202 µs of CPU that way, 86 µs with the statement built once).
_CREDENTIALS_BY_PREFIX = sa.select(_schema.credentials).where(
    _schema.credentials.c.prefix == sa.bindparam("prefix")
)
_CREDENTIAL_BY_ID = sa.select(_schema.credentials).where(
    _schema.credentials.c.id == sa.bindparam("id")
)
_ROLE = sa.select(_schema.memberships.c.role).where(
    _schema.memberships.c.team_id == sa.bindparam("team_id"),
    _schema.memberships.c.user_id == sa.bindparam("user_id"),
)
_TEAM_LIMITS = sa.select(_schema.team_limits).where(
    _schema.team_limits.c.team_id == sa.bindparam("team_id")
)


# The advisory lock PostgreSQL inits take, held until their transaction ends: a number of
# this store's own (the first eight bytes of sha256(b"invoke_middleware.store.init")).
_INIT_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=0x59C2F572271F0D4A)


#: Stores that cannot answer, by URL: one line per database per interval, not per request.
_unavailable = LogThrottle()

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _OnEngine(Protocol):
    _engine: Engine


_V = TypeVar("_V", bound=_OnEngine)


def missing_tables(exc: sa.exc.DBAPIError) -> bool:
    """Whether the database answered that the store's tables are not there (SQLite's "no such
    table", PostgreSQL's undefined_table), as opposed to not answering at all."""
    return getattr(exc.orig, "sqlstate", None) == "42P01" or "no such table" in str(exc.orig)


# What says a database cannot answer now, as opposed to a mistake in what it was asked:
# SQLite's primary result codes (busy, locked, out of memory, interrupted, I/O error, disk
# full, cannot open the file, lock protocol error; https://sqlite.org/rescode.html), and
# PostgreSQL's SQLSTATE classes (connection exception, transaction rollback, insufficient
# resources, operator intervention: a statement timeout is 57014, system error) and
# lock_not_available (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_SQLITE_CANNOT_ANSWER = frozenset({5, 6, 7, 9, 10, 13, 14, 15})
_SQLSTATE_CLASSES_CANNOT_ANSWER = frozenset({"08", "40", "53", "57", "58"})
_SQLSTATES_CANNOT_ANSWER = frozenset({"55P03"})


def _cannot_answer(exc: sa.exc.SQLAlchemyError, dialect: str) -> bool:
    """Whether ``exc`` says the database cannot answer now (down, overloaded, a timeout, the
    connection lost or the pool exhausted), which a retry may mend; a mistake in the query or
    the schema (a missing table or column) is not that."""
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection came free in time
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if dialect == "sqlite":
        # The library's errors have a result code; the sqlite3 module's own (a text that is
        # not UTF-8, say) have none, and are no outage.
        code = getattr(orig, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF in _SQLITE_CANNOT_ANSWER
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and state:
        return state[:2] in _SQLSTATE_CLASSES_CANNOT_ANSWER or state in _SQLSTATES_CANNOT_ANSWER
    # No code from the server: the driver could not connect, or lost the connection (a
    # refused connection, a timeout; a wrong database name or password in the URL too, which
    # libpq reports the same way and the warning names).
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)


def _answering(read: Callable[Concatenate[_V, _P], _T]) -> Callable[Concatenate[_V, _P], _T]:
    """A read the gateway makes for a request: a database that cannot answer is
    :class:`~invoke_middleware.errors.StoreUnavailableError` (503, retry), logged at most once
    per ``LOG_INTERVAL`` for each database, instead of an unexpected failure (500) with a
    traceback for every request. On PostgreSQL the read is bounded by
    ``POSTGRESQL_READ_TIMEOUT``, whatever the server does."""

    @functools.wraps(read)
    def answering(view: _V, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        # bound_reads(), without its calls: this runs several times for every request.
        reading.depth += 1
        try:
            return read(view, *args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            if not _cannot_answer(exc, view._engine.dialect.name):
                raise
            _report_unavailable(view._engine, exc)
            raise StoreUnavailableError from exc
        finally:
            reading.depth -= 1

    return answering


def _report_unavailable(engine: Engine, exc: sa.exc.SQLAlchemyError) -> None:
    url = shown_url(engine.url)
    if _unavailable.due(url) is None:
        return
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    text = str(cause).strip()
    logger.warning(
        "store %s unavailable (%s: %s); requests that need it are answered 503",
        url,
        type(cause).__name__,
        text.splitlines()[0] if text else "-",
    )


class DuplicateServiceError(ValueError):
    """The team already has a service with this slug (or the id is already taken)."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


#: Seconds a PostgreSQL connection may take to be made (libpq's ``connect_timeout``), unless
#: the URL says otherwise: a server that accepts connections and never answers would hold a
#: worker thread, or gunicorn's arbiter re-reading its configuration, for good.
POSTGRESQL_CONNECT_TIMEOUT = 5
#: libpq's TCP settings, unless the URL gives its own: a server whose host is gone (a
#: failover, a network cut) sends neither an answer nor a reset, and the kernel's defaults
#: would wait two hours. Keepalive probes find it after 10 s of silence (then 3 unanswered,
#: 5 s apart), and a request it never acknowledged fails after 15 s.
POSTGRESQL_TCP = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}
#: Seconds a PostgreSQL statement may run, waits for locks included, unless a
#: ``statement_timeout`` is set already (in the URL's ``options``, ``PGOPTIONS``, or for the
#: role or the database on the server): every read the gateway makes takes milliseconds,
#: and one queued behind a lock (an ``ALTER TABLE`` waiting for a long transaction) would
#: otherwise hold its worker thread for as long as the lock is held, and so would every
#: request after it.
POSTGRESQL_STATEMENT_TIMEOUT = 5
#: Seconds a request's read may hold its PostgreSQL connection, ping and rollback included,
#: before the gateway shuts the connection down itself (503): the bound for what the
#: statement timeout cannot end, a server that stopped or a pooler that queues the query
#: (``_watchdog``). Above the statement timeout, so that a running server ends a slow read
#: first and keeps the connection.
POSTGRESQL_READ_TIMEOUT = 10


def create_engine(
    url: str | sa.URL, *, sqlite_busy_timeout: float = DEFAULT_SQLITE_BUSY_TIMEOUT
) -> Engine:
    """An engine set up for the store: SQLite in WAL mode with a busy timeout, or PostgreSQL.

    A bare ``postgresql://`` URL uses psycopg 3. SQLite connections may be used from any
    thread and wait up to ``sqlite_busy_timeout`` seconds for a concurrent writer; an
    in-memory SQLite database (``sqlite://``) is one shared connection, for tests.
    """
    url = sa.make_url(url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if backend == "postgresql":
        connect_args: dict[str, Any] = {
            name: value for name, value in POSTGRESQL_TCP.items() if name not in url.query
        }
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = POSTGRESQL_CONNECT_TIMEOUT
        engine = sa.create_engine(url, connect_args=connect_args)
        sa.event.listen(engine, "connect", _default_statement_timeout)
        # Pings a connection that was pooled (the server or a proxy may have closed it since)
        # as pool_pre_ping would, but with the read's clock already running.
        watch_request_reads(engine, POSTGRESQL_READ_TIMEOUT, name=shown_url(engine.url))
        return engine
    if backend != "sqlite":
        raise ValueError(f"unsupported database {backend!r}: use SQLite or PostgreSQL")
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if url.database in (None, "", ":memory:"):
        # Every connection to ":memory:" is a new, empty database: share one.
        options["poolclass"] = StaticPool
    engine = sa.create_engine(url, **options)
    busy_ms = int(sqlite_busy_timeout * 1000)

    @sa.event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets readers proceed while one writer commits; the busy timeout makes a
            # second writer (thread or process) wait instead of failing with "database locked".
            # FULL syncs the log at every commit: with NORMAL, a revocation the command line
            # confirmed could be undone by a power failure. Writes are rare (the command line,
            # a key's use stamped once a minute); reads pay nothing for it.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    return engine


# Set on each new connection, unless something set the timeout already (the URL's or
# PGOPTIONS' options, the role's or the database's setting): a SET, not the startup packet's
# options, which connection poolers such as PgBouncer refuse, and which would replace the
# options PGOPTIONS or a service file give.
_STATEMENT_TIMEOUT = (
    "SELECT set_config('statement_timeout', %s, false) FROM pg_settings "
    "WHERE name = 'statement_timeout' AND source = 'default'"
)


def _default_statement_timeout(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute(_STATEMENT_TIMEOUT, (f"{POSTGRESQL_STATEMENT_TIMEOUT * 1000}",))
    # Kept past this transaction: a setting made in one that is rolled back reverts.
    dbapi_connection.commit()


class SQLStore:
    """Services, credentials and memberships in one database.

    ``database`` is a URL (``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``) or an
    existing :class:`~sqlalchemy.engine.Engine` (which :meth:`close` then leaves open).
    ``clock`` measures the service cache's TTL; ``now`` stamps credentials.
    """

    def __init__(
        self,
        database: str | sa.URL | Engine,
        *,
        service_cache_ttl: float = DEFAULT_SERVICE_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        if isinstance(database, Engine):
            self.engine = database
            self._owns_engine = False
        else:
            self.engine = create_engine(database)
            self._owns_engine = True
        backend = self.engine.dialect.name
        if backend not in _SUPPORTED_BACKENDS:
            raise ValueError(f"unsupported database {backend!r}: use SQLite or PostgreSQL")
        self.services = SQLServiceRegistry(
            self.engine, cache_ttl=service_cache_ttl, clock=clock, now=now
        )
        self.credentials = SQLCredentialStore(self.engine, now=now)
        self.memberships = SQLMembershipStore(self.engine)
        self.team_limits = SQLTeamLimits(
            self.engine, cache_ttl=service_cache_ttl, clock=clock, now=now
        )

    def init(self) -> None:
        """Create the tables and indexes that do not exist yet, and add the columns a newer
        release brought to an existing table; safe to run again.

        A SQLite file this creates is the owner's alone (0600), like the one
        ``invoke-middleware init`` makes: it holds key hashes.
        """
        self._create_private_sqlite_file()
        sqlite = self.engine.dialect.name == "sqlite"
        # PostgreSQL: in a transaction whatever the engine's own level (an AUTOCOMMIT engine
        # would release the lock below at once, and apply half an init).
        level = {} if sqlite else {"isolation_level": "READ COMMITTED"}
        with self.engine.connect().execution_options(**level) as connection, connection.begin():
            self._init_on(connection, sqlite)
        self.services.invalidate()
        self.team_limits.invalidate()

    def _init_on(self, connection: sa.Connection, sqlite: bool) -> None:
        # One init at a time: each reads the schema and adds what it lacks, so two at once
        # (two processes starting on an upgraded store) would add it twice and the second
        # fail. Both databases run this DDL in the transaction, all or nothing.
        if not sqlite:
            connection.execute(_INIT_LOCK)
        else:
            if connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                # Begun by an engine that begins transactions itself (SQLAlchemy's recipe for
                # transactional DDL on SQLite), and empty yet: begun again, locked.
                connection.exec_driver_sql("ROLLBACK")
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # the database's write lock
        _schema.metadata.create_all(connection, checkfirst=True)
        inspector = sa.inspect(connection)
        for table_name, names in _schema.ADDED_COLUMNS.items():
            present = {column["name"] for column in inspector.get_columns(table_name)}
            table = _schema.metadata.tables[table_name]
            for name in names:
                if name not in present:
                    kind = table.c[name].type.compile(dialect=self.engine.dialect)
                    # DDL cannot take bound parameters; both names come from the schema.
                    connection.execute(
                        sa.text(f'ALTER TABLE "{table_name}" ADD COLUMN "{name}" {kind}')
                    )

    def _create_private_sqlite_file(self) -> None:
        # Before SQLite creates it with the umask's mode: its -wal and -shm files take the
        # database file's mode. An existing file keeps the mode its owner gave it.
        path = sqlite_file(self.engine.url, creating=True)
        if path is None or path.exists():
            return
        # Where the file cannot be made (no such directory, say), SQLite cannot make it
        # either, and raises the store's usual error saying so.
        with contextlib.suppress(OSError):
            create_private_file(path, None)

    def close(self) -> None:
        """Release pooled connections (of an engine this store created)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> SQLStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLStore({shown_url(self.engine.url)!r})"


class _SchemaProbe:
    """Whether the database has a table or columns that a later release added.

    A database made by an earlier release lacks them until :meth:`SQLStore.init` runs, often
    in another process (the command line runs it before it stores limits). "Present" is kept
    until :meth:`forget`, so lookups pay nothing for it; "absent" only for the cache's TTL,
    so that what is stored after the upgrade shows within the TTL, as any change made
    elsewhere does.
    """

    def __init__(
        self, probe: Callable[[], bool], *, ttl: float, clock: Callable[[], float]
    ) -> None:
        self._probe = probe
        self._present = False
        self._answer: TTLCache[str, bool] = TTLCache(ttl, clock=clock)

    def __call__(self) -> bool:
        if not self._present:
            self._present = self._answer.get_or_load("present", self._probe)
        return self._present

    def forget(self) -> None:
        """Ask the database again next time."""
        self._present = False
        self._answer.clear()


class SQLServiceRegistry:
    """A :class:`~invoke_middleware.registry.ServiceRegistry` on the ``invoke_services`` table,
    with the management methods a command line needs."""

    def __init__(
        self,
        engine: Engine,
        *,
        cache_ttl: float = DEFAULT_SERVICE_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self._engine = engine
        self._now = now
        self._by_slug: TTLCache[tuple[uuid.UUID, str], Service | None] = TTLCache(
            cache_ttl, clock=clock
        )
        self._by_team: TTLCache[uuid.UUID, tuple[Service, ...]] = TTLCache(cache_ttl, clock=clock)
        # A database made by an earlier release lacks them until `init` runs again; it
        # keeps working meanwhile, without per-service limits.
        self._has_limit_columns = _SchemaProbe(
            self._probe_limit_columns, ttl=cache_ttl, clock=clock
        )

    @_answering
    def get(self, team_id: uuid.UUID, slug: str) -> Service | None:
        """The service ``slug`` of ``team_id``, or ``None`` (possibly up to the TTL old)."""
        if not is_valid_slug(slug):
            return None
        return self._by_slug.get_or_load((team_id, slug), lambda: self._select_one(team_id, slug))

    @_answering
    def list(self, team_id: uuid.UUID) -> Sequence[Service]:
        """Every service of ``team_id``, in slug order (possibly up to the TTL old)."""
        return self._by_team.get_or_load(team_id, lambda: self._select_team(team_id))

    def list_all(self) -> Sequence[Service]:
        """Every service of every team, by team then slug; never cached."""
        table = _schema.services
        query = self._select().order_by(table.c.team_id, table.c.slug)
        with self._engine.connect() as connection:
            return _services_from_rows(connection.execute(query).mappings())

    def add(self, service: Service) -> None:
        """Store a new service; :class:`DuplicateServiceError` if its slug or id is taken."""
        now = self._now()
        try:
            values = _service_values(service)
            if not self._has_limit_columns():
                if service.limits != ServiceLimits():
                    raise _needs_init()
                for name in _LIMIT_COLUMNS:
                    del values[name]
            with self._engine.begin() as connection:
                connection.execute(
                    sa.insert(_schema.services).values(**values, created_at=now, updated_at=now)
                )
        except sa.exc.IntegrityError as exc:
            if self._select_one(service.team_id, service.slug) is not None:
                message = f"team {service.team_id} already has a service {service.slug!r}"
            else:
                message = f"a service with id {service.id} already exists"
            raise DuplicateServiceError(message) from exc
        finally:
            self.invalidate()

    def set_status(self, team_id: uuid.UUID, slug: str, status: ServiceStatus) -> bool:
        """Change a service's status; ``False`` when there is no such service."""
        table = _schema.services
        query = (
            sa.update(table)
            .where(table.c.team_id == team_id, table.c.slug == slug)
            .values(service_status=ServiceStatus(status).value, updated_at=self._now())
        )
        with self._engine.begin() as connection:
            changed = connection.execute(query).rowcount
        self.invalidate()
        return changed > 0

    def set_limits(
        self,
        team_id: uuid.UUID,
        slug: str,
        limits: ServiceLimits,
        *,
        fields: Collection[str] = LIMIT_FIELDS,
    ) -> bool:
        """Replace a service's own limits, or of them only ``fields`` (``"rate"``,
        ``"max_in_flight"``); ``False`` when there is no such service.

        Only the named limits are written, in one statement: two writers changing different
        limits of one service keep both changes (reading the row and writing it all back would
        lose one).
        """
        if not self._has_limit_columns():
            raise _needs_init()
        table = _schema.services
        query = (
            sa.update(table)
            .where(table.c.team_id == team_id, table.c.slug == slug)
            .values(**_limit_values(limits, fields), updated_at=self._now())
        )
        with self._engine.begin() as connection:
            changed = connection.execute(query).rowcount
        self.invalidate()
        return changed > 0

    def remove(self, team_id: uuid.UUID, slug: str) -> bool:
        """Delete a service; ``False`` when there is no such service."""
        table = _schema.services
        query = sa.delete(table).where(table.c.team_id == team_id, table.c.slug == slug)
        with self._engine.begin() as connection:
            removed = connection.execute(query).rowcount
        self.invalidate()
        return removed > 0

    def invalidate(self) -> None:
        """Forget every cached lookup, so the next one reads the database."""
        self._by_slug.clear()
        self._by_team.clear()
        self._has_limit_columns.forget()

    def _probe_limit_columns(self) -> bool:
        with self._engine.connect() as connection:
            present = {c["name"] for c in sa.inspect(connection).get_columns(_schema.services.name)}
        return set(_LIMIT_COLUMNS) <= present

    def _select(self) -> sa.Select[Any]:
        table = _schema.services
        if self._has_limit_columns():
            return sa.select(table)
        return sa.select(*(c for c in table.c if c.name not in _LIMIT_COLUMNS))

    def _select_one(self, team_id: uuid.UUID, slug: str) -> Service | None:
        table = _schema.services
        query = self._select().where(table.c.team_id == team_id, table.c.slug == slug)
        with self._engine.connect() as connection:
            row = connection.execute(query).mappings().one_or_none()
        found = _services_from_rows([] if row is None else [row])
        return found[0] if found else None

    def _select_team(self, team_id: uuid.UUID) -> tuple[Service, ...]:
        table = _schema.services
        query = self._select().where(table.c.team_id == team_id).order_by(table.c.slug)
        with self._engine.connect() as connection:
            return tuple(_services_from_rows(connection.execute(query).mappings()))


def _service_values(service: Service) -> dict[str, Any]:
    return {
        "id": service.id,
        "team_id": service.team_id,
        "slug": service.slug,
        "display_name": service.display_name,
        "service_type": service.service_type.value,
        "service_status": service.service_status.value,
        "upstream_url": service.upstream_url,
        "external_url": service.external_url,
        "external_auth_credential_id": service.external_auth_credential_id,
        "usage_prompt": service.usage_prompt,
        "openapi_url": service.openapi_url,
        "connect_timeout": service.timeouts.connect,
        "read_timeout": service.timeouts.read,
        "total_timeout": service.timeouts.total,
        **_limit_values(service.limits),
    }


_LIMIT_COLUMNS = _schema.ADDED_COLUMNS["invoke_services"]


def _limit_values(
    limits: ServiceLimits | TeamLimits, fields: Collection[str] = LIMIT_FIELDS
) -> dict[str, int | None]:
    """The columns of ``limits`` named by ``fields``."""
    unknown = set(fields) - LIMIT_FIELDS
    if unknown or not fields:
        raise ValueError(f"fields must name some of {sorted(LIMIT_FIELDS)}, got {sorted(fields)}")
    values: dict[str, int | None] = {}
    if "max_in_flight" in fields:
        values["max_in_flight"] = limits.max_in_flight
    if "rate" in fields:
        rate = limits.rate
        values["rate_amount"] = None if rate is None else rate.amount
        values["rate_window"] = None if rate is None else rate.window
    return values


def _limits_from_row(row: sa.RowMapping) -> ServiceLimits:
    amount, window = row.get("rate_amount"), row.get("rate_window")
    return ServiceLimits(
        rate=None if amount is None or window is None else Rate(amount=amount, window=window),
        max_in_flight=row.get("max_in_flight"),
    )


class SQLTeamLimits:
    """Teams' own limits on the ``invoke_team_limits`` table: a
    :class:`~invoke_middleware.limits.TeamLimitsSource` for the limiter, read through the
    store's cache, plus the writes a command line needs.

    A database made by an earlier release has no such table until :meth:`SQLStore.init` runs;
    meanwhile every team keeps the configured limits.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        cache_ttl: float = DEFAULT_SERVICE_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self._engine = engine
        self._now = now
        self._cache: TTLCache[uuid.UUID, TeamLimits | None] = TTLCache(cache_ttl, clock=clock)
        self._has_table = _SchemaProbe(self._probe_table, ttl=cache_ttl, clock=clock)

    @_answering
    def get(self, team_id: uuid.UUID) -> TeamLimits | None:
        """The team's own limits, or ``None`` (possibly up to the TTL old)."""
        return self._cache.get_or_load(team_id, lambda: self._select_one(team_id))

    def set(
        self, team_id: uuid.UUID, limits: TeamLimits, *, fields: Collection[str] = LIMIT_FIELDS
    ) -> None:
        """Replace the team's own limits, or of them only ``fields`` (``"rate"``,
        ``"max_in_flight"``); a team left with no limit of its own loses its row.

        As with :meth:`SQLServiceRegistry.set_limits`, only the named limits are written, so
        two writers changing different limits of one team keep both changes.
        """
        if not self._has_table():
            raise ValueError(
                "this database predates per-team limits: SQLStore.init() creates their table "
                "(`invoke-middleware teams set-limits` runs it)"
            )
        changed = _limit_values(limits, fields)
        table = _schema.team_limits
        with self._engine.begin() as connection:
            # An upsert: after a delete, two writers for one team would each insert, and the
            # second would fail on the primary key. A new row holds only what is named.
            written = {**changed, "updated_at": self._now()}
            values = {"team_id": team_id, **dict.fromkeys(_LIMIT_COLUMNS), **written}
            connection.execute(_upsert(self._engine, table, values, update=written.keys()))
            # In the same transaction, so a concurrent writer's limit is seen, not overwritten.
            connection.execute(
                sa.delete(table).where(
                    table.c.team_id == team_id,
                    *(table.c[name].is_(None) for name in _LIMIT_COLUMNS),
                )
            )
        self.invalidate()

    def list_all(self) -> Sequence[tuple[uuid.UUID, TeamLimits]]:
        """Every team that has limits of its own, by team id; never cached."""
        if not self._has_table():
            return []
        table = _schema.team_limits
        query = sa.select(table).order_by(table.c.team_id)
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [(row["team_id"], _team_limits_from_row(row)) for row in rows]

    def invalidate(self) -> None:
        """Forget every cached lookup, so the next one reads the database."""
        self._cache.clear()
        self._has_table.forget()

    def _probe_table(self) -> bool:
        with self._engine.connect() as connection:
            return sa.inspect(connection).has_table(_schema.team_limits.name)

    def _select_one(self, team_id: uuid.UUID) -> TeamLimits | None:
        if not self._has_table():
            return None
        with self._engine.connect() as connection:
            row = connection.execute(_TEAM_LIMITS, {"team_id": team_id}).mappings().one_or_none()
        return None if row is None else _team_limits_from_row(row)


def _upsert(
    engine: Engine,
    table: sa.Table,
    values: Mapping[str, Any],
    *,
    update: Collection[str] | None = None,
) -> sa.Insert:
    """Insert ``values`` into ``table``, or update the row with their primary key: its
    columns named in ``update`` (by default, every one of ``values`` but the key)."""
    # Both supported dialects spell an upsert the same way, from their own insert().
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    key = [column.name for column in table.primary_key]
    changed = {
        name: value
        for name, value in values.items()
        if name not in key and (update is None or name in update)
    }
    statement: sa.Insert = (
        dialect.insert(table).values(values).on_conflict_do_update(index_elements=key, set_=changed)
    )
    return statement


def _team_limits_from_row(row: sa.RowMapping) -> TeamLimits:
    limits = _limits_from_row(row)
    return TeamLimits(rate=limits.rate, max_in_flight=limits.max_in_flight)


def _needs_init() -> ValueError:
    return ValueError(
        "this database predates per-service limits: SQLStore.init() adds their columns "
        "(`invoke-middleware services set-limits` runs it)"
    )


def _services_from_rows(rows: Iterable[sa.RowMapping]) -> list[Service]:
    """The services of ``rows``, less those that today's rules refuse (a row an earlier
    release stored with an upstream URL no transport can use, say): each is logged and left
    out, so that one bad row fails its own requests (not found), not its whole team's
    listing, and is shown to the operator instead of a traceback."""
    services = []
    for row in rows:
        try:
            services.append(_service_from_row(row))
        except ValueError as exc:
            logger.warning(
                "service %s of team %s is left out: %s", row["slug"], row["team_id"], exc
            )
    return services


def _service_from_row(row: sa.RowMapping) -> Service:
    return Service(
        id=row["id"],
        team_id=row["team_id"],
        slug=row["slug"],
        display_name=row["display_name"],
        service_type=ServiceType(row["service_type"]),
        service_status=ServiceStatus(row["service_status"]),
        upstream_url=row["upstream_url"],
        external_url=row["external_url"],
        external_auth_credential_id=row["external_auth_credential_id"],
        usage_prompt=row["usage_prompt"],
        openapi_url=row["openapi_url"],
        timeouts=Timeouts(
            connect=row["connect_timeout"],
            read=row["read_timeout"],
            total=row["total_timeout"],
        ),
        limits=_limits_from_row(row),
    )


class SQLCredentialStore:
    """A :class:`~invoke_middleware.auth.stores.CredentialStore` on ``invoke_credentials``.

    Only a key's prefix and SHA-256 are stored. Nothing is cached: every lookup reads the
    database, so a revocation or an expiry applies to the very next request.
    """

    def __init__(self, engine: Engine, *, now: Callable[[], dt.datetime] = _utc_now) -> None:
        self._engine = engine
        self._now = now
        # Run on every request that carries a key: on the driver's cursor.
        self._by_prefix = DriverSelect(engine, _CREDENTIALS_BY_PREFIX)

    @_answering
    def find_by_prefix(self, prefix: str) -> Sequence[CredentialRecord]:
        """Every record whose prefix is ``prefix`` (normally zero or one)."""
        return [_credential_from_row(row) for row in self._by_prefix.rows({"prefix": prefix})]

    def get(self, credential_id: uuid.UUID) -> CredentialRecord | None:
        """The credential ``credential_id``, or ``None``."""
        found = self._select(_CREDENTIAL_BY_ID, {"id": credential_id})
        return found[0] if found else None

    def issue(
        self,
        kind: CredentialKind,
        *,
        team_id: uuid.UUID,
        user_id: str | None = None,
        name: str = "",
        expires_at: dt.datetime | None = None,
    ) -> IssuedCredential:
        """Create a credential and return its raw key, once (see
        :func:`~invoke_middleware.auth.stores.new_credential` for the rules)."""
        issued = new_credential(
            kind,
            team_id=team_id,
            user_id=user_id,
            name=name,
            expires_at=expires_at,
            created_at=self._now(),
            # Read outside the insert's transaction: SQLite could not turn a read transaction
            # into a write one while another writer commits. Two processes drawing the same
            # prefix at once is harmless: the resolver compares every record of a prefix.
            prefix_taken=lambda prefix: bool(self.find_by_prefix(prefix)),
        )
        record = issued.record
        with self._engine.begin() as connection:
            connection.execute(
                sa.insert(_schema.credentials).values(
                    id=record.id,
                    kind=record.kind.key_prefix,
                    prefix=record.prefix,
                    key_hash=record.key_hash,
                    team_id=record.team_id,
                    user_id=record.user_id,
                    name=record.name,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )
            )
        return issued

    def revoke(self, credential_id: uuid.UUID) -> bool:
        """Revoke for good (the first revocation time is kept); ``False`` when unknown."""
        table = _schema.credentials
        with self._engine.begin() as connection:
            # The write comes first so that SQLite takes its write lock before reading.
            connection.execute(
                sa.update(table)
                .where(table.c.id == credential_id, table.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            found = connection.execute(sa.select(table.c.id).where(table.c.id == credential_id))
            return found.first() is not None

    def expire(self, credential_id: uuid.UUID, when: dt.datetime) -> bool:
        """Make the credential expire at ``when``; ``False`` when there is no such credential."""
        require_aware(when, "when")
        table = _schema.credentials
        query = sa.update(table).where(table.c.id == credential_id).values(expires_at=when)
        with self._engine.begin() as connection:
            return connection.execute(query).rowcount > 0

    def touch(self, credential_id: uuid.UUID, when: dt.datetime) -> None:
        """Record that the credential was used at ``when`` (an earlier time never overwrites
        a later one, whatever order concurrent requests finish in)."""
        require_aware(when, "when")
        table = _schema.credentials
        query = (
            sa.update(table)
            .where(
                table.c.id == credential_id,
                sa.or_(table.c.last_used_at.is_(None), table.c.last_used_at < when),
            )
            .values(last_used_at=when)
        )
        # Written on a request's thread, for the credential it carries: bounded as its reads.
        with bound_reads(), self._engine.begin() as connection:
            connection.execute(query)

    def list(self, team_id: uuid.UUID) -> Sequence[CredentialRecord]:
        """A team's credentials, revoked ones included, oldest first."""
        table = _schema.credentials
        return self._select(
            sa.select(table)
            .where(table.c.team_id == team_id)
            .order_by(table.c.created_at, table.c.id)
        )

    def _select(
        self, query: sa.Select[Any], parameters: dict[str, Any] | None = None
    ) -> Sequence[CredentialRecord]:
        with self._engine.connect() as connection:
            rows = connection.execute(query, parameters).mappings()
            return [_credential_from_row(row) for row in rows]


def _credential_from_row(row: Mapping[Any, Any]) -> CredentialRecord:
    return CredentialRecord(
        id=row["id"],
        # The column holds the key prefix ("sk-"), which CredentialKind reads back.
        kind=CredentialKind(row["kind"]),
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        team_id=row["team_id"],
        user_id=row["user_id"],
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


class SQLMembershipStore:
    """A :class:`~invoke_middleware.auth.stores.MembershipStore` on ``invoke_memberships``.

    Nothing is cached: a role change applies to the very next request.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Run on every request with a device key: on the driver's cursor.
        self._role = DriverSelect(engine, _ROLE)

    @_answering
    def role_of(self, team_id: uuid.UUID, user_id: str) -> Role | None:
        """The role of ``user_id`` in ``team_id``, or ``None`` when not a member."""
        rows = self._role.rows({"team_id": team_id, "user_id": user_id})
        return Role(rows[0]["role"]) if rows else None

    def set_role(self, team_id: uuid.UUID, user_id: str, role: Role) -> None:
        """Make ``user_id`` a member of ``team_id`` with ``role``, or change their role."""
        values = {"team_id": team_id, "user_id": user_id, "role": Role(role).value}
        statement = _upsert(self._engine, _schema.memberships, values)
        with self._engine.begin() as connection:
            connection.execute(statement)

    def remove(self, team_id: uuid.UUID, user_id: str) -> bool:
        """Remove ``user_id`` from ``team_id``; ``False`` when they were not a member."""
        table = _schema.memberships
        query = sa.delete(table).where(table.c.team_id == team_id, table.c.user_id == user_id)
        with self._engine.begin() as connection:
            return connection.execute(query).rowcount > 0

    def list(self, team_id: uuid.UUID) -> Sequence[Membership]:
        """The members of ``team_id``, by user id."""
        table = _schema.memberships
        query = sa.select(table).where(table.c.team_id == team_id).order_by(table.c.user_id)
        with self._engine.connect() as connection:
            return [
                Membership(team_id=row["team_id"], user_id=row["user_id"], role=Role(row["role"]))
                for row in connection.execute(query).mappings()
            ]
