"""What one member event did to which lot, read off the event itself.

Every member event records its exact effect on lots (the domain's apply() uses the same figures),
so projections can fold these changes instead of replaying the aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.member import Member


@dataclass(frozen=True)
class NewLot:
    lot_id: str
    source: str
    points: int
    earned_at: datetime
    available_at: datetime
    expires_at: datetime | None


def new_lot(event: Any) -> NewLot | None:
    """The lot an event creates, if any (its points are the lot's first movement)."""
    if isinstance(event, Member.PointsAccrued):
        return NewLot(event.lot_id, f"purchase:{event.purchase}", event.points, event.occurred_at,
                      event.available_at, event.expires_at)
    if isinstance(event, Member.PointsAdjusted) and event.lot is not None:
        lot = event.lot
        return NewLot(lot["lot_id"], lot["source"], lot["points"], lot["earned_at"], lot["available_at"],
                      lot["expires_at"])
    return None


def lot_deltas(event: Any) -> list[tuple[str, int]]:
    """Changes to lots' remaining points, beyond creating a lot: [(lot_id, signed points), ...]."""
    if isinstance(event, Member.AccrualReversed):
        return [(event.lot_id, -(event.from_remaining + event.clawback))]
    if isinstance(event, (Member.PointsRedeemed, Member.PointsAdjusted)):
        return [(lot_id, -points) for lot_id, points in event.consumed]
    if isinstance(event, Member.RedemptionCancelled):
        return [(lot_id, points) for lot_id, points in event.restored]
    if isinstance(event, Member.PointsExpired):
        return [*((lot_id, points) for lot_id, points in event.settled),
                *((lot_id, -points) for lot_id, points in event.expired)]
    return []
