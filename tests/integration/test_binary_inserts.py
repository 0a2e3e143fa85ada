"""On PostgreSQL the recorders send the events they insert as binary parameters
(infrastructure/binary_inserts.py): what is stored, and what the library reads back, is the same."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg

from domain.member import Member
from test_ledger_story import START, Clock, open_ledger, purchase, set_up


def test_binary_inserts_store_exactly_the_encoded_events(postgres_database: str) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    ledger = open_ledger(f"{postgres_database}?schema={schema}", Clock(START + timedelta(days=1)))
    set_up(ledger)
    # Enough purchases for a snapshot (every 100 versions): both recorders insert.
    ledger.execute_batch([purchase(f"b-{i}", "3", at=START + timedelta(minutes=i)) for i in range(60)])
    for recorder in (ledger.recorder, ledger.snapshots.recorder):
        assert "%b" in recorder.insert_events_statement.as_string(None)
    member_id = Member.create_id("ann")
    events = list(ledger.events.get(member_id))
    assert [e.originator_version for e in events] == list(range(1, 122))
    with psycopg.connect(postgres_database) as connection:
        rows = connection.execute(
            f'SELECT originator_version, topic, state FROM "{schema}".{ledger.recorder.events_table_name}'
            " WHERE originator_id = %s ORDER BY originator_version", (member_id,)).fetchall()
        snapshot_versions = [row[0] for row in connection.execute(
            f'SELECT originator_version FROM "{schema}".{ledger.snapshots.recorder.events_table_name}'
            " WHERE originator_id = %s", (member_id,))]
    for event, (version, topic, state) in zip(events, rows, strict=True):
        stored = ledger.mapper.to_stored_event(event)
        assert (version, topic, bytes(state)) == (stored.originator_version, stored.topic, stored.state)
    assert snapshot_versions == [121]  # the save crossed version 100: snapshotted where it ended
    notifications = ledger.recorder.select_notifications(start=None, limit=10_000)
    assert [n.id for n in notifications] == sorted({n.id for n in notifications})
    ledger.close()
