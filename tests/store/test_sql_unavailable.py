"""A store that cannot answer: requests get 503 ``store_unavailable`` and may retry.

A database that is down, or a read that waits behind a lock past the statement timeout, is
not the caller's fault and not a bug: the answer says so (503, ``Retry-After``), and the log
says it once in a while, not once per request with a traceback. A read queued behind a lock
holds its thread for the statement timeout, not for as long as the lock is held.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from tests.toolkit.servers import refused_port, stalling_forwarder
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


@contextlib.contextmanager
def _opened(url: str) -> Iterator[tuple[SQLStore, str]]:
    """A store on ``url``, initialised, with the service ``svc`` and a key of its team."""
    with SQLStore(url) as store:
        store.init()
        store.services.add(make_service("svc", "http://127.0.0.1:9"))
        yield store, store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key


@contextlib.contextmanager
def _table_locked(url: str, table: str) -> Iterator[sa.Connection]:
    """``table`` locked by a connection of its own until the block ends or the yielded
    connection closes: every read of it waits meanwhile."""
    holder = sa.create_engine(url)
    try:
        with holder.connect() as connection:
            connection.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            yield connection
    finally:
        holder.dispose()


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
    with postgres_schema(postgres_server) as url, _opened(url) as (store, key):
        app = _gateway(store)
        with _table_locked(url, "invoke_credentials"):
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="invoke_middleware.store"):
                answer = _relay(app, key)
            waited = time.monotonic() - started
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


# A server that stopped, or a pooler that queues the query, acknowledges it and never
# answers: only the gateway's own bound on the read (POSTGRESQL_READ_TIMEOUT) frees the thread.


def _timed_relay(app: webtest.TestApp, key: str, *, give_up: float) -> tuple[float, Any]:
    """The relay of ``key`` from a thread, and the seconds it took; waiting for it at most
    ``give_up`` seconds (then ``inf`` and no answer), so a read that hangs fails the test
    instead of hanging it."""
    answers: list[webtest.TestResponse] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: answers.append(_relay(app, key)), daemon=True)
    thread.start()
    thread.join(give_up)
    took = time.monotonic() - started
    return (took, answers[0]) if answers else (math.inf, None)


def _with_options(url: str, option: str) -> str:
    """``url`` (from ``postgres_schema``) with one more server option."""
    parsed = sa.make_url(url)
    options = f"{parsed.query['options']} {option}"
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


@pytest.fixture
def reads_bounded_at_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores opened in the test bound a request's read at 1 s, not 10."""
    from invoke_middleware.store import sql

    monkeypatch.setattr(sql, "POSTGRESQL_READ_TIMEOUT", 1)


@pytest.mark.usefixtures("reads_bounded_at_one_second")
def test_a_server_that_stops_answering_frees_the_thread_at_the_read_timeout(
    postgres_server: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with postgres_schema(postgres_server) as url, stalling_forwarder(5432) as forwarder:
        through = sa.make_url(url).set(port=forwarder.port)
        through = through.update_query_dict({"connect_timeout": "1"})
        with _opened(through.render_as_string(hide_password=False)) as (store, key):
            app = _gateway(store)
            before = _relay(app, key)  # leaves a connection in the pool
            forwarder.stall()
            with caplog.at_level(logging.WARNING, logger="invoke_middleware.store"):
                took, answer = _timed_relay(app, key, give_up=8)
            forwarder.resume()
            after = _relay(app, key)

    assert_gateway_error(before, 502, "upstream_unreachable")
    # The pooled connection's ping cut at 1 s, a new connection given up at 1 s.
    assert took < 5, took
    assert_gateway_error(answer, 503, "store_unavailable")
    assert "did not answer a read within 1 s; its connection was shut down" in caplog.text
    # The server back, the pool makes a new connection: the request gets through.
    assert_gateway_error(after, 502, "upstream_unreachable")


@pytest.mark.usefixtures("reads_bounded_at_one_second")
def test_a_read_no_statement_timeout_ends_is_ended_at_the_read_timeout(
    postgres_server: sa.Engine,
) -> None:
    # The URL turns the statement timeout off (an operator's choice the store keeps): a read
    # queued behind a lock is still bounded, by the client, and its connection replaced.
    with (
        postgres_schema(postgres_server) as url,
        _opened(_with_options(url, "-cstatement_timeout=0")) as (store, key),
    ):
        app = _gateway(store)
        with _table_locked(url, "invoke_credentials"):
            took, answer = _timed_relay(app, key, give_up=8)
        after = _relay(app, key)

    assert took < 4, took
    assert_gateway_error(answer, 503, "store_unavailable")
    assert_gateway_error(after, 502, "upstream_unreachable")


@pytest.mark.usefixtures("reads_bounded_at_one_second")
def test_what_is_not_a_request_read_is_not_bounded(postgres_server: sa.Engine) -> None:
    # A command (here, listing every service) may wait longer than a request may: for a lock
    # held 2 s, past the 1 s bound, it waits and answers.
    with (
        postgres_schema(postgres_server) as url,
        _opened(_with_options(url, "-cstatement_timeout=0")) as (store, _),
        _table_locked(url, "invoke_services") as holder,
    ):
        release = threading.Timer(2, holder.close)
        release.start()
        started = time.monotonic()
        services = store.services.list_all()
        took = time.monotonic() - started
        release.join()

    assert [service.slug for service in services] == ["svc"]
    assert took > 1.5, took
