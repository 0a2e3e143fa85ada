"""Shared builders for the unit stories: a standard program, a movable clock, and a ledger on the
in-memory store with program 'p1' (EUR), partner 'shop' (store 's1') and member 'm1'.

Stories use the `story` fixture to speak the business's words (purchase, return, redeem...);
it runs real commands through `Ledger.execute`, so every story exercises the handlers too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from application.commands import (
    Adjust,
    CancelRedemption,
    CreateProgram,
    EnrolMember,
    ExpirePoints,
    Outcome,
    RecordPurchase,
    Redeem,
    RegisterPartner,
    ReturnPurchase,
    ReviewTier,
    ReviseProgram,
)
from application.ledger import Ledger
from domain.identity import member_id_to_uuid
from domain.lots import Lot
from domain.member import Member
from domain.rules import Rules
from infrastructure.bootstrap import build_ledger
from infrastructure.config import Config

UTC = timezone.utc
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ADMIN = "admin@example.com"
POS = "pos:shop"


def standard_rules(**overrides: Any) -> dict[str, Any]:
    """One point per euro, 12-month rolling expiry, no pending period, three tiers on 12 months' spend."""
    rules: dict[str, Any] = {
        "earn_rate": "1",
        "point_value": "0.01",
        "expected_redemption_rate": "0.8",
        "expiry": {"policy": "rolling", "months": 12},
        "pending_days": 0,
        "tiers": [
            {"name": "base", "qualifying_spend": "0", "multiplier": "1"},
            {"name": "silver", "qualifying_spend": "500", "multiplier": "1.5"},
            {"name": "gold", "qualifying_spend": "1000", "multiplier": "2"},
        ],
        "tier_window_months": 12,
        "adjustment_approval_threshold": 1000,
    }
    rules.update(overrides)
    return rules


class Clock:
    """A clock the story moves by hand; the ledger reads it for `now`."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime) -> datetime:
        self.now = moment
        return self.now


class Story:
    """Business verbs over a ledger; each returns the command's Outcome (or raises its refusal)."""

    def __init__(self, ledger: Ledger, clock: Clock, program_id: str = "p1", currency: str = "EUR") -> None:
        self.ledger = ledger
        self.clock = clock
        self.program_id = program_id
        self.currency = currency

    # ---- commands -------------------------------------------------------------------------

    def enrol(self, member_id: str | None = None, **fields: Any) -> Outcome:
        return self.ledger.execute(EnrolMember(actor=ADMIN, program_id=self.program_id, member_id=member_id, **fields))

    def purchase(self, transaction_id: str, amount: str, *, member_id: str | None = "m1",
                 store_id: str = "s1", partner_id: str = "shop", currency: str | None = None,
                 occurred_at: datetime | None = None, **fields: Any) -> Outcome:
        return self.ledger.execute(RecordPurchase(
            actor=POS, partner_id=partner_id, transaction_id=transaction_id, store_id=store_id,
            amount=Decimal(amount), currency=currency or self.currency, member_id=member_id,
            occurred_at=occurred_at, **fields,
        ))

    def return_(self, transaction_id: str, original_transaction_id: str, amount: str, *,
                partner_id: str = "shop", occurred_at: datetime | None = None) -> Outcome:
        return self.ledger.execute(ReturnPurchase(
            actor=POS, partner_id=partner_id, transaction_id=transaction_id,
            original_transaction_id=original_transaction_id, amount=Decimal(amount), occurred_at=occurred_at,
        ))

    def redeem(self, redemption_id: str, points: int, *, member_id: str = "m1",
               occurred_at: datetime | None = None, **fields: Any) -> Outcome:
        return self.ledger.execute(Redeem(actor="support", member_id=member_id, redemption_id=redemption_id,
                                          points=points, occurred_at=occurred_at, **fields))

    def cancel(self, redemption_id: str, *, member_id: str = "m1", occurred_at: datetime | None = None) -> Outcome:
        return self.ledger.execute(CancelRedemption(actor="support", member_id=member_id,
                                                    redemption_id=redemption_id, occurred_at=occurred_at))

    def adjust(self, adjustment_id: str, points: int, reason: str = "goodwill", *, member_id: str = "m1",
               note: str = "", occurred_at: datetime | None = None) -> Outcome:
        return self.ledger.execute(Adjust(actor="support", member_id=member_id, adjustment_id=adjustment_id,
                                          points=points, reason=reason, note=note, occurred_at=occurred_at))

    def expire(self, as_of: datetime | None = None, *, member_id: str = "m1") -> Outcome:
        return self.ledger.execute(ExpirePoints(actor="job", member_id=member_id, as_of=as_of or self.clock()))

    def review_tier(self, as_of: datetime | None = None, *, member_id: str = "m1") -> Outcome:
        return self.ledger.execute(ReviewTier(actor="job", member_id=member_id, as_of=as_of or self.clock()))

    def revise(self, effective_at: datetime, **changes: Any) -> Outcome:
        return self.ledger.execute(ReviseProgram(actor=ADMIN, program_id=self.program_id, changes=changes,
                                                 effective_at=effective_at))

    # ---- looking ------------------------------------------------------------------------

    def member(self, member_id: str = "m1") -> Member:
        return self.ledger.get_member(member_id)

    def version(self, member_id: str = "m1") -> int:
        return self.member(member_id).version

    def balance(self, member_id: str = "m1", at: datetime | None = None) -> dict[str, int]:
        return self.member(member_id).balance_at(at or self.clock())

    def available(self, member_id: str = "m1") -> int:
        return self.balance(member_id)["available"]

    def lifetime(self, member_id: str = "m1") -> dict[str, int]:
        return dict(self.member(member_id).lifetime)

    def lots(self, member_id: str = "m1") -> dict[str, Lot]:
        return self.member(member_id).lots

    def events(self, member_id: str = "m1", of_type: type | None = None) -> list[Member.Event]:
        events = list(self.ledger.events.get(member_id_to_uuid(member_id)))
        return [e for e in events if of_type is None or isinstance(e, of_type)]


