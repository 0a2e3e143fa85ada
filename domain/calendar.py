"""Calendar arithmetic for effective times (no clock reads here)."""

from __future__ import annotations

import calendar
from datetime import datetime, timezone

from domain.errors import InvalidTime

# The range of effective times the ledger accepts: nothing a loyalty program records happened
# before 1970, and the far end leaves room for expiry and tier-window arithmetic.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)


def add_months(moment: datetime, months: int) -> datetime:
    """The same day-of-month and time `months` later, clamped to the month's last day."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidTime(f"{name} must carry a UTC offset", field=name)
    if not EARLIEST <= moment < LATEST:
        raise InvalidTime(f"{name} must be from {EARLIEST.year} up to {LATEST.year}", field=name)
