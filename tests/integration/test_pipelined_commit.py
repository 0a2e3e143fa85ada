"""On PostgreSQL a save's BEGIN, LOCK, NOTIFY, INSERT and COMMIT go in one pipeline
(infrastructure/pipelined_commit.py): a save is still all or nothing, a clash still raises the
library's IntegrityError and leaves nothing behind, and the connection goes back to the pool clean."""

from __future__ import annotations

import time
import uuid

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg.pq import TransactionStatus


def stored(originator: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id=originator, originator_version=version, topic="tests:Event", state=b"{}")


def test_the_pipelined_save_is_installed_and_returns_the_notification_ids(postgres_ledger) -> None:
    assert postgres_ledger.recorder.insert_events.__qualname__.startswith("use_pipelined_commit")
    originator = uuid.uuid4()
    ids = postgres_ledger.recorder.insert_events([stored(originator, 1), stored(originator, 2)])
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    assert [n.id for n in postgres_ledger.recorder.select_notifications(start=ids[0], limit=10)] == ids
    assert postgres_ledger.recorder.insert_events([]) in (None, [])


def test_a_clash_raises_integrity_error_stores_nothing_of_that_save_and_leaves_the_pool_clean(postgres_ledger) -> None:
    originator, other = uuid.uuid4(), uuid.uuid4()
    postgres_ledger.recorder.insert_events([stored(originator, 1)])
    head = postgres_ledger.recorder.max_notification_id()
    with pytest.raises(IntegrityError):
        # The new aggregate's event comes first: it must not survive the clash after it.
        postgres_ledger.recorder.insert_events([stored(other, 1), stored(originator, 1)])
    assert postgres_ledger.recorder.select_events(other) == []
    assert postgres_ledger.recorder.max_notification_id() == head
    for _ in range(postgres_ledger.recorder.datastore.pool.max_size + 1):  # every pooled connection
        with postgres_ledger.recorder.datastore.get_connection() as connection:
            assert connection.info.transaction_status == TransactionStatus.IDLE
    assert postgres_ledger.recorder.insert_events([stored(other, 1)])


def test_the_librarys_hook_for_a_recorders_own_rows_commits_with_the_events_or_not_at_all(postgres_ledger) -> None:
    """A subclass (the library's process recorder, say) writes rows of its own in `_insert_events`:
    they go in the same transaction as the events."""
    schema = postgres_ledger.recorder.datastore.schema
    with postgres_ledger.recorder.datastore.get_connection() as connection:
        connection.execute(f'CREATE TABLE "{schema}".side (events INTEGER NOT NULL)')
    postgres_ledger.recorder._insert_events = lambda curs, events, **_: curs.execute(  # noqa: SLF001
        f'INSERT INTO "{schema}".side (events) VALUES (%s)', (len(events),))
    originator = uuid.uuid4()
    postgres_ledger.recorder.insert_events([stored(originator, 1), stored(originator, 2)])
    with pytest.raises(IntegrityError):
        postgres_ledger.recorder.insert_events([stored(uuid.uuid4(), 1), stored(originator, 2)])
    with postgres_ledger.recorder.datastore.get_connection() as connection:
        assert [row["events"] for row in connection.execute(f'SELECT events FROM "{schema}".side')] == [2]


def test_a_clash_whose_error_arrives_before_the_commit_is_sent_still_raises_integrity_error(postgres_ledger) -> None:
    """PostgreSQL sends an error at once, without waiting for the pipeline's sync: a busy process
    that is slow to send the COMMIT meets the INSERT's error while sending it, with the COMMIT's
    own (aborted) result still to come. That must still be the clash (IntegrityError, which the
    caller resolves), not a pipeline error that the save's retry loop repeats until it gives up."""
    recorder = postgres_ledger.recorder
    library_insert = recorder._insert_stored_events  # noqa: SLF001

    def insert_then_stall(curs, stored_events, **kwargs):  # the process losing the CPU for a while
        library_insert(curs, stored_events, **kwargs)
        time.sleep(0.3)

    originator = uuid.uuid4()
    recorder.insert_events([stored(originator, 1)])
    head = recorder.max_notification_id()
    recorder._insert_stored_events = insert_then_stall  # noqa: SLF001
    with pytest.raises(IntegrityError):
        recorder.insert_events([stored(originator, 1)])
    assert recorder.max_notification_id() == head
    for _ in range(recorder.datastore.pool.max_size + 1):
        with recorder.datastore.get_connection() as connection:
            assert connection.info.transaction_status == TransactionStatus.IDLE
    assert recorder.insert_events([stored(originator, 2)])
