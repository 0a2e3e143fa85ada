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
from uuid import UUID

from application.commands import Command, Outcome
from application.ledger import Ledger
from infrastructure.batching import Batcher


class CommitQueue(Batcher["tuple[Command, UUID | None]", Outcome]):
    def __init__(self, ledger: Ledger, max_batch: int = 200) -> None:
        self.ledger = ledger
        super().__init__("group-commit", max_batch)

    @property
    def commands(self) -> int:
        return self.served

    def execute(self, command: Command, key: UUID | None = None, timeout: float = 60.0) -> Outcome:
        """Queues the command and waits for its own outcome (or its own error). `key`: the API
        key its caller was admitted with from this process's copy, for the batch to confirm as
        stored now (Ledger.execute_batch); Unauthenticated if it no longer holds."""
        return self.ask((command, key), timeout)

    def answer(self, requests: list[tuple[Command, UUID | None]]) -> Sequence[Outcome | BaseException]:
        return self.ledger.execute_batch([command for command, _ in requests], [key for _, key in requests])
