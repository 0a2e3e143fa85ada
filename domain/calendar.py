"""Calendar arithmetic for effective times (no clock reads here)."""

from __future__ import annotations

import calendar
from datetime import datetime

from domain.errors import InvalidTime


def add_months(moment: datetime, months: int) -> datetime:
    """The same day-of-month and time `months` later, clamped to the month's last day."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidTime(f"{name} must carry a UTC offset")