def setup_ledger(clock: Clock, *, rules: dict[str, Any] | None = None, currency: str = "EUR",
                 program_id: str = "p1", stores: tuple[str, ...] = ("s1",)) -> Ledger:
    ledger = build_ledger(Config(database_url="memory://"), clock=clock)
    ledger.execute(CreateProgram(actor=ADMIN, program_id=program_id, name="Program One", currency=currency,
                                 rules=rules or standard_rules()))
    ledger.execute(RegisterPartner(actor=ADMIN, partner_id="shop", name="The Shop", program_id=program_id,
                                   stores=list(stores)))
    ledger.execute(EnrolMember(actor=ADMIN, program_id=program_id, member_id="m1", name="Ada"))
    return ledger


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def rules() -> dict[str, Any]:
    return standard_rules()


@pytest.fixture
def ledger(clock: Clock, rules: dict[str, Any]) -> Ledger:
    """Program 'p1' in EUR (the `rules` fixture), partner 'shop' with store 's1', member 'm1'."""
    return setup_ledger(clock, rules=rules)


@pytest.fixture
def story(ledger: Ledger, clock: Clock) -> Story:
    return Story(ledger, clock)


@pytest.fixture
def make_story(clock: Clock) -> Callable[..., Story]:
    """A story on its own ledger with other rules or another currency: make_story(currency="JPY", pending_days=14)."""

    def make(*, currency: str = "EUR", **rule_overrides: Any) -> Story:
        ledger = setup_ledger(clock, rules=standard_rules(**rule_overrides), currency=currency)
        return Story(ledger, clock, currency=currency)

    return make


def enrolled_member(*, at: datetime = START, member_id: str = "m1") -> Member:
    """A member made directly in the domain, for stories that need no application."""
    return Member.enrol(member_id=member_id, program_id="p1", card_number=None, name=None, email=None,
                        birthday=None, base_tier="base", occurred_at=at, actor=ADMIN, request_hash="h")


@pytest.fixture
def domain_rules() -> Callable[..., Rules]:
    def make(**overrides: Any) -> Rules:
        return Rules.from_dict(standard_rules(**overrides))

    return make


@pytest.fixture
def new_member() -> Callable[..., Member]:
    return enrolled_member


@pytest.fixture
def start() -> datetime:
    """When every story begins: the clock's first reading and the program's first revision."""
    return START
