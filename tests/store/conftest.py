"""Fixtures: every store test runs against a SQLite file and against PostgreSQL.

PostgreSQL is the server on 127.0.0.1:5432 (database ``test``, user ``postgres``, trust auth).
Each test gets its own schema, selected through ``search_path`` in the URL, and dropped after
the test. When the server is unreachable the PostgreSQL tests are skipped, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from invoke_middleware.store import SQLStore

POSTGRES_URL = os.environ.get(
    "INVOKE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """One database for one test: its URL, and a way to open stores on it."""

    name: str
    url: str
    open_store: Callable[..., SQLStore]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[sa.Engine]:
    """An engine on the PostgreSQL test database, or a skip (a failure under ``CI=true``)."""
    engine = sa.create_engine(
        POSTGRES_URL, connect_args={"connect_timeout": 3}, isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


@contextmanager
def postgres_schema(server: sa.Engine) -> Iterator[str]:
    """A new schema for one test, dropped afterwards; yields a URL that selects it."""
    schema = f"invoke_test_{uuid.uuid4().hex[:12]}"
    with server.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with server.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty database; stores opened on it are closed after the test."""
    with ExitStack() as cleanup:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'store.db'}"
        else:
            url = cleanup.enter_context(postgres_schema(request.getfixturevalue("postgres_server")))

        def open_store(**options: Any) -> SQLStore:
            store = SQLStore(url, **options)
            cleanup.callback(store.close)
            store.init()
            return store

        yield Backend(name=request.param, url=url, open_store=open_store)


@pytest.fixture
def store(backend: Backend) -> SQLStore:
    """An initialised store on a fresh database, with the service cache off."""
    return backend.open_store(service_cache_ttl=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
