"""Liability movements: points earned, redeemed, expired, reversed and adjusted per program,
issuing partner and day (UTC, by effective time). Each movement is attributed to the partner
whose purchase issued the lot it touches, so a partner's roll-forward closes on its own lots."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from domain.member import Member
from projections.base import Projection, Stored

MOVEMENTS = ("earned", "redeemed", "expired", "reversed", "adjusted")


class LiabilityProjection(Projection):
    name = "liability"
    tables = ("liability_movements", "liability_lot_issuers")

    def ddl(self, store: Any) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS liability_movements (
                program_id TEXT NOT NULL, issuer TEXT NOT NULL, day TEXT NOT NULL,
                earned BIGINT NOT NULL DEFAULT 0, redeemed BIGINT NOT NULL DEFAULT 0,
                expired BIGINT NOT NULL DEFAULT 0, reversed BIGINT NOT NULL DEFAULT 0,
                adjusted BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (program_id, issuer, day))""",
            # Which partner issued each lot, and the member's program: what later events need.
            """CREATE TABLE IF NOT EXISTS liability_lot_issuers (
                originator_id TEXT NOT NULL, lot_id TEXT NOT NULL, program_id TEXT NOT NULL, issuer TEXT NOT NULL,
                PRIMARY KEY (originator_id, lot_id))""",
        ]

    def apply(self, tx: Any, batch: list[Stored], context: Any) -> None:
        totals: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(MOVEMENTS, 0))
        programs: dict[str, str] = {}
        issuers: dict[tuple[str, str], str] = {}
        new_issuers: list[tuple[str, str, str, str]] = []

        def program_of(originator: str) -> str:
            if originator not in programs:
                rows = tx.execute("SELECT program_id FROM liability_lot_issuers WHERE originator_id = %s AND lot_id = ''",
                                  (originator,))
                programs[originator] = rows[0][0]
            return programs[originator]

        def issuer_of(originator: str, lot_id: str) -> str:
            if (originator, lot_id) not in issuers:
                rows = tx.execute("SELECT issuer FROM liability_lot_issuers WHERE originator_id = %s AND lot_id = %s",
                                  (originator, lot_id))
                issuers[(originator, lot_id)] = rows[0][0]
            return issuers[(originator, lot_id)]

        def remember(originator: str, lot_id: str, issuer: str) -> None:
            issuers[(originator, lot_id)] = issuer
            new_issuers.append((originator, lot_id, program_of(originator), issuer))

        def move(originator: str, issuer: str, day: str, movement: str, points: int) -> None:
            if points:
                totals[(program_of(originator), issuer, day)][movement] += points

        for stored in batch:
            event = stored.event
            if not isinstance(event, Member.Event):
                continue
            originator = str(event.originator_id)
            day = event.occurred_at.astimezone(context.utc).date().isoformat()
            if isinstance(event, Member.MemberEnrolled):
                programs[originator] = event.program_id
                new_issuers.append((originator, "", event.program_id, ""))
            elif isinstance(event, Member.PointsAccrued):
                issuer = event.purchase.partition(":")[0]
                remember(originator, event.lot_id, issuer)
                move(originator, issuer, day, "earned", event.points)
            elif isinstance(event, Member.AccrualReversed):
                move(originator, issuer_of(originator, event.lot_id), day, "reversed",
                     event.from_remaining + event.clawback)
            elif isinstance(event, Member.PointsRedeemed):
                for lot_id, points in event.consumed:
                    move(originator, issuer_of(originator, lot_id), day, "redeemed", points)
            elif isinstance(event, Member.RedemptionCancelled):
                for lot_id, points in event.restored:
                    move(originator, issuer_of(originator, lot_id), day, "redeemed", -points)
                for lot_id, points in event.restored_expired:
                    issuer = issuer_of(originator, lot_id)
                    move(originator, issuer, day, "redeemed", -points)
                    move(originator, issuer, day, "expired", points)
            elif isinstance(event, Member.PointsExpired):
                for lot_id, points in event.expired:
                    move(originator, issuer_of(originator, lot_id), day, "expired", points)
            elif isinstance(event, Member.PointsAdjusted):
                if event.lot is not None:
                    remember(originator, event.lot["lot_id"], "")
                    move(originator, "", day, "adjusted", event.lot["points"])
                for lot_id, points in event.consumed:
                    move(originator, issuer_of(originator, lot_id), day, "adjusted", -points)

        tx.executemany(
            "INSERT INTO liability_lot_issuers (originator_id, lot_id, program_id, issuer) VALUES (%s, %s, %s, %s)",
            new_issuers)
        tx.executemany(
            """INSERT INTO liability_movements (program_id, issuer, day, earned, redeemed, expired, reversed, adjusted)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (program_id, issuer, day) DO UPDATE SET
                   earned = liability_movements.earned + excluded.earned,
                   redeemed = liability_movements.redeemed + excluded.redeemed,
                   expired = liability_movements.expired + excluded.expired,
                   reversed = liability_movements.reversed + excluded.reversed,
                   adjusted = liability_movements.adjusted + excluded.adjusted""",
            [(program, issuer, day, *(t[m] for m in MOVEMENTS)) for (program, issuer, day), t in totals.items()])

