"""`loyalty projections rebuild --workers N` as real processes: the projections shared out among
workers equal the live tables; a worker killed mid-rebuild is reported, its projections stay
flagged, and a runner resumes them exactly once. SQLite refuses workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config
from infrastructure.rebuild_workers import RebuildFailed, rebuild_in_processes, share_out
from projections.base import Projection
from projections.read_model import ReadModel
from projections.runner import all_projections
from test_projections import START, Clock, assert_reconciled, dump, event_ids, positions, tell

World = tuple[Config, ReadModel]


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    config = Config(database_url=database_url)
    clock = Clock(START)
    ledger = build_ledger(config, clock=clock)
    read_model = build_read_model(config, ledger)
    assert read_model is not None
    tell(ledger, clock)
    read_model.runner.catch_up()
    yield config, read_model
    read_model.store.close()
    ledger.close()


def run_rebuild(database_url: str, *options: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_LOG_FORMAT": "console"}
    return subprocess.run([sys.executable, "-m", "api.cli", "projections", "rebuild", *options], env=env,
                          capture_output=True, text=True, timeout=300)


def rebuild_workers() -> dict[int, str]:
    """This process's rebuild workers (children running infrastructure.rebuild_workers): their
    command lines, which name their projections."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"infrastructure.rebuild_workers" in command:
            found[int(entry.name)] = command.decode()
    return found


def test_share_out_gives_every_projection_to_one_worker_costliest_first() -> None:
    projections = all_projections()
    for workers in (1, 2, 3, 6, 10):
        groups = share_out(projections, workers)
        assert len(groups) == min(workers, len(projections)) and all(groups)
        assert sorted(p.name for group in groups for p in group) == sorted(p.name for p in projections)
    two = [sum(p.cost for p in group) for group in share_out(projections, 2)]
    assert max(two) - min(two) <= max(p.cost for p in projections), two  # no worker carries much more

    def weighing(name: str, cost: int) -> Projection:
        projection = Projection()
        projection.name, projection.cost = name, cost
        return projection

    groups = share_out([weighing("a", 1), weighing("b", 9), weighing("c", 5), weighing("d", 4)], 2)
    assert [[p.name for p in group] for group in groups] == [["b", "a"], ["c", "d"]]


def test_cli_rebuild_in_workers_equals_live(world: World) -> None:
    config, read_model = world
    live, head = dump(read_model), read_model.runner.head()

    if not config.database_url.startswith("postgresql"):
        refused = run_rebuild(config.database_url, "--workers", "2")
        assert refused.returncode == 1 and "--workers 2 needs PostgreSQL" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert dump(read_model) == live and set(positions(read_model).values()) == {head}  # nothing was reset
        return

    result = run_rebuild(config.database_url, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"rebuilt all projections from {head:,} events (2 workers)" in result.stdout, result.stdout
    assert dump(read_model) == live
    assert all(not s.rebuilding and s.lag == 0 for s in read_model.runner.status())
    assert read_model.verify().ok
    assert_reconciled(read_model)

    one = run_rebuild(config.database_url, "audit", "--workers", "2")  # one projection: one process is enough
    assert one.returncode == 0 and f"rebuilt audit from {head:,} events\n" in one.stdout, (one.stdout, one.stderr)
    assert dump(read_model) == live


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite refuses workers (above)
def test_a_worker_killed_mid_rebuild_is_reported_and_resumed_exactly_once(world: World) -> None:
    config, read_model = world
    live = dump(read_model)
    head = event_ids(read_model.runner.ledger)[-1]
    read_model.runner.batch_size = 1  # a batch per event: the kill lands mid-rebuild
    killed: list[str] = []

    def kill_one_mid_way(events: int) -> None:
        """Freezes the workers, kills one whose projections are part-way through, thaws the rest."""
        if killed:
            return
        workers = rebuild_workers()
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            at = positions(read_model)
            for pid, command in workers.items():
                names = [p.name for p in all_projections() if f'"{p.name}"' in command]
                if 0 < min(at[name] for name in names) < head:
                    os.kill(pid, signal.SIGKILL)
                    killed.extend(names)
                    break
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)

    with pytest.raises(RebuildFailed, match="exit code -9"):
        rebuild_in_processes(config, read_model.runner, None, workers=3, on_progress=kill_one_mid_way)
    statuses = {s.name: s for s in read_model.runner.status()}
    assert killed and all(statuses[name].rebuilding and 0 < statuses[name].position < head for name in killed)
    assert all(not s.rebuilding and s.position == head for s in statuses.values() if s.name not in killed), statuses

    read_model.runner.catch_up()  # what `loyalty projections run` or the server's runner does
    assert dump(read_model) == live
    assert all(not s.rebuilding and s.lag == 0 for s in read_model.runner.status())
    assert read_model.verify().ok
