"""The audit trail: one row per stored event, in global order, each extending a SHA-256 chain.

link(n) = SHA-256(link(n-1) || position || originator id || version || topic || state bytes).
The head (position, hash) is the checkpoint an auditor keeps outside the database. Verification
recomputes the chain from the event table itself and never trusts the chain table's own hashes
except to say where the two first disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Notification

from domain.member import Member
from projections.base import Projection, Stored
from projections.store import ProjectionStore, Transaction, select_in

GENESIS = "0" * 64


def link(previous: str, notification: Notification) -> str:
    digest = hashlib.sha256()
    digest.update(bytes.fromhex(previous))
    header = f"{notification.id}\x1f{notification.originator_id}\x1f{notification.originator_version}\x1f{notification.topic}\x1f"
    digest.update(header.encode())
    digest.update(bytes(notification.state))
    return digest.hexdigest()


def points_delta(event: Any) -> int:
    """What the event did to the member's total points."""
    if isinstance(event, Member.PointsAccrued):
        return event.points
    if isinstance(event, Member.AccrualReversed):
        return -(event.from_remaining + event.clawback)
    if isinstance(event, Member.PointsRedeemed):
        return -event.points
    if isinstance(event, Member.RedemptionCancelled):
        return sum(p for _, p in event.restored)
    if isinstance(event, Member.PointsExpired):
        return -sum(p for _, p in event.expired)
    if isinstance(event, Member.PointsAdjusted):
        return event.points
    return 0


class AuditProjection(Projection):
    name = "audit"
    cost = 12
    tables = ("audit_trail", "audit_members")

    def ddl(self, store: ProjectionStore) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS audit_trail (
                position BIGINT PRIMARY KEY, originator_id TEXT NOT NULL, version BIGINT NOT NULL,
                event_type TEXT NOT NULL, member_id TEXT, points_delta BIGINT NOT NULL, actor TEXT,
                partner_id TEXT, store_id TEXT, occurred_at TEXT, recorded_at TEXT NOT NULL, hash TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS audit_trail_originator ON audit_trail (originator_id, version)",
            "CREATE TABLE IF NOT EXISTS audit_members (originator_id TEXT PRIMARY KEY, member_id TEXT NOT NULL)",
        ]

    def apply(self, tx: Transaction, batch: list[Stored], context: Any) -> None:
        head = tx.execute("SELECT hash FROM audit_trail ORDER BY position DESC LIMIT 1")
        previous = head[0][0] if head else GENESIS
        member_ids: dict[str, str] = {}
        enrolled = []
        for stored in batch:
            if isinstance(stored.event, Member.MemberEnrolled):
                member_ids[stored.originator] = stored.event.member_id
                enrolled.append((stored.originator, stored.event.member_id))
        tx.insert("audit_members", ("originator_id", "member_id"), enrolled)
        others = {s.originator for s in batch if isinstance(s.event, Member.Event)} - set(member_ids)
        member_ids.update(select_in(
            tx, "SELECT originator_id, member_id FROM audit_members WHERE originator_id IN ({marks})", sorted(others)))
        rows = []
        for stored in batch:
            event, notification = stored.event, stored.notification
            previous = link(previous, notification)
            originator = stored.originator
            member_id = member_ids[originator] if isinstance(event, Member.Event) else None
            rows.append((
                notification.id, originator, notification.originator_version, type(event).__name__, member_id,
                points_delta(event), getattr(event, "actor", None), getattr(event, "partner_id", None),
                getattr(event, "store_id", None), stored.occurred_at, stored.recorded_at, previous,
            ))
        tx.insert("audit_trail", ("position", "originator_id", "version", "event_type", "member_id", "points_delta",
                                  "actor", "partner_id", "store_id", "occurred_at", "recorded_at", "hash"), rows)


@dataclass(frozen=True)
class Verification:
    ok: bool
    verified_through: int  # the last position whose recomputed link matched
    first_bad_position: int | None
    reason: str | None = None


def stored_events(recorder: ApplicationRecorder, page: int = 5000) -> Iterator[Notification]:
    start: int | None = None
    while True:
        notifications = recorder.select_notifications(start=start, limit=page, inclusive_of_start=False)
        yield from notifications
        if len(notifications) < page:
            return
        start = notifications[-1].id


def verify_chain(recorder: ApplicationRecorder, store: ProjectionStore,
                 checkpoint: tuple[int, str] | None = None) -> Verification:
    """Recomputes the chain from the events and compares it with the recorded chain and, if
    given, the checkpoint kept outside the database. Names the first position that disagrees."""
    recorded = iter(store.query("SELECT position, hash FROM audit_trail ORDER BY position"))
    expected = next(recorded, None)
    previous, verified = GENESIS, 0
    pending_checkpoint = checkpoint
    for notification in stored_events(recorder):
        position = notification.id
        if pending_checkpoint is not None and position > pending_checkpoint[0]:
            return Verification(False, verified, pending_checkpoint[0],
                                f"the event at the checkpoint position {pending_checkpoint[0]} is missing")
        previous = link(previous, notification)
        compared = False
        if expected is not None:
            if expected[0] < position:
                return Verification(False, verified, expected[0], f"the event at position {expected[0]} is missing")
            if expected[0] > position:
                return Verification(False, verified, position, f"the event at position {position} is not in the chain")
            if expected[1] != previous:
                return Verification(False, verified, position, f"the event at position {position} does not match its link")
            expected = next(recorded, None)
            compared = True
        if pending_checkpoint is not None and position == pending_checkpoint[0]:
            if previous != pending_checkpoint[1]:
                return Verification(False, verified, position,
                                    f"the chain at the checkpoint position {position} does not match the checkpoint")
            pending_checkpoint = None
            compared = True
        if compared:
            verified = position  # every link up to here is now confirmed
        if expected is None and pending_checkpoint is None:
            break  # nothing left to compare with
    if expected is not None:
        return Verification(False, verified, expected[0], f"the event at position {expected[0]} is missing")
    if pending_checkpoint is not None:
        return Verification(False, verified, pending_checkpoint[0],
                            f"the event at the checkpoint position {pending_checkpoint[0]} is missing")
    return Verification(True, verified, None)


def checkpoint(store: ProjectionStore) -> tuple[int, str] | None:
    rows = store.query("SELECT position, hash FROM audit_trail ORDER BY position DESC LIMIT 1")
    return (rows[0][0], rows[0][1]) if rows else None
