"""Member summaries, their lots, and the card index.

Every member event records exactly what it did to which lot (the domain applies the same
figures), so a batch is folded into per-lot and per-member deltas in memory and written with a
few set-based statements. Balances by state (available, pending, due) are summed from the lots
at read time, because they move with time. The remaining points of all lots are also kept as a
running total per program and issuing partner (lot_totals), so a liability report reads one row
instead of summing a row per purchase ever made. The reconciliation check proves these rows
equal a fresh replay of the event store, and the totals equal the lots' sums.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from domain.member import Member
from domain.receipts import CardRegistration
from projections.base import Projection, Stored
from projections.lot_changes import lot_deltas, new_lot
from projections.store import Transaction, db_time, select_in, select_pairs

LIFETIME = ("earned", "redeemed", "expired", "reversed", "adjusted")


def issuer_of_source(source: str) -> str:
    """The partner whose purchase created a lot ('' for program-issued adjustment lots)."""
    kind, _, rest = source.partition(":")
    return rest.partition(":")[0] if kind == "purchase" else ""


class MemberProjection(Projection):
    name = "members"
    cost = 10
    version = 3  # 2: lot_totals; 3: tier by effective time (tier_changed_at)
    tables = ("member_lots", "member_summaries", "card_index", "lot_totals")

    def ddl(self, store: Any) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS member_summaries (
                member_id TEXT PRIMARY KEY, originator_id TEXT NOT NULL UNIQUE, program_id TEXT NOT NULL,
                card_number TEXT, name TEXT, email TEXT, birthday TEXT, enrolled_at TEXT NOT NULL,
                tier TEXT NOT NULL, tier_since TEXT NOT NULL, tier_changed_at TEXT, version BIGINT NOT NULL,
                earned BIGINT NOT NULL DEFAULT 0, redeemed BIGINT NOT NULL DEFAULT 0,
                expired BIGINT NOT NULL DEFAULT 0, reversed BIGINT NOT NULL DEFAULT 0,
                adjusted BIGINT NOT NULL DEFAULT 0)""",
            "CREATE INDEX IF NOT EXISTS member_summaries_program ON member_summaries (program_id)",
            """CREATE TABLE IF NOT EXISTS member_lots (
                member_id TEXT NOT NULL, lot_id TEXT NOT NULL, program_id TEXT NOT NULL, issuer TEXT NOT NULL,
                points BIGINT NOT NULL, earned_at TEXT NOT NULL, available_at TEXT NOT NULL,
                expires_at TEXT, remaining BIGINT NOT NULL, PRIMARY KEY (member_id, lot_id))""",
            "CREATE INDEX IF NOT EXISTS member_lots_program ON member_lots (program_id, issuer)",
            """CREATE TABLE IF NOT EXISTS lot_totals (
                program_id TEXT NOT NULL, issuer TEXT NOT NULL, remaining BIGINT NOT NULL,
                PRIMARY KEY (program_id, issuer))""",
            """CREATE TABLE IF NOT EXISTS card_index (
                program_id TEXT NOT NULL, card_number TEXT NOT NULL, member_id TEXT NOT NULL,
                PRIMARY KEY (program_id, card_number))""",
        ]

    def apply(self, tx: Transaction, batch: list[Stored], context: Any) -> None:
        fold = _Fold(tx)
        for stored in batch:
            event = stored.event
            if isinstance(event, CardRegistration.CardRegistered):
                fold.cards.append((event.program_id, event.card_number, event.member_id))
            elif isinstance(event, Member.Event):
                fold.add(stored)
        fold.write()


