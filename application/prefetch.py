"""Many aggregates' stored versions in one query, so a batch of commands does not pay one or
two round trips per aggregate it looks at (most receipts looked for do not exist yet)."""

from __future__ import annotations

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
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, (ids,), prepare=True)
            return {row["originator_id"]: int(row["version"]) for row in cursor.fetchall()
                    if row["version"] is not None}

    return select()


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
