"""Bulk import: streamed, batched, resumable after a crash without counting anything twice."""

from __future__ import annotations

import io
import json
from datetime import timedelta

from application.bulk_import import import_purchases
from test_ledger_story import START, Clock, open_ledger, set_up

HEADER = "transaction_id,member_id,store_id,amount,currency,occurred_at\n"


def rows(count: int, start: int = 0) -> str:
    return "".join(f"t-{i},ann,g-1,{i % 50 + 1}.00,EUR,2025-01-06T09:{i % 60:02d}:00Z\n"
                   for i in range(start, start + count))


def test_an_import_that_crashed_halfway_runs_again_and_counts_each_row_once(database_url: str) -> None:
    clock = Clock(START + timedelta(hours=2))
    ledger = open_ledger(database_url, clock)
    set_up(ledger)
    # The first run dies after 120 of 300 rows were committed (batches of 50: 100 committed for
    # sure, the 20 of the third batch are the "crashed" part that never reached the ledger).
    partial = import_purchases(ledger, io.StringIO(HEADER + rows(100)), "csv", "grocer", io.StringIO(),
                               batch_size=50)
    assert (partial.imported, partial.rejected) == (100, 0)

    bad = "bad-store,ann,zz-9,5.00,EUR,\nbad-amount,ann,g-1,abc,EUR,\nbad-currency,ann,g-1,5.00,USD,\n"
    rejects = io.StringIO()
    progress: list[int] = []
    summary = import_purchases(ledger, io.StringIO(HEADER + rows(300) + bad), "csv", "grocer", rejects,
                               batch_size=50, on_progress=progress.append)
    assert (summary.rows, summary.imported, summary.already_imported, summary.rejected) == (303, 200, 100, 3)
    assert sum(progress) == 303
    reasons = sorted(json.loads(line)["reason"].split(":")[0] for line in rejects.getvalue().splitlines())
    assert reasons == ["unknown-store", "validation-error", "validation-error"]

    member = ledger.get_member("ann")
    recorded = [e for e in ledger.events.get(member.id) if type(e).__name__ == "PurchaseRecorded"]
    assert len(recorded) == len(member.purchases) == 300  # each row once, the 100 replayed ones too
    assert member.lifetime["earned"] == sum(e.points for e in recorded)
    ledger.close()


def test_json_lines_import_reports_unreadable_lines_and_goes_on(database_url: str) -> None:
    clock = Clock(START + timedelta(hours=2))
    ledger = open_ledger(database_url, clock)
    set_up(ledger)
    lines = [json.dumps({"transaction_id": f"j-{i}", "member_id": "ann", "store_id": "g-2", "amount": "10.00",
                         "currency": "EUR", "occurred_at": "2025-01-06T09:30:00Z"}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.insert(4, "[1, 2]")
    lines.append(json.dumps({"transaction_id": "j-x", "member_id": "ann", "store_id": "g-2", "amount": "1",
                             "currency": "EUR", "colour": "red"}))
    rejects = io.StringIO()
    summary = import_purchases(ledger, io.StringIO("\n".join(lines) + "\n"), "jsonl", "grocer", rejects)
    assert (summary.imported, summary.rejected) == (5, 3)
    assert ledger.get_member("ann").lifetime["earned"] == 5 * 20
    ledger.close()
