"""Lots: points held per accrual, spent oldest first, each with its own pending and expiry dates."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

AVAILABLE, PENDING, DUE = "available", "pending", "due"


@dataclass
class Lot:
    lot_id: str
    source: str  # what created it: "purchase:<partner>:<transaction>" or "adjustment:<id>"
    points: int  # as created; negative for a debt lot (a clawback or correction beyond the balance)
    earned_at: datetime
    available_at: datetime
    expires_at: datetime | None
    remaining: int
    expired: int = 0
    reversed: int = 0  # taken back by returns, including any clawback below zero
    settled: int = 0  # paid to what the member owed (a lot below zero) when it expired; received: negative

    def state_at(self, moment: datetime) -> str:
        """Debt always counts against what is available; positive points are due once past expiry."""
        if self.remaining < 0:
            return AVAILABLE
        if self.expires_at is not None and self.expires_at <= moment:
            return DUE
        if self.available_at > moment:
            return PENDING
        return AVAILABLE

    def changed(self, *, remaining: int = 0, expired: int = 0, reversed: int = 0, settled: int = 0) -> Lot:
        """A new lot with these amounts added. Lots are never changed in place, so the copy of a
        member made for every command can share them with the cached original."""
        return replace(self, remaining=self.remaining + remaining, expired=self.expired + expired,
                       reversed=self.reversed + reversed, settled=self.settled + settled)

    def is_spendable_at(self, moment: datetime) -> bool:
        return self.remaining > 0 and self.state_at(moment) == AVAILABLE

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies every value, and the fields are immutable.
        return {name: getattr(self, name) for name in _LOT_FIELDS}


_LOT_FIELDS = tuple(f.name for f in fields(Lot))


def spend_oldest_first(lots: list[Lot], points: int, moment: datetime) -> list[list[Any]]:
    """Which lots `points` come from, oldest spendable first: [[lot_id, points], ...].
    The caller has checked there are enough; returns fewer only if there are not."""
    taken: list[list[Any]] = []
    wanted = points
    for lot in sorted((lot for lot in lots if lot.is_spendable_at(moment)), key=lambda lot: lot.earned_at):
        if wanted == 0:
            break
        take = min(wanted, lot.remaining)
        taken.append([lot.lot_id, take])
        wanted -= take
    return taken
