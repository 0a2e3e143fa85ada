"""Invariants under random activity, on SQLite and PostgreSQL.

A seeded generator (a plain `random.Random(seed)`) drives long random sequences of commands
through the real write path (`Ledger.execute`, the projection runner, the finance reports) for
four members of one program with two partners, while an injected clock moves forward (minutes,
days, months, or exactly to the moment some lot becomes available or expires). The commands:
purchases (by member id or card, sometimes backdated, the same transaction id at the other
partner), returns (partial, completing, beyond what is left, dated before the purchase, from the
wrong partner), redemptions (some asking for more than is available), cancellations (some of
redemptions already cancelled, by a cancellation or by a reversal), support adjustments in both
directions (above the approval threshold they wait for a supervisor: approvals, rejections,
self-approvals, second decisions), support reversals of one event by version (some twice, some of
events that cannot be reversed), repeats of earlier writes with the same id (the same body: a
replay; another body: an idempotency conflict), the expiry job (sometimes twice at one as_of) and
the tier review over every member.

The generator keeps its own small model of what it asked for (purchases with what is left to
return, redemptions and whether and how they were cancelled, adjustments awaiting approval,
events reversed) and predicts, before each command, whether the ledger must accept or refuse it.

After EVERY step, for every member (from the aggregate):
1. available + pending + due_for_expiry = the sum of the lots' remainders = the lifetime
   roll-forward (earned - redeemed - expired - reversed + adjusted), with each balance classified
   by the README's rules, computed here;
2. a redemption never takes available below zero (checked at the redemption's own moment and
   per lot), and a refused command (too many points, a return beyond the purchase, a second
   reversal...) changes nothing at all: not even one stored event;
3. available is negative only because of a clawback (a return against spent points) or a debt
   lot (a debit beyond the balance): every negative lot is one of those two;
4. an event is reversed at most once: the aggregate's reversals equal the model's, a second
   reversal of the same version is refused (`AlreadyReversed`), and so is cancelling a
   redemption already cancelled; returns never exceed the purchase;
5. the model's earned and adjusted totals, returned amounts, cancellations and the tier after
   each review equal the aggregate's.

After every step by default (LOYALTY_PROJECTION_EVERY=N checks every N steps instead, for long
runs: about four times faster at N=10) and at the end, after the runner catches up:
6. each member's projected summary (GET /v1/members/{id}'s source) equals both the live
   aggregate's and a fresh replay of the member's stored events (`replay_member`), and the
   stored events hold at most one `EventReversed` per version;
7. reconciliation is ok, with no differences;
8. the liability roll-forward closes for the whole history, for a period starting part way
   (non-zero opening), per issuing partner, and month by month (each month opens with the last
   one's closing): opening + earned - redeemed - expired - reversed + adjusted = closing, and
   closing = the sum of member balances = the sum of the replayed members' points.

A failing run prints its seed: `LOYALTY_SEED=<seed> pytest tests/integration/test_random_activity.py`
replays it exactly (LOYALTY_SEED takes a comma-separated list; LOYALTY_STEPS lengthens the runs:
300 steps per seed by default, checked after every step; a long run is, for example,
`LOYALTY_STEPS=1200 LOYALTY_PROJECTION_EVERY=10`).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from math import floor
from typing import Any

import pytest

from application.commands import (
    Adjust,
    CancelRedemption,
    Command,
    CreateProgram,
    DecideAdjustment,
    EnrolMember,
    ExpirePoints,
    Outcome,
    RecordPurchase,
    Redeem,
    RegisterPartner,
    ReturnPurchase,
    ReverseEvent,
    ReviewTier,
)
from application.errors import ApplicationError, IdempotencyConflict, NotFound
from application.ledger import Ledger
from application.views import member_view
from domain.calendar import add_months
from domain.errors import (
    AlreadyDecided,
    AlreadyReversed,
    DomainError,
    InsufficientPoints,
    InvalidAmount,
    ReturnExceedsPurchase,
    SelfApproval,
    UnknownEvent,
    UnknownPurchase,
    UnknownRedemption,
)
from domain.identity import member_id_to_uuid
from domain.member import Member, replay_member
from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config
from projections.read_model import ReadModel
from projections.reports import FinanceReports, Period

UTC = timezone.utc
DEFAULT_SEEDS = (20251106, 7, 4242)
SEEDS = tuple(int(s) for s in os.environ["LOYALTY_SEED"].split(",")) if os.environ.get("LOYALTY_SEED") else DEFAULT_SEEDS
STEPS = int(os.environ.get("LOYALTY_STEPS", "300"))
PROJECTION_EVERY = max(1, int(os.environ.get("LOYALTY_PROJECTION_EVERY", "1")))

START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
PROGRAM = "club"
THRESHOLD = 500
TIERS = {"blue": (Decimal(0), Fraction(1)), "silver": (Decimal(400), Fraction(3, 2)), "gold": (Decimal(1500), Fraction(2))}
EARN_RATE = Fraction(2)
WINDOW_MONTHS = 6
RULES = {
    "earn_rate": "2",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 3},
    "pending_days": 3,
    "tiers": [{"name": name, "qualifying_spend": str(spend), "multiplier": str(Decimal(mult.numerator) / mult.denominator)}
              for name, (spend, mult) in TIERS.items()],
    "tier_window_months": WINDOW_MONTHS,
    "adjustment_approval_threshold": THRESHOLD,
}
PARTNERS = {"grocer": ("g-1", "g-2"), "fuel": ("f-1",)}
MEMBERS = ("ann", "bob", "cat", "dan")
REQUESTERS = ("staff:sam", "staff:sue")
DECIDERS = ("staff:sue", "staff:max")  # sue deciding her own request is the four-eyes refusal
REASONS = ("goodwill", "missing_purchase", "duplicate_posting", "fraud", "correction")
Refusal = (DomainError, ApplicationError)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def cents(amount: int) -> Decimal:
    return Decimal(amount) / 100


def earned_points(amount_cents: int, tier: str) -> int:
    """floor(amount x earn_rate x tier multiplier), computed here with exact fractions."""
    return floor(Fraction(amount_cents, 100) * EARN_RATE * TIERS[tier][1])


def reversed_by(points: int, amount_cents: int, returned_cents: int) -> int:
    """Points reversed once `returned_cents` of the purchase came back: proportional on the
    cumulative amount, floored, and everything once the whole amount is back."""
    return points if returned_cents >= amount_cents else points * returned_cents // amount_cents


def tier_for(spend: Decimal) -> str:
    return max((name for name, (threshold, _) in TIERS.items() if spend >= threshold), key=lambda n: TIERS[n][0])


def classify(member: Member, moment: datetime) -> dict[str, int]:
    """The balance by the README's rules: a debt counts against available; positive points are
    due from their expiry on, pending until they become available, available in between."""
    totals = {"available": 0, "pending": 0, "due": 0}
    for lot in member.lots.values():
        if lot.remaining < 0:
            totals["available"] += lot.remaining
        elif lot.expires_at is not None and lot.expires_at <= moment:
            totals["due"] += lot.remaining
        elif lot.available_at > moment:
            totals["pending"] += lot.remaining
        else:
            totals["available"] += lot.remaining
    return totals


class Mismatch(AssertionError):
    pass


class RandomActivity:
    """The generator, its model of what it asked for, and the checks."""

    def __init__(self, seed: int, ledger: Ledger, read_model: ReadModel, clock: Clock) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ledger = ledger
        self.read_model = read_model
        self.clock = clock
        self.counter = 0
        self.step = 0
        self.log: list[str] = []
        self.counts: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()  # member-steps in which a state worth reaching was seen
        # The model.
        self.purchases: dict[tuple[str, str], dict[str, Any]] = {}  # (partner, txn) -> member, cents, returned...
        self.redemptions: dict[tuple[str, str], dict[str, Any]] = {}  # (member, rid) -> points, cancelled_by
        self.requests: dict[str, dict[str, Any]] = {}  # adjustment id awaiting (or past) approval
        self.reversed: dict[tuple[str, int], str] = {}  # (member, version) -> reversal id
        self.earned = dict.fromkeys(MEMBERS, 0)
        self.adjusted = dict.fromkeys(MEMBERS, 0)
        self.writes: list[tuple[Command, Outcome]] = []  # accepted writes with a client id
        self.final_versions: dict[str, int] = {}

    # ---- set-up ---------------------------------------------------------------------------

    def set_up(self) -> None:
        self.ledger.execute(CreateProgram(actor="admin", program_id=PROGRAM, name="Club", currency="EUR",
                                          rules=RULES, effective_at=START - timedelta(days=30)))
        for partner, stores in PARTNERS.items():
            self.ledger.execute(RegisterPartner(actor="admin", partner_id=partner, name=partner.title(),
                                                program_id=PROGRAM, stores=list(stores)))
        for member_id in MEMBERS:
            self.ledger.execute(EnrolMember(actor="admin", program_id=PROGRAM, member_id=member_id,
                                            card_number=f"card-{member_id}", occurred_at=START))

    # ---- helpers --------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.clock.now

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def note(self, text: str) -> None:
        self.log.append(f"step {self.step} @ {self.now.isoformat()}: {text}")

    def member(self, member_id: str) -> Member:
        return self.ledger.get_member(member_id)

    def footprint(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0

    def expect_accepted(self, command: Command, what: str) -> Outcome:
        before = self.footprint()
        try:
            outcome = self.ledger.execute(command)
        except Refusal as error:
            raise Mismatch(f"{what}: expected to be accepted, refused with {type(error).__name__}: {error}") from error
        if outcome.replayed:
            raise Mismatch(f"{what}: expected a new write, got a replay: {outcome.body}")
        if self.footprint() <= before:
            raise Mismatch(f"{what}: accepted but nothing was stored")
        self.counts[f"{type(command).__name__} accepted"] += 1
        return outcome

    def expect_refused(self, command: Command, refusal: type[Exception] | tuple[type[Exception], ...],
                       what: str) -> Exception:
        """The command must be refused with `refusal` and leave the store exactly as it was."""
        before = self.footprint()
        try:
            outcome = self.ledger.execute(command)
        except Refusal as error:
            if not isinstance(error, refusal):
                raise Mismatch(f"{what}: expected {refusal}, refused with {type(error).__name__}: {error}") from error
            if self.footprint() != before:
                raise Mismatch(f"{what}: refused ({type(error).__name__}) but the store moved "
                               f"from {before} to {self.footprint()}") from error
            self.counts[f"{type(command).__name__} refused ({type(error).__name__})"] += 1
            return error
        raise Mismatch(f"{what}: expected a refusal ({refusal}), accepted: {outcome.body}")

    def expect_replayed(self, command: Command, first: Outcome, what: str) -> Outcome:
        before = self.footprint()
        try:
            outcome = self.ledger.execute(command)
        except Refusal as error:
            raise Mismatch(f"{what}: expected a replay, refused with {type(error).__name__}: {error}") from error
        if not outcome.replayed or outcome.body != first.body or outcome.status != first.status:
            raise Mismatch(f"{what}: expected a replay of {first.status} {first.body}, "
                           f"got {outcome.status} replayed={outcome.replayed} {outcome.body}")
        if self.footprint() != before:
            raise Mismatch(f"{what}: a replay stored events ({before} -> {self.footprint()})")
        self.counts[f"{type(command).__name__} replayed"] += 1
        return outcome

    def pick_member(self) -> str:
        # Mostly ann, so one account grows a long history (and snapshots); the others check isolation.
        return self.rng.choice(("ann", "ann", "ann") + MEMBERS)

    def purchase_spend(self, member_id: str, as_of: datetime) -> Decimal:
        """Qualifying spend in the tier window ending `as_of`, net of returns by then (model)."""
        start = add_months(as_of, -WINDOW_MONTHS)
        spend = Decimal(0)
        for bought in self.purchases.values():
            if bought["member"] == member_id and start < bought["occurred_at"] <= as_of:
                spend += cents(bought["cents"] - sum(c for when, c in bought["returns"] if when <= as_of))
        return spend

    # ---- the commands ---------------------------------------------------------------------

    def do_purchase(self) -> None:
        member_id = self.pick_member()
        partner = self.rng.choice(list(PARTNERS))
        amount = self.rng.choice([self.rng.randint(1, 300), self.rng.randint(300, 15_000), self.rng.randint(300, 15_000),
                                  self.rng.randint(15_000, 60_000)])
        backdate = self.rng.choice([None, None, None, timedelta(0), timedelta(hours=5), timedelta(days=2)])
        occurred_at = None if backdate is None else max(START, self.now - backdate)
        same_txn = [txn for (p, txn) in self.purchases if p != partner and (partner, txn) not in self.purchases]
        if same_txn and self.rng.random() < 0.1:
            txn = self.rng.choice(same_txn)  # the same transaction id at the other partner: another posting
        else:
            txn = self.next_id("t")
        by_card = self.rng.random() < 0.2
        command = RecordPurchase(actor=f"key:{partner}", partner_id=partner, transaction_id=txn,
                                 store_id=self.rng.choice(PARTNERS[partner]), amount=cents(amount), currency="EUR",
                                 member_id=None if by_card else member_id,
                                 card_number=f"card-{member_id}" if by_card else None, occurred_at=occurred_at)
        tier_before = self.member(member_id).tier_at(occurred_at or self.now)  # the tier held when bought
        self.note(f"purchase {partner}/{txn} {cents(amount)} for {member_id} at {occurred_at} (tier {tier_before})")
        outcome = self.expect_accepted(command, f"purchase {txn}")
        points = earned_points(amount, tier_before)
        if outcome.body["points_earned"] != points:
            raise Mismatch(f"purchase {txn}: earned {outcome.body['points_earned']}, expected {points} "
                           f"= floor({cents(amount)} x 2 x {TIERS[tier_before][1]})")
        when = occurred_at or self.now
        self.purchases[(partner, txn)] = {"member": member_id, "cents": amount, "returned": 0, "returns": [],
                                          "occurred_at": when, "points": points}
        self.earned[member_id] += points
        self.writes.append((command, outcome))
        qualified = tier_for(self.purchase_spend(member_id, when))
        tier = self.member(member_id).tier_at(when)
        if TIERS[tier][0] < TIERS[qualified][0]:
            raise Mismatch(f"purchase {txn}: spend qualifies {member_id} for {qualified}, still {tier}")

    def do_return(self) -> None:
        if not self.purchases:
            return self.do_purchase()
        partner, txn = self.rng.choice(list(self.purchases))
        bought = self.purchases[(partner, txn)]
        left = bought["cents"] - bought["returned"]
        kind = self.rng.choice(["part", "part", "rest", "rest", "over", "before purchase", "wrong partner"])
        if kind == "part" and left > 1:
            amount = self.rng.randint(1, left - 1)
        elif kind == "over":
            amount = left + self.rng.randint(1, 500)
        else:
            amount = max(left, 1)
        occurred_at = bought["occurred_at"] - timedelta(minutes=1) if kind == "before purchase" else None
        as_partner = partner
        if kind == "wrong partner":
            as_partner = next(p for p in PARTNERS if p != partner)
        return_id = self.next_id("r")
        command = ReturnPurchase(actor=f"key:{as_partner}", partner_id=as_partner, transaction_id=return_id,
                                 original_transaction_id=txn, amount=cents(amount), occurred_at=occurred_at)
        self.note(f"return {kind} {as_partner}/{return_id} of {partner}/{txn}: {cents(amount)} of {cents(left)} left")
        if kind == "wrong partner":
            if (as_partner, txn) not in self.purchases:
                self.expect_refused(command, UnknownPurchase, f"return {return_id} from the wrong partner")
                return None
            # The other partner posted the same transaction id: the return is of its purchase.
            bought = self.purchases[(as_partner, txn)]
            left = bought["cents"] - bought["returned"]
        if amount > left:
            self.expect_refused(command, ReturnExceedsPurchase, f"return {return_id} beyond what is left")
            return None
        if occurred_at is not None and occurred_at < bought["occurred_at"]:
            self.expect_refused(command, InvalidAmount, f"return {return_id} dated before its purchase")
            return None
        member_before = self.member(bought["member"])
        outcome = self.expect_accepted(command, f"return {return_id}")
        expected = (reversed_by(bought["points"], bought["cents"], bought["returned"] + amount)
                    - reversed_by(bought["points"], bought["cents"], bought["returned"]))
        if outcome.body["points_reversed"] != expected:
            raise Mismatch(f"return {return_id}: reversed {outcome.body['points_reversed']}, expected {expected}")
        bought["returned"] += amount
        bought["returns"].append((self.now, amount))
        self.writes.append((command, outcome))
        after = self.member(bought["member"])
        if after.total_points > member_before.total_points:
            raise Mismatch(f"return {return_id} added points")
        return None

    def do_redeem(self) -> None:
        member_id = self.pick_member()
        before = self.member(member_id)
        available = classify(before, self.now)["available"]
        kind = self.rng.choice(["part", "part", "all", "over", "random"])
        if kind == "part" and available > 1:
            points = self.rng.randint(1, available - 1)
        elif kind == "all" and available > 0:
            points = available
        elif kind == "over":
            points = max(available, 0) + self.rng.randint(1, 200)
        else:
            points = self.rng.randint(1, 800)
        redemption_id = self.next_id("rd")
        partner = self.rng.choice([None, *PARTNERS])
        command = Redeem(actor="key:pos", member_id=member_id, redemption_id=redemption_id, points=points,
                         reward="reward", partner_id=partner)
        self.note(f"redeem {member_id}/{redemption_id} {points} of {available} available")
        if points > available:
            error = self.expect_refused(command, InsufficientPoints, f"redemption {redemption_id} of {points} > {available}")
            assert error.facts.get("available") == available, error.facts
            return
        outcome = self.expect_accepted(command, f"redemption {redemption_id}")
        after = self.member(member_id)
        left = classify(after, self.now)["available"]
        if left != available - points or left < 0:
            raise Mismatch(f"redemption {redemption_id}: available {available} - {points} left {left}")
        consumed = after.redemptions[redemption_id]["consumed"]
        if sum(p for _, p in consumed) != points:
            raise Mismatch(f"redemption {redemption_id} consumed {consumed}, not {points}")
        for lot_id, taken in consumed:
            lot_before, lot_after = before.lots[lot_id], after.lots[lot_id]
            if not (0 < taken <= lot_before.remaining and lot_after.remaining == lot_before.remaining - taken):
                raise Mismatch(f"redemption {redemption_id} overdrew lot {lot_id}: {lot_before} -> {lot_after}")
        self.redemptions[(member_id, redemption_id)] = {"points": points, "cancelled_by": None}
        self.writes.append((command, outcome))

    def do_cancel(self) -> None:
        if not self.redemptions or self.rng.random() < 0.08:
            member_id, redemption_id = self.pick_member(), "rd-unknown"
            command = CancelRedemption(actor="support", member_id=member_id, redemption_id=redemption_id)
            self.note(f"cancel unknown redemption of {member_id}")
            self.expect_refused(command, UnknownRedemption, "cancelling an unknown redemption")
            return
        member_id, redemption_id = self.rng.choice(list(self.redemptions))
        redemption = self.redemptions[(member_id, redemption_id)]
        command = CancelRedemption(actor="support", member_id=member_id, redemption_id=redemption_id)
        self.note(f"cancel {member_id}/{redemption_id} (cancelled by {redemption['cancelled_by']})")
        if redemption["cancelled_by"] == "reversal":
            self.expect_refused(command, AlreadyReversed, f"cancelling {redemption_id} after its reversal")
            return
        if redemption["cancelled_by"] == "cancellation":
            first = redemption["cancellation"]
            self.expect_replayed(command, first, f"cancelling {redemption_id} again (same request)")
            self.expect_refused(replace(command, occurred_at=self.now), IdempotencyConflict,
                                f"cancelling {redemption_id} again with another body")
            return
        before = self.member(member_id)
        outcome = self.expect_accepted(command, f"cancelling {redemption_id}")
        if outcome.body["points_restored"] + outcome.body["points_expired"] != redemption["points"]:
            raise Mismatch(f"cancelling {redemption_id} gave back {outcome.body}, not {redemption['points']}")
        after = self.member(member_id)
        if after.lifetime["redeemed"] != before.lifetime["redeemed"] - redemption["points"]:
            raise Mismatch(f"cancelling {redemption_id}: redeemed {before.lifetime} -> {after.lifetime}")
        redemption.update(cancelled_by="cancellation", cancellation=outcome)
        self.writes.append((command, outcome))

    def do_adjust(self) -> None:
        member_id = self.pick_member()
        big = self.rng.random() < 0.3
        points = self.rng.randint(THRESHOLD + 1, 3 * THRESHOLD) if big else self.rng.randint(1, 300)
        points *= self.rng.choice([1, -1])
        reason = self.rng.choice(REASONS + ("because",) if self.rng.random() < 0.1 else REASONS)
        adjustment_id = self.next_id("adj")
        requester = self.rng.choice(REQUESTERS)
        command = Adjust(actor=requester, member_id=member_id, adjustment_id=adjustment_id, points=points,
                         reason=reason, note="random correction")
        self.note(f"adjust {member_id}/{adjustment_id} {points:+} ({reason}) by {requester}")
        if reason not in REASONS:
            self.expect_refused(command, InvalidAmount, f"adjustment {adjustment_id} with reason {reason!r}")
            return
        before = self.member(member_id)
        outcome = self.expect_accepted(command, f"adjustment {adjustment_id}")
        after = self.member(member_id)
        if big:
            if outcome.status != 202 or outcome.body["status"] != "pending_approval":
                raise Mismatch(f"adjustment {adjustment_id} of {points} above {THRESHOLD}: {outcome.status} {outcome.body}")
            if after.version != before.version:
                raise Mismatch(f"adjustment {adjustment_id} awaiting approval changed the member")
            self.requests[adjustment_id] = {"member": member_id, "points": points, "requester": requester,
                                            "status": "pending", "decided_by": None}
        else:
            if outcome.status != 201 or after.total_points != before.total_points + points:
                raise Mismatch(f"adjustment {adjustment_id}: {before.total_points} {points:+} -> {after.total_points}")
            self.adjusted[member_id] += points
        self.writes.append((command, outcome))

    def do_decide(self) -> None:
        if not self.requests or self.rng.random() < 0.05:
            command = DecideAdjustment(actor="staff:max", adjustment_id="adj-unknown", approve=True)
            self.note("decide an unknown adjustment")
            self.expect_refused(command, NotFound, "deciding an unknown adjustment")
            return
        pending = [a for a, r in self.requests.items() if r["status"] == "pending"]
        adjustment_id = self.rng.choice(pending if pending and self.rng.random() < 0.8 else list(self.requests))
        request = self.requests[adjustment_id]
        approve = self.rng.random() < 0.6
        decider = self.rng.choice(DECIDERS)
        command = DecideAdjustment(actor=decider, adjustment_id=adjustment_id, approve=approve, note="decided")
        decision = "approved" if approve else "rejected"
        self.note(f"{decision[:-1]} {adjustment_id} ({request}) by {decider}")
        if request["status"] == decision and request["decided_by"] == decider:
            before = self.footprint()
            outcome = self.ledger.execute(command)
            if not outcome.replayed or self.footprint() != before:
                raise Mismatch(f"repeating one's own decision on {adjustment_id} was not a replay: {outcome}")
            self.counts["DecideAdjustment replayed"] += 1
            return
        if decider == request["requester"]:
            self.expect_refused(command, SelfApproval, f"{decider} deciding their own request {adjustment_id}")
            return
        if request["status"] != "pending":
            self.expect_refused(command, AlreadyDecided, f"a second decision on {adjustment_id}")
            return
        member_id = request["member"]
        before = self.member(member_id)
        outcome = self.expect_accepted(command, f"{decision} {adjustment_id}")
        after = self.member(member_id)
        if outcome.body["status"] != decision:
            raise Mismatch(f"decision on {adjustment_id}: {outcome.body}")
        change = request["points"] if approve else 0
        if after.total_points != before.total_points + change:
            raise Mismatch(f"{decision} {adjustment_id}: {before.total_points} -> {after.total_points}, expected {change:+}")
        if approve:
            self.adjusted[member_id] += change
        request.update(status=decision, decided_by=decider)

    def do_reverse(self) -> None:
        member_id = self.pick_member()
        member = self.member(member_id)
        targets: list[tuple[str, Any, int]] = []
        targets += [("purchase", (p["partner_id"], p["transaction_id"]), p["version"]) for p in member.purchases.values()]
        targets += [("redemption", rid, r["version"]) for rid, r in member.redemptions.items()]
        targets += [("adjustment", key, a["version"]) for key, a in member.adjustments.items()]
        done = [t for t in targets if (member_id, t[2]) in self.reversed]
        if done and self.rng.random() < 0.3:
            kind, key, version = self.rng.choice(done)  # a second reversal of the same event
        elif targets and self.rng.random() < 0.9:
            kind, key, version = self.rng.choice(targets)
        else:
            kind, key, version = "none", None, self.rng.choice([1, member.version + self.rng.randint(1, 5)])
        reversal_id = self.next_id("rev")
        command = ReverseEvent(actor="staff:sam", member_id=member_id, reversal_id=reversal_id, version=version,
                               note="reversed by support")
        self.note(f"reverse {member_id} version {version} ({kind} {key}) as {reversal_id}")
        if (member_id, version) in self.reversed:
            error = self.expect_refused(command, AlreadyReversed, f"a second reversal of {member_id} v{version}")
            if self.member(member_id).reversals[str(version)] != self.reversed[(member_id, version)]:
                raise Mismatch(f"reversal of v{version} changed its reversal id: {error}")
            return
        if kind == "none":
            self.expect_refused(command, UnknownEvent, f"reversing v{version}, not a reversible event")
            return
        if kind == "purchase":
            bought = self.purchases[key]
            if bought["returned"] >= bought["cents"]:
                self.expect_refused(command, AlreadyReversed, f"reversing purchase {key}, already returned in full")
                return
        if kind == "redemption" and self.redemptions[(member_id, key)]["cancelled_by"] is not None:
            self.expect_refused(command, AlreadyReversed, f"reversing redemption {key}, already cancelled")
            return
        before = self.member(member_id)
        outcome = self.expect_accepted(command, f"reversal {reversal_id} of {kind} {key}")
        if outcome.body["kind"] != kind:
            raise Mismatch(f"reversal {reversal_id}: kind {outcome.body['kind']}, expected {kind}")
        after = self.member(member_id)
        if kind == "purchase":
            bought = self.purchases[key]
            bought["returns"].append((max(self.now, bought["occurred_at"]), bought["cents"] - bought["returned"]))
            bought["returned"] = bought["cents"]
            if after.purchases[f"{key[0]}:{key[1]}"]["reversed_points"] != bought["points"]:
                raise Mismatch(f"reversal of purchase {key} left points unreversed: {after.purchases}")
        elif kind == "redemption":
            self.redemptions[(member_id, key)]["cancelled_by"] = "reversal"
        else:
            points = before.adjustments[key]["points"]
            self.adjusted[member_id] -= points
            if after.total_points != before.total_points - points:
                raise Mismatch(f"reversal of adjustment {key} ({points:+}): {before.total_points} -> {after.total_points}")
        self.reversed[(member_id, version)] = reversal_id
        self.writes.append((command, outcome))

    def do_repeat(self) -> None:
        if not self.writes:
            return self.do_purchase()
        command, first = self.rng.choice(self.writes)
        same = self.rng.random() < 0.5
        self.note(f"repeat ({'same' if same else 'changed'} body) {command}")
        if same:
            self.expect_replayed(command, first, f"repeat of {type(command).__name__}")
            return None
        changed: Command
        if isinstance(command, RecordPurchase):
            changed = replace(command, amount=command.amount + Decimal("0.01"))
        elif isinstance(command, ReturnPurchase):
            changed = replace(command, amount=command.amount + Decimal("0.01"))
        elif isinstance(command, Redeem):
            changed = replace(command, points=command.points + 1)
        elif isinstance(command, (Adjust, ReverseEvent)):
            changed = replace(command, note=command.note + " (edited)")
        else:
            assert isinstance(command, CancelRedemption)
            changed = replace(command, occurred_at=self.now)
        self.expect_refused(changed, IdempotencyConflict, f"same id, another body: {type(command).__name__}")
        return None

    def do_expire(self) -> None:
        as_of = self.now - self.rng.choice([timedelta(0), timedelta(0), timedelta(hours=3), timedelta(days=1)])
        # What is owed (lots below zero) is paid from the expiring points first; the rest is lost.
        due = {m: max(0, sum(lot.remaining for lot in self.member(m).lots.values()
                             if lot.remaining > 0 and lot.expires_at is not None and lot.expires_at <= as_of)
                      + sum(lot.remaining for lot in self.member(m).lots.values() if lot.remaining < 0))
               for m in MEMBERS}
        self.note(f"expiry job as of {as_of.isoformat()}: due {due}")
        outcomes = self.ledger.run_for_every_member(lambda m: ExpirePoints(actor="job:expiry", member_id=m, as_of=as_of))
        expired = {o.body["member_id"]: o.body["points_expired"] for o in outcomes}
        if expired != due:
            raise Mismatch(f"expiry job as of {as_of}: expired {expired}, due {due}")
        self.counts["expiry job"] += 1
        if self.rng.random() < 0.3:
            before = self.footprint()
            again = self.ledger.run_for_every_member(
                lambda m: ExpirePoints(actor="job:expiry", member_id=m, as_of=as_of))
            if any(o.body["points_expired"] for o in again) or self.footprint() != before:
                raise Mismatch(f"the expiry job run twice as of {as_of} expired more: {[o.body for o in again]}")
            self.counts["expiry job twice"] += 1

    def do_review(self) -> None:
        as_of = self.now
        self.note(f"tier review as of {as_of.isoformat()}")
        self.ledger.run_for_every_member(lambda m: ReviewTier(actor="job:tiers", member_id=m, as_of=as_of))
        for member_id in MEMBERS:
            expected = tier_for(self.purchase_spend(member_id, as_of))
            tier = self.member(member_id).tier
            if tier != expected:
                raise Mismatch(f"tier review as of {as_of}: {member_id} is {tier}, the spend qualifies for {expected}")
        self.counts["tier review"] += 1

    def do_advance(self) -> None:
        choice = self.rng.random()
        if choice < 0.4:
            moments = sorted({moment for m in MEMBERS for lot in self.member(m).lots.values()
                              for moment in (lot.available_at, lot.expires_at)
                              if moment is not None and moment > self.now})
            if moments:
                target = moments[min(self.rng.randint(0, 2), len(moments) - 1)]
                self.clock.now = target + self.rng.choice([timedelta(0), timedelta(seconds=1), timedelta(hours=1)])
                self.note(f"clock to a lot boundary {target.isoformat()}")
                return
        delta = timedelta(days=self.rng.randint(1, 20)) if choice < 0.85 else timedelta(days=self.rng.randint(40, 100))
        self.clock.now += delta
        self.note(f"clock +{delta}")

    ACTIONS = (("purchase", 24), ("return", 10), ("redeem", 14), ("cancel", 6), ("adjust", 9), ("decide", 5),
               ("reverse", 8), ("repeat", 9), ("expire", 3), ("review", 2), ("advance", 10))

    # ---- the run --------------------------------------------------------------------------

    def run(self, steps: int) -> None:
        names = [name for name, _ in self.ACTIONS]
        weights = [weight for _, weight in self.ACTIONS]
        for self.step in range(1, steps + 1):
            self.clock.now += timedelta(minutes=self.rng.randint(1, 240))
            action = self.rng.choices(names, weights)[0]
            getattr(self, f"do_{action}")()
            self.counts[f"step {action}"] += 1
            self.check_members()
            if self.step % PROJECTION_EVERY == 0 or self.step == steps:
                self.check_projections()

    # ---- the checks -----------------------------------------------------------------------

    def check_members(self) -> None:
        for member_id in MEMBERS:
            member = self.member(member_id)
            remaining = sum(lot.remaining for lot in member.lots.values())
            balance = member.balance_at(self.now)
            expected = classify(member, self.now)
            if balance != expected:
                raise Mismatch(f"{member_id}: balance {balance}, by the rules {expected}")
            if balance["available"] + balance["pending"] + balance["due"] != remaining or member.total_points != remaining:
                raise Mismatch(f"{member_id}: balance {balance} does not add up to the lots' {remaining}")
            life = member.lifetime
            if life["earned"] - life["redeemed"] - life["expired"] - life["reversed"] + life["adjusted"] != remaining:
                raise Mismatch(f"{member_id}: lifetime {life} does not roll forward to {remaining}")
            if life["earned"] != self.earned[member_id] or life["adjusted"] != self.adjusted[member_id]:
                raise Mismatch(f"{member_id}: lifetime {life}, the model earned {self.earned[member_id]} "
                               f"and adjusted {self.adjusted[member_id]}")
            for lot in member.lots.values():
                if lot.remaining < 0 and not (lot.points < 0 or (lot.source.startswith("purchase:") and lot.reversed > 0)):
                    raise Mismatch(f"{member_id}: lot {lot} is negative without a clawback or a debt")
            if balance["available"] < 0 and not any(lot.remaining < 0 for lot in member.lots.values()):
                raise Mismatch(f"{member_id}: available {balance['available']} without a negative lot")
            for state, seen in (("negative available", balance["available"] < 0), ("pending", balance["pending"] > 0),
                                ("due", balance["due"] > 0),
                                ("clawback", any(lot.remaining < 0 < lot.points for lot in member.lots.values())),
                                ("debt lot", any(lot.points < 0 for lot in member.lots.values()))):
                self.seen[state] += seen
            reversals = {int(v): r for v, r in member.reversals.items()}
            if reversals != {v: r for (m, v), r in self.reversed.items() if m == member_id}:
                raise Mismatch(f"{member_id}: reversals {reversals}, the model {self.reversed}")
            for rid, redemption in member.redemptions.items():
                if redemption["cancelled"] != (self.redemptions[(member_id, rid)]["cancelled_by"] is not None):
                    raise Mismatch(f"{member_id}: redemption {rid} cancelled={redemption['cancelled']} in the ledger")
            if len(member.redemptions) != sum(1 for m, _ in self.redemptions if m == member_id):
                raise Mismatch(f"{member_id}: redemptions {sorted(member.redemptions)}")
            for purchase in member.purchases.values():
                bought = self.purchases[(purchase["partner_id"], purchase["transaction_id"])]
                if cents(bought["returned"]) != purchase["returned"] or not 0 <= purchase["returned"] <= purchase["amount"]:
                    raise Mismatch(f"{member_id}: purchase {purchase['transaction_id']} returned {purchase['returned']}, "
                                   f"the model {cents(bought['returned'])}")
                if not 0 <= purchase["reversed_points"] <= purchase["points"]:
                    raise Mismatch(f"{member_id}: purchase {purchase['transaction_id']} reversed {purchase}")

    def check_projections(self) -> None:
        self.read_model.runner.catch_up()
        totals = 0
        for member_id in MEMBERS:
            events = list(self.ledger.events.get(member_id_to_uuid(member_id)))
            replayed = replay_member(events)
            assert replayed is not None
            totals += replayed.total_points
            fresh = member_view(replayed, self.now)
            projected = self.read_model.member_summary(member_id)
            live = self.ledger.member_summary(member_id)
            if not projected == live == fresh:
                raise Mismatch(f"{member_id}: projection {projected}\nlive {live}\nreplay {fresh}")
            live_member = self.member(member_id)
            if replayed.lots != live_member.lots or replayed.reversals != live_member.reversals:
                raise Mismatch(f"{member_id}: a replay of the stored events differs from the live aggregate")
            versions = Counter(e.version for e in events if isinstance(e, Member.EventReversed))
            if any(count > 1 for count in versions.values()):
                raise Mismatch(f"{member_id}: an event reversed more than once: {versions}")
        report = self.read_model.reconcile()
        if not report["ok"] or report["differences"]:
            raise Mismatch(f"reconciliation failed: {report}")
        if report["event_log_total"] != totals:
            raise Mismatch(f"reconciliation's event log total {report['event_log_total']} != replayed {totals}")
        self.check_liability(totals)
        self.counts["projection checks"] += 1

    def check_liability(self, total: int) -> None:
        reports = FinanceReports(self.read_model)
        first, last = (START - timedelta(days=1)).date(), self.now.date()
        whole = reports.liability(PROGRAM, Period(first, last), monthly=True)
        self.check_roll(whole, "the whole history")
        if whole["points"]["opening"] != 0:
            raise Mismatch(f"nothing happened before {first}, yet the opening is {whole['points']['opening']}")
        if not (whole["points"]["closing"] == whole.get("member_balances") == total
                and whole.get("closing_equals_member_balances") is True):
            raise Mismatch(f"liability closing {whole['points']['closing']}, member balances "
                           f"{whole.get('member_balances')}, replayed members {total}")
        opening = whole["points"]["opening"]
        for month in whole["months"]:
            self.check_roll(month, f"month {month['month']}")
            if month["points"]["opening"] != opening:
                raise Mismatch(f"month {month['month']} opens at {month['points']['opening']}, the last closed at {opening}")
            opening = month["points"]["closing"]
        if opening != whole["points"]["closing"]:
            raise Mismatch(f"the months close at {opening}, the period at {whole['points']['closing']}")
        # Not drawn from the generator's rng, so LOYALTY_PROJECTION_EVERY does not change the sequence.
        middle = first + timedelta(days=1 + self.step * 7919 % max((last - first).days, 1))
        part = reports.liability(PROGRAM, Period(min(middle, last), last))
        self.check_roll(part, f"from {middle}")
        if part["points"]["closing"] != total:
            raise Mismatch(f"liability from {middle} closes at {part['points']['closing']}, not {total}")
        by_issuer = 0
        for issuer in (*PARTNERS, ""):
            report = reports.liability(PROGRAM, Period(first, last), partner_id=issuer)
            self.check_roll(report, f"issuer {issuer!r}")
            if report["points"]["closing"] != report.get("member_balances"):
                raise Mismatch(f"issuer {issuer!r}: closing {report['points']['closing']} != balances "
                               f"{report.get('member_balances')}")
            by_issuer += report["points"]["closing"]
        if by_issuer != total:
            raise Mismatch(f"the issuers' closings add up to {by_issuer}, not {total}")

    @staticmethod
    def check_roll(report: dict[str, Any], what: str) -> None:
        p = report["points"]
        if p["opening"] + p["earned"] - p["redeemed"] - p["expired"] - p["reversed"] + p["adjusted"] != p["closing"]:
            raise Mismatch(f"liability roll-forward for {what} does not close: {p}")


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])
def test_invariants_hold_under_random_activity(database_url: str, seed: int) -> None:
    clock = Clock(START + timedelta(hours=1))
    config = Config(database_url=database_url)
    ledger = build_ledger(config, clock=clock)
    read_model = build_read_model(config, ledger)
    assert read_model is not None
    read_model.runner.batch_size = 37  # several batches per catch-up: members and lots span batch boundaries
    activity = RandomActivity(seed, ledger, read_model, clock)
    database = database_url.split(":", 1)[0]
    try:
        activity.set_up()
        activity.run(STEPS)
    except Exception as error:
        trail = "\n".join(activity.log[-25:])
        message = (f"random activity failed on {database} at step {activity.step} of {STEPS}, seed {seed}: {error}\n"
                   f"replay with LOYALTY_SEED={seed} LOYALTY_STEPS={STEPS}\nthe last steps:\n{trail}")
        print("\n" + message)
        raise AssertionError(message) from error
    else:
        activity.final_versions = {m: ledger.get_member(m).version for m in MEMBERS}
    finally:
        read_model.store.close()
        ledger.close()
    print(f"\n[{database} seed {seed}] {STEPS} steps, {activity.counts['projection checks']} projection checks; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(activity.counts.items()) if not k.startswith("step "))
          + f"; member-steps with {dict(activity.seen)}; ann at version {activity.final_versions['ann']}")
    # The run exercised what it is meant to: refusals and replays, not only happy paths.
    for kind in ("Redeem refused (InsufficientPoints)", "ReverseEvent accepted", "ReturnPurchase accepted",
                 "Redeem accepted", "expiry job"):
        assert activity.counts[kind] > 0, (kind, activity.counts)
