"""Bulk import of purchases: streamed from CSV or JSON lines, committed in batches.

Memory stays flat (ten batches of rows in memory at a time, more in temporary files). Every row carries its
transaction id, so a crashed import simply runs again: rows already committed are replays,
counted once. Rows the ledger refuses are written, with the reason, to a rejects file.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from application.commands import Outcome, RecordPurchase
from application.external_sort import sorted_stream
from application.json_input import no_duplicate_keys
from application.ledger import Ledger

# A row (its values as read from the file), the partner and the actor -> the purchase, or
# ValueError saying what is wrong with the row. The API's schema reads rows (api/import_rows.py),
# so a row is judged as the same purchase posted over HTTP would be.
ToCommand = Callable[[dict[str, Any], str, str], RecordPurchase]


@dataclass
class ImportSummary:
    rows: int = 0
    imported: int = 0
    already_imported: int = 0
    rejected: int = 0
    points: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, rejects: IO[str], number: int, reason: str, row: dict[str, Any] | None) -> None:
        """Counts a refused row by the kind of its reason and writes it to the rejects file."""
        self.rejected += 1
        kind_of = reason.split(":")[0]
        self.reasons[kind_of] = self.reasons.get(kind_of, 0) + 1
        rejects.write(json.dumps({"line": number, "reason": reason, "row": row}, default=str) + "\n")

    def add(self, other: ImportSummary) -> None:
        """Another part of the same import (a worker's share) counted in."""
        self.rows += other.rows
        self.imported += other.imported
        self.already_imported += other.already_imported
        self.rejected += other.rejected
        self.points += other.points
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


def read_rows(stream: IO[str], kind: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, row or None, why unreadable) for each record of the file. Kind "numbered":
    `[line number, row]` JSON lines, rows already read from a file (by infrastructure/import_workers)."""
    if kind == "numbered":
        for line in stream:
            number, row = json.loads(line)
            yield number, row, None
        return
    if kind == "jsonl":
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=no_duplicate_keys)
            except ValueError as error:
                yield number, None, f"not JSON: {error}"
                continue
            yield (number, row, None) if isinstance(row, dict) else (number, None, "not a JSON object")
        return
    reader = csv.DictReader(stream)
    if reader.fieldnames is None or "transaction_id" not in reader.fieldnames:
        raise ValueError("a CSV import needs a header with at least transaction_id, store_id, amount, currency")
    for row in reader:
        if None in row:  # where DictReader puts values beyond the header's columns
            yield reader.line_num, None, f"{len(row[None])} more value(s) than the header has columns"
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}, None


# Rows are sorted by member before they are committed, in runs of this many batches held in
# memory (application/external_sort.py): a member whose history is not in memory is loaded once
# for all its rows in the file rather than once for each batch it appears in. Importing 20,000
# rows over 2,000 members with 200-300 events each, in which every batch of 1,000 rows names a
# member at most once: 17.0 and 23.2 s one batch at a time, 5.7 and 6.0 s grouped by member in
# windows of 10 batches. A longer file whose members recur further apart than a run is sorted
# in several runs, written to temporary files and merged.
WINDOW_BATCHES = 10


def member_key(member_id: Any, card_number: Any) -> str:
    """What names a row's member: its member id, else its card."""
    return str(member_id) if member_id else (f"card:{card_number}" if card_number else "")


Read = tuple[int, "dict[str, Any] | None", "str | None"]  # what read_rows gives: line, row, why unreadable


def _by_member(read: Read) -> tuple[str, int]:
    number, row, _ = read
    return (member_key(row.get("member_id"), row.get("card_number")) if row is not None else "", number)


def _by_line(refusal: list[Any]) -> int:
    return int(refusal[0])


def import_purchases(
    ledger: Ledger, stream: IO[str], kind: str, partner_id: str, rejects: IO[str], *, to_command: ToCommand,
    actor: str = "import", batch_size: int = 1000, on_progress: Callable[[int], None] = lambda rows: None,
) -> ImportSummary:
    """Commits the rows in batches of `batch_size`, each one transaction, one member's rows
    together and in file order: the whole file is sorted by member first (in memory up to
    WINDOW_BATCHES batches, beyond that through temporary files), so nothing is committed
    before the last row has been read. Different members' rows commit in another order than the
    file's (members' ledgers are independent). Refused rows are written to `rejects` in line
    order (sorted the same way, at the end)."""
    summary = ImportSummary()
    run_size = batch_size * WINDOW_BATCHES
    batch: list[tuple[int, RecordPurchase]] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8") as refused:

        def refuse(number: int, reason: str, row: dict[str, Any] | None) -> None:
            refused.write(json.dumps([number, reason, row], default=str) + "\n")

        def flush() -> None:
            for (number, command), result in zip(batch, ledger.execute_batch([c for _, c in batch])):
                if isinstance(result, Outcome):
                    if result.replayed:
                        summary.already_imported += 1
                    else:
                        summary.imported += 1
                        summary.points += result.body["points_earned"]
                else:
                    refuse(number, f"{result.slug}: {result.detail}", {"transaction_id": command.transaction_id})
            on_progress(len(batch))
            batch.clear()

        for number, row, unreadable in sorted_stream(read_rows(stream, kind), _by_member, run_size,
                                                     encode=_compact, decode=_read_back):
            summary.rows += 1
            if row is None:
                refuse(number, f"malformed-row: {unreadable}", None)
                on_progress(1)
                continue
            try:
                batch.append((number, to_command(row, partner_id, actor)))
            except ValueError as error:
                refuse(number, f"validation-error: {error}", row)
                on_progress(1)
                continue
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        refused.seek(0)
        for number, reason, row in sorted_stream(map(json.loads, refused), _by_line, run_size,
                                                 encode=_compact, decode=json.loads):
            summary.reject(rejects, number, reason, row)
    return summary


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _read_back(line: str) -> Read:
    number, row, why = json.loads(line)
    return number, row, why


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError("the file must end in .csv or .jsonl")
