"""Many aggregates' stored versions in one query, so a batch of commands does not pay one or
two round trips per aggregate it looks at (most receipts looked for do not exist yet)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.utils import retry


def latest_versions(recorder: Any, ids: Sequence[UUID]) -> dict[UUID, int] | None:
    """{id: latest stored version} for the ids that have events; None where the store offers no
    such query (the in-memory store), so callers fall back to loading one by one."""
    kind = type(recorder).__module__.rsplit(".", 1)[-1]
    if kind == "postgres":
        return _postgres(recorder, list(ids))
    if kind == "sqlite":
        return _sqlite(recorder, list(ids))
    return None


def _postgres(recorder: Any, ids: list[UUID]) -> dict[UUID, int]:
    from eventsourcing.persistence import InterfaceError, OperationalError  # what the datastore raises
    from psycopg.sql import SQL, Identifier

    # One index probe per id (newest version first), whatever plan a prepared statement gets:
    # `= ANY(array) GROUP BY` can be planned, generically, as a scan of the whole table.
    statement = SQL("SELECT i.id AS originator_id, (SELECT e.originator_version FROM {schema}.{table} e"
                    " WHERE e.originator_id = i.id ORDER BY e.originator_version DESC LIMIT 1) AS version"
                    " FROM unnest(%s::uuid[]) AS i(id)").format(
        schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's own reads
    def select() -> dict[UUID, int]:
        return {originator_id: int(version) for originator_id, version in _postgres_read(recorder, statement, (ids,))
                if version is not None}

    return select()


_JIT_OFF: weakref.WeakSet[Any] = weakref.WeakSet()  # connections on which these reads turned JIT off


def _postgres_read(recorder: Any, statement: Any, params: Any) -> list[Any]:
    """One statement on its own, in one round trip: the library's connections are in autocommit
    mode, and a single SELECT is consistent by itself. Its read transaction (BEGIN, the query,
    ROLLBACK) costs three round trips, each of which a busy server process pays for again in
    waiting for the GIL; the group committer makes these reads for every batch.

    JIT is turned off for the session the first time a connection serves one of these reads: the
    planner cannot know how many events follow a given version, guesses thousands per member, and
    above its cost threshold compiles the plan first. With 726,005 events stored, a load of 200
    members took 95-109 ms that way, 2-4 ms without.

    Rows come back as tuples in binary: the states as stored, not hex-encoded text for Python
    to decode (see infrastructure/binary_reads.py)."""
    from psycopg.rows import tuple_row

    with recorder.datastore.get_connection() as connection, \
            connection.cursor(row_factory=tuple_row, binary=True) as cursor:
        if connection not in _JIT_OFF:
            cursor.execute("SET jit = off")
            _JIT_OFF.add(connection)
        cursor.execute(statement, params, prepare=True)
        return cursor.fetchall()


def _sqlite(recorder: Any, ids: list[UUID]) -> dict[UUID, int]:
    found: dict[UUID, int] = {}
    for offset in range(0, len(ids), 500):  # well under SQLite's bound-parameter limit
        chunk = [i.hex for i in ids[offset:offset + 500]]  # the library stores them as hex
        marks = ",".join("?" * len(chunk))
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT originator_id, MAX(originator_version) FROM {recorder.events_table_name}"
                           f" WHERE originator_id IN ({marks}) GROUP BY originator_id", chunk)
            found.update({UUID(row[0]): int(row[1]) for row in cursor.fetchall()})
    return found


def latest_stored(recorder: Any, ids: Sequence[UUID]) -> dict[UUID, Any] | None:
    """{id: its newest stored record} (snapshots: the one to start a replay from) in one query."""
    kind = type(recorder).__module__.rsplit(".", 1)[-1]
    if kind == "postgres":
        return {e.originator_id: e for e in _postgres_stored(recorder, list(ids), None)}
    if kind == "sqlite":
        return {e.originator_id: e for e in _sqlite_stored(recorder, list(ids), None)}
    return None


def stored_after(recorder: Any, after: dict[UUID, int]) -> list[Any] | None:
    """Every stored event of each id newer than the version given for it, per id in version
    order, in one query (0 for an id read from its start)."""
    kind = type(recorder).__module__.rsplit(".", 1)[-1]
    if kind == "postgres":
        return _postgres_stored(recorder, list(after), list(after.values()))
    if kind == "sqlite":
        return _sqlite_stored(recorder, list(after), list(after.values()))
    return None


def _postgres_stored(recorder: Any, ids: list[UUID], after: list[int] | None) -> list[Any]:
    from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
    from psycopg.sql import SQL, Identifier

    # LATERAL: one index range per id, whatever plan a prepared statement gets.
    if after is None:
        inner, params = "ORDER BY originator_version DESC LIMIT 1", (ids,)
        keys = "unnest(%s::uuid[]) AS i(id)"
    else:
        inner, params = "AND originator_version > i.after ORDER BY originator_version", (ids, after)
        keys = "unnest(%s::uuid[], %s::bigint[]) AS i(id, after)"
    statement = SQL("SELECT e.originator_id, e.originator_version, e.topic, e.state FROM " + keys +
                    " CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state"
                    " FROM {schema}.{table} WHERE originator_id = i.id " + inner + ") e").format(
        schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's own reads
    def select() -> list[Any]:
        return [StoredEvent(originator_id=originator_id, originator_version=version, topic=topic, state=state)
                for originator_id, version, topic, state in _postgres_read(recorder, statement, params)]

    return select()


def _sqlite_stored(recorder: Any, ids: list[UUID], after: list[int] | None) -> list[Any]:
    from eventsourcing.persistence import StoredEvent

    table = recorder.events_table_name
    found: list[Any] = []
    for offset in range(0, len(ids), 400):  # two parameters an id: well under SQLite's limit
        chunk = ids[offset:offset + 400]
        if after is None:
            params = [i.hex for i in chunk]
            sql = (f"SELECT e.* FROM {table} e WHERE e.originator_id IN ({','.join('?' * len(chunk))})"
                   f" AND e.originator_version = (SELECT MAX(originator_version) FROM {table} m"
                   f" WHERE m.originator_id = e.originator_id)")
        else:
            params = [p for i, v in zip(chunk, after[offset:offset + 400]) for p in (i.hex, v)]
            values = ",".join("(?,?)" for _ in chunk)
            sql = (f"WITH w(id, after) AS (VALUES {values}) SELECT e.* FROM w JOIN {table} e"
                   f" ON e.originator_id = w.id AND e.originator_version > w.after"
                   f" ORDER BY e.originator_id, e.originator_version")
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(sql, params)
            found += [StoredEvent(originator_id=UUID(row["originator_id"]), originator_version=row["originator_version"],
                                  topic=row["topic"], state=row["state"]) for row in cursor.fetchall()]
    return found
