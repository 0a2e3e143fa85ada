"""Money and points arithmetic: one named function per rounding rule."""

from __future__ import annotations

import re
from decimal import ROUND_FLOOR, Decimal, localcontext

from domain.errors import InvalidAmount

# ISO 4217 minor units where they differ from 2.
_MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}
# Money as text from outside: a decimal string such as "25.00" or "-4.50", never an exponent.
DECIMAL_TEXT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,10})?")
MAX_AMOUNT = Decimal("1000000000")  # a single posting above this is a data-entry error
# Digits for arithmetic that is floored: products of amounts and rates (each at most 25 digits)
# are exact, and a quotient is never rounded across a whole number.
_EXACT_DIGITS = 100


def minor_units(currency: str) -> int:
    return _MINOR_UNITS.get(currency, 2)


def is_currency_code(code: str) -> bool:
    return isinstance(code, str) and len(code) == 3 and code.isascii() and code.isupper() and code.isalpha()


def check_amount(amount: Decimal, currency: str) -> None:
    """A posting amount: finite, positive, at most the currency's minor units, not absurd."""
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidAmount("amount must be a finite decimal", field="amount")
    if amount <= 0:
        raise InvalidAmount("amount must be greater than zero", field="amount")
    if amount > MAX_AMOUNT:
        raise InvalidAmount(f"amount must not exceed {MAX_AMOUNT}", field="amount")
    # Compared exactly: normalize() would first round to the context's 28 digits, and so pass
    # 0.999999999999999999999999999999 as 1 (no decimal places).
    places = minor_units(currency)
    with localcontext() as exact:
        exact.prec = _EXACT_DIGITS
        if amount != amount.quantize(Decimal(1).scaleb(-places)):
            raise InvalidAmount(f"amount has more decimal places than {currency} allows ({places})",
                                field="amount")


def earned_points(amount: Decimal, earn_rate: Decimal, multiplier: Decimal) -> int:
    """Earning floors: floor(amount x earn_rate x tier multiplier)."""
    with localcontext() as exact:  # floored exactly, never after a rounding at 28 digits
        exact.prec = _EXACT_DIGITS
        return int((amount * earn_rate * multiplier).to_integral_value(rounding=ROUND_FLOOR))


def points_to_reverse(points_earned: int, amount: Decimal, returned_before: Decimal, returning: Decimal) -> int:
    """Proportional reversal on the cumulative returned amount, so the return that completes
    the original amount takes the exact remainder and the sum of reversals equals what was earned."""
    returned_after = returned_before + returning

    def reversed_at(returned: Decimal) -> int:
        if returned >= amount:
            return points_earned
        with localcontext() as exact:
            exact.prec = _EXACT_DIGITS
            return int((points_earned * returned / amount).to_integral_value(rounding=ROUND_FLOOR))

    return reversed_at(returned_after) - reversed_at(returned_before)


def allocate_to_points(amount: Decimal, points: int, point_value: Decimal, expected_redemption_rate: Decimal) -> Decimal:
    """IFRS 15 / ASC 606: the price is split between the goods and the points by relative
    stand-alone selling price. Points' SSP = points x point_value x expected redemption rate;
    allocated = amount x SSP / (amount + SSP). Full precision: rounded only in reports."""
    ssp = points * point_value * expected_redemption_rate
    if ssp == 0:
        return Decimal(0)
    return amount * ssp / (amount + ssp)
