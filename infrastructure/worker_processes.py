"""Worker processes of a `loyalty` command (the importer's, the rebuild's): `python -m MODULE
OPTIONS-JSON` each, telling the parent what they do in lines of "kind value" on stdout; the
tail of each one's stderr is kept to say why it failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from infrastructure.config import Config


def default_workers(config: Config) -> int:
    """One per CPU (at most 8) on PostgreSQL; SQLite has one writer at a time, so one there."""
    return min(os.cpu_count() or 1, 8) if config.database.kind == "postgresql" else 1


class WorkerProcesses:
    def __init__(self, module: str, options: list[dict[str, Any]], config: Config, *,
                 on_line: Callable[[int, str, str], None], stdin: bool = False) -> None:
        """One process per entry of `options`; `on_line(index, kind, value)` hears each stdout
        line, from a thread of its own per worker."""
        env = {**os.environ, "LOYALTY_DATABASE_URL": config.database_url, "LOYALTY_LOG_FORMAT": config.log_format}
        self.processes = [subprocess.Popen([sys.executable, "-m", module, json.dumps(option)], env=env,
                                           stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           encoding="utf-8")
                          for option in options]
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


def _follow(stream: IO[str], index: int, on_line: Callable[[int, str, str], None]) -> None:
    for line in stream:
        kind, _, value = line.strip().partition(" ")
        on_line(index, kind, value)


def _keep_tail(stream: IO[str], tail: list[str]) -> None:
    for line in stream:
        if line.strip():
            tail[:] = [*tail[-19:], line.strip()]


__all__ = ["WorkerProcesses", "default_workers"]
