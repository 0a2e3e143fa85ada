"""Bulk import: streamed, batched, resumable after a crash without counting anything twice."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

from api.import_rows import row_to_command
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
                               to_command=row_to_command, batch_size=50)
    assert (partial.imported, partial.rejected) == (100, 0)

    bad = "bad-store,ann,zz-9,5.00,EUR,\nbad-amount,ann,g-1,abc,EUR,\nbad-currency,ann,g-1,5.00,USD,\n"
    rejects = io.StringIO()
    progress: list[int] = []
    summary = import_purchases(ledger, io.StringIO(HEADER + rows(300) + bad), "csv", "grocer", rejects,
                               to_command=row_to_command, batch_size=50, on_progress=progress.append)
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
    summary = import_purchases(ledger, io.StringIO("\n".join(lines) + "\n"), "jsonl", "grocer", rejects,
                               to_command=row_to_command)
    assert (summary.imported, summary.rejected) == (5, 3)
    assert ledger.get_member("ann").lifetime["earned"] == 5 * 20
    ledger.close()


def test_a_members_rows_go_together_in_file_order_and_refusals_are_reported_in_line_order(database_url: str) -> None:
    """Rows are sorted by member over the whole file (a member is loaded once for all its rows),
    here in two runs of 30 rows merged from temporary files; one member's rows keep the file's
    order, and refused rows are written in line order whichever batch refused them."""
    clock = Clock(START + timedelta(hours=2))
    ledger = open_ledger(database_url, clock)
    members = ("ann", "bob", "cat")
    set_up(ledger, members=members)
    batches: list[list[str]] = []
    execute_batch = ledger.execute_batch

    def recording(commands: list[Any]) -> list[Any]:
        batches.append([c.transaction_id for c in commands])
        return execute_batch(commands)

    ledger.execute_batch = recording  # type: ignore[method-assign]
    # Members take turns; a few rows are refused by the reader, the checks or the ledger.
    lines = [f"t-{i},{members[i % 3]},g-1,{i % 7 + 1}.00,EUR,2025-01-06T09:{i:02d}:00Z" for i in range(45)]
    lines[4] = "t-4,bob,zz-9,5.00,EUR,2025-01-06T09:04:00Z"    # unknown store: refused by the ledger
    lines[10] = "t-10,bob,g-1,abc,EUR,2025-01-06T09:10:00Z"    # unreadable amount: refused before
    lines[40] = "t-40,bob,zz-9,5.00,EUR,2025-01-06T09:40:00Z"  # unknown store, in the second run
    lines[20] = "t-20,cat,g-1,1.00,EUR,2025-01-06T09:20:00Z,surplus"  # more values than columns
    rejects = io.StringIO()
    progress: list[int] = []
    summary = import_purchases(ledger, io.StringIO(HEADER + "\n".join(lines) + "\n"), "csv", "grocer", rejects,
                               to_command=row_to_command, batch_size=3, on_progress=progress.append)  # runs of 30 rows
    assert (summary.rows, summary.imported, summary.rejected) == (45, 41, 4) and sum(progress) == 45

    committed = [int(t.split("-")[1]) for batch in batches for t in batch]
    assert all(len(batch) <= 3 for batch in batches)
    # Every member's rows side by side (ann, bob, cat), each member's in file order.
    assert committed == [i for m in range(3) for i in range(45) if i % 3 == m and i not in (10, 20)], committed
    for member in members:
        recorded = [e.transaction_id for e in ledger.events.get(ledger.get_member(member).id)
                    if type(e).__name__ == "PurchaseRecorded"]
        assert recorded == [f"t-{i}" for i in range(45) if i % 3 == members.index(member) and i not in (4, 10, 20, 40)]
    # The header is line 1, so row i is on line i + 2.
    refused = [json.loads(line) for line in rejects.getvalue().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in refused] == [
        (6, "unknown-store"), (12, "validation-error"), (22, "malformed-row"), (42, "unknown-store")]
    ledger.close()
