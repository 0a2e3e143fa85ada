"""The library's PostgreSQL recorders, sending the events they insert in binary.

A save passes every stored event as one array of a composite type (`unnest(%s::type[])`).
With `%s`, psycopg dumps that array as text: each event's state (bytes) is hex-encoded, which
doubles it, and every field is quoted and escaped by regular expressions. That took about a
sixth of the importer's CPU. With `%b` the same rows go in PostgreSQL's binary format, which
psycopg's composite and array dumpers support as well: the state is sent as it is. Only the
parameter format changes; the statement, the lock, the notification ids and what is stored
are the library's own.
"""

from __future__ import annotations

from typing import Any

from psycopg.sql import SQL, Identifier


def use_binary_inserts(recorder: Any) -> None:
    """Rebuilds the recorder's insert statement with a binary parameter (PostgreSQL only)."""
    from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder

    if not isinstance(recorder, PostgresAggregateRecorder):
        return
    statement = SQL(
        "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state)"
        " SELECT originator_id, originator_version, topic, state FROM unnest(%b::{schema}.{stored_event_type}[])"
    ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name),
             stored_event_type=Identifier(recorder.stored_event_type_name))
    if isinstance(recorder, PostgresApplicationRecorder):
        statement += SQL(" RETURNING notification_id")  # as the library's application recorder
    recorder.insert_events_statement = statement
