"""A store that cannot answer: requests get 503 ``store_unavailable`` and may retry.

A database that is down, or a read that waits behind a lock past the statement timeout, is
not the caller's fault and not a bug: the answer says so (503, ``Retry-After``), and the log
says it once in a while, not once per request with a traceback. A read queued behind a lock
holds its thread for the statement timeout, not for as long as the lock is held.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import webtest

from invoke_middleware import InvokeMiddleware
from invoke_middleware.asgi import no_wsgi_host
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.auth.stores import InMemoryCredentialStore
from invoke_middleware.errors import StoreUnavailableError
from invoke_middleware.store import SQLStore, create_engine
from tests.store.conftest import Backend, postgres_schema
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.servers import refused_port
from tests.toolkit.world import TEAM, make_service


def _gateway(store: SQLStore) -> webtest.TestApp:
    middleware = InvokeMiddleware(
        no_wsgi_host,
        registry=store.services,
        credentials=store.credentials,
        memberships=store.memberships,
    )
    return webtest.TestApp(middleware)


def _well_formed_key() -> str:
    """A key of the right form that no SQL store holds: the store is asked about it."""
    return InMemoryCredentialStore().issue(CredentialKind.INTEGRATION, team_id=TEAM).key


def _relay(app: webtest.TestApp, key: str) -> webtest.TestResponse:
    return app.get(
        "/r/containers/svc/hello", headers={"Authorization": f"Bearer {key}"}, expect_errors=True
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections."""
    with refused_port() as port:
        yield port


def test_a_database_that_refuses_connections_is_503_with_one_warning(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    key = _well_formed_key()
    with SQLStore(f"postgresql://gateway@127.0.0.1:{closed_port}/invoke") as store:
        app = _gateway(store)
        with caplog.at_level(logging.WARNING):
            answers = [_relay(app, key) for _ in range(5)]

    for answer in answers:
        assert_gateway_error(answer, 503, "store_unavailable")
        assert answer.headers["Retry-After"] == "1"
    warnings = [r for r in caplog.records if r.name == "invoke_middleware.store"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable (OperationalError: connection failed" in warnings[0].getMessage()
    # Neither the traceback of an unexpected failure nor one line per request.
    assert not [r for r in caplog.records if r.exc_info]


def test_an_mcp_request_while_the_database_refuses_connections_is_503(closed_port: int) -> None:
    # Not 401: a client told its key is bad may drop it; one told to retry keeps it.
    with SQLStore(f"postgresql://gateway@127.0.0.1:{closed_port}/invoke") as store:
        answer = _gateway(store).post_json(
            "/r/mcp",
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={
                "Authorization": f"Bearer {_well_formed_key()}",
                "Accept": "application/json, text/event-stream",
            },
            expect_errors=True,
        )
    assert_gateway_error(answer, 503, "store_unavailable")
    assert answer.headers["Retry-After"] == "1"


def test_a_read_queued_behind_a_lock_is_503_once_the_statement_times_out(
    monkeypatch: pytest.MonkeyPatch, postgres_server: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # An ALTER TABLE waiting for a long transaction queues every read behind it: without a
    # statement timeout each request's key lookup would hold its thread as long.
    from invoke_middleware.store import sql

    monkeypatch.setattr(sql, "POSTGRESQL_STATEMENT_TIMEOUT", 1)
    with postgres_schema(postgres_server) as url, SQLStore(url) as store:
        store.init()
        store.services.add(make_service("svc", "http://127.0.0.1:9"))
        key = store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
        app = _gateway(store)
        holder = sa.create_engine(url)
        try:
            with holder.connect() as connection:
                connection.execute(
                    sa.text("LOCK TABLE invoke_credentials IN ACCESS EXCLUSIVE MODE")
                )
                started = time.monotonic()
                with caplog.at_level(logging.WARNING, logger="invoke_middleware.store"):
                    answer = _relay(app, key)
                waited = time.monotonic() - started
        finally:
            holder.dispose()
        # The lock gone, the same key gets through to the (absent) container.
        after = _relay(app, key)

    assert_gateway_error(answer, 503, "store_unavailable")
    assert waited < 4
    assert "statement timeout" in caplog.text
    assert_gateway_error(after, 502, "upstream_unreachable")


def test_a_sqlite_file_locked_by_another_process_is_503(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    with SQLStore(url) as made:
        made.init()
    holder = sqlite3.connect(tmp_path / "store.db")
    try:
        # Exclusive locking in WAL mode keeps every other reader out, busy.
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("DELETE FROM invoke_credentials")
        with SQLStore(create_engine(url, sqlite_busy_timeout=0.1)) as store:
            answer = _relay(_gateway(store), _well_formed_key())
            store.engine.dispose()
    finally:
        holder.close()
    assert_gateway_error(answer, 503, "store_unavailable")


def test_a_column_missing_from_the_store_is_an_internal_error(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # A mistake in the schema, which a retry would not mend: not an outage, on either
    # database (SQLite reports it with the same exception class as a locked file).
    store = backend.open_store()
    with store.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE invoke_credentials DROP COLUMN key_hash"))
    with caplog.at_level(logging.ERROR):
        answer = _relay(_gateway(store), _well_formed_key())
    assert_gateway_error(answer, 500, "internal_error")
    assert any(r.exc_info for r in caplog.records)


def test_a_sqlite_row_the_driver_cannot_decode_is_no_outage(tmp_path: Path) -> None:
    # The sqlite3 module's own error has no result code: no outage, whatever its class.
    with SQLStore(f"sqlite:///{tmp_path}/store.db") as store:
        store.init()
        store.services.add(make_service("svc", "http://127.0.0.1:9"))
        with store.engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE invoke_services SET display_name = CAST(x'ff' AS TEXT)")
            )
        store.services.invalidate()
        with pytest.raises(sa.exc.OperationalError, match="decode"):
            store.services.get(TEAM, "svc")


def test_a_store_without_its_tables_is_still_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A mistake to fix, not an outage to wait out: a retry would not mend it.
    with SQLStore("sqlite://") as store:
        app = _gateway(store)
        with caplog.at_level(logging.ERROR):
            answer = _relay(app, _well_formed_key())
    assert_gateway_error(answer, 500, "internal_error")
    assert any(r.exc_info for r in caplog.records)


def test_every_read_a_request_makes_answers_503(closed_port: int) -> None:
    store = SQLStore(f"postgresql://gateway@127.0.0.1:{closed_port}/invoke")
    reads = [
        lambda: store.services.get(TEAM, "svc"),
        lambda: store.services.list(TEAM),
        lambda: store.team_limits.get(TEAM),
        lambda: store.credentials.find_by_prefix("sk-abcdefgh"),
        lambda: store.memberships.role_of(TEAM, "alice"),
    ]
    try:
        for read in reads:
            with pytest.raises(StoreUnavailableError):
                read()
    finally:
        store.close()
