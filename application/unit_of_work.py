"""A unit of work: the aggregates one or many commands loaded and changed, saved in one transaction.

Commands touching the same aggregate within one unit apply in order to the same in-memory
object; the store's version numbers and receipt ids catch anything another process did.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from application.prefetch import latest_stored, latest_versions, stored_after
from domain.receipts import CardRegistration, Receipt

if TYPE_CHECKING:
    from eventsourcing.application import Application

A = TypeVar("A", bound=Aggregate)
LOAD_GROUP = 200  # aggregates loaded per pair of queries


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
        self._absent: set[UUID] = set()  # known not to exist when prefetched
        # A process that is the only writer of its cache (the importer) changes cached
        # aggregates in place instead of copying them, and forgets them if a change fails.
        self._in_place: bool = getattr(app, "single_writer", False)

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """The aggregate as this unit sees it (its own changes included), or None."""
        aggregate = self._aggregates.get(aggregate_id)
        if aggregate is None:
            if aggregate_id in self._absent:
                return None
            try:
                aggregate = self._app.repository.get(aggregate_id, projector_func=mutate_all,
                                                     deepcopy_from_cache=not self._in_place)
            except AggregateNotFoundError:
                return None
            self._aggregates[aggregate_id] = aggregate
        self._marks.setdefault(aggregate_id, len(aggregate.pending_events))
        return aggregate if isinstance(aggregate, cls) else None

    def find_uncached(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """Straight from the event store, past the cache and its per-aggregate fast-forward lock,
        which would make every request's read of one hot, tiny aggregate (an API key) wait in
        line for the others'."""
        return self.find_many_uncached(cls, [aggregate_id]).get(aggregate_id)

    def find_many_uncached(self, cls: type[A], ids: Iterable[UUID]) -> dict[UUID, A]:
        """{id: aggregate} for those of `ids` that exist as `cls`, straight from the event store
        (as find_uncached), all in one round trip on PostgreSQL."""
        wanted: dict[UUID, Aggregate | None] = dict.fromkeys(ids)
        replayed = self._replayed(wanted)
        if replayed is None:
            replayed = {i: mutate_all(None, self._app.events.get(i)) for i in wanted}
        return {i: aggregate for i, aggregate in replayed.items() if isinstance(aggregate, cls)}

    def reread_absent(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """An aggregate this unit found absent, read from the store now; one it holds, as it is."""
        if aggregate_id not in self._aggregates:
            self._absent.discard(aggregate_id)
        return self.find(cls, aggregate_id)

    def cached(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """This process's cached copy as it is, unchecked against the store and never to be
        changed: only for what an aggregate fixes when it is created (a partner's program)."""
        cache = self._app.repository.cache
        if not cache:
            return None
        try:
            aggregate = cache.get(aggregate_id)
        except KeyError:
            return None
        return aggregate if isinstance(aggregate, cls) else None

    def refresh(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """Reads an aggregate again (this unit must not have changed it)."""
        self._aggregates.pop(aggregate_id, None)
        self._marks.pop(aggregate_id, None)
        return self.find(cls, aggregate_id)

    def prefetch(self, ids: Iterable[UUID]) -> None:
        """Checks many aggregates in one query: absent ones are then found absent without a
        query, cached ones that are current are copied without one, and the rest are loaded
        now, so that anything looked up later (receipts) is seen at a later moment, never an
        earlier one (a writer commits a member's events and its receipt together)."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self._aggregates and i not in self._absent]
        if not wanted:
            return
        versions = latest_versions(self._app.recorder, wanted)
        if versions is None:
            return
        to_update: dict[UUID, Aggregate | None] = {}  # a cached copy behind the store, or None: not cached
        for aggregate_id in wanted:
            version = versions.get(aggregate_id)
            if version is None:
                self._absent.add(aggregate_id)
                continue
            cached = self._cached_copy(aggregate_id, version)
            if cached is not None and cached.version == version:
                self._aggregates[aggregate_id] = cached
            else:
                to_update[aggregate_id] = cached
        # In groups: the stored events read for a group are held only while it is replayed,
        # so what a load holds at once does not grow with the batch times its members' histories.
        ids = list(to_update)
        for offset in range(0, len(ids), LOAD_GROUP):
            self._bring_up_to_date({i: to_update[i] for i in ids[offset:offset + LOAD_GROUP]})

    def _bring_up_to_date(self, starts: dict[UUID, Aggregate | None]) -> None:
        """Loads aggregates in two queries for them all: the newest snapshots of those not
        cached, then the events after each one's snapshot or cached copy. A copy cached here
        that another process has written past is carried on from its own version, not loaded
        again: with several server processes, the members a partner's batches name are mostly
        changed by another process since this one cached them, and replaying their snapshots
        (a member's whole state) and up to a snapshot interval of events was three fifths of a
        batch's time."""
        app = self._app
        uncached = [i for i, start in starts.items() if start is None]
        snapshots = latest_stored(app.snapshots.recorder, uncached) if uncached and app.snapshots is not None else {}
        replayed = None
        if snapshots is not None:
            for aggregate_id in uncached:
                if aggregate_id in snapshots:
                    starts[aggregate_id] = app.snapshots.mapper.to_domain_event(snapshots[aggregate_id]).mutate(None)
            replayed = self._replayed(starts)
        if replayed is None:
            for aggregate_id in starts:
                self.find(Aggregate, aggregate_id)
            return
        for aggregate_id, aggregate in replayed.items():
            if aggregate is None:
                self._absent.add(aggregate_id)
            else:
                self._aggregates[aggregate_id] = aggregate

    def _replayed(self, starts: dict[UUID, Aggregate | None]) -> dict[UUID, Aggregate | None] | None:
        """Each aggregate carried on from its start (None: from its first event) with the stored
        events after the start's version, read for them all in one query; None where the store
        offers no such query (the in-memory store)."""
        app = self._app
        stored = stored_after(app.recorder, {i: 0 if start is None else start.version for i, start in starts.items()})
        if stored is None:
            return None
        histories: dict[UUID, list[Any]] = {}
        for record in stored:
            histories.setdefault(record.originator_id, []).append(record)
        # Each event checks that it follows the aggregate's version (the library's mutate).
        return {i: mutate_all(start, map(app.mapper.to_domain_event, histories.get(i, ())))
                for i, start in starts.items()}

    def _cached_copy(self, aggregate_id: UUID, version: int) -> Aggregate | None:
        repository = self._app.repository
        if not repository.cache:
            return None
        # The library fast-forwards a cached aggregate in place under this per-aggregate lock.
        lock = repository._use_fastforward_lock(aggregate_id)  # noqa: SLF001
        try:
            with lock:
                try:
                    cached = repository.cache.get(aggregate_id)
                except KeyError:
                    return None
                if cached.version > version:  # changes this unit's store never saw
                    return None
                return cached if self._in_place else deepcopy(cached)
        finally:
            repository._disuse_fastforward_lock(aggregate_id)  # noqa: SLF001

    def add(self, aggregate: Aggregate) -> None:
        self._absent.discard(aggregate.id)
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

    def forget(self) -> None:
        """After a failed change: aggregates changed in place must not stay in the cache."""
        cache = self._app.repository.cache
        if self._in_place and cache:
            for aggregate_id in self._aggregates:
                try:
                    cache.get(aggregate_id, evict=True)
                except KeyError:
                    pass

    def commit(self) -> int:
        """Saves every pending event of every aggregate in one transaction; returns how many."""
        changed = [a for a in self._aggregates.values() if a.pending_events]
        count = self.pending_count()
        if changed:
            self._app.save_aggregates(changed)
        cache = self._app.repository.cache
        if cache:
            # Saved and current, or loaded and unchanged (a partner, a program): the next batch
            # copies them instead of asking the store, once it has checked their versions.
            # Receipts are written once and seldom read again: they would only evict members.
            for aggregate in self._aggregates.values():
                if not isinstance(aggregate, (Receipt, CardRegistration)):
                    cache.put(aggregate.id, aggregate)
        return count
