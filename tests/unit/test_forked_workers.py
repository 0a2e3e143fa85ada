"""Workers forked from this process (infrastructure/worker_processes.Forked): each reads its own
pipe to its end, however many siblings are still running; a failure reaches the parent through
the exit code and the tail of stderr; with another thread running, workers are spawned instead."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from infrastructure.config import Config
from infrastructure.worker_processes import Forked, WorkerProcesses

CONFIG = Config.from_env({"LOYALTY_DATABASE_URL": "sqlite:///unused.db"})


def run_worker(options: dict[str, Any]) -> None:
    """The worker: each stdin line back, tagged; a count at the end of its input."""
    if options.get("fail"):
        raise RuntimeError(f"worker {options['name']} gave up")
    lines = 0
    for line in sys.stdin:
        lines += 1
        print(f"echo {options['name']}:{line.strip()}", flush=True)
    print(f"done {lines}", flush=True)


def exit_code(process: Any, within: float = 30) -> int | None:
    """The worker's exit code, or None if it is still running after `within` seconds."""
    deadline = time.monotonic() + within
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process.returncode


def start(options: list[dict[str, Any]]) -> tuple[WorkerProcesses, list[tuple[int, str, str]]]:
    heard: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def on_line(index: int, kind: str, value: str) -> None:
        with lock:
            heard.append((index, kind, value))

    return WorkerProcesses(__name__, options, CONFIG, on_line=on_line, stdin=True, fork=True), heard


def test_each_worker_sees_the_end_of_its_rows_while_its_siblings_still_run() -> None:
    assert threading.active_count() == 1, "forking needs a single-threaded parent"
    pool, heard = start([{"name": "a"}, {"name": "b"}, {"name": "c"}])
    try:
        assert all(isinstance(p, Forked) for p in pool.processes)
        for index, process in enumerate(pool.processes):
            process.stdin.write(f"row-{index}\nrow-{index}-again\n")
            process.stdin.flush()
        # The last worker's input is closed first: had it inherited its elder siblings' pipes,
        # those would stay open, but its own end is what it waits for.
        pool.processes[2].stdin.close()
        assert exit_code(pool.processes[2]) == 0
        pool.processes[0].stdin.close()
        assert exit_code(pool.processes[0]) == 0, "the first worker must not wait for a sibling's copy of its pipe"
        assert pool.processes[1].poll() is None, "the middle worker's input is still open"
        pool.processes[1].stdin.close()
        pool.wait()
    finally:
        pool.kill_the_rest()
    assert sorted(heard) == sorted([
        (0, "echo", "a:row-0"), (0, "echo", "a:row-0-again"), (0, "done", "2"),
        (1, "echo", "b:row-1"), (1, "echo", "b:row-1-again"), (1, "done", "2"),
        (2, "echo", "c:row-2"), (2, "echo", "c:row-2-again"), (2, "done", "2")])
    assert pool.failures([True, True, True]) == []


def test_a_worker_that_fails_is_reported_with_its_error() -> None:
    pool, heard = start([{"name": "a"}, {"name": "b", "fail": True}])
    try:
        for process in pool.processes:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
        pool.wait()
    finally:
        pool.kill_the_rest()
    assert [p.returncode for p in pool.processes] == [0, 1]
    assert pool.failures([any(i == 0 and k == "done" for i, k, _ in heard), False]) == [
        (1, "RuntimeError: worker b gave up")]


def test_a_killed_worker_has_the_signal_as_its_exit_code() -> None:
    pool, _ = start([{"name": "a"}])
    try:
        pool.processes[0].kill()
        assert pool.processes[0].wait() == -9
    finally:
        pool.processes[0].stdin.close()
        pool.kill_the_rest()


def test_with_another_thread_running_workers_are_new_interpreters_instead() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        # Any module with a run_worker under `python -m` will do: the importer's, killed at once.
        pool = WorkerProcesses("infrastructure.import_workers", [{}], CONFIG, on_line=lambda *_: None, stdin=True,
                               fork=True)
        try:
            assert isinstance(pool.processes[0], subprocess.Popen)
        finally:
            pool.kill_the_rest()
    finally:
        stop.set()
        other.join()


def test_workers_of_a_process_started_with_stdin_closed_still_get_their_rows(tmp_path: Path) -> None:
    """With fd 0 closed, a worker's pipe is given fd 0: it must still become the worker's stdin."""
    (tmp_path / "echo_worker.py").write_text(
        "import sys\n"
        "def run_worker(options):\n"
        "    print('got ' + ','.join(line.strip() for line in sys.stdin), flush=True)\n")
    script = (
        "import os, sys\n"
        "os.close(0)\n"
        f"sys.path[:0] = [{str(tmp_path)!r}, {str(Path.cwd())!r}]\n"
        "from infrastructure.config import Config\n"
        "from infrastructure.worker_processes import Forked, WorkerProcesses\n"
        "heard = []\n"
        "pool = WorkerProcesses('echo_worker', [{}], Config.from_env({'LOYALTY_DATABASE_URL': 'sqlite:///x.db'}),\n"
        "                       on_line=lambda i, k, v: heard.append((k, v)), stdin=True, fork=True)\n"
        "assert isinstance(pool.processes[0], Forked)\n"
        "pool.processes[0].stdin.write('a\\nb\\n')\n"
        "pool.processes[0].stdin.close()\n"
        "pool.wait()\n"
        "print(pool.processes[0].returncode, heard, pool.tails)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "0 [('got', 'a,b')] [[]]", (result.stdout, result.stderr)
