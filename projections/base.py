"""What a projection is: tables it owns, and how a batch of stored events changes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Notification

from projections.store import ProjectionStore, Transaction


@dataclass(frozen=True)
class Stored:
    """One stored event: the raw notification (for hashing) and the decoded domain event."""

    notification: Notification
    event: Any

    @property
    def position(self) -> int:
        return self.notification.id


class Projection:
    name: str = ""
    version: int = 1  # raise when the tables or their meaning change: the runner rebuilds it
    tables: tuple[str, ...] = ()

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
