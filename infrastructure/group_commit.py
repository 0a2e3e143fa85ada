"""Group commit: the commands that arrive together in one server process are committed in one
transaction, each caller getting its own result, acknowledged only after the commit.

The event store serialises writers (a table lock per save on PostgreSQL), so one command per
transaction tops out near 1,000 events/s while a hundred per transaction reach far more. One
committer thread per process takes whatever is queued (up to `max_batch`) as soon as the
previous commit is done (infrastructure/batching.py). A refused command is answered with its
own error; if the commit itself fails, every command of the batch hears it.
"""

from __future__ import annotations

from collections.abc import Sequence

from application.commands import Command, Outcome
from application.ledger import Ledger
from infrastructure.batching import Batcher


class CommitQueue(Batcher[Command, Outcome]):
    def __init__(self, ledger: Ledger, max_batch: int = 200) -> None:
        self.ledger = ledger
        super().__init__("group-commit", max_batch)

    @property
    def commands(self) -> int:
        return self.served

    def execute(self, command: Command, timeout: float = 60.0) -> Outcome:
        """Queues the command and waits for its own outcome (or its own error)."""
        return self.ask(command, timeout)

    def answer(self, requests: list[Command]) -> Sequence[Outcome | BaseException]:
        return self.ledger.execute_batch(requests)
