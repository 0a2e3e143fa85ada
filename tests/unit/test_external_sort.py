"""The importer's sort (application/external_sort.py): the order of Python's stable sort, at most
a run of items in memory, runs beyond the first through temporary files that are always removed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from application import external_sort
from application.external_sort import sorted_stream


def key(item: list[Any]) -> Any:
    return item[0]


def encode(item: list[Any]) -> str:
    return json.dumps(item)


@given(st.lists(st.tuples(st.integers(0, 5), st.text(max_size=5)), max_size=60), st.integers(1, 8),
       st.integers(2, 4))
def test_the_order_is_a_stable_sorts_with_any_run_size_and_fan_in(items: list[tuple[int, str]], run_size: int,
                                                                  fan_in: int) -> None:
    tagged = [[k, text, index] for index, (k, text) in enumerate(items)]  # the index shows stability
    original = external_sort.FAN_IN
    external_sort.FAN_IN = fan_in  # small, so that runs are merged in several rounds
    try:
        result = list(sorted_stream(tagged, key, run_size, encode=encode, decode=json.loads))
    finally:
        external_sort.FAN_IN = original
    assert result == sorted(tagged, key=key)


class Counting:
    """Items handed out one at a time; how many the sort has taken but not yet given back."""

    def __init__(self, count: int) -> None:
        self.count, self.taken, self.given, self.most_held = count, 0, 0, 0

    def __iter__(self) -> Any:
        for index in range(self.count):
            self.taken += 1
            self.most_held = max(self.most_held, self.taken - self.given)
            yield [(index * 7919) % 101, index]


def test_memory_holds_at_most_a_run_while_reading() -> None:
    source = Counting(1000)
    written: list[str] = []

    def counting_encode(item: list[Any]) -> str:
        source.given += 1  # out of memory, into a run's file
        written.append("x")
        return encode(item)

    result = list(sorted_stream(source, key, 50, encode=counting_encode, decode=json.loads))
    assert [item[1] for item in result] == [item[1] for item in sorted(Counting(1000), key=key)]
    # A run, and the item that found it full; twenty runs, each written once (fan-in 64).
    assert source.most_held == 51 and len(written) == 1000


def test_a_single_run_never_touches_the_disk_even_a_full_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def refuse(item: Any) -> str:
        raise AssertionError("written to disk")

    stream = sorted_stream(iter([[3], [1], [2]]), key, 3, encode=refuse, decode=json.loads)
    assert next(stream) == [1]
    assert not list(tmp_path.iterdir()), "no temporary directory for a single run"
    assert list(stream) == [[2], [3]]


@pytest.mark.parametrize("stop_after", [0, 5, None])
def test_temporary_files_are_removed_whether_or_not_the_stream_is_read_to_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_after: int | None) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stream = sorted_stream([[i % 13, i] for i in range(100)], key, 10, encode=encode, decode=json.loads)
    taken = [item for _, item in zip(range(stop_after if stop_after is not None else 1000), stream)]
    if stop_after:
        assert list(tmp_path.glob("loyalty-sort-*/run-*")), "the runs are on disk while the stream is read"
    stream.close()
    assert len(taken) == (stop_after if stop_after is not None else 100)
    assert not list(tmp_path.iterdir())
