"""Sorting more items than memory should hold: sorted runs of a bounded size, written to
temporary files when there is more than one run, and merged back as a stream."""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FAN_IN = 64  # runs merged at once: each holds an open file and one item in memory


def sorted_stream(items: Iterable[T], key: Callable[[T], Any], run_size: int, *,
                  encode: Callable[[T], str], decode: Callable[[str], T]) -> Iterator[T]:
    """`items` in the order of `key`, equal keys in their order in `items`, holding at most
    `run_size` items in memory (one more while a full run is written; one for each run while
    they are merged). A single run never touches the disk: the temporary directory is made only
    for a second run. `encode` writes an item as one line of text (no newline in it), `decode`
    reads it back."""
    with ExitStack() as cleanup:
        directory: Path | None = None
        runs: list[Path] = []
        run: list[T] = []
        for item in items:
            if len(run) >= run_size:  # written only once more items come: exactly a run stays in memory
                if directory is None:
                    directory = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="loyalty-sort-")))
                run.sort(key=key)
                runs.append(_write(run, directory, len(runs), encode))
                run = []
            run.append(item)
        run.sort(key=key)
        if directory is None:
            yield from run
            return
        if run:
            runs.append(_write(run, directory, len(runs), encode))
        del run
        made = len(runs)
        while len(runs) > FAN_IN:
            # The earliest runs, merged, stay first: equal keys keep their order.
            with ExitStack() as files:
                merged = heapq.merge(*(_read(files, path, decode) for path in runs[:FAN_IN]), key=key)
                first = _write(merged, directory, made, encode)
            made += 1
            for path in runs[:FAN_IN]:
                path.unlink()
            runs = [first, *runs[FAN_IN:]]
        with ExitStack() as files:
            yield from heapq.merge(*(_read(files, path, decode) for path in runs), key=key)


def _write(items: Iterable[T], directory: Path, number: int, encode: Callable[[T], str]) -> Path:
    path = directory / f"run-{number}"
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            out.write(encode(item))
            out.write("\n")
    return path


def _read(files: ExitStack, path: Path, decode: Callable[[str], T]) -> Iterator[T]:
    stream = files.enter_context(path.open(encoding="utf-8"))
    return (decode(line) for line in stream)


__all__ = ["sorted_stream"]
