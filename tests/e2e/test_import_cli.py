"""`loyalty import purchases` as a real process, on SQLite and PostgreSQL: batches larger than
the socket buffer (the pipeline fix), a cache so small that members are dropped and reloaded all
the time, refused rows in the rejects file, and a second run that counts nothing twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from domain.member import Member, replay_member
from test_ledger_story import START, Clock, open_ledger, set_up

MEMBERS = tuple(f"m-{i}" for i in range(40))


def run_import(database_url: str, path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_LOG_FORMAT": "console"}
    return subprocess.run([sys.executable, "-m", "api.cli", "import", "purchases", str(path), "--partner", "grocer",
                           *options], env=env, capture_output=True, text=True, timeout=300)


def test_the_importer_counts_every_row_once_across_runs(database_url: str, tmp_path: Path) -> None:
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    set_up(ledger, members=MEMBERS)
    ledger.close()
    path = tmp_path / "purchases.csv"
    rows = [f"t-{i},m-{i % 40},g-1,{i % 9 + 1}.50,EUR,2025-01-06T09:{i % 60:02d}:00Z" for i in range(6000)]
    rows.insert(100, "bad-store,m-1,zz,1.00,EUR,2025-01-06T09:00:00Z")
    path.write_text("transaction_id,member_id,store_id,amount,currency,occurred_at\n" + "\n".join(rows) + "\n")

    first = run_import(database_url, path, "--batch-size", "5000", "--cache-events", "50")
    assert first.returncode == 0, first.stderr
    assert "rows 6,001: imported 6,000" in first.stdout and "rejected 1" in first.stdout, first.stdout
    rejects = [json.loads(line) for line in Path(f"{path}.rejects.jsonl").read_text().splitlines()]
    assert [r["reason"].split(":")[0] for r in rejects] == ["unknown-store"]

    again = run_import(database_url, path)
    assert again.returncode == 0, again.stderr
    assert "imported 0" in again.stdout and "already imported 6,000" in again.stdout, again.stdout

    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    for member_id in MEMBERS:
        events = list(ledger.events.get(Member.create_id(member_id)))
        member = replay_member(events)
        assert member is not None and len(member.purchases) == 150
        assert ledger.get_member(member_id).lifetime == member.lifetime
    ledger.close()


def test_a_bad_option_is_one_line_and_changes_nothing(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "purchases.csv"
    path.write_text("transaction_id,member_id,store_id,amount,currency,occurred_at\n")
    result = run_import(database_url, path, "--cache-events", "0")
    assert result.returncode == 2 and "Invalid value for '--cache-events'" in result.stderr
    assert not Path(f"{path}.rejects.jsonl").exists()


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the importer's temporary files go here
    path = tmp_path / "purchases.csv"
    path.write_text("transaction_id,member_id,store_id,amount,currency,occurred_at\nt-1,m-1,g-1,1.00,EUR,\n")
    (tmp_path / "a-directory.db").mkdir()
    unopenable = run_import(f"sqlite:///{tmp_path / 'a-directory.db'}", path)
    assert unopenable.returncode == 1, unopenable.stderr
    assert unopenable.stderr.strip().splitlines() == [
        "Error: database error: unable to open database file (check LOYALTY_DATABASE_URL)"]
    # Nobody listens on port 1: the forked workers are stopped with the parent, in one line.
    unreachable = run_import("postgresql://postgres@127.0.0.1:1/nowhere", path, "--workers", "2")
    assert unreachable.returncode == 1, unreachable.stderr
    lines = unreachable.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: database error: ") and "LOYALTY_DATABASE_URL" in lines[0]
    assert not Path(f"{path}.rejects.jsonl").exists() and not list(tmp_path.glob("*.part*"))
    assert not list(scratch.iterdir()), "the stopped workers had nothing on disk yet"
