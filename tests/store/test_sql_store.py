"""Opening a SQL store: engines, URLs, and concurrent use."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from invoke_middleware._toml_config import sqlite_file
from invoke_middleware.auth.principal import CredentialKind, Role
from invoke_middleware.store import SQLStore, create_engine
from tests.store.conftest import POSTGRES_URL, Backend, postgres_schema

TEAM = uuid.UUID("6f1b1c52-0c39-4d8e-9d55-3c3f3f0e7a01")


def test_repr_hides_the_database_password() -> None:
    store = SQLStore("postgresql+psycopg://gateway:s3cret-pw@127.0.0.1:5432/invoke")
    try:
        assert "s3cret-pw" not in repr(store)
        assert "gateway:***@127.0.0.1" in repr(store)
    finally:
        store.close()


@pytest.mark.parametrize("name", ["password", "sslpassword"])
def test_repr_hides_a_password_in_the_query(name: str) -> None:
    store = SQLStore(f"postgresql+psycopg://gateway@127.0.0.1:5432/invoke?{name}=s3cret-pw")
    try:
        assert "s3cret-pw" not in repr(store)
        assert f"{name}=hidden" in repr(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("query", "default"),
    [
        pytest.param("", 1, id="the-store-s-default"),
        pytest.param("?connect_timeout=1", 60, id="the-url-s"),
    ],
)
def test_a_postgresql_server_that_never_answers_fails_the_connection_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, query: str, default: int
) -> None:
    # It accepts connections and says nothing: libpq waits for ever without connect_timeout.
    from invoke_middleware.store import sql

    monkeypatch.setattr(sql, "POSTGRESQL_CONNECT_TIMEOUT", default)
    listener = socket.create_server(("127.0.0.1", 0))
    engine = create_engine(f"postgresql://gateway@127.0.0.1:{listener.getsockname()[1]}/x{query}")
    try:
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError), engine.connect():
            pass
        assert time.monotonic() - started < 5
    finally:
        engine.dispose()
        listener.close()


def _timeout_and_path(url: str) -> tuple[str, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            timeout = connection.execute(sa.text("SHOW statement_timeout")).scalar_one()
            path = connection.execute(sa.text("SHOW search_path")).scalar_one()
    finally:
        engine.dispose()
    return timeout, path


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param("", "5s", id="the-store-s-default"),
        pytest.param("-c statement_timeout=250", "250ms", id="the-url-s"),
        pytest.param("-c statement-timeout=0", "0", id="the-url-s-spelled-with-a-dash"),
    ],
)
def test_postgresql_statements_time_out_unless_the_url_says_otherwise(
    postgres_server: sa.Engine, options: str, expected: str
) -> None:
    with postgres_schema(postgres_server) as schema_url:
        # The URL's options (the schema's search_path among them) reach the server as given.
        given = f"options={quote(options)}%20" if options else "options="
        timeout, path = _timeout_and_path(schema_url.replace("options=", given))
    assert timeout == expected
    assert path.startswith("invoke_test_")


def test_a_statement_timeout_set_by_pgoptions_or_for_the_role_is_kept(
    postgres_server: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither is in the URL: the store must not replace what libpq or the server set.
    role = f"invoke_test_{uuid.uuid4().hex[:12]}"
    with postgres_server.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(sa.text(f"ALTER ROLE {role} SET statement_timeout = '1min'"))
    try:
        url = POSTGRES_URL.replace("postgres@", f"{role}@", 1)
        assert _timeout_and_path(url)[0] == "1min"
        monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=7s -c search_path=elsewhere")
        assert _timeout_and_path(url) == ("7s", "elsewhere")
    finally:
        with postgres_server.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE {role}"))


@pytest.mark.parametrize(
    ("query", "idle"),
    [
        pytest.param("", 10, id="the-store-s"),
        pytest.param("?keepalives_idle=30", 30, id="the-url-s"),
    ],
)
def test_a_postgresql_connection_s_socket_finds_a_vanished_server(
    postgres_server: sa.Engine, query: str, idle: int
) -> None:
    # A failover or a network cut sends no reset: without these the kernel waits two hours.
    engine = create_engine(POSTGRES_URL + query)
    try:
        with engine.connect() as connection:
            fileno = connection.connection.dbapi_connection.fileno()  # type: ignore[union-attr]
            with socket.socket(fileno=os.dup(fileno)) as sock:
                options = (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                )
    finally:
        engine.dispose()
    assert options == (1, idle, 5, 3, 15_000)


def test_a_bare_postgresql_url_uses_psycopg() -> None:
    engine = create_engine("postgresql://gateway@127.0.0.1/invoke")
    try:
        assert engine.driver == "psycopg"
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://root@127.0.0.1/invoke", id="mysql"),
        pytest.param("oracle://scott@127.0.0.1/invoke", id="oracle"),
    ],
)
def test_other_databases_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="use SQLite or PostgreSQL"):
        create_engine(url)


def test_a_sqlite_file_runs_in_wal_mode_synced_at_every_commit(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite:///{tmp_path}/wal.db")
    try:
        with store.engine.connect() as connection:
            mode = connection.execute(sa.text("PRAGMA journal_mode")).scalar_one()
            busy = connection.execute(sa.text("PRAGMA busy_timeout")).scalar_one()
            synchronous = connection.execute(sa.text("PRAGMA synchronous")).scalar_one()
        # 2 is FULL: a confirmed revocation survives a power failure.
        assert (mode, busy, synchronous) == ("wal", 5000, 2)
    finally:
        store.close()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("{dir}/store.db", id="a-path"),
        pytest.param("file:{dir}/store.db?uri=true", id="a-uri"),
        pytest.param("file://localhost{dir}/store.db?cache=private&uri=true", id="a-uri-with-host"),
        pytest.param("file:{dir}/store.db?vfs=unix-excl&uri=true", id="a-uri-with-a-system-vfs"),
    ],
)
def test_init_makes_a_new_sqlite_file_the_owners_alone_under_any_umask(
    tmp_path: Path, name: str
) -> None:
    umask = os.umask(0)
    try:
        with SQLStore(f"sqlite:///{name.format(dir=tmp_path)}") as store:
            store.init()
            store.memberships.set_role(TEAM, "alice", Role.ADMIN)
            # While the store is open, SQLite keeps its -wal and -shm files.
            modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    finally:
        os.umask(umask)
    # unix-excl keeps the WAL index in memory: no -shm file.
    assert {"store.db", "store.db-wal"} <= set(modes)
    assert set(modes) <= {"store.db", "store.db-wal", "store.db-shm"}
    assert modes == dict.fromkeys(modes, 0o600)


def test_init_leaves_a_file_a_uri_may_not_create_to_sqlite(tmp_path: Path) -> None:
    # mode=rw opens an existing file only: making it first would override the URI.
    with (
        SQLStore(f"sqlite:///file:{tmp_path}/store.db?mode=rw&uri=true") as store,
        pytest.raises(sa.exc.OperationalError, match="unable to open"),
    ):
        store.init()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "opened", "created"),
    [
        ("sqlite:////srv/store.db", "/srv/store.db", "/srv/store.db"),
        ("sqlite:///file:/srv/store.db?uri=true", "/srv/store.db", "/srv/store.db"),
        ("sqlite:///file:///srv/my%20store.db?uri=true", "/srv/my store.db", "/srv/my store.db"),
        ("sqlite:///file://localhost/srv/store.db?uri=true", "/srv/store.db", "/srv/store.db"),
        ("sqlite:///file:/srv/store.db?mode=ro&uri=true", "/srv/store.db", None),
        ("sqlite:///file:/srv/store.db?mode=rwc&uri=true", "/srv/store.db", "/srv/store.db"),
        ("sqlite:///relative.db?uri=true", "relative.db", "relative.db"),
        ("sqlite:///file://elsewhere/srv/store.db?uri=true", None, None),
        ("sqlite:///file:/srv/store.db?vfs=unix-excl&uri=true", "/srv/store.db", "/srv/store.db"),
        ("sqlite:///file:/srv/store.db?vfs=memdb&uri=true", None, None),
        ("sqlite:///file:store?mode=memory&uri=true", None, None),
        ("sqlite:///file::memory:?uri=true", None, None),
        ("sqlite://", None, None),
        ("postgresql://gateway@127.0.0.1/invoke", None, None),
    ],
)
def test_the_file_of_a_sqlite_url(url: str, opened: str | None, created: str | None) -> None:
    assert sqlite_file(url) == (None if opened is None else Path(opened))
    assert sqlite_file(url, creating=True) == (None if created is None else Path(created))


def test_an_in_memory_sqlite_store_is_one_database_for_every_thread() -> None:
    seen: list[Role | None] = []
    with SQLStore("sqlite://") as store:
        store.init()
        store.memberships.set_role(TEAM, "alice", Role.ADMIN)

        thread = threading.Thread(
            target=lambda: seen.append(store.memberships.role_of(TEAM, "alice"))
        )
        thread.start()
        thread.join(timeout=10)

    assert seen == [Role.ADMIN]


def test_a_given_engine_is_used_and_left_open(backend: Backend) -> None:
    engine = create_engine(backend.url)
    try:
        with SQLStore(engine) as store:
            store.init()
        with engine.connect() as connection:
            tables = sa.inspect(connection).get_table_names()
    finally:
        engine.dispose()

    assert {"invoke_services", "invoke_credentials", "invoke_memberships"} <= set(tables)


def test_threads_can_write_concurrently(backend: Backend) -> None:
    stores = [backend.open_store(), backend.open_store()]

    def work(n: int) -> None:
        store = stores[n % 2]
        issued = store.credentials.issue(CredentialKind.DEVICE, team_id=TEAM, user_id=f"user-{n}")
        store.memberships.set_role(TEAM, f"user-{n}", Role.MEMBER)
        store.credentials.touch(issued.record.id, issued.record.created_at)
        store.credentials.revoke(issued.record.id)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(40)))

    assert len(stores[0].credentials.list(TEAM)) == 40
    assert all(c.revoked_at is not None for c in stores[1].credentials.list(TEAM))
    assert len(stores[1].memberships.list(TEAM)) == 40
