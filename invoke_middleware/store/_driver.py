"""A read run straight on the database driver's cursor, for the queries every request makes.

SQLAlchemy's execution of a statement (an execution context, a cursor result, a row mapping
per row) costs more than the query: finding a key by its prefix took 63 µs on SQLite through
``Connection.execute``, 24 µs this way. :class:`DriverSelect` keeps what makes the result the
same as ``Connection.execute``'s: the statement is compiled once for the engine's dialect,
parameters and columns go through their types' own bind and result processors, the
connection comes from the engine's pool (with its connect events and pre-ping) and goes back
to it, and a driver error is raised as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, the
connection invalidated when the dialect says it was lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

_Processor = Callable[[Any], Any] | None


class DriverSelect:
    """``statement`` (a ``SELECT`` with named bound parameters) ready to run on ``engine``."""

    __slots__ = ("_columns", "_dbapi_error", "_dialect", "_engine", "_names", "_params", "_sql")

    def __init__(self, engine: Engine, statement: sa.Select[Any]) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        self._engine = engine
        self._dialect = dialect
        self._sql = compiled.string
        # A positional paramstyle (SQLite's "?") takes a tuple in this order; a named one
        # (psycopg's "%(name)s") takes the mapping.
        self._names = tuple(compiled.positiontup or ()) if compiled.positional else None
        self._params: dict[str, _Processor] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        self._columns: tuple[tuple[str, _Processor], ...] = tuple(
            (column.name, column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in statement.selected_columns
        )
        self._dbapi_error: type[Any] = dialect.loaded_dbapi.Error

    def rows(self, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows for ``parameters``, each a dict of column name to value."""
        values = {}
        for name, value in parameters.items():
            process = self._params[name]
            values[name] = value if process is None else process(value)
        arguments: Any = values if self._names is None else tuple(values[n] for n in self._names)
        try:
            connection = self._engine.raw_connection()
        except self._dbapi_error as exc:
            # The pool hands on the driver's own error when it cannot connect; Connection
            # wraps it, as this must (the store tells "cannot answer" from SQLAlchemy's).
            lost = self._dialect.is_disconnect(exc, None, None)
            raise self._wrapped(exc, None, None, lost) from exc
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, arguments)
                fetched = cursor.fetchall()
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            lost = self._dialect.is_disconnect(exc, connection.dbapi_connection, None)
            if lost:
                connection.invalidate(exc)  # as Connection does: the pool drops it
            raise self._wrapped(exc, self._sql, arguments, lost) from exc
        finally:
            connection.close()  # back to the pool, which rolls the read back
        columns = self._columns
        return [
            {
                name: value if process is None else process(value)
                for (name, process), value in zip(columns, row, strict=True)
            }
            for row in fetched
        ]

    def _wrapped(
        self, exc: Exception, statement: str | None, arguments: Any, lost: bool
    ) -> sa.exc.StatementError:
        """The driver's ``exc`` as SQLAlchemy raises it."""
        return sa.exc.DBAPIError.instance(
            statement,
            arguments,
            exc,
            self._dbapi_error,
            connection_invalidated=lost,
            dialect=self._dialect,
        )
