"""A unit of work: the aggregates one or many commands loaded and changed, saved in one transaction.

Commands touching the same aggregate within one unit apply in order to the same in-memory
object; the store's version numbers and receipt ids catch anything another process did.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

if TYPE_CHECKING:
    from eventsourcing.application import Application

A = TypeVar("A", bound=Aggregate)


def mutate_all(aggregate: Any, domain_events: Iterable[Any]) -> Any:
    """The library's project_aggregate without its per-event isinstance check against a
    typing Protocol, which costs more than applying the event."""
    for domain_event in domain_events:
        aggregate = domain_event.mutate(aggregate)
    return aggregate


class UnitOfWork:
    def __init__(self, app: Application) -> None:
        self._app = app
        self._aggregates: dict[UUID, Aggregate] = {}
        self._marks: dict[UUID, int] = {}  # pending events per aggregate when the command first touched it

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """The aggregate as this unit sees it (its own changes included), or None."""
        aggregate = self._aggregates.get(aggregate_id)
        if aggregate is None:
            try:
                aggregate = self._app.repository.get(aggregate_id, projector_func=mutate_all)
            except AggregateNotFoundError:
                return None
            self._aggregates[aggregate_id] = aggregate
        self._marks.setdefault(aggregate_id, len(aggregate.pending_events))
        return aggregate if isinstance(aggregate, cls) else None

    def add(self, aggregate: Aggregate) -> None:
        if aggregate.id not in self._aggregates:
            self._marks.setdefault(aggregate.id, 0)
        self._aggregates[aggregate.id] = aggregate

    def begin_command(self) -> None:
        self._marks = {}

    def command_changed_anything(self) -> bool:
        """Whether the current command left events behind (it must not, if it was refused)."""
        return any(len(self._aggregates[i].pending_events) != n for i, n in self._marks.items())

    def pending_count(self) -> int:
        return sum(len(a.pending_events) for a in self._aggregates.values())

    def commit(self) -> int:
        """Saves every pending event of every aggregate in one transaction; returns how many."""
        changed = [a for a in self._aggregates.values() if a.pending_events]
        count = self.pending_count()
        if changed:
            self._app.save(*changed)
        return count
