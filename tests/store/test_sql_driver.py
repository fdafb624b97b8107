"""The reads run on the driver's cursor answer exactly what ``Connection.execute`` does, and
fail the way it fails: on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from invoke_middleware.auth.principal import CredentialKind, Role
from invoke_middleware.store import SQLStore, _schema
from invoke_middleware.store._driver import DriverSelect
from invoke_middleware.store.sql import _CREDENTIALS_BY_PREFIX, _ROLE

from .conftest import Backend, postgres_schema

TEAM = uuid.UUID("5e1ec7ed-0000-4000-8000-0000000000d1")


def _through_sqlalchemy(
    store: SQLStore, statement: sa.Select[Any], **parameters: object
) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        return [dict(row) for row in connection.execute(statement, parameters).mappings()]


def test_a_row_is_what_connection_execute_returns(store: SQLStore) -> None:
    issued = store.credentials.issue(
        CredentialKind.DEVICE,
        team_id=TEAM,
        user_id="ada",
        name="laptop",
        expires_at=dt.datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
    )
    store.credentials.revoke(issued.record.id)
    prefix = issued.record.prefix
    expected = _through_sqlalchemy(store, _CREDENTIALS_BY_PREFIX, prefix=prefix)
    rows = DriverSelect(store.engine, _CREDENTIALS_BY_PREFIX).rows({"prefix": prefix})
    assert rows == expected
    row = rows[0]
    # The columns' own types: a UUID (32 hex digits on SQLite), aware UTC datetimes, NULL.
    assert row["id"] == issued.record.id
    assert row["team_id"] == TEAM
    assert row["expires_at"] == dt.datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    assert row["revoked_at"] is not None
    assert row["revoked_at"].tzinfo is not None
    assert row["last_used_at"] is None


def test_parameters_go_through_their_types(store: SQLStore) -> None:
    # The team's UUID is bound as the column stores it (hex on SQLite, uuid on PostgreSQL).
    store.memberships.set_role(TEAM, "ada", Role.ADMIN)
    select = DriverSelect(store.engine, _ROLE)
    assert select.rows({"team_id": TEAM, "user_id": "ada"}) == [{"role": Role.ADMIN.value}]
    assert select.rows({"team_id": uuid.uuid4(), "user_id": "ada"}) == []
    assert store.memberships.role_of(TEAM, "ada") is Role.ADMIN
    assert store.memberships.role_of(TEAM, "bob") is None


def test_no_row_and_many_rows(store: SQLStore) -> None:
    select = DriverSelect(store.engine, _CREDENTIALS_BY_PREFIX)
    assert select.rows({"prefix": "sk-none"}) == []
    everything = DriverSelect(store.engine, sa.select(_schema.credentials.c.name))
    for name in ("a", "b", "c"):
        store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM, name=name)
    assert sorted(row["name"] for row in everything.rows({})) == ["a", "b", "c"]


def test_a_driver_error_is_sqlalchemys_and_the_connection_goes_back(backend: Backend) -> None:
    store = SQLStore(backend.url)  # not initialised: no tables
    try:
        select = DriverSelect(store.engine, _CREDENTIALS_BY_PREFIX)
        for _ in range(3):  # the same pooled connection each time: returned after the error
            with pytest.raises(sa.exc.DBAPIError) as raised:
                select.rows({"prefix": "sk-x"})
            assert "invoke_credentials" in str(raised.value)
        assert store.engine.pool.checkedout() == 0
        store.init()
        assert select.rows({"prefix": "sk-x"}) == []
    finally:
        store.close()


def _drop_pooled_connection(store: SQLStore, server: sa.Engine) -> int:
    """Have the server end the one connection in ``store``'s pool; its process id."""
    assert store.engine.pool.checkedin() == 1
    with store.engine.connect() as connection:
        pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with server.connect() as connection:
        connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return int(pid)


def test_a_connection_the_server_dropped_is_replaced(postgres_server: sa.Engine) -> None:
    with postgres_schema(postgres_server) as url:
        store = SQLStore(url)  # its check-out pings a pooled connection
        try:
            store.init()
            prefix = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).record.prefix
            select = DriverSelect(store.engine, _CREDENTIALS_BY_PREFIX)
            assert len(select.rows({"prefix": prefix})) == 1
            _drop_pooled_connection(store, postgres_server)
            # The ping finds the dead connection, and the pool opens another.
            assert len(select.rows({"prefix": prefix})) == 1
        finally:
            store.close()


def test_a_dead_connection_found_on_check_out_renews_the_whole_pool(
    monkeypatch: pytest.MonkeyPatch, postgres_server: sa.Engine
) -> None:
    # After a failover every pooled connection is dead: the first one found sends them all
    # away, as pool_pre_ping does, instead of each costing a request its failed ping (or,
    # with a stopped server, its wait for the read timeout).
    with postgres_schema(postgres_server) as url:
        store = SQLStore(url)
        try:
            store.init()
            held = [store.engine.connect() for _ in range(3)]
            pids = [c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() for c in held]
            for connection in held:
                connection.close()
            with postgres_server.connect() as connection:
                for pid in pids:
                    connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            failed: list[Exception] = []
            ping = store.engine.dialect.do_ping

            def counted(dbapi_connection: Any) -> bool:
                try:
                    return ping(dbapi_connection)
                except Exception as exc:
                    failed.append(exc)
                    raise

            monkeypatch.setattr(store.engine.dialect, "do_ping", counted)
            for _ in range(3):
                assert store.memberships.role_of(TEAM, "nobody") is None
        finally:
            store.close()

    assert len(failed) == 1


def test_a_lost_connection_is_invalidated_like_connection_execute_does(
    postgres_server: sa.Engine,
) -> None:
    with postgres_schema(postgres_server) as url:
        engine = sa.create_engine(url)  # no pre-ping: the read meets the dead socket
        store = SQLStore(engine)
        try:
            store.init()
            prefix = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).record.prefix
            select = DriverSelect(store.engine, _CREDENTIALS_BY_PREFIX)
            assert len(select.rows({"prefix": prefix})) == 1
            dropped = _drop_pooled_connection(store, postgres_server)
            with pytest.raises(sa.exc.OperationalError) as raised:
                select.rows({"prefix": prefix})
            assert raised.value.connection_invalidated
            # The next read opens a new connection instead of reusing the dead one.
            assert len(select.rows({"prefix": prefix})) == 1
            with store.engine.connect() as connection:
                pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            assert pid != dropped
        finally:
            store.close()
            engine.dispose()  # the store closes only an engine of its own