class _Fold:
    """A batch's member events folded into new rows and deltas."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.cards: list[tuple[str, str, str]] = []
        self.enrolled: dict[str, Member.MemberEnrolled] = {}
        self.members: dict[str, tuple[str, str]] = {}  # originator -> (member_id, program_id)
        self.lifetime: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(LIFETIME, 0))
        self.version: dict[str, int] = {}
        self.tier: dict[str, tuple[str, str]] = {}
        self.new_lots: dict[tuple[str, str], dict[str, Any]] = {}
        self.lot_delta: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, stored: Stored) -> None:
        event, originator = stored.event, stored.originator
        self.version[originator] = event.originator_version
        life = self.lifetime[originator]
        if isinstance(event, Member.MemberEnrolled):
            self.enrolled[originator] = event
            self.members[originator] = (event.member_id, event.program_id)
        lot = new_lot(event)
        if lot is not None:
            self.new_lots[(originator, lot.lot_id)] = {
                "issuer": issuer_of_source(lot.source), "points": lot.points, "earned_at": db_time(lot.earned_at),
                "available_at": db_time(lot.available_at), "expires_at": db_time(lot.expires_at),
            }
        for lot_id, delta in lot_deltas(event):
            self.lot_delta[(originator, lot_id)] += delta
        if isinstance(event, Member.PointsAccrued):
            life["earned"] += event.points
        elif isinstance(event, Member.AccrualReversed):
            life["reversed"] += event.from_remaining + event.clawback
        elif isinstance(event, Member.PointsRedeemed):
            life["redeemed"] += event.points
        elif isinstance(event, Member.RedemptionCancelled):
            back_expired = sum(points for _, points in event.restored_expired)
            life["redeemed"] -= sum(points for _, points in event.restored) + back_expired
            life["expired"] += back_expired
        elif isinstance(event, Member.PointsExpired):
            life["expired"] += sum(points for _, points in event.expired)
        elif isinstance(event, Member.PointsAdjusted):
            life["adjusted"] += event.points
        elif isinstance(event, Member.TierChanged):
            # The latest change by effective time is the tier (Member.tier): a late one dated
            # before it does not replace it; among equal times the later recorded does.
            when = stored.occurred_at or ""
            if originator not in self.tier or when >= self.tier[originator][1]:
                self.tier[originator] = (event.to_tier, when)

    def member(self, originator: str) -> tuple[str, str]:
        return self.members[originator]

    def _look_up_members(self) -> None:
        for originator, member_id, program_id in select_in(
                self.tx, "SELECT originator_id, member_id, program_id FROM member_summaries WHERE originator_id IN ({marks})",
                sorted(set(self.version) - set(self.members))):
            self.members[originator] = (member_id, program_id)
        missing = set(self.version) - set(self.members)
        if missing:
            raise LookupError(f"events for members never enrolled in the projection: {sorted(missing)[:3]}")

    def write(self) -> None:
        tx = self.tx
        tx.executemany(
            "INSERT INTO card_index (program_id, card_number, member_id) VALUES (%s, %s, %s)"
            " ON CONFLICT (program_id, card_number) DO UPDATE SET member_id = excluded.member_id", self.cards)
        tx.insert(
            "member_summaries", ("member_id", "originator_id", "program_id", "card_number", "name", "email", "birthday",
                                 "enrolled_at", "tier", "tier_since", "version"),
            [(e.member_id, o, e.program_id, e.card_number, e.name, e.email, e.birthday, db_time(e.occurred_at),
              e.tier, db_time(e.occurred_at), e.originator_version) for o, e in self.enrolled.items()])
        self._look_up_members()
        tx.executemany(
            """UPDATE member_summaries SET version = %s, earned = earned + %s, redeemed = redeemed + %s,
                   expired = expired + %s, reversed = reversed + %s, adjusted = adjusted + %s
               WHERE originator_id = %s""",
            [(self.version[o], *(self.lifetime[o][k] for k in LIFETIME), o) for o in self.version])
        tx.executemany(
            "UPDATE member_summaries SET tier = %s, tier_since = %s, tier_changed_at = %s"
            " WHERE originator_id = %s AND (tier_changed_at IS NULL OR tier_changed_at <= %s)",
            [(tier, since, since, o, since) for o, (tier, since) in self.tier.items()])
        rows = []
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for (originator, lot_id), lot in self.new_lots.items():
            member_id, program_id = self.member(originator)
            remaining = lot["points"] + self.lot_delta.pop((originator, lot_id), 0)
            rows.append((member_id, lot_id, program_id, lot["issuer"], lot["points"], lot["earned_at"],
                         lot["available_at"], lot["expires_at"], remaining))
            totals[(program_id, lot["issuer"])] += remaining
        tx.insert("member_lots", ("member_id", "lot_id", "program_id", "issuer", "points", "earned_at", "available_at",
                                  "expires_at", "remaining"), rows)
        changed = [(delta, self.member(o)[0], lot_id) for (o, lot_id), delta in self.lot_delta.items() if delta]
        tx.executemany("UPDATE member_lots SET remaining = remaining + %s WHERE member_id = %s AND lot_id = %s", changed)
        issuers = {(member_id, lot_id): (program_id, issuer) for member_id, lot_id, program_id, issuer in select_pairs(
            self.tx, "SELECT member_id, lot_id, program_id, issuer FROM member_lots WHERE {pairs}",
            ("member_id", "lot_id"), [(member_id, lot_id) for _, member_id, lot_id in changed])}
        for delta, member_id, lot_id in changed:
            totals[issuers[(member_id, lot_id)]] += delta
        tx.executemany(
            "INSERT INTO lot_totals (program_id, issuer, remaining) VALUES (%s, %s, %s) ON CONFLICT (program_id, issuer)"
            " DO UPDATE SET remaining = lot_totals.remaining + excluded.remaining",
            sorted((program_id, issuer, total) for (program_id, issuer), total in totals.items()))
