"""How `loyalty import purchases --workers N` deals rows: by member, the same way every time."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from infrastructure.import_workers import merge_rejects, worker_of


@given(st.text(min_size=1, max_size=30), st.integers(min_value=1, max_value=16))
def test_a_members_rows_all_go_to_one_worker(member_id: str, workers: int) -> None:
    rows = [{"transaction_id": f"t-{i}", "member_id": member_id, "amount": str(i)} for i in range(5)]
    chosen = {worker_of(row, workers) for row in rows}
    assert len(chosen) == 1 and 0 <= chosen.pop() < workers


def test_rows_named_by_card_go_by_card_and_members_spread_over_workers() -> None:
    assert worker_of({"card_number": "c-1"}, 4) == worker_of({"card_number": "c-1", "amount": "9"}, 4)
    assert len({worker_of({"member_id": f"m-{i}"}, 4) for i in range(100)}) == 4


def test_refused_rows_are_merged_in_line_order(tmp_path: Path) -> None:
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for part, lines in zip(parts, ([2, 9, 40], [1, 10], [])):
        part.write_text("".join(json.dumps({"line": n, "reason": "x", "row": None}) + "\n" for n in lines))
    merged = tmp_path / "rejects.jsonl"
    merge_rejects([*parts, tmp_path / "missing"], merged)
    assert [json.loads(line)["line"] for line in merged.read_text().splitlines()] == [1, 2, 9, 10, 40]
