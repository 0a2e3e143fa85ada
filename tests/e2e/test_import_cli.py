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


# Each refused as `POST /v1/purchases` would refuse it; none may reach the ledger.
REFUSED_ROWS = {
    "a float for money": {"amount": 100.0},
    "an exponent for money": {"amount": "1e2"},
    "a float item amount": {"items": [{"sku": "tea", "amount": 5.5}]},
    "a fractional quantity": {"items": [{"sku": "tea", "quantity": 1.5, "amount": "5.50"}]},
    "a NUL in an item": {"items": [{"sku": "t\u0000ea", "amount": "5.50"}]},
    "a number for an id": {"transaction_id": 17},
    "a lower-case currency": {"currency": "eur"},
    "a partner named by the row": {"partner_id": "grocer"},
    "no member": {"member_id": None},
}


def worker_counts(database_url: str) -> list[str]:
    """One process, and on PostgreSQL two (SQLite has one writer: --workers 2 is refused there)."""
    return ["1", "2"] if database_url.startswith("postgresql") else ["1"]


def test_rows_the_api_would_refuse_are_refused_by_the_import(database_url: str, tmp_path: Path) -> None:
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    set_up(ledger, members=("m-1",))
    ledger.close()
    imported = []
    for workers in worker_counts(database_url):
        good = {"transaction_id": f"ok-{workers}", "member_id": "m-1", "store_id": "g-1", "amount": "10.00",
                "currency": "EUR", "occurred_at": "2025-01-06T09:00:00Z"}
        lines = [json.dumps(good)]
        for index, change in enumerate(REFUSED_ROWS.values()):
            row = {**good, "transaction_id": f"bad-{workers}-{index}", **change}
            lines.append(json.dumps({k: v for k, v in row.items() if v is not None}))
        # The same key twice: which amount would count? Refused as unreadable.
        lines.append(f'{{"transaction_id": "twice-{workers}", "member_id": "m-1", "store_id": "g-1", '
                     '"amount": "1.00", "currency": "EUR", "amount": "9.00"}')
        path = tmp_path / f"purchases-{workers}.jsonl"
        path.write_text("\n".join(lines) + "\n")

        result = run_import(database_url, path, "--workers", workers)
        assert result.returncode == 0, result.stderr
        refused = len(REFUSED_ROWS) + 1
        assert "imported 1 (20 points)" in result.stdout and f"rejected {refused}" in result.stdout, result.stdout
        rejects = [json.loads(line) for line in Path(f"{path}.rejects.jsonl").read_text().splitlines()]
        assert [r["line"] for r in rejects] == list(range(2, refused + 2))
        reasons = [r["reason"] for r in rejects]
        assert all(reason.startswith("validation-error: ") for reason in reasons[:-1]), reasons
        assert "amount" in reasons[0] and "amount" in reasons[1] and "items.0.amount" in reasons[2], reasons
        assert "items.0.quantity" in reasons[3] and "items.0.sku" in reasons[4] and "transaction_id" in reasons[5]
        assert "currency" in reasons[6] and "partner_id" in reasons[7] and "member_id" in reasons[8], reasons
        assert reasons[-1].startswith("malformed-row: not JSON: duplicate keys"), reasons
        imported.append(f"grocer:ok-{workers}")

    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    member = replay_member(list(ledger.events.get(Member.create_id("m-1"))))
    assert member is not None and list(member.purchases) == imported
    assert member.lifetime["earned"] == 20 * len(imported)
    ledger.close()


def test_an_unknown_partner_is_one_line_before_any_row_is_read(database_url: str, tmp_path: Path) -> None:
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    set_up(ledger, members=("m-1",))
    ledger.close()
    path = tmp_path / "purchases.csv"
    path.write_text("transaction_id,member_id,store_id,amount,currency,occurred_at\nt-1,m-1,g-1,1.00,EUR,\n")
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_LOG_FORMAT": "console"}
    for workers in worker_counts(database_url):
        result = subprocess.run([sys.executable, "-m", "api.cli", "import", "purchases", str(path), "--partner",
                                 "nobody", "--workers", workers], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == ["Error: --partner nobody: partner 'nobody' not found"]
        assert not Path(f"{path}.rejects.jsonl").exists() and not list(tmp_path.glob("*.part*"))


def test_a_file_that_is_not_utf8_is_refused_whole_and_a_byte_order_mark_is_read(database_url: str,
                                                                                 tmp_path: Path) -> None:
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    set_up(ledger, members=("m-1",))
    ledger.close()
    header = "transaction_id,member_id,store_id,amount,currency,occurred_at\n"
    latin = tmp_path / "latin.csv"
    latin.write_bytes((header + "t-1,m-1,g-1,1.00,EUR,\n" + "caf\xe9,m-1,g-1,2.00,EUR,\n").encode("latin-1"))
    result = run_import(database_url, latin)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: latin.csv line 3 is not UTF-8 text (byte 0xe9); save the file as UTF-8 and import again"]
    ledger = open_ledger(database_url, Clock(START + timedelta(days=1)))
    assert ledger.get_member("m-1").purchases == {}, "nothing is imported from a file refused whole"
    ledger.close()

    spreadsheet = tmp_path / "export.csv"  # "CSV UTF-8" as spreadsheets save it: a byte-order mark first
    spreadsheet.write_bytes(b"\xef\xbb\xbf" + (header + "t-2,m-1,g-1,2.00,EUR,\n").encode())
    result = run_import(database_url, spreadsheet)
    assert result.returncode == 0 and "imported 1 (4 points)" in result.stdout, (result.stdout, result.stderr)
