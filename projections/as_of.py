"""Balances as of an effective time, as known at a recorded time, from the member timeline.

The projection holds the member's events up to some version; the events stored after it (the
projection's lag, usually none) are read from the event store and their lot movements added in
memory. Every query is bounded by that version, so a batch the runner commits meanwhile is
neither missed nor counted twice.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from application.errors import NotFound
from application.ledger import Ledger
from application.views import rfc3339
from domain.identity import member_id_to_uuid
from domain.lots import AVAILABLE, DUE, PENDING, Lot
from domain.member import Member
from projections.lot_changes import lot_deltas, new_lot
from projections.store import ProjectionStore, Transaction, from_micros, micros

# Lots never flagged (see projections/timeline.py) cannot sum below zero over any subset of
# their events, so each movement is classified by its lot's dates alone, with no grouping.
_ALL_MOVEMENTS = """
    SELECT COALESCE(SUM(CASE WHEN m.expires_at IS NOT NULL AND m.expires_at <= %s THEN 0
                             WHEN m.available_at > %s THEN 0 ELSE m.delta END), 0),
           COALESCE(SUM(CASE WHEN (m.expires_at IS NULL OR m.expires_at > %s) AND m.available_at > %s
                             THEN m.delta ELSE 0 END), 0),
           COALESCE(SUM(CASE WHEN m.expires_at IS NOT NULL AND m.expires_at <= %s THEN m.delta ELSE 0 END), 0)
    FROM member_lot_movements m WHERE {filter}"""
_BY_MOVEMENT = _ALL_MOVEMENTS + """
      AND NOT EXISTS (SELECT 1 FROM member_flagged_lots f WHERE f.member_id = m.member_id AND f.lot_id = m.lot_id)"""
# Flagged lots: summed lot by lot, then classified like Lot.state_at (debt counts as available).
_BY_LOT = """
    SELECT COALESCE(SUM(CASE WHEN m.remaining < 0 THEN m.remaining
                             WHEN m.expires_at IS NOT NULL AND m.expires_at <= %s THEN 0
                             WHEN m.available_at > %s THEN 0 ELSE m.remaining END), 0),
           COALESCE(SUM(CASE WHEN m.remaining > 0 AND (m.expires_at IS NULL OR m.expires_at > %s)
                             AND m.available_at > %s THEN m.remaining ELSE 0 END), 0),
           COALESCE(SUM(CASE WHEN m.remaining > 0 AND m.expires_at IS NOT NULL AND m.expires_at <= %s
                             THEN m.remaining ELSE 0 END), 0)
    FROM (SELECT m.lot_id, SUM(m.delta) AS remaining, MIN(m.available_at) AS available_at,
                 MIN(m.expires_at) AS expires_at
          FROM member_lot_movements m JOIN member_flagged_lots f ON f.member_id = m.member_id AND f.lot_id = m.lot_id
          WHERE {filter} GROUP BY m.lot_id) m"""


def timeline_balance(store: ProjectionStore, ledger: Ledger, member_id: str, as_of: datetime | None,
                     known_at: datetime | None) -> dict[str, Any] | None:
    """The as-of balance, or None when the timeline does not hold the member (yet)."""
    with store.reading() as tx:
        rows = tx.execute(
            """SELECT t.base_tier, t.recorded_at, t.version FROM member_timeline t, projection_positions p
               WHERE t.member_id = %s AND p.name = 'timeline' AND p.rebuilding = 0""", (member_id,))
        if not rows:
            return None
        base_tier, enrolled_recorded_at, version = rows[0][0], int(rows[0][1]), int(rows[0][2])
        moment = as_of or ledger.clock()
        t, known = micros(moment), micros(known_at)
        if known is not None and enrolled_recorded_at > known:
            raise NotFound(f"member {member_id!r} was not yet known at {rfc3339(known_at)}")

        def passes(event: Member.Event) -> bool:
            return event.occurred_at <= moment and (known_at is None or event.timestamp <= known_at)

        tail = [e for e in ledger.events.get(member_id_to_uuid(member_id), gt=version) if passes(e)]
        movements = ("SELECT lot_id, SUM(delta) AS remaining, MIN(available_at) AS available_at,"
                     " MIN(expires_at) AS expires_at FROM member_lot_movements"
                     " WHERE member_id = %s AND version <= %s AND occurred_at <= %s"
                     + (" AND recorded_at <= %s" if known is not None else "") + " GROUP BY lot_id")
        params: list[Any] = [member_id, version, t] + ([known] if known is not None else [])
        if not tail:
            where = ("m.member_id = %s AND m.version <= %s AND m.occurred_at <= %s"
                     + (" AND m.recorded_at <= %s" if known is not None else ""))
            # Most members have no flagged lot: then one pass over the movements, without the
            # anti-join and the per-lot pass (which scanned every movement to find none).
            flagged = tx.execute("SELECT 1 FROM member_flagged_lots WHERE member_id = %s LIMIT 1", (member_id,))
            statements = (_BY_MOVEMENT, _BY_LOT) if flagged else (_ALL_MOVEMENTS,)
            totals = {AVAILABLE: 0, PENDING: 0, DUE: 0}
            for statement in statements:
                for state, points in zip((AVAILABLE, PENDING, DUE),
                                         tx.execute(statement.format(filter=where), [t, t, t, t, t, *params])[0]):
                    totals[state] += int(points)
        else:
            totals = _with_tail(tx, movements, params, tail, moment)
        tier = _tier(tx, member_id, version, t, known, tail) or base_tier
    return {
        "member_id": member_id, "as_of": rfc3339(moment), "known_at": None if known_at is None else rfc3339(known_at),
        "available": totals[AVAILABLE], "pending": totals[PENDING], "due_for_expiry": totals[DUE], "tier": tier,
    }


def _with_tail(tx: Transaction, movements: str, params: list[Any], tail: list[Member.Event],
               moment: datetime) -> dict[str, int]:
    """Lot by lot: the projected remainders plus the tail's movements, classified like Lot.state_at."""
    remaining: dict[str, int] = defaultdict(int)
    dates: dict[str, tuple[datetime, datetime | None]] = {}
    for lot_id, points, available_at, expires_at in tx.execute(
            f"SELECT lot_id, remaining, available_at, expires_at FROM ({movements}) m", params):
        remaining[lot_id] += int(points)
        dates[lot_id] = (from_micros(available_at), from_micros(expires_at))  # type: ignore[assignment]
    for event in tail:
        created = new_lot(event)
        if created is not None:
            remaining[created.lot_id] += created.points
            dates[created.lot_id] = (created.available_at, created.expires_at)
        for lot_id, delta in lot_deltas(event):
            remaining[lot_id] += delta
    totals = {AVAILABLE: 0, PENDING: 0, DUE: 0}
    for lot_id, points in remaining.items():
        available_at, expires_at = dates[lot_id]
        lot = Lot(lot_id=lot_id, source="", points=0, earned_at=available_at, available_at=available_at,
                  expires_at=expires_at, remaining=points)
        totals[lot.state_at(moment)] += points
    return totals


def _tier(tx: Transaction, member_id: str, version: int, t: int | None, known: int | None,
          tail: list[Member.Event]) -> str | None:
    """As Member.tier_at: the latest change by effective time (by version among equal times)."""
    rows = tx.execute(
        "SELECT occurred_at, version, tier FROM member_tier_changes WHERE member_id = %s AND version <= %s"
        " AND occurred_at <= %s" + (" AND recorded_at <= %s" if known is not None else "")
        + " ORDER BY occurred_at DESC, version DESC LIMIT 1",
        [member_id, version, t] + ([known] if known is not None else []))
    latest = (int(rows[0][0]), int(rows[0][1]), rows[0][2]) if rows else None
    for event in tail:  # stored after the projection's version, so later recorded than any row
        if isinstance(event, Member.TierChanged):
            change = (micros(event.occurred_at), event.originator_version, event.to_tier)
            if latest is None or change[:2] >= latest[:2]:
                latest = change  # type: ignore[assignment]
    return latest[2] if latest else None
