"""The ledger application: runs commands (alone or many in one transaction) and answers queries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Transcoding
from eventsourcing.utils import get_topic

from application.commands import Command, Outcome
from application.errors import ApplicationError, Contention, NotFound, Unauthenticated
from application.access import ACCESS_HANDLERS, Principal, authenticate
from application.handlers import LEDGER_HANDLERS, member_for_card, prefetch, require_program
from application.unit_of_work import UnitOfWork, mutate_all
from application.views import json_value, member_view, program_view, rfc3339
from domain.api_key import ApiKey
from domain.errors import DomainError
from domain.identity import member_id_to_uuid, partner_id_to_uuid
from domain.partner import Partner
from domain.receipts import Receipt
from domain.lots import Lot
from domain.member import Member, replay_member
from domain.program import Program

Clock = Callable[[], datetime]
LedgerError = (DomainError, ApplicationError)
MAX_ATTEMPTS = 25
BATCH_ATTEMPTS = 3  # whole-batch tries after a version clash, before each command goes alone
HANDLERS = {**LEDGER_HANDLERS, **ACCESS_HANDLERS}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class LotAsDict(Transcoding):
    type = Lot
    name = "lot"

    def encode(self, obj: Lot) -> dict[str, Any]:
        return obj.as_dict()

    def decode(self, data: dict[str, Any]) -> Lot:
        return Lot(**data)


class _PoisonedBatch(Exception):
    """A refused command left changes behind; the batch cannot be trusted as a whole."""


def snapshot_interval(base: int, version: int) -> int:
    """Events between snapshots at `version`: `base` until 40 x base events, then doubled each
    time the version doubles (one snapshot every 1/20 to 1/40 of the history). A snapshot holds a
    member's whole state (every purchase and lot: returns may come at any time), so at a fixed
    interval its cost per event grew with the member's age: with 4,000 purchases it was a third
    of a purchase's time. This way it stays level, and a load from the newest snapshot still
    replays at most a twentieth of the history after it."""
    interval = base
    while version >= 40 * interval:
        interval *= 2
    return interval


class Ledger(Application):
    name = "loyalty"
    snapshotting_intervals = {Member: 100}  # noqa: RUF012 - the library reads a class attribute

    def __init__(self, env: dict[str, str] | None = None, clock: Clock = utc_now, *,
                 single_writer: bool = False) -> None:
        super().__init__(env)
        self.clock = clock
        # The only thread writing through this ledger (the importer): units of work change
        # cached aggregates in place rather than copy them (see UnitOfWork).
        self.single_writer = single_writer

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(LotAsDict())

    def save_aggregates(self, aggregates: Sequence[Any]) -> None:
        """Application.save for aggregates known to be ours: the same recording and snapshots,
        without collect_events' two typing-Protocol isinstance checks per aggregate (slow on
        Python 3.11, and more than the rest of collecting a purchase's events)."""
        processing_event: ProcessingEvent[Any] = ProcessingEvent()
        for aggregate in aggregates:
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)

    def _take_snapshots(self, processing_event: Any) -> None:
        """Snapshots an aggregate each time its events cross a multiple of its interval (which
        widens as the aggregate grows: see snapshot_interval). The last crossing in a save is
        snapshotted from the saved state in memory, at the version the save ended on: the library
        would read and decode up to a whole interval of events again to stop at exactly the
        multiple. Earlier crossings in the same save (a batch of hundreds of events for one
        member) are taken by the library, at their multiples."""
        if not self.snapshots:
            return
        crossings: dict[Any, list[int]] = {}
        for domain_event in processing_event.events:
            aggregate = processing_event.aggregates.get(domain_event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate))
            version = domain_event.originator_version
            if interval and version % snapshot_interval(interval, version) == 0:
                crossings.setdefault(domain_event.originator_id, []).append(domain_event.originator_version)
        for aggregate_id, versions in crossings.items():
            for version in versions[:-1]:
                self.take_snapshot(aggregate_id, version=version, projector_func=mutate_all)
        if crossings:
            self.snapshots.put([type(a).Snapshot.take(a) for a in
                                (processing_event.aggregates[i] for i in crossings)])

    # ---- writes ---------------------------------------------------------------------------

    def execute(self, command: Command) -> Outcome:
        """Runs one command in its own transaction. A version clash or a racing duplicate
        (IntegrityError) reloads and retries: the retry finds the other writer's receipt."""
        handler = HANDLERS[type(command)]
        for attempt in range(MAX_ATTEMPTS):
            uow = UnitOfWork(self)
            try:
                outcome = handler(uow, command, self.clock())
                uow.commit()
            except IntegrityError:
                uow.forget()
                # Exponential backoff with full jitter: many writers on one member spread out.
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
                continue
            except BaseException:
                uow.forget()
                raise
            return outcome
        raise Contention(f"gave up after {MAX_ATTEMPTS} attempts: too many concurrent writes on one member")

    def execute_batch(self, commands: Sequence[Command], keys: Sequence[UUID | None] | None = None,
                      ) -> list[Outcome | DomainError | ApplicationError]:
        """Runs many commands and commits them in one transaction (group commit), each judged as
        if alone: a refused command is reported and left out. If another process wrote one of the
        batch's aggregates first (IntegrityError), the whole batch runs again on fresh state, up to
        BATCH_ATTEMPTS times; then, or if a refused command left changes behind, each command is
        retried on its own.

        `keys`, beside the commands: the API key (aggregate id) each command's caller presented,
        where it still has to be confirmed. The batch reads those keys as stored now, with the
        aggregates it reads anyway (a cached key costs no more than one more id in that query),
        and answers a command whose key is revoked or gone with Unauthenticated, unrun."""
        if not commands:
            return []
        keys = list(keys) if keys is not None else [None] * len(commands)
        for attempt in range(BATCH_ATTEMPTS):
            try:
                return self._execute_batch_once(commands, keys)
            except IntegrityError:
                # The other writer has committed by now: one more whole batch usually gets through,
                # where retrying each command alone costs a save per command.
                time.sleep(random.uniform(0, 0.002 * 2 ** attempt))
            except _PoisonedBatch:
                break
        wanted = {key for key in keys if key is not None}
        fresh = self.api_keys(wanted) if wanted else {}
        return [self._execute_caught(command) if key is None or _accepted(fresh.get(key)) else _NOT_ACCEPTED()
                for command, key in zip(commands, keys)]

    def _execute_batch_once(self, commands: Sequence[Command], keys: list[UUID | None],
                            ) -> list[Outcome | DomainError | ApplicationError]:
        uow = UnitOfWork(self)
        now = self.clock()
        results: list[Outcome | DomainError | ApplicationError] = []
        try:
            prefetch(uow, list(commands), also=[key for key in keys if key is not None])
            for command, key in zip(commands, keys):
                if key is not None and not _accepted(uow.find(ApiKey, key)):
                    results.append(_NOT_ACCEPTED())
                    continue
                uow.begin_command()
                try:
                    results.append(HANDLERS[type(command)](uow, command, now))
                except LedgerError as error:
                    if uow.command_changed_anything():
                        raise _PoisonedBatch from error
                    results.append(error)
            uow.commit()
        except BaseException:
            uow.forget()
            raise
        return results

    def _execute_caught(self, command: Command) -> Outcome | DomainError | ApplicationError:
        try:
            return self.execute(command)
        except LedgerError as error:
            return error

    # ---- jobs over every member -------------------------------------------------------------

    def created(self, event_class: type, page: int = 1000) -> Iterator[Any]:
        """Every stored creation event of a kind, oldest first, read from the notification log
        filtered by topic. (The projections replace this scan for the read side.)"""
        topic = get_topic(event_class)
        start: int | None = None
        while True:
            notifications = self.recorder.select_notifications(
                start=start, limit=page, topics=[topic], inclusive_of_start=False)
            for notification in notifications:
                yield self.mapper.to_domain_event(notification)
            if len(notifications) < page:
                return
            start = notifications[-1].id

    def member_ids(self, program_id: str | None = None) -> Iterator[str]:
        for enrolled in self.created(Member.MemberEnrolled):
            if program_id is None or enrolled.program_id == program_id:
                yield enrolled.member_id

    def program_ids(self) -> list[str]:
        return [created.program_id for created in self.created(Program.ProgramCreated)]

    def run_for_every_member(self, make: Callable[[str], Command], batch_size: int = 500) -> list[Outcome]:
        """A job: one command per member, committed in batches. Refusals are raised, since a
        job's commands are the ledger's own and must not fail silently."""
        outcomes: list[Outcome] = []
        ids = list(self.member_ids())
        for offset in range(0, len(ids), batch_size):
            for result in self.execute_batch([make(member_id) for member_id in ids[offset:offset + batch_size]]):
                if not isinstance(result, Outcome):
                    raise result
                outcomes.append(result)
        return outcomes

    # ---- queries --------------------------------------------------------------------------

    @property
    def database_kind(self) -> str:
        return self.env.get("PERSISTENCE_MODULE", "eventsourcing.popo").rsplit(".", 1)[-1]

    def partner_program(self, partner_id: str) -> str:
        partner = UnitOfWork(self).find(Partner, partner_id_to_uuid(partner_id))
        if partner is None:
            raise NotFound(f"partner {partner_id!r} not found")
        return partner.program_id

    def posting(self, partner_id: str, transaction_id: str) -> Receipt | None:
        """A partner's posting receipt: what was posted and the outcome it was given."""
        program_id = self.partner_program(partner_id)
        return UnitOfWork(self).find(Receipt, Receipt.create_id("posting", [program_id, partner_id, transaction_id]))

    def authenticate(self, presented: str, admin_key: str | None,
                     read_key: Callable[[UUID], ApiKey | None] | None = None) -> Principal | None:
        """`read_key`: how to read the presented key from the store (a server process reads
        concurrent requests' keys together: infrastructure/key_reads.py); by default alone."""
        return authenticate(presented, admin_key, read_key or (lambda key_id: self.api_keys([key_id]).get(key_id)))

    def api_keys(self, ids: Iterable[UUID]) -> dict[UUID, ApiKey]:
        """The API keys as stored now, past every cache (revocations count at once), in one read.
        What it read is cached, for `cached_api_key` and for a batch confirming keys to check
        without loading them again."""
        keys = UnitOfWork(self).find_many_uncached(ApiKey, ids)
        cache = self.repository.cache
        if cache:
            for aggregate_id, key in keys.items():
                held = self.cached_api_key(aggregate_id)
                if held is None or held.version <= key.version:  # never an older copy over a newer one
                    cache.put(aggregate_id, key)
        return keys

    def cached_api_key(self, aggregate_id: UUID) -> ApiKey | None:
        """This process's copy of a key as last read or checked, unconfirmed: a key used this way
        must be confirmed by the batch that commits its caller's command (`execute_batch`'s keys)."""
        return UnitOfWork(self).cached(ApiKey, aggregate_id)

    def get_member(self, member_id: str) -> Member:
        try:
            member = self.repository.get(member_id_to_uuid(member_id), projector_func=mutate_all)
        except AggregateNotFoundError:
            raise NotFound(f"member {member_id!r} not found") from None
        if not isinstance(member, Member):
            raise NotFound(f"member {member_id!r} not found")
        return member

    def member_summary(self, member_id: str) -> dict[str, Any]:
        return member_view(self.get_member(member_id), self.clock())

    def member_id_for_card(self, program_id: str, card_number: str) -> str:
        return member_for_card(UnitOfWork(self), program_id, card_number).member_id

    def program_summary(self, program_id: str) -> dict[str, Any]:
        return program_view(require_program(UnitOfWork(self), program_id))

    def _member_events(self, member_id: str) -> list[Member.Event]:
        events = list(self.events.get(member_id_to_uuid(member_id)))
        if not events or not isinstance(events[0], Member.MemberEnrolled):
            raise NotFound(f"member {member_id!r} not found")
        return events

    def balance_as_of(self, member_id: str, as_of: datetime | None = None,
                      known_at: datetime | None = None) -> dict[str, Any]:
        """Replays the member's stored events: effective time up to `as_of`, recorded by `known_at`."""
        moment = as_of or self.clock()
        member = self._member_as_of(member_id, moment, known_at)
        if member is None:
            raise NotFound(f"member {member_id!r} was not yet known at {rfc3339(known_at or moment)}")
        balance = member.balance_at(moment)
        return {
            "member_id": member_id, "as_of": rfc3339(moment),
            "known_at": None if known_at is None else rfc3339(known_at),
            "available": balance["available"], "pending": balance["pending"],
            "due_for_expiry": balance["due"], "tier": member.tier,
        }

    def _member_as_of(self, member_id: str, as_of: datetime, known_at: datetime | None) -> Member | None:
        """Replays from the newest snapshot all of whose facts happened by `as_of` and were
        recorded by `known_at`, then the later events through the same filter."""
        originator_id = member_id_to_uuid(member_id)
        if self.snapshots is not None:
            for snapshot in self.snapshots.get(originator_id, desc=True):
                latest = snapshot.state.get("latest_occurred_at")
                if latest is not None and latest <= as_of and (known_at is None or snapshot.timestamp <= known_at):
                    start = snapshot.mutate(None)
                    later = self.events.get(originator_id, gt=snapshot.originator_version)
                    return replay_member(later, as_of=as_of, known_at=known_at, start=start)
        return replay_member(self._member_events(member_id), as_of=as_of, known_at=known_at)

    def history(self, member_id: str, as_of: datetime | None = None) -> list[dict[str, Any]]:
        """Every stored event of the member, oldest first, with who caused it."""
        history = []
        for domain_event in self._member_events(member_id):
            if as_of is not None and domain_event.occurred_at > as_of:
                continue
            data = {
                k: v for k, v in vars(domain_event).items()
                if k not in ("originator_id", "originator_version", "timestamp", "actor", "occurred_at",
                             "originator_topic", "request_hash")
            }
            history.append({
                "version": domain_event.originator_version,
                "type": type(domain_event).__name__,
                "occurred_at": rfc3339(domain_event.occurred_at),
                "recorded_at": rfc3339(domain_event.timestamp),
                "actor": domain_event.actor,
                "data": json_value(data),
            })
        return history


def _accepted(key: ApiKey | None) -> bool:
    """A key confirmed as stored now: it exists and is not revoked (its secret, which never
    changes, was checked against the copy its caller was admitted with)."""
    return key is not None and not key.revoked


def _NOT_ACCEPTED() -> Unauthenticated:  # noqa: N802 - a fresh error for each refused command
    return Unauthenticated("the API key is not valid or was revoked")
