"""A program's earning rules as a validated, immutable value; stored as plain data on events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from domain.calendar import add_months
from domain.errors import InvalidRules
from domain.money import earned_points

RULE_FIELDS = (
    "earn_rate",
    "point_value",
    "expected_redemption_rate",
    "expiry",
    "pending_days",
    "tiers",
    "tier_window_months",
    "adjustment_approval_threshold",
)


@dataclass(frozen=True)
class Tier:
    name: str
    qualifying_spend: Decimal
    multiplier: Decimal


@dataclass(frozen=True)
class Rules:
    earn_rate: Decimal
    point_value: Decimal
    expected_redemption_rate: Decimal
    expiry_months: int | None  # None: points never expire
    pending_days: int
    tiers: tuple[Tier, ...]
    tier_window_months: int
    adjustment_approval_threshold: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rules:
        errors: dict[str, list[str]] = {}

        def fail(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        missing = [f for f in RULE_FIELDS if f not in data]
        for field in missing:
            fail(field, "is required")
        unknown = set(data) - set(RULE_FIELDS)
        for field in sorted(unknown):
            fail(field, "is not a rule field")
        if errors:
            raise InvalidRules(errors)

        earn_rate = _decimal(data["earn_rate"], "earn_rate", fail, minimum=Decimal(0))
        point_value = _decimal(data["point_value"], "point_value", fail, minimum=Decimal(0), strict=True)
        err = _decimal(data["expected_redemption_rate"], "expected_redemption_rate", fail, minimum=Decimal(0))
        if err is not None and err > 1:
            fail("expected_redemption_rate", "must be between 0 and 1")
        expiry_months = _expiry(data["expiry"], fail)
        pending_days = _int(data["pending_days"], "pending_days", fail, minimum=0, maximum=3650)
        window = _int(data["tier_window_months"], "tier_window_months", fail, minimum=1, maximum=120)
        threshold = _int(data["adjustment_approval_threshold"], "adjustment_approval_threshold", fail, minimum=0)
        tiers = _tiers(data["tiers"], fail)
        if errors:
            raise InvalidRules(errors)
        return cls(
            earn_rate=earn_rate,  # type: ignore[arg-type]
            point_value=point_value,  # type: ignore[arg-type]
            expected_redemption_rate=err,  # type: ignore[arg-type]
            expiry_months=expiry_months,
            pending_days=pending_days,  # type: ignore[arg-type]
            tiers=tiers,
            tier_window_months=window,  # type: ignore[arg-type]
            adjustment_approval_threshold=threshold,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "earn_rate": self.earn_rate,
            "point_value": self.point_value,
            "expected_redemption_rate": self.expected_redemption_rate,
            "expiry": {"policy": "none"}
            if self.expiry_months is None
            else {"policy": "rolling", "months": self.expiry_months},
            "pending_days": self.pending_days,
            "tiers": [
                {"name": t.name, "qualifying_spend": t.qualifying_spend, "multiplier": t.multiplier}
                for t in self.tiers
            ],
            "tier_window_months": self.tier_window_months,
            "adjustment_approval_threshold": self.adjustment_approval_threshold,
        }

    # Rules applied to facts.
    def tier_named(self, name: str) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        return self.tiers[0]  # a tier dropped by a revision earns as the base tier

    def tier_rank(self, name: str) -> int:
        for rank, tier in enumerate(self.tiers):
            if tier.name == name:
                return rank
        return 0

    def tier_for_spend(self, spend: Decimal) -> Tier:
        qualified = self.tiers[0]
        for tier in self.tiers:
            if spend >= tier.qualifying_spend:
                qualified = tier
        return qualified

    def points_for(self, amount: Decimal, tier_name: str) -> int:
        return earned_points(amount, self.earn_rate, self.tier_named(tier_name).multiplier)

    def available_at(self, earned_at: datetime) -> datetime:
        return earned_at + timedelta(days=self.pending_days)

    def expires_at(self, earned_at: datetime) -> datetime | None:
        return None if self.expiry_months is None else add_months(earned_at, self.expiry_months)

    def window_start(self, as_of: datetime) -> datetime:
        return add_months(as_of, -self.tier_window_months)


def _decimal(value: Any, field: str, fail: Any, minimum: Decimal, strict: bool = False) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        fail(field, "must be a decimal string")
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        fail(field, "must be a decimal string")
        return None
    if not number.is_finite():
        fail(field, "must be finite")
        return None
    if number < minimum or (strict and number == minimum):
        fail(field, f"must be {'greater than' if strict else 'at least'} {minimum}")
        return None
    if number > Decimal("1000000"):
        fail(field, "is too large")
        return None
    return number


def _int(value: Any, field: str, fail: Any, minimum: int, maximum: int = 10**12) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, "must be an integer")
        return None
    if not minimum <= value <= maximum:
        fail(field, f"must be between {minimum} and {maximum}")
        return None
    return value


def _expiry(value: Any, fail: Any) -> int | None:
    if not isinstance(value, dict) or value.get("policy") not in ("none", "rolling"):
        fail("expiry", 'must be {"policy": "none"} or {"policy": "rolling", "months": N}')
        return None
    if value["policy"] == "none":
        if set(value) != {"policy"}:
            fail("expiry", "policy none takes no other fields")
        return None
    if set(value) != {"policy", "months"}:
        fail("expiry", "policy rolling takes exactly 'months'")
        return None
    return _int(value["months"], "expiry", fail, minimum=1, maximum=600)


def _tiers(value: Any, fail: Any) -> tuple[Tier, ...]:
    if not isinstance(value, list) or not value:
        fail("tiers", "must be a non-empty list, lowest first")
        return ()
    tiers: list[Tier] = []
    for index, raw in enumerate(value):
        if not isinstance(raw, dict) or set(raw) != {"name", "qualifying_spend", "multiplier"}:
            fail("tiers", f"tier {index} must have exactly name, qualifying_spend and multiplier")
            continue
        name = raw["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            fail("tiers", f"tier {index} needs a name of 1 to 64 characters")
            continue
        spend = _decimal(raw["qualifying_spend"], "tiers", fail, minimum=Decimal(0))
        multiplier = _decimal(raw["multiplier"], "tiers", fail, minimum=Decimal(0), strict=True)
        if spend is None or multiplier is None:
            continue
        tiers.append(Tier(name, spend, multiplier))
    if len(tiers) != len(value):
        return ()
    if tiers[0].qualifying_spend != 0:
        fail("tiers", "the first tier must have qualifying_spend 0")
    if any(b.qualifying_spend <= a.qualifying_spend for a, b in zip(tiers, tiers[1:])):
        fail("tiers", "qualifying_spend must increase strictly from tier to tier")
    if len({t.name for t in tiers}) != len(tiers):
        fail("tiers", "tier names must be unique")
    return tuple(tiers)
