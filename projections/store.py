"""Where projections keep their tables: the same database as the events (SQLite file or
PostgreSQL schema), so rows and the position they were built to commit together."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from infrastructure.config import Database


def db_time(moment: datetime | None) -> str | None:
    """Times as fixed-width UTC text: sortable and comparable the same way in both databases."""
    if moment is None:
        return None
    # isoformat pads the year to four digits (strftime's %Y does not, for years before 1000).
    if moment.tzinfo is timezone.utc:  # as decoded events have it: drop "+00:00" (a third faster)
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime | None) -> int | None:
    """Times as integer microseconds since 1970 (UTC): for tables that compare and sum many."""
    return None if moment is None else (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + int(value) * _MICROSECOND


def from_db_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class Transaction(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


def select_in(tx: Transaction, sql: str, keys: Sequence[Any], chunk: int = 500) -> list[tuple[Any, ...]]:
    """Rows for many keys, a few queries in all: `sql` has one `{marks}` where the IN list goes."""
    rows: list[tuple[Any, ...]] = []
    keys = list(dict.fromkeys(keys))
    for offset in range(0, len(keys), chunk):
        part = keys[offset:offset + chunk]
        rows += tx.execute(sql.format(marks=", ".join(["%s"] * len(part))), part)
    return rows


def select_pairs(tx: Transaction, sql: str, columns: tuple[str, str], keys: Sequence[tuple[Any, Any]],
                 chunk: int = 250) -> list[tuple[Any, ...]]:
    """Rows for many two-column keys: `sql` has one `{pairs}` where the condition goes."""
    rows: list[tuple[Any, ...]] = []
    keys = list(dict.fromkeys(keys))
    for offset in range(0, len(keys), chunk):
        part = keys[offset:offset + chunk]
        condition = " OR ".join([f"({columns[0]} = %s AND {columns[1]} = %s)"] * len(part))
        rows += tx.execute(sql.format(pairs=condition), [value for key in part for value in key])
    return rows


class ProjectionStore:
    """SQL written with %s placeholders and portable upserts (ON CONFLICT ... DO UPDATE)."""

    kind: str

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def reading(self) -> Iterator[Transaction]:
        """A transaction for queries: several reads on one connection."""
        with self.transaction() as tx:
            yield tx

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.reading() as tx:
            return tx.execute(sql, params)

    def close(self) -> None:
        pass


class _SqliteTransaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql.replace("%s", "?"), tuple(params)).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(sql.replace("%s", "?"), [tuple(r) for r in rows])

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        marks = ", ".join(["?"] * len(columns))
        self._connection.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                                     [tuple(r) for r in rows])


class SqliteStore(ProjectionStore):
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            self._local.connection = connection
        return connection

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        # IMMEDIATE takes the write lock at once: a runner reads its position and applies the
        # events after it without another runner slipping in between.
        return self._begun("BEGIN IMMEDIATE")

    def reading(self) -> contextlib.AbstractContextManager[Transaction]:
        # Deferred: readers share the database and never wait for the write lock.
        return self._begun("BEGIN")

    @contextmanager
    def _begun(self, begin: str) -> Iterator[Transaction]:
        connection = self._connection()
        connection.execute(begin)
        try:
            yield _SqliteTransaction(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class _PostgresTransaction:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(sql, tuple(params))
        return self._cursor.fetchall() if self._cursor.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(sql, [tuple(r) for r in rows])

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """COPY: many rows in one stream instead of one statement each."""
        if not rows:
            return
        with self._cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


class PostgresStore(ProjectionStore):
    kind = "postgresql"

    def __init__(self, database: Database, pool_size: int = 4) -> None:
        from psycopg_pool import ConnectionPool

        self.conninfo = postgres_conninfo(database)
        # check: a connection broken by a database restart is replaced before it is handed out.
        self._pool = ConnectionPool(self.conninfo, min_size=1, max_size=pool_size, open=True,
                                    kwargs={"autocommit": False}, check=ConnectionPool.check_connection)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._pool.connection() as connection, connection.transaction(), connection.cursor() as cursor:
            yield _PostgresTransaction(cursor)

    def close(self) -> None:
        self._pool.close()


def postgres_conninfo(database: Database) -> str:
    from psycopg.conninfo import make_conninfo

    options = f"-c search_path={database.schema}" if database.schema else None
    params: dict[str, Any] = {"host": database.host, "port": database.port, "user": database.user,
                              "dbname": database.dbname, "connect_timeout": 10}
    if database.password:
        params["password"] = database.password
    if options:
        params["options"] = options
    return make_conninfo(**params)


def open_store(database: Database) -> ProjectionStore:
    if database.kind == "sqlite":
        assert database.path is not None
        return SqliteStore(str(database.path))
    if database.kind == "postgresql":
        from infrastructure.pipeline_flush import install

        install()  # executemany runs in pipeline mode (see infrastructure/pipeline_flush.py)
        return PostgresStore(database)
    raise ValueError("projections need a SQLite file or PostgreSQL (not the in-memory store)")
