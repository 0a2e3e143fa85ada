"""The partner postings index: every purchase and return by partner and transaction id."""

from __future__ import annotations

from typing import Any

from domain.member import Member
from projections.base import Projection, Stored
from projections.store import Transaction, select_in


class PostingsProjection(Projection):
    name = "postings"
    cost = 6
    tables = ("partner_postings", "postings_members")

    def ddl(self, store: Any) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS partner_postings (
                partner_id TEXT NOT NULL, transaction_id TEXT NOT NULL, program_id TEXT NOT NULL,
                kind TEXT NOT NULL, member_id TEXT NOT NULL, store_id TEXT, amount TEXT NOT NULL,
                currency TEXT, points BIGINT NOT NULL, original_transaction_id TEXT,
                occurred_at TEXT NOT NULL, recorded_at TEXT NOT NULL, position BIGINT NOT NULL,
                PRIMARY KEY (partner_id, transaction_id))""",
            "CREATE INDEX IF NOT EXISTS partner_postings_time ON partner_postings (partner_id, occurred_at)",
            """CREATE TABLE IF NOT EXISTS postings_members (
                originator_id TEXT PRIMARY KEY, member_id TEXT NOT NULL, program_id TEXT NOT NULL)""",
        ]

    def apply(self, tx: Transaction, batch: list[Stored], context: Any) -> None:
        members: dict[str, tuple[str, str]] = {}
        enrolled, postings, reversed_points = [], [], []
        for stored in batch:
            if isinstance(stored.event, Member.MemberEnrolled):
                event = stored.event
                members[stored.originator] = (event.member_id, event.program_id)
                enrolled.append((stored.originator, event.member_id, event.program_id))
        tx.insert("postings_members", ("originator_id", "member_id", "program_id"), enrolled)
        wanted = {s.originator for s in batch
                  if isinstance(s.event, (Member.PurchaseRecorded, Member.PurchaseReturned))} - set(members)
        for originator, member_id, program_id in select_in(
                tx, "SELECT originator_id, member_id, program_id FROM postings_members WHERE originator_id IN ({marks})",
                sorted(wanted)):
            members[originator] = (member_id, program_id)
        for stored in batch:
            event = stored.event
            if isinstance(event, Member.PurchaseRecorded):
                member_id, program_id = members[stored.originator]
                postings.append((event.partner_id, event.transaction_id, program_id, "purchase", member_id,
                                 event.store_id, str(event.amount), event.currency, event.points, None,
                                 stored.occurred_at, stored.recorded_at, stored.position))
            elif isinstance(event, Member.PurchaseReturned):
                member_id, program_id = members[stored.originator]
                postings.append((event.partner_id, event.transaction_id, program_id, "return", member_id, None,
                                 str(event.amount), None, 0, event.original_transaction_id,
                                 stored.occurred_at, stored.recorded_at, stored.position))
            elif isinstance(event, Member.AccrualReversed):
                reversed_points.append((-event.points, event.purchase.partition(":")[0], event.return_transaction_id))
        tx.insert("partner_postings", ("partner_id", "transaction_id", "program_id", "kind", "member_id", "store_id",
                                       "amount", "currency", "points", "original_transaction_id", "occurred_at",
                                       "recorded_at", "position"), postings)
        # A return's points are known from the AccrualReversed that follows it (same batch or a later one).
        tx.executemany("UPDATE partner_postings SET points = %s WHERE partner_id = %s AND transaction_id = %s",
                       reversed_points)
