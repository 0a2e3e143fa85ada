"""The batch reads on PostgreSQL (application/prefetch.py) run with JIT off: the planner guesses
thousands of events after any version, and above its cost threshold compiled each load of a
group of members first (95-109 ms against 2-4 ms with 726,005 events stored)."""

from __future__ import annotations

import uuid
from contextlib import ExitStack

from application import prefetch

EXPLAIN = "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM {table} WHERE originator_version > %s"


def plan(rows: list) -> dict:
    first = rows[0]  # a tuple from the prefetch reads, a dict from the library's connections
    return (first[0] if isinstance(first, tuple) else next(iter(first.values())))[0]


def test_prefetch_reads_never_compile_their_plans(postgres_ledger) -> None:
    recorder = postgres_ledger.recorder
    statement = EXPLAIN.format(table=f'"{recorder.datastore.schema}"."{recorder.events_table_name}"')
    with ExitStack() as stack:  # every connection of the pool, each set to compile any plan at all
        connections = [stack.enter_context(recorder.datastore.get_connection())
                       for _ in range(recorder.datastore.pool.max_size)]
        for connection in connections:
            connection.execute("SET jit = on")
            connection.execute("SET jit_above_cost = 0")
            prefetch._JIT_OFF.discard(connection)  # noqa: SLF001 - as if new
        if connections[0].execute("SELECT pg_jit_available() AS ok").fetchone()["ok"]:
            # The control: the same statement on such a connection is compiled.
            assert "JIT" in plan(connections[0].execute(statement, (0,)).fetchall())

    for _ in range(2 * len(connections)):  # whichever connection the pool hands out
        assert "JIT" not in plan(prefetch._postgres_read(recorder, statement, (0,)))  # noqa: SLF001
    assert prefetch.stored_after(recorder, {uuid.uuid4(): 0}) == []
    assert {row for row in prefetch._postgres_read(recorder, "SHOW jit", ())} == {("off",)}  # noqa: SLF001
