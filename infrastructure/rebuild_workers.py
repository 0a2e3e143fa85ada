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
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from infrastructure.config import Config
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


def default_workers(config: Config) -> int:
    """One per CPU on PostgreSQL; SQLite has one writer at a time, so one there."""
    return min(os.cpu_count() or 1, 8) if config.database.kind == "postgresql" else 1


def rebuild_in_processes(config: Config, runner: ProjectionRunner, names: list[str] | None, *, workers: int,
                         on_progress: Callable[[int], None] = lambda events: None) -> int:
    """Empties the named projections (all by default), then rebuilds them in `workers`
    processes; returns how many stored events each applied. `on_progress` hears how far the
    slowest worker has got. The tables must exist (create them before calling this)."""
    chosen = runner.reset(names)
    groups = share_out(chosen, workers)
    env = {**os.environ, "LOYALTY_DATABASE_URL": config.database_url, "LOYALTY_LOG_FORMAT": config.log_format}
    options = {"batch_size": runner.batch_size}
    processes = [subprocess.Popen([sys.executable, "-m", __name__,
                                   json.dumps({**options, "projections": [p.name for p in group]})],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
                 for group in groups]
    progress = _Progress(len(processes), on_progress)
    applied: list[int | None] = [None] * len(processes)
    errors: list[list[str]] = [[] for _ in processes]
    threads = [threading.Thread(target=_follow, args=(p.stdout, index, applied, progress), daemon=True)
               for index, p in enumerate(processes)]
    threads += [threading.Thread(target=_keep_tail, args=(p.stderr, errors[index]), daemon=True)
                for index, p in enumerate(processes)]
    try:
        for thread in threads:
            thread.start()
        for process in processes:
            process.wait()
        for thread in threads:
            thread.join()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failures = [f"{', '.join(p.name for p in groups[index])}: "
                f"{errors[index][-1] if errors[index] else f'exit code {process.returncode}'}"
                for index, process in enumerate(processes) if process.returncode != 0 or applied[index] is None]
    if failures:
        raise RebuildFailed("rebuild failed in " + "; ".join(failures)
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


def _follow(stream: IO[str], index: int, applied: list[int | None], progress: _Progress) -> None:
    for line in stream:
        kind, _, value = line.strip().partition(" ")
        if kind == "progress":
            progress.add(index, int(value))
        elif kind == "applied":
            applied[index] = int(value)


def _keep_tail(stream: IO[str], tail: list[str]) -> None:
    for line in stream:
        if line.strip():
            tail[:] = [*tail[-19:], line.strip()]


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


__all__ = ["RebuildFailed", "default_workers", "rebuild_in_processes", "share_out"]
