"""Liability movements: points earned, redeemed, expired, reversed and adjusted per program,
issuing partner and day (UTC, by effective time). Each movement is attributed to the partner
whose purchase issued the lot it touches, so a partner's roll-forward closes on its own lots."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from domain.member import Member
from projections.base import Projection, Stored
from projections.store import select_in, select_pairs

MOVEMENTS = ("earned", "redeemed", "expired", "reversed", "adjusted")


class LiabilityProjection(Projection):
    """Also the finance facts built on the same attribution: settlement flows (points issued by
    one partner and redeemed at another) and IFRS 15 allocations of purchase prices to points."""

    name = "liability"
    cost = 7
    version = 2
    tables = ("liability_movements", "liability_lot_issuers", "redemption_flows", "liability_redemptions",
              "revenue_allocations", "liability_purchases")

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
            # Points issued by `issuer` and redeemed at `redeemer` ('' = by support, no partner).
            """CREATE TABLE IF NOT EXISTS redemption_flows (
                program_id TEXT NOT NULL, issuer TEXT NOT NULL, redeemer TEXT NOT NULL, day TEXT NOT NULL,
                points BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (program_id, issuer, redeemer, day))""",
            """CREATE TABLE IF NOT EXISTS liability_redemptions (
                originator_id TEXT NOT NULL, redemption_id TEXT NOT NULL, redeemer TEXT NOT NULL,
                PRIMARY KEY (originator_id, redemption_id))""",
            # One row per purchase or return: exact decimals, summed in Python, never in floats.
            """CREATE TABLE IF NOT EXISTS revenue_allocations (
                position BIGINT NOT NULL, program_id TEXT NOT NULL, day TEXT NOT NULL, allocated TEXT NOT NULL,
                PRIMARY KEY (position, program_id))""",
            "CREATE INDEX IF NOT EXISTS revenue_allocations_day ON revenue_allocations (program_id, day)",
            """CREATE TABLE IF NOT EXISTS liability_purchases (
                originator_id TEXT NOT NULL, purchase TEXT NOT NULL, amount TEXT NOT NULL, allocated TEXT NOT NULL,
                PRIMARY KEY (originator_id, purchase))""",
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

        flows: dict[tuple[str, str, str, str], int] = defaultdict(int)
        redeemers: dict[tuple[str, str], str] = {}
        new_redeemers: list[tuple[str, str, str]] = []
        purchases: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
        new_purchases: list[tuple[str, str, str, str]] = []
        allocations: list[tuple[int, str, str, str]] = []

        def redeemer_of(originator: str, redemption_id: str) -> str:
            if (originator, redemption_id) not in redeemers:
                rows = tx.execute("SELECT redeemer FROM liability_redemptions WHERE originator_id = %s"
                                  " AND redemption_id = %s", (originator, redemption_id))
                redeemers[(originator, redemption_id)] = rows[0][0]
            return redeemers[(originator, redemption_id)]

        def purchase_of(originator: str, purchase: str) -> tuple[Decimal, Decimal]:
            if (originator, purchase) not in purchases:
                rows = tx.execute("SELECT amount, allocated FROM liability_purchases WHERE originator_id = %s"
                                  " AND purchase = %s", (originator, purchase))
                purchases[(originator, purchase)] = (Decimal(rows[0][0]), Decimal(rows[0][1]))
            return purchases[(originator, purchase)]

        # Programs and lot issuers of members enrolled in earlier batches: a few queries, not one each.
        enrolled_here = {s.originator for s in batch if isinstance(s.event, Member.MemberEnrolled)}
        members_here = {s.originator for s in batch if isinstance(s.event, Member.Event)}
        programs.update(select_in(
            tx, "SELECT originator_id, program_id FROM liability_lot_issuers WHERE lot_id = '' AND originator_id IN ({marks})",
            sorted(members_here - enrolled_here)))
        spent = {(s.originator, lot_id) for s in batch for lot_id in _lots_touched(s.event)}
        for originator, lot_id, issuer in select_pairs(
                tx, "SELECT originator_id, lot_id, issuer FROM liability_lot_issuers WHERE {pairs}",
                ("originator_id", "lot_id"), sorted(p for p in spent if p[0] not in enrolled_here)):
            issuers[(originator, lot_id)] = issuer
        for stored in batch:
            event = stored.event
            if not isinstance(event, Member.Event):
                continue
            originator = stored.originator
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
            elif isinstance(event, Member.PurchaseRecorded):
                allocated = event.allocated_to_points or Decimal(0)
                key = f"{event.partner_id}:{event.transaction_id}"
                purchases[(originator, key)] = (event.amount, allocated)
                new_purchases.append((originator, key, str(event.amount), str(allocated)))
                allocations.append((stored.position, program_of(originator), day, str(allocated)))
            elif isinstance(event, Member.PurchaseReturned):
                amount, allocated = purchase_of(originator, f"{event.partner_id}:{event.original_transaction_id}")
                # A return takes back its share of the allocation, in proportion to the amount.
                allocations.append((stored.position, program_of(originator), day, str(-allocated * event.amount / amount)))
            elif isinstance(event, Member.PointsRedeemed):
                redeemer = event.partner_id or ""
                redeemers[(originator, event.redemption_id)] = redeemer
                new_redeemers.append((originator, event.redemption_id, redeemer))
                for lot_id, points in event.consumed:
                    issuer = issuer_of(originator, lot_id)
                    move(originator, issuer, day, "redeemed", points)
                    flows[(program_of(originator), issuer, redeemer, day)] += points
            elif isinstance(event, Member.RedemptionCancelled):
                redeemer = redeemer_of(originator, event.redemption_id)
                for lot_id, points in event.restored:
                    issuer = issuer_of(originator, lot_id)
                    move(originator, issuer, day, "redeemed", -points)
                    flows[(program_of(originator), issuer, redeemer, day)] -= points
                for lot_id, points in event.restored_expired:
                    issuer = issuer_of(originator, lot_id)
                    move(originator, issuer, day, "redeemed", -points)
                    move(originator, issuer, day, "expired", points)
                    flows[(program_of(originator), issuer, redeemer, day)] -= points
            elif isinstance(event, Member.PointsExpired):
                for lot_id, points in event.expired:
                    move(originator, issuer_of(originator, lot_id), day, "expired", points)
                # A debt paid from expiring points: out of the paying lot's issuer, into the
                # owing lot's (an adjustment between them; nothing net for the program).
                for lot_id, points in event.settled:
                    move(originator, issuer_of(originator, lot_id), day, "adjusted", points)
            elif isinstance(event, Member.PointsAdjusted):
                if event.lot is not None:
                    remember(originator, event.lot["lot_id"], "")
                    move(originator, "", day, "adjusted", event.lot["points"])
                for lot_id, points in event.consumed:
                    move(originator, issuer_of(originator, lot_id), day, "adjusted", -points)

        tx.insert("liability_lot_issuers", ("originator_id", "lot_id", "program_id", "issuer"), new_issuers)
        tx.insert("liability_redemptions", ("originator_id", "redemption_id", "redeemer"), new_redeemers)
        tx.insert("liability_purchases", ("originator_id", "purchase", "amount", "allocated"), new_purchases)
        tx.insert("revenue_allocations", ("position", "program_id", "day", "allocated"), allocations)
        tx.executemany(
            """INSERT INTO redemption_flows (program_id, issuer, redeemer, day, points) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (program_id, issuer, redeemer, day) DO UPDATE SET
                   points = redemption_flows.points + excluded.points""",
            [(*key, points) for key, points in flows.items() if points])
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



def _lots_touched(event: Any) -> list[str]:
    """Lots an event moves points in, beyond one it creates (their issuers are looked up)."""
    if isinstance(event, Member.AccrualReversed):
        return [event.lot_id]
    if isinstance(event, (Member.PointsRedeemed, Member.PointsAdjusted)):
        return [lot_id for lot_id, _ in event.consumed]
    if isinstance(event, Member.RedemptionCancelled):
        return [lot_id for lot_id, _ in event.restored + event.restored_expired]
    if isinstance(event, Member.PointsExpired):
        return [lot_id for lot_id, _ in [*event.settled, *event.expired]]
    return []
