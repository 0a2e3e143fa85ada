"""The library's PostgreSQL save, with its COMMIT sent in the same pipeline as the inserts.

The library's `insert_events` sends BEGIN, LOCK TABLE, NOTIFY and the INSERT in a pipeline,
waits for their results, and only then sends COMMIT and waits again. The table lock is held
from the LOCK until that COMMIT is done, so it also covers the time this process takes to
read the first results and send the COMMIT: in a busy server process, whose committer thread
must win the GIL back from the request threads first, that was several milliseconds a save
during which every other process's save waited for the lock.

Here BEGIN, LOCK, NOTIFY, INSERT and COMMIT go in one pipeline with one sync: the server runs
them back to back and the lock is released as soon as the commit is durable. A failed INSERT
(a version clash or a duplicate: IntegrityError) aborts the pipeline, so its COMMIT never
runs; the transaction is rolled back and the error raised as before, even when PostgreSQL
sent that error ahead of the sync and it surfaced while the COMMIT was being sent. What is stored, the
statements, the lock and the notification ids returned are the library's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def use_pipelined_commit(recorder: Any) -> None:
    """Replaces the recorder's `insert_events` on this instance (PostgreSQL application
    recorders only; the library's database-function variant is left alone)."""
    from eventsourcing.persistence import InterfaceError, OperationalError
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.utils import retry
    from psycopg.pq import TransactionStatus

    if not isinstance(recorder, PostgresApplicationRecorder) or recorder.datastore.enable_db_functions:
        return
    library_insert_events = recorder.insert_events

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's own
    def insert_events(stored_events: Sequence[Any], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return library_insert_events(stored_events, **kwargs)
        ids: Sequence[int] | None = None
        with recorder.datastore.get_connection() as conn:
            try:
                # The block's error leaves through the pipeline's `with`: on its way out the
                # pipeline collects what is still to come (the aborted COMMIT's result, when
                # PostgreSQL sent the INSERT's error before the sync) without raising over it.
                with conn.pipeline() as pipeline:
                    conn.execute("BEGIN")
                    with conn.cursor() as curs:  # the library's hook for a subclass's own rows (tracking)
                        recorder._insert_events(curs, stored_events, **kwargs)  # noqa: SLF001
                    with conn.cursor() as curs:
                        recorder._insert_stored_events(curs, stored_events, **kwargs)  # noqa: SLF001
                        conn.execute("COMMIT")
                        pipeline.sync()
                        ids = recorder._fetch_ids_after_insert_events(curs, stored_events, **kwargs)  # noqa: SLF001
            except BaseException:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()
                raise
        return ids

    recorder.insert_events = insert_events
