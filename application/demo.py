"""A year of loyalty activity, simulated through the real write path, day by day.

Each simulated day's commands are committed as one batch (group commit), with the ledger's
clock set to that day's end, so the demo exercises the same code the API uses.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

from application.commands import (
    Adjust,
    CancelRedemption,
    Command,
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

ACTOR = "demo"
PROGRAM_ID = "demo"
YEAR_START = datetime(2025, 1, 1, tzinfo=timezone.utc)
DAYS = 365
PARTNERS = {"grocer": ["g-001", "g-002", "g-003", "g-004"], "fuel": ["f-001", "f-002"]}
DEMO_RULES: dict[str, Any] = {
    "earn_rate": "1",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 6},
    "pending_days": 14,
    "tiers": [
        {"name": "member", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "silver", "qualifying_spend": "1500", "multiplier": "1.25"},
        {"name": "gold", "qualifying_spend": "4000", "multiplier": "1.5"},
    ],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 1000,
}
# Double points for the summer, then back: postings are valued with the rules in force.
REVISIONS = [
    (datetime(2025, 7, 1, tzinfo=timezone.utc), {"earn_rate": "2"}),
    (datetime(2025, 9, 1, tzinfo=timezone.utc), {"earn_rate": "1"}),
]
REVIEW_DAYS = {datetime(2025, m, 1, tzinfo=timezone.utc).date() - timedelta(days=1) for m in (4, 7, 10)} | {
    datetime(2025, 12, 31, tzinfo=timezone.utc).date()
}


@dataclass
class Shopper:
    member_id: str
    enrol_day: int
    visits_per_day: float
    basket: float
    partner: str
    available: int = 0
    tier: str = "member"


@dataclass
class DemoReport:
    members: int = 0
    events: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    tier_changes: int = 0
    points_expired: int = 0
    points_by_tier: dict[str, int] = field(default_factory=dict)
    members_by_tier: dict[str, int] = field(default_factory=dict)
    spend_total: Decimal = Decimal(0)
    top_fifth_share: Decimal = Decimal(0)


class DemoAlreadyLoaded(Exception):
    pass


def run_demo(ledger: Ledger, clock: list[datetime], members: int, seed: int,
             on_day: Callable[[int], None] = lambda day: None) -> DemoReport:
    """Simulates a year for `members` members. `clock` is the ledger's clock holder."""
    rng = random.Random(seed)
    report = DemoReport(members=members)
    clock[0] = YEAR_START
    setup = _setup_commands()
    results = ledger.execute_batch(setup)
    if isinstance(results[0], Outcome) and results[0].replayed:
        raise DemoAlreadyLoaded(f"the demo program {PROGRAM_ID!r} is already in this database")
    for result in results:
        if not isinstance(result, Outcome):
            raise result
    for when, changes in REVISIONS:
        ledger.execute(ReviseProgram(actor=ACTOR, program_id=PROGRAM_ID, changes=changes, effective_at=when))

    shoppers = [_shopper(rng, index) for index in range(members)]
    scheduled: dict[int, list[Command]] = defaultdict(list)
    redemptions: list[tuple[str, str]] = []
    for day in range(DAYS):
        date_start = YEAR_START + timedelta(days=day)
        clock[0] = date_start + timedelta(hours=23, minutes=59, seconds=59)
        commands = scheduled.pop(day, [])
        for shopper in shoppers:
            if shopper.enrol_day == day:
                commands.append(EnrolMember(actor=ACTOR, program_id=PROGRAM_ID, member_id=shopper.member_id,
                                            card_number=f"CARD-{shopper.member_id}", name=f"Member {shopper.member_id}",
                                            occurred_at=date_start + timedelta(hours=9)))
            elif shopper.enrol_day < day and rng.random() < shopper.visits_per_day:
                commands.append(_purchase(rng, shopper, day, date_start, scheduled))
            if shopper.available >= 500 and shopper.enrol_day < day and rng.random() < 0.08:
                points = 500 * rng.randint(1, min(4, shopper.available // 500))
                redemption_id = f"R-{day}-{shopper.member_id}"
                commands.append(Redeem(actor=ACTOR, member_id=shopper.member_id, redemption_id=redemption_id,
                                       points=points, reward="voucher", partner_id=shopper.partner,
                                       occurred_at=date_start + timedelta(hours=20)))
                redemptions.append((shopper.member_id, redemption_id))
                if rng.random() < 0.03:
                    scheduled[day + 1].append(CancelRedemption(
                        actor=ACTOR, member_id=shopper.member_id, redemption_id=redemption_id,
                        occurred_at=date_start + timedelta(days=1, hours=10)))
            if shopper.enrol_day < day and rng.random() < 0.0005:
                commands.append(Adjust(actor=ACTOR, member_id=shopper.member_id, adjustment_id=f"A-{day}",
                                       points=rng.choice([100, 250, -50]), reason="goodwill",
                                       note="service recovery", occurred_at=date_start + timedelta(hours=12)))
        next_day = (date_start + timedelta(days=1)).date()
        enrolled = [s for s in shoppers if s.enrol_day <= day]
        if next_day.day == 1:
            as_of = datetime.combine(next_day, time(0), tzinfo=timezone.utc) - timedelta(seconds=1)
            commands += [ExpirePoints(actor=ACTOR, member_id=s.member_id, as_of=as_of) for s in enrolled]
        if date_start.date() in REVIEW_DAYS:
            as_of = date_start + timedelta(hours=23)
            commands += [ReviewTier(actor=ACTOR, member_id=s.member_id, as_of=as_of) for s in enrolled]
        _apply(ledger, commands, shoppers, report)
        on_day(day)

    _summarise(ledger, shoppers, clock[0], report)
    return report


def _setup_commands() -> list[Command]:
    commands: list[Command] = [CreateProgram(actor=ACTOR, program_id=PROGRAM_ID, name="Demo Rewards",
                                             currency="EUR", rules=DEMO_RULES, effective_at=YEAR_START)]
    for partner_id, stores in PARTNERS.items():
        commands.append(RegisterPartner(actor=ACTOR, partner_id=partner_id, name=partner_id.title(),
                                        program_id=PROGRAM_ID, stores=stores))
    return commands


def _shopper(rng: random.Random, index: int) -> Shopper:
    # Heavy-tailed frequency and basket size, as real customer bases are.
    return Shopper(
        member_id=f"M{index:06d}",
        enrol_day=rng.randrange(60),
        visits_per_day=min(0.5, rng.lognormvariate(-3.2, 0.8)),
        basket=min(400.0, rng.lognormvariate(3.5, 0.6)),
        partner=rng.choice(list(PARTNERS)),
    )


def _purchase(rng: random.Random, shopper: Shopper, day: int, date_start: datetime,
              scheduled: dict[int, list[Command]]) -> RecordPurchase:
    partner = shopper.partner if rng.random() < 0.8 else rng.choice(list(PARTNERS))
    amount = Decimal(str(round(max(1.0, rng.gauss(shopper.basket, shopper.basket / 3)), 2)))
    transaction_id = f"T-{day}-{shopper.member_id}-{rng.randrange(10**6)}"
    occurred_at = date_start + timedelta(seconds=rng.randrange(8 * 3600, 21 * 3600))
    if rng.random() < 0.04:
        portion = amount if rng.random() < 0.5 else (amount / 2).quantize(Decimal("0.01"))
        later = day + rng.randint(1, 20)
        if later < DAYS:
            scheduled[later].append(ReturnPurchase(
                actor=ACTOR, partner_id=partner, transaction_id=f"{transaction_id}-R",
                original_transaction_id=transaction_id, amount=portion,
                occurred_at=YEAR_START + timedelta(days=later, hours=11)))
    return RecordPurchase(
        actor=ACTOR, partner_id=partner, transaction_id=transaction_id, store_id=rng.choice(PARTNERS[partner]),
        amount=amount, currency="EUR", member_id=shopper.member_id, occurred_at=occurred_at,
        items=[{"sku": f"SKU-{rng.randrange(500)}", "category": rng.choice(["food", "fuel", "home"]),
                "quantity": 1, "amount": str(amount)}],
    )


def _apply(ledger: Ledger, commands: list[Command], shoppers: list[Shopper], report: DemoReport) -> None:
    by_id = {s.member_id: s for s in shoppers}
    for command, result in zip(commands, ledger.execute_batch(commands)):
        kind = type(command).__name__
        if not isinstance(result, Outcome):
            report.refused[f"{kind}: {getattr(result, 'slug', type(result).__name__)}"] += 1
            continue
        report.commands[kind] += 1
        body = result.body
        if "balance" in body and body.get("member_id") in by_id:
            by_id[body["member_id"]].available = body["balance"]["available"]
        report.points_expired += body.get("points_expired", 0) if kind == "ExpirePoints" else 0
        shopper = by_id.get(body.get("member_id", ""))
        if shopper is not None and body.get("tier") not in (None, shopper.tier):
            shopper.tier = body["tier"]
            report.tier_changes += 1


def _summarise(ledger: Ledger, shoppers: list[Shopper], now: datetime, report: DemoReport) -> None:
    """Cross-member figures by loading each member: fine for a demo of a few thousand;
    the projections answer these questions in production."""
    spend: list[Decimal] = []
    points_by_tier: Counter[str] = Counter()
    members_by_tier: Counter[str] = Counter()
    for shopper in shoppers:
        member = ledger.get_member(shopper.member_id)
        balance = member.balance_at(now)
        points_by_tier[member.tier] += balance["available"] + balance["pending"] + balance["due"]
        members_by_tier[member.tier] += 1
        spend.append(sum((p["amount"] - p["returned"] for p in member.purchases.values()), Decimal(0)))
    spend.sort(reverse=True)
    total = sum(spend, Decimal(0))
    top = sum(spend[: max(1, len(spend) // 5)], Decimal(0))
    report.spend_total = total
    report.top_fifth_share = (top / total) if total else Decimal(0)
    report.points_by_tier = dict(points_by_tier)
    report.members_by_tier = dict(members_by_tier)
    report.events = ledger.recorder.max_notification_id() or 0
