"""A projection rebuild in several processes: the projections are shared out among worker
processes, each of which reads the whole event log and applies it to its own projections.

Why processes: applying events is Python, and one process runs one thread of Python at a time;
a one-process rebuild kept one core busy and PostgreSQL a third of another. Each worker reads
and decodes every event again (a fifth of a one-process rebuild's time), so two workers are
not twice as fast. Exactly once still holds: each projection is applied by one worker, whose
runner commits its rows and its position together. A worker that fails leaves its projections
flagged as rebuilding at the position it reached; `loyalty projections run` (or the server's
runner) carries on from there.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from infrastructure.config import Config
from infrastructure.worker_processes import WorkerProcesses
from projections.base import Projection
from projections.runner import ProjectionRunner


class RebuildFailed(RuntimeError):
    pass


def share_out(projections: list[Projection], workers: int) -> list[list[Projection]]:
    """Costliest first, each to the least loaded worker; no worker left empty."""
    groups: list[list[Projection]] = [[] for _ in range(min(workers, len(projections)))]
    loads = [0] * len(groups)
    for projection in sorted(projections, key=lambda p: -p.cost):
        least = loads.index(min(loads))
        groups[least].append(projection)
        loads[least] += projection.cost
    return groups


def rebuild_in_processes(config: Config, runner: ProjectionRunner, names: list[str] | None, *, workers: int,
                         on_progress: Callable[[int], None] = lambda events: None) -> int:
    """Empties the named projections (all by default), then rebuilds them in `workers`
    processes; returns how many stored events each applied. `on_progress` hears how far the
    slowest worker has got. The tables must exist (create them before calling this)."""
    chosen = runner.reset(names)
    groups = share_out(chosen, workers)
    progress = _Progress(len(groups), on_progress)
    applied: list[int | None] = [None] * len(groups)

    def heard(index: int, kind: str, value: str) -> None:
        if kind == "progress":
            progress.add(index, int(value))
        elif kind == "applied":
            applied[index] = int(value)

    pool = WorkerProcesses(__name__, [{"batch_size": runner.batch_size, "projections": [p.name for p in group]}
                                      for group in groups], config, on_line=heard)
    try:
        pool.wait()
    finally:
        pool.kill_the_rest()
    failures = pool.failures([count is not None for count in applied])
    if failures:
        raise RebuildFailed("rebuild failed in " + "; ".join(f"{', '.join(p.name for p in groups[index])}: {why}"
                                                             for index, why in failures)
                            + " (those projections stay flagged as rebuilding; `loyalty projections run` resumes them)")
    return max(count for count in applied if count is not None)


class _Progress:
    """Each worker applies every event: the bar moves with the slowest."""

    def __init__(self, workers: int, on_progress: Callable[[int], None]) -> None:
        self._done = [0] * workers
        self._reported = 0
        self._lock = threading.Lock()
        self._on_progress = on_progress

    def add(self, worker: int, events: int) -> None:
        with self._lock:
            self._done[worker] += events
            slowest = min(self._done)
            if slowest > self._reported:
                self._on_progress(slowest - self._reported)
                self._reported = slowest


def run_worker(options: dict[str, Any]) -> None:
    """In a worker process: catch the named projections up with the log; progress and the count
    of events applied to stdout."""
    from infrastructure.bootstrap import build_ledger, build_read_model
    from infrastructure.gc_tuning import tune_gc
    from infrastructure.logging import configure_logging

    tune_gc()
    config = Config.from_env()
    configure_logging(config.log_format)
    ledger = build_ledger(config, create_schema=False)
    try:
        model = build_read_model(config, ledger, create_tables=False)
        assert model is not None
        names = set(options["projections"])
        runner = ProjectionRunner(ledger, model.runner.store, [p for p in model.runner.projections if p.name in names],
                                  options["batch_size"])
        applied = runner.catch_up(on_progress=lambda events: print(f"progress {events}", flush=True))
        model.runner.store.close()
    finally:
        ledger.close()
    print(f"applied {applied}", flush=True)


if __name__ == "__main__":
    run_worker(json.loads(sys.argv[1]))


__all__ = ["RebuildFailed", "rebuild_in_processes", "share_out"]
