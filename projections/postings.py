"""The partner postings index: every purchase and return by partner and transaction id."""

from __future__ import annotations

from typing import Any

from domain.member import Member
from projections.base import Projection, Stored
from projections.store import Transaction, db_time


class PostingsProjection(Projection):
    name = "postings"
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

        def member_of(originator: str) -> tuple[str, str]:
            if originator not in members:
                row = tx.execute("SELECT member_id, program_id FROM postings_members WHERE originator_id = %s",
                                 (originator,))[0]
                members[originator] = (row[0], row[1])
            return members[originator]

        for stored in batch:
            event = stored.event
            if not isinstance(event, Member.Event):
                continue
            originator = str(event.originator_id)
            if isinstance(event, Member.MemberEnrolled):
                members[originator] = (event.member_id, event.program_id)
                tx.execute("INSERT INTO postings_members (originator_id, member_id, program_id) VALUES (%s, %s, %s)",
                           (originator, event.member_id, event.program_id))
            elif isinstance(event, Member.PurchaseRecorded):
                member_id, program_id = member_of(originator)
                tx.execute(
                    """INSERT INTO partner_postings (partner_id, transaction_id, program_id, kind, member_id, store_id,
                           amount, currency, points, original_transaction_id, occurred_at, recorded_at, position)
                       VALUES (%s, %s, %s, 'purchase', %s, %s, %s, %s, %s, NULL, %s, %s, %s)""",
                    (event.partner_id, event.transaction_id, program_id, member_id, event.store_id, str(event.amount),
                     event.currency, event.points, db_time(event.occurred_at), db_time(event.timestamp),
                     stored.position))
            elif isinstance(event, Member.PurchaseReturned):
                member_id, program_id = member_of(originator)
                tx.execute(
                    """INSERT INTO partner_postings (partner_id, transaction_id, program_id, kind, member_id, store_id,
                           amount, currency, points, original_transaction_id, occurred_at, recorded_at, position)
                       VALUES (%s, %s, %s, 'return', %s, NULL, %s, NULL, 0, %s, %s, %s, %s)""",
                    (event.partner_id, event.transaction_id, program_id, member_id, str(event.amount),
                     event.original_transaction_id, db_time(event.occurred_at), db_time(event.timestamp),
                     stored.position))
            elif isinstance(event, Member.AccrualReversed):
                partner_id = event.purchase.partition(":")[0]
                tx.execute("UPDATE partner_postings SET points = %s WHERE partner_id = %s AND transaction_id = %s",
                           (-event.points, partner_id, event.return_transaction_id))
