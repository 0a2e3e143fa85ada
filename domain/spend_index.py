"""A member's purchases in time order with running totals of their amounts, so the spend of a
tier window is two look-ups and a subtraction instead of a pass over every purchase the
member ever made (a tier review follows every purchase). Derived from `Member.purchases`:
built when first needed, extended as purchases are recorded, never stored in a snapshot."""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from decimal import Decimal

ONE = Decimal(1)


class SpendIndex:
    __slots__ = ("times", "totals", "places")

    def __init__(self, purchases: list[tuple[datetime, Decimal]]) -> None:
        self.times: list[datetime] = []
        self.totals = [Decimal(0)]  # totals[i]: the amounts of the first i purchases in time order
        # For each number of decimal places in use, how many of the first i amounts have it: the
        # window's sum is given as many places as its own amounts have, as a plain sum gives it.
        self.places: dict[int, list[int]] = {}
        for at, amount in sorted(purchases, key=lambda purchase: purchase[0]):
            self.append(at, amount)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpendIndex) and (self.times, self.totals, self.places) == (
            other.times, other.totals, other.places)

    __hash__ = None  # type: ignore[assignment] - mutable

    def copy(self) -> SpendIndex:
        clone = object.__new__(SpendIndex)
        clone.times, clone.totals = list(self.times), list(self.totals)
        clone.places = {exponent: list(counts) for exponent, counts in self.places.items()}
        return clone

    def append(self, at: datetime, amount: Decimal) -> bool:
        """Adds a purchase made no earlier than every other; False (nothing added) otherwise,
        and the caller drops the index to build it again when next needed."""
        if self.times and at < self.times[-1]:
            return False
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and exponent < 0 and exponent not in self.places:
            self.places[exponent] = [0] * len(self.totals)
        for places, counts in self.places.items():
            counts.append(counts[-1] + (places == exponent))
        self.times.append(at)
        self.totals.append(self.totals[-1] + amount)
        return True

    def spent(self, after: datetime, until: datetime) -> Decimal:
        """The amounts of the purchases made after `after` and by `until`, before returns; with
        the decimal places of those amounts (0 for none), exactly as adding them up from 0 gives."""
        first, last = bisect_right(self.times, after), bisect_right(self.times, until)
        exponent = min((places for places, counts in self.places.items() if counts[last] > counts[first]), default=0)
        return (self.totals[last] - self.totals[first]).quantize(ONE.scaleb(exponent))
