"""`loyalty import purchases --workers N` as real processes: rows dealt to workers by member,
refused rows merged in line order, a second run counting nothing twice, and an import killed
mid-way (parent and workers) that a second run completes exactly once. SQLite refuses workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from domain.member import Member, replay_member
from test_ledger_story import START, Clock, open_ledger, set_up

MEMBERS = tuple(f"w-{i}" for i in range(30))


def run_import(database_url: str, path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_LOG_FORMAT": "console"}
    return subprocess.run([sys.executable, "-m", "api.cli", "import", "purchases", str(path), "--partner", "grocer",
                           *options], env=env, capture_output=True, text=True, timeout=300)


def count(summary: str, label: str) -> int:
    """A figure of the importer's summary line ("imported 5,000 (...), already imported 1,000, ...")."""
    match = re.search(rf"(?:^|[ ,]){label} ([0-9,]+)", summary.split("rows ", 1)[1])
    assert match, summary
    return int(match.group(1).replace(",", ""))


def set_up_members(database_url: str) -> None:
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    set_up(ledger, members=MEMBERS)
    ledger.close()


def purchase_line(i: int) -> str:
    return json.dumps({"transaction_id": f"t-{i}", "member_id": MEMBERS[i % len(MEMBERS)], "store_id": "g-1",
                       "amount": f"{i % 9 + 1}.25", "currency": "EUR",
                       "occurred_at": f"2025-01-06T{9 + i // 3600 % 10:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"})


def assert_each_member_has(database_url: str, purchases: dict[str, int]) -> None:
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    try:
        for member_id in MEMBERS:
            member = replay_member(list(ledger.events.get(Member.create_id(member_id))))
            assert member is not None and len(member.purchases) == purchases[member_id], member_id
            assert ledger.get_member(member_id).lifetime == member.lifetime
    finally:
        ledger.close()


def test_workers_count_every_row_once_and_merge_the_refused_rows_in_order(database_url: str, tmp_path: Path) -> None:
    set_up_members(database_url)
    path = tmp_path / "purchases.jsonl"
    lines = [purchase_line(i) for i in range(3000)]
    lines[10] = "{not json"  # refused by the reader, before any worker
    lines[500] = json.dumps({**json.loads(lines[500]), "amount": "lots"})  # refused by a worker: unreadable amount
    lines[2000] = json.dumps({**json.loads(lines[2000]), "store_id": "zz"})  # refused by the ledger
    path.write_text("\n".join(lines) + "\n")
    good = {m: sum(1 for i in range(3000) if i % len(MEMBERS) == k and i not in (10, 500, 2000))
            for k, m in enumerate(MEMBERS)}

    if not database_url.startswith("postgresql"):
        refused = run_import(database_url, path, "--workers", "2")
        assert refused.returncode == 1 and "--workers 2 needs PostgreSQL" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and not Path(f"{path}.rejects.jsonl").exists()
        return

    first = run_import(database_url, path, "--workers", "2", "--batch-size", "200")
    assert first.returncode == 0, first.stderr
    assert "rows 3,000: imported 2,997" in first.stdout and "rejected 3 " in first.stdout, first.stdout
    assert "(2 workers)" in first.stdout
    rejects = [json.loads(line) for line in Path(f"{path}.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [
        (11, "malformed-row"), (501, "validation-error"), (2001, "unknown-store")]
    assert not list(tmp_path.glob("*.part*")), "the workers' parts are merged and removed"

    again = run_import(database_url, path, "--workers", "3")
    assert again.returncode == 0, again.stderr
    assert "imported 0" in again.stdout and "already imported 2,997" in again.stdout, again.stdout
    assert_each_member_has(database_url, good)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_import_killed_midway_completes_exactly_once_when_run_again(database_url: str, tmp_path: Path) -> None:
    set_up_members(database_url)
    path = tmp_path / "purchases.jsonl"
    path.write_text("\n".join(purchase_line(i) for i in range(6000)) + "\n")
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)), create_schema=False)
    before = ledger.recorder.max_notification_id() or 0
    scratch = tmp_path / "tmp"  # a killed importer cannot remove its sorted runs: they are left here
    scratch.mkdir()
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_LOG_FORMAT": "console", "TMPDIR": str(scratch)}
    importer = subprocess.Popen([sys.executable, "-m", "api.cli", "import", "purchases", str(path), "--partner",
                                 "grocer", "--workers", "2", "--batch-size", "100"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # Killed once some batches have committed (3 or more events a purchase), well before the end.
        while (ledger.recorder.max_notification_id() or 0) - before < 3 * 600:
            assert importer.poll() is None and time.monotonic() < deadline, "the import ended before it was killed"
            time.sleep(0.05)
    finally:
        os.killpg(importer.pid, signal.SIGKILL)  # the parent and both workers, mid-batch
        importer.wait()
    ledger.close()

    again = run_import(database_url, path, "--workers", "2")
    assert again.returncode == 0, again.stderr
    imported, already = count(again.stdout, "imported"), count(again.stdout, "already imported")
    # Some rows were committed before the kill, some were not; none is counted twice.
    assert imported + already == 6000 and already >= 500 and imported > 0, again.stdout
    assert_each_member_has(database_url, {m: 6000 // len(MEMBERS) for m in MEMBERS})


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_file_the_reader_refuses_stops_every_worker_and_leaves_nothing(database_url: str, tmp_path: Path) -> None:
    set_up_members(database_url)
    path = tmp_path / "purchases.csv"
    path.write_text("t-1,w-1,g-1,1.00,EUR,2025-01-06T09:00:00Z\n")  # no header
    result = run_import(database_url, path, "--workers", "2")
    assert result.returncode == 1 and "needs a header" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.part*"))
    assert_each_member_has(database_url, dict.fromkeys(MEMBERS, 0))
