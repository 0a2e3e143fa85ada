"""Worker processes of a `loyalty` command (the importer's, the rebuild's): `python -m MODULE
OPTIONS-JSON` each, or MODULE.run_worker(OPTIONS) in a fork of this process, telling the parent
what they do in lines of "kind value" on stdout; the tail of each one's stderr is kept to say
why it failed."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import IO, Any

from infrastructure.config import Config


def default_workers(config: Config) -> int:
    """One per CPU (at most 8) on PostgreSQL; SQLite has one writer at a time, so one there."""
    return min(os.cpu_count() or 1, 8) if config.database.kind == "postgresql" else 1


class WorkerProcesses:
    def __init__(self, module: str, options: list[dict[str, Any]], config: Config, *,
                 on_line: Callable[[int, str, str], None], stdin: bool = False, fork: bool = False) -> None:
        """One process per entry of `options`; `on_line(index, kind, value)` hears each stdout
        line, from a thread of its own per worker. `fork`: only from a process that has no
        threads and no database connections yet (see Forked)."""
        env = {"LOYALTY_DATABASE_URL": config.database_url, "LOYALTY_LOG_FORMAT": config.log_format}
        fork = fork and threading.active_count() == 1  # a thread could hold a lock the child would need
        self.processes: list[Any] = []
        for option in options:
            if fork:
                # Each child must not hold the pipes of the children before it: a worker sees the
                # end of its rows only when every copy of its pipe's writing end is closed.
                inherited = [f.fileno() for p in self.processes for f in (p.stdin, p.stdout, p.stderr) if f]
                self.processes.append(Forked(module, option, env, stdin=stdin, close=inherited))
            else:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", module, json.dumps(option)], env={**os.environ, **env},
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, encoding="utf-8"))
        self.tails: list[list[str]] = [[] for _ in self.processes]
        self._threads = [threading.Thread(target=_follow, args=(p.stdout, index, on_line), daemon=True)
                         for index, p in enumerate(self.processes)]
        self._threads += [threading.Thread(target=_keep_tail, args=(p.stderr, self.tails[index]), daemon=True)
                          for index, p in enumerate(self.processes)]
        for thread in self._threads:
            thread.start()

    def wait(self) -> None:
        """Until every worker has exited and all it said has been heard."""
        for process in self.processes:
            process.wait()
        for thread in self._threads:
            thread.join()

    def kill_the_rest(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def failures(self, finished: list[bool]) -> list[tuple[int, str]]:
        """(index, why) of each worker that exited badly or never said it had finished."""
        return [(index, self.tails[index][-1] if self.tails[index] else f"exit code {process.returncode}")
                for index, process in enumerate(self.processes) if process.returncode != 0 or not finished[index]]


class Forked:
    """A worker forked from this process rather than a new interpreter: it starts with this
    process's modules already imported, where `python -m` spends about 0.8 s importing them and
    connecting before its first row. Popen's interface, as far as WorkerProcesses uses it.

    Fork only before opening connections or starting threads: a child would inherit sockets
    shared with the parent, and locks that some other thread held at the fork."""

    def __init__(self, module: str, option: dict[str, Any], env: dict[str, str], *, stdin: bool,
                 close: list[int]) -> None:
        worker_in, self_in = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
        self_out, worker_out = os.pipe()
        self_err, worker_err = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # else what this process has buffered would be written twice
        self.pid = os.fork()
        if self.pid == 0:
            _run_forked(module, option, env, (worker_in, worker_out, worker_err),
                        [*close, self_out, self_err] + ([self_in] if stdin else []))
        for fd in (worker_in, worker_out, worker_err):
            os.close(fd)
        self.stdin = open(self_in, "w", encoding="utf-8") if stdin else None  # noqa: SIM115 - closed by the caller
        self.stdout = open(self_out, encoding="utf-8")  # noqa: SIM115 - read to its end by a thread
        self.stderr = open(self_err, encoding="utf-8")  # noqa: SIM115
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def _run_forked(module: str, option: dict[str, Any], env: dict[str, str], fds: tuple[int, int, int],
                close: list[int]) -> None:
    """In the child: its pipes as stdin, stdout and stderr, then the worker; never returns."""
    code = 1
    try:
        for fd in close:
            os.close(fd)
        # Above 2 first: a pipe may have got fd 0, 1 or 2 if this process started with one closed.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in fds]
        for fd in fds:
            os.close(fd)
        for target, fd in enumerate(high):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
        os.environ.update(env)
        importlib.import_module(module).run_worker(option)
        code = 0
    except BaseException:  # noqa: BLE001 - reported to the parent through stderr, as python -m would
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            # Not sys.exit: that would run the parent's exit handlers and finalisers in this copy.
            os._exit(code)


def _follow(stream: IO[str], index: int, on_line: Callable[[int, str, str], None]) -> None:
    for line in stream:
        kind, _, value = line.strip().partition(" ")
        on_line(index, kind, value)


def _keep_tail(stream: IO[str], tail: list[str]) -> None:
    for line in stream:
        if line.strip():
            tail[:] = [*tail[-19:], line.strip()]


__all__ = ["Forked", "WorkerProcesses", "default_workers"]
