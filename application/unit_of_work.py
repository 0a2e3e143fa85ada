"""A unit of work: the aggregates one or many commands loaded and changed, saved in one transaction.

Commands touching the same aggregate within one unit apply in order to the same in-memory
object; the store's version numbers and receipt ids catch anything another process did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

if TYPE_CHECKING:
    from eventsourcing.application import Application

A = TypeVar("A", bound=Aggregate)


class UnitOfWork:
    def __init__(self, app: Application) -> None:
        self._app = app
        self._aggregates: dict[UUID, Aggregate] = {}

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """The aggregate as this unit sees it (its own changes included), or None."""
        aggregate = self._aggregates.get(aggregate_id)
        if aggregate is None:
            try:
                aggregate = self._app.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return None
            self._aggregates[aggregate_id] = aggregate
        return aggregate if isinstance(aggregate, cls) else None

    def add(self, aggregate: Aggregate) -> None:
        self._aggregates[aggregate.id] = aggregate

    def pending_count(self) -> int:
        return sum(len(a.pending_events) for a in self._aggregates.values())

    def commit(self) -> int:
        """Saves every pending event of every aggregate in one transaction; returns how many."""
        changed = [a for a in self._aggregates.values() if a.pending_events]
        count = self.pending_count()
        if changed:
            self._app.save(*changed)
        return count
