"""What a projection is: tables it owns, and how a batch of stored events changes them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from eventsourcing.persistence import Notification

from projections.store import ProjectionStore, Transaction, db_time


@dataclass(frozen=True)
class Stored:
    """One stored event: the raw notification (for hashing) and the decoded domain event."""

    notification: Notification
    event: Any

    @property
    def position(self) -> int:
        return self.notification.id

    # Several projections write the same event's ids and times: each is made text once.
    @cached_property
    def originator(self) -> str:
        return str(self.notification.originator_id)

    @cached_property
    def recorded_at(self) -> str:
        return db_time(self.event.timestamp)  # type: ignore[return-value]

    @cached_property
    def occurred_at(self) -> str | None:
        return db_time(getattr(self.event, "occurred_at", None))


class Projection:
    name: str = ""
    version: int = 1  # raise when the tables or their meaning change: the runner rebuilds it
    tables: tuple[str, ...] = ()
    # Relative time to apply the same events (rebuilt alone, bench run 8): how a rebuild in
    # several processes shares the projections out.
    cost: int = 5

    def ddl(self, store: ProjectionStore) -> list[str]:
        raise NotImplementedError

    def apply(self, tx: Transaction, batch: list[Stored], context: Any) -> None:
        """Applies the batch; runs inside the transaction that also moves the position."""
        raise NotImplementedError

    def reset(self, tx: Transaction) -> None:
        for table in self.tables:
            tx.execute(f"DELETE FROM {table}")

    def drop(self, tx: Transaction) -> None:
        for table in self.tables:
            tx.execute(f"DROP TABLE IF EXISTS {table}")


def blob_type(store: ProjectionStore) -> str:
    return "BYTEA" if store.kind == "postgresql" else "BLOB"
