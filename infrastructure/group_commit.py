"""Group commit: the commands that arrive together in one server process are committed in one
transaction, each caller getting its own result, acknowledged only after the commit.

The event store serialises writers (a table lock per save on PostgreSQL), so one command per
transaction tops out near 1,000 events/s while a hundred per transaction reach far more. One
committer thread per process takes whatever is queued (up to `max_batch`) as soon as the
previous commit is done: under light load a command commits alone with no added wait; under
heavy load batches grow by themselves.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import structlog

from application.commands import Command, Outcome
from application.ledger import Ledger

log = structlog.get_logger("loyalty.group_commit")


class CommitQueue:
    def __init__(self, ledger: Ledger, max_batch: int = 200) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[Command, Future[Outcome]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()
        self.batches = 0
        self.commands = 0

    def execute(self, command: Command, timeout: float = 60.0) -> Outcome:
        """Queues the command and waits for its own outcome (or its own error)."""
        future: Future[Outcome] = Future()
        self._queue.put((command, future))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Command, Future[Outcome]]]) -> None:
        try:
            results = self.ledger.execute_batch([command for command, _ in batch])
        except Exception as error:  # noqa: BLE001 - the database failed: every caller hears it
            log.error("group commit failed", size=len(batch), exc_info=error)
            for _, future in batch:
                future.set_exception(error)
            return
        self.batches += 1
        self.commands += len(batch)
        for (_, future), result in zip(batch, results):
            if isinstance(result, Outcome):
                future.set_result(result)
            else:
                future.set_exception(result)
