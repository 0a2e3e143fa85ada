"""Saves of many events in one transaction complete (psycopg's pipeline mode used to deadlock on
payloads larger than the socket's send buffer: see infrastructure/pipeline_flush.py)."""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from typing import Any

import psycopg

from api.import_rows import row_to_command
from application.bulk_import import import_purchases
from infrastructure.pipeline_flush import install
from test_ledger_story import START, Clock, open_ledger, set_up


def finishes(work: Any, seconds: float) -> Any:
    """Runs `work` in a thread; fails (instead of hanging the run) if it does not finish in time."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - re-raised below, in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s: deadlocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_pipeline_sends_a_payload_far_larger_than_the_socket_buffer(postgres_database: str) -> None:
    install()
    elements = 20_000  # ~28 MB as escaped text: several times the 4 MB the kernel allows a socket

    def insert() -> int:
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE payload (b bytea[])")
            with conn.pipeline() as pipeline, conn.transaction(), conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.execute("INSERT INTO payload VALUES (%s)", ([b"x" * 700] * elements,))
                pipeline.sync()
            return conn.execute("SELECT array_length(b, 1) FROM payload").fetchone()[0]

    assert finishes(insert, 120) == elements


def test_an_import_commits_batches_of_five_thousand_purchases(database_url: str) -> None:
    clock = Clock(START + timedelta(hours=2))
    ledger = open_ledger(database_url, clock)
    members = tuple(f"m-{i}" for i in range(100))
    set_up(ledger, members=members)
    rows = "".join(f"t-{i},m-{i % 100},g-1,{i % 50 + 1}.00,EUR,2025-01-06T09:{i % 60:02d}:00Z\n" for i in range(10_000))
    csv = "transaction_id,member_id,store_id,amount,currency,occurred_at\n" + rows
    summary = finishes(lambda: import_purchases(ledger, io.StringIO(csv), "csv", "grocer", io.StringIO(),
                                                to_command=row_to_command, batch_size=5000), 120)
    assert (summary.imported, summary.rejected) == (10_000, 0)
    assert all(len(ledger.get_member(m).purchases) == 100 for m in members)
    ledger.close()
