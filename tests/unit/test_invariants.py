"""Ledger invariants under random command sequences (hypothesis stateful testing).

A state machine drives the real write path (`Ledger.execute`) for a few members of one program
(a pending period, rolling expiry, three tiers) while a simulated clock moves forward (often to
exactly when some lot becomes available or expires), and keeps a small model of what it asked
for: enrolments, purchases, returns (some beyond what is left), redemptions (some beyond what is
available), cancellations (some twice), expiry runs (some twice at one as_of), adjustments, tier
reviews, support reversals of one event, snapshots, and repeats of earlier writes with the same
id (replayed, nothing written) or with a changed body (idempotency conflict).
After every step it checks, for each member:

1. total = sum of lot remainders = available + pending + due, each as the rules define it;
2. the lifetime roll-forward: earned - redeemed - expired - reversed + adjusted = sum of remainders;
3. no redemption overdrew (checked where it runs; refusals change nothing at all);
4. returns never exceed the purchase, reversals never exceed what was earned, a redemption is
   cancelled at most once;
5. replaying the stored events (domain.member.replay_member, the events projected one by one,
   a fresh repository load from the latest snapshot) gives the live aggregate's state;
6. a positive lot is only ever negative because of a return's clawback against points still
   spent; redemption, expiry and debits never take more than a lot holds.

Self-contained: it uses none of the conftest fixtures. Sized to run in well under a minute; a
failure takes a few minutes more while hypothesis shrinks it to a short sequence.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

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
    ReverseEvent,
    ReviewTier,
)
from application.errors import ApplicationError, IdempotencyConflict
from domain.errors import AlreadyReversed, DomainError, InsufficientPoints
from domain.lots import AVAILABLE, DUE, PENDING
from domain.member import ADJUSTMENT_REASONS, Member, purchase_key, replay_member
from domain.money import points_to_reverse
from domain.receipts import Receipt
from domain.rules import Rules
from infrastructure.bootstrap import build_ledger
from infrastructure.config import Config

UTC = timezone.utc
START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
PROGRAM = "inv"
PARTNER = "shop"
STORE = "s1"
MEMBERS = ("m1", "m2", "m3")
ADMIN = "admin"
POS = "pos"
SUPPORT = "support"
JOB = "job"

RULES: dict[str, Any] = {
    "earn_rate": "1",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 3},
    "pending_days": 5,
    "tiers": [
        {"name": "base", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "silver", "qualifying_spend": "300", "multiplier": "1.5"},
        {"name": "gold", "qualifying_spend": "800", "multiplier": "2"},
    ],
    "tier_window_months": 4,
    "adjustment_approval_threshold": 1000,
}
DOMAIN_RULES = Rules.from_dict(RULES)
TIER_NAMES = {tier.name for tier in DOMAIN_RULES.tiers}

Refusal = (DomainError, ApplicationError)

# Amounts in cents: small ones (often 0 or 1 point), everyday baskets, big tier-moving ones.
CENTS = st.one_of(st.integers(1, 300), st.integers(300, 15_000), st.integers(15_000, 60_000))
BACKDATE = st.sampled_from([None, None, None, None, timedelta(0), timedelta(hours=2), timedelta(days=3)])
RETURN_KINDS = ["all", "all", "part", "part", "over", "zero"]
REDEEM_KINDS = ["part", "all", "all", "over", "random"]
# Mostly hours and days (pending points become available, lots age); sometimes months, past expiry.
HOURS = st.integers(1, 48).map(lambda h: timedelta(hours=h))
DAYS = st.integers(1, 20).map(lambda d: timedelta(days=d))
MONTHS = st.integers(60, 100).map(lambda d: timedelta(days=d))
CLOCK_STEPS = st.one_of(HOURS, HOURS, DAYS, DAYS, MONTHS)


def cents(amount: int) -> Decimal:
    return Decimal(amount) / Decimal(100)


def attempt(ledger: Any, command: Command) -> tuple[Outcome | None, Exception | None]:
    try:
        return ledger.execute(command), None
    except Refusal as error:
        return None, error


BOOKKEEPING = ("_created_on", "_modified_on", "_pending_events", "_spend_index")  # and a derived index


def member_state(member: Member) -> dict[str, Any]:
    """Everything the aggregate holds (id, version, tier, lots, indexes, lifetime...) except the
    library's timestamps, which a replay sets from the recorded times."""
    return {name: value for name, value in vars(member).items() if name not in BOOKKEEPING}


def expected_balance(member: Member, moment: datetime) -> dict[str, int]:
    """The balance by the ledger's rules, computed here rather than by Lot.state_at: a debt always
    counts against what is available; positive points are due from their expiry on, pending
    until they become available, and available in between."""
    totals = {AVAILABLE: 0, PENDING: 0, DUE: 0}
    for lot in member.lots.values():
        if lot.remaining < 0:
            totals[AVAILABLE] += lot.remaining
        elif lot.expires_at is not None and lot.expires_at <= moment:
            totals[DUE] += lot.remaining
        elif lot.available_at > moment:
            totals[PENDING] += lot.remaining
        else:
            totals[AVAILABLE] += lot.remaining
    return totals


def per_lot(pairs: list[list[Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for lot_id, points in pairs:
        assert points > 0, pairs
        totals[lot_id] = totals.get(lot_id, 0) + points
    return totals


def walk_events(events: list[Member.Event]) -> Member:
    """Replays the stored events one by one, checking each movement of points against the lots
    as they were just before it (invariant 6 and the no-overdraw rule at event level)."""
    member: Member | None = None
    clawback: dict[str, int] = {}
    cancelled: dict[str, int] = {}
    for ev in events:
        if member is None:
            assert isinstance(ev, Member.MemberEnrolled), ev
            member = ev.mutate(None)
            continue
        if isinstance(ev, Member.PointsRedeemed):
            assert ev.points > 0
            assert sum(p for _, p in ev.consumed) == ev.points, f"redemption {ev.redemption_id} consumed != points"
            assert len({lot_id for lot_id, _ in ev.consumed}) == len(ev.consumed)
            for lot_id, points in ev.consumed:
                lot = member.lots[lot_id]
                assert points > 0
                assert lot.is_spendable_at(ev.occurred_at), f"redemption spent lot {lot} not spendable"
                assert points <= lot.remaining, f"redemption overdrew lot {lot_id}: {points} > {lot.remaining}"
            assert ev.points <= member.balance_at(ev.occurred_at)[AVAILABLE], "redemption overdrew the balance"
        elif isinstance(ev, Member.PointsExpired):
            paid = per_lot([[lot_id, -points] for lot_id, points in ev.settled if points < 0])
            owed_before = -sum(lot.remaining for lot in member.lots.values() if lot.remaining < 0)
            assert sum(p for _, p in ev.settled) == 0 and sum(paid.values()) <= owed_before, ev.settled
            for lot_id, points in ev.settled:  # paid out of due lots into lots below zero, never beyond
                lot = member.lots[lot_id]
                assert (lot.remaining > 0) == (points < 0) and (points > 0 or -points <= lot.remaining), (ev, lot)
                assert points < 0 or points <= -lot.remaining, f"a debt paid beyond what was owed: {lot}"
            for lot_id, points in ev.expired:
                lot = member.lots[lot_id]
                assert points > 0 and points + paid.get(lot_id, 0) == lot.remaining, f"expiry took {points} of {lot}"
                assert lot.expires_at is not None and lot.expires_at <= ev.occurred_at, f"expired a lot not due: {lot}"
            assert all(member.lots[lot_id].expires_at <= ev.occurred_at for lot_id in paid), ev
        elif isinstance(ev, Member.PointsAdjusted):
            for lot_id, points in ev.consumed:
                lot = member.lots[lot_id]
                assert points > 0 and lot.is_spendable_at(ev.occurred_at) and points <= lot.remaining, (
                    f"debit {ev.adjustment_id} overdrew lot {lot}"
                )
            if ev.points < 0:
                debt = -ev.lot["points"] if ev.lot is not None else 0
                assert debt >= 0
                assert sum(p for _, p in ev.consumed) + debt == -ev.points
            else:
                assert ev.lot is not None and ev.lot["points"] == ev.points and not ev.consumed
        elif isinstance(ev, Member.AccrualReversed):
            lot = member.lots[ev.lot_id]
            assert min(ev.from_remaining, ev.from_expired, ev.clawback) >= 0
            assert ev.from_remaining + ev.from_expired + ev.clawback == ev.points
            assert ev.from_remaining <= max(lot.remaining, 0)
            assert ev.from_expired <= lot.expired - member.expired_reversed.get(ev.lot_id, 0)
            clawback[ev.lot_id] = clawback.get(ev.lot_id, 0) + ev.clawback
        elif isinstance(ev, Member.RedemptionCancelled):
            cancelled[ev.redemption_id] = cancelled.get(ev.redemption_id, 0) + 1
            assert cancelled[ev.redemption_id] == 1, f"redemption {ev.redemption_id} cancelled twice"
            redemption = member.redemptions[ev.redemption_id]
            assert per_lot(ev.restored + ev.restored_expired) == per_lot(redemption["consumed"]), (
                f"cancelling {ev.redemption_id} gave back other points than it took"
            )
        member = ev.mutate(member)
        for lot in member.lots.values():
            if lot.points > 0:
                assert lot.remaining >= -clawback.get(lot.lot_id, 0), (
                    f"positive lot below zero by more than its clawback after {type(ev).__name__}: {lot}"
                )
            else:  # a debt lot changes only when expiring points pay it back
                assert lot.remaining + lot.settled == lot.points and lot.settled <= 0, f"a debt lot changed: {lot}"
    assert member is not None
    return member


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.holder = [START]
        self.ledger = build_ledger(Config(database_url="memory://"), clock=lambda: self.holder[0])
        self.ledger.execute(CreateProgram(actor=ADMIN, program_id=PROGRAM, name="Invariants", currency="EUR",
                                          rules=RULES, effective_at=START - timedelta(days=400)))
        self.ledger.execute(RegisterPartner(actor=ADMIN, partner_id=PARTNER, name="Shop", program_id=PROGRAM,
                                            stores=[STORE]))
        self.counter = 0
        self.enrolments: dict[str, EnrolMember] = {}
        # Model: what was accepted, as the machine saw it.
        self.purchases: dict[str, dict[str, Any]] = {}  # txn -> member, amount, returned, points, occurred_at
        self.redemptions: dict[str, dict[str, Any]] = {}  # rid -> member, points, cancel (command, outcome)
        self.refused_redemptions: list[tuple[str, str]] = []  # (member, rid)
        self.adjusted: dict[str, list[int]] = {}
        self.postings: list[tuple[Command, Outcome]] = []  # accepted writes with a client id
        self.redeem_log: list[dict[str, Any]] = []  # invariant 3's evidence

    # ---- helpers ----------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.holder[0]

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def member(self, member_id: str) -> Member:
        return self.ledger.get_member(member_id)

    def footprint(self) -> tuple[int | None, dict[str, int]]:
        """The store's last notification and every member's version: a refused or replayed
        command must leave both as they were (not even a receipt is written)."""
        versions = {m: self.member(m).version for m in self.enrolments}
        return self.ledger.recorder.max_notification_id(), versions

    def occurred(self, backdate: timedelta | None) -> datetime | None:
        return None if backdate is None else self.now - backdate

    def draw_member(self, data: st.DataObject) -> str:
        # Mostly the first member, so one account sees long histories; the others check isolation.
        enrolled = sorted(self.enrolments)
        return data.draw(st.one_of(st.just(enrolled[0]), st.sampled_from(enrolled)), label="member")

    def assert_balance_view(self, outcome: Outcome, member_id: str) -> None:
        """The balance the command computed in memory equals the one the stored events give."""
        balance = self.member(member_id).balance_at(self.now)
        assert outcome.body["balance"] == {
            "available": balance["available"], "pending": balance["pending"], "due_for_expiry": balance["due"],
        }

    def has_receipt(self, scope: str, key: list[str]) -> bool:
        try:
            self.ledger.repository.get(Receipt.create_id(scope, key))
        except AggregateNotFoundError:
            return False
        return True

    # ---- rules ------------------------------------------------------------------------------

    @initialize()
    def enrol_first(self) -> None:
        self.enrol_member("m1")

    def enrol_member(self, member_id: str) -> None:
        command = EnrolMember(actor=ADMIN, program_id=PROGRAM, member_id=member_id, name=member_id.upper())
        outcome = self.ledger.execute(command)
        assert not outcome.replayed
        self.enrolments[member_id] = command
        self.adjusted[member_id] = []
        member = self.member(member_id)
        assert member.tier == DOMAIN_RULES.tiers[0].name and member.total_points == 0
        self.postings.append((command, outcome))

    @precondition(lambda self: len(self.enrolments) < len(MEMBERS))
    @rule(data=st.data())
    def enrol(self, data: st.DataObject) -> None:
        self.enrol_member(data.draw(st.sampled_from([m for m in MEMBERS if m not in self.enrolments])))

    # Hypothesis has no rule weights: the commands that build up interesting states are
    # registered twice so they come up more often than the jobs and the repeats.

    def do_purchase(self, data: st.DataObject, amount: int, backdate: timedelta | None) -> None:
        member_id = self.draw_member(data)
        before = self.member(member_id)
        txn = self.next_id("t")
        occurred_at = self.occurred(backdate) or self.now
        command = RecordPurchase(actor=POS, partner_id=PARTNER, transaction_id=txn, store_id=STORE,
                                 amount=cents(amount), currency="EUR", member_id=member_id,
                                 occurred_at=self.occurred(backdate))
        outcome = self.ledger.execute(command)
        # At the tier held when it was made (a late posting is not valued at today's tier).
        expected = DOMAIN_RULES.points_for(cents(amount), before.tier_at(occurred_at))
        assert outcome.body["points_earned"] == expected
        after = self.member(member_id)
        assert after.total_points == before.total_points + expected
        assert after.lifetime["earned"] == before.lifetime["earned"] + expected
        target = DOMAIN_RULES.tier_for_spend(after.qualifying_spend(occurred_at, DOMAIN_RULES))
        held_after, held_before = after.tier_at(occurred_at), before.tier_at(occurred_at)
        assert DOMAIN_RULES.tier_rank(held_after) >= DOMAIN_RULES.tier_rank(target.name)
        assert DOMAIN_RULES.tier_rank(held_after) >= DOMAIN_RULES.tier_rank(held_before)
        # Today's tier is the latest change by effective time, whatever order they were recorded in.
        times = [when for when, _ in after.tier_changes]
        assert times == sorted(times) and after.tier == after.tier_changes[-1][1]
        self.assert_balance_view(outcome, member_id)
        self.purchases[txn] = {"member": member_id, "amount": cents(amount), "returned": Decimal(0),
                               "points": expected, "occurred_at": occurred_at}
        self.postings.append((command, outcome))

    @rule(data=st.data(), amount=CENTS, backdate=BACKDATE)
    def purchase(self, data: st.DataObject, amount: int, backdate: timedelta | None) -> None:
        self.do_purchase(data, amount, backdate)

    @rule(data=st.data(), amount=CENTS, backdate=BACKDATE)
    def purchase_too(self, data: st.DataObject, amount: int, backdate: timedelta | None) -> None:
        self.do_purchase(data, amount, backdate)

    def do_return(self, data: st.DataObject, how: str, backdate: timedelta | None) -> None:
        txn = data.draw(st.sampled_from(sorted(self.purchases)), label="purchase")
        bought = self.purchases[txn]
        member_id = bought["member"]
        left = bought["amount"] - bought["returned"]
        left_cents = int(left * 100)
        if how == "all":
            amount = left
        elif how == "part" and left_cents > 0:
            amount = cents(data.draw(st.integers(1, left_cents), label="part"))
        elif how == "zero":
            amount = Decimal(0)
        else:
            amount = left + cents(data.draw(st.integers(1, 500), label="excess"))
        occurred_at = self.occurred(backdate) or self.now
        command = ReturnPurchase(actor=POS, partner_id=PARTNER, transaction_id=self.next_id("r"),
                                 original_transaction_id=txn, amount=amount, occurred_at=self.occurred(backdate))
        before_member = self.member(member_id)
        before = self.footprint()
        outcome, error = attempt(self.ledger, command)
        acceptable = Decimal(0) < amount <= left and occurred_at >= bought["occurred_at"]
        if not acceptable:
            assert error is not None, f"a return of {amount} with {left} left (or before its purchase) was accepted"
            assert isinstance(error, DomainError), error
            assert self.footprint() == before
            # Nothing was recorded: the same request is judged afresh, and refused again.
            again, error_again = attempt(self.ledger, command)
            assert again is None and type(error_again) is type(error)
            assert self.footprint() == before
            return
        assert error is None, f"a valid return of {amount} (of {left} left) was refused: {error!r}"
        assert outcome is not None
        expected = points_to_reverse(bought["points"], bought["amount"], bought["returned"], amount)
        assert outcome.body["points_reversed"] == expected
        after_member = self.member(member_id)
        key = purchase_key(PARTNER, txn)
        assert after_member.purchases[key]["returned"] == bought["returned"] + amount
        reversed_before = before_member.purchases[key]["reversed_points"]
        assert after_member.purchases[key]["reversed_points"] == reversed_before + expected
        taken = after_member.lifetime["reversed"] - before_member.lifetime["reversed"]
        assert 0 <= taken <= expected
        assert after_member.total_points == before_member.total_points - taken
        self.assert_balance_view(outcome, member_id)
        bought["returned"] += amount
        self.postings.append((command, outcome))

    @precondition(lambda self: self.purchases)
    @rule(data=st.data(), how=st.sampled_from(RETURN_KINDS), backdate=BACKDATE)
    def return_purchase(self, data: st.DataObject, how: str, backdate: timedelta | None) -> None:
        self.do_return(data, how, backdate)

    @precondition(lambda self: self.purchases)
    @rule(data=st.data(), how=st.sampled_from(RETURN_KINDS), backdate=BACKDATE)
    def return_purchase_too(self, data: st.DataObject, how: str, backdate: timedelta | None) -> None:
        self.do_return(data, how, backdate)

    def do_redeem(self, data: st.DataObject, how: str, backdate: timedelta | None) -> None:
        member_id = self.draw_member(data)
        occurred_at = self.occurred(backdate) or self.now
        before_member = self.member(member_id)
        available = before_member.balance_at(occurred_at)[AVAILABLE]
        assert available == expected_balance(before_member, occurred_at)[AVAILABLE]
        if how == "part" and available > 1:
            points = data.draw(st.integers(1, available - 1), label="points")
        elif how == "all" and available > 0:
            points = available
        elif how == "over":
            points = max(available, 0) + data.draw(st.integers(1, 100), label="excess")
        else:
            points = data.draw(st.integers(1, 300), label="points")
        rid = self.next_id("x")
        command = Redeem(actor=SUPPORT, member_id=member_id, redemption_id=rid, points=points,
                         reward="voucher", occurred_at=self.occurred(backdate))
        before = self.footprint()
        outcome, error = attempt(self.ledger, command)
        after_member = self.member(member_id)
        self.redeem_log.append({"member": member_id, "points": points, "available": available,
                                "accepted": error is None, "version_before": before_member.version,
                                "version_after": after_member.version})
        if points > available:
            assert isinstance(error, InsufficientPoints), f"redeeming {points} of {available} available: {error!r}"
            assert error.facts["available"] == available
            assert self.footprint() == before
            assert not self.has_receipt("redemption", [member_id, rid])
            self.refused_redemptions.append((member_id, rid))
            return
        assert error is None, f"redeeming {points} of {available} available was refused: {error!r}"
        assert outcome is not None and not outcome.replayed
        assert after_member.total_points == before_member.total_points - points
        assert after_member.lifetime["redeemed"] == before_member.lifetime["redeemed"] + points
        assert after_member.balance_at(occurred_at)[AVAILABLE] == available - points
        self.assert_balance_view(outcome, member_id)
        self.redemptions[rid] = {"member": member_id, "points": points, "cancel": None}
        self.postings.append((command, outcome))

    @rule(data=st.data(), how=st.sampled_from(REDEEM_KINDS), backdate=BACKDATE)
    def redeem(self, data: st.DataObject, how: str, backdate: timedelta | None) -> None:
        self.do_redeem(data, how, backdate)

    @rule(data=st.data(), how=st.sampled_from(REDEEM_KINDS), backdate=BACKDATE)
    def redeem_too(self, data: st.DataObject, how: str, backdate: timedelta | None) -> None:
        self.do_redeem(data, how, backdate)

    @precondition(lambda self: self.redemptions or self.refused_redemptions)
    @rule(data=st.data(), explicit_time=st.booleans(), unknown=st.integers(0, 9))
    def cancel(self, data: st.DataObject, explicit_time: bool, unknown: int) -> None:
        if unknown == 0 and self.refused_redemptions:  # a redemption that was refused: nothing to cancel
            member_id, rid = data.draw(st.sampled_from(self.refused_redemptions), label="refused")
            before = self.footprint()
            outcome, error = attempt(self.ledger, CancelRedemption(actor=SUPPORT, member_id=member_id,
                                                                   redemption_id=rid))
            assert isinstance(error, DomainError), (outcome, error)
            assert self.footprint() == before
            return
        if not self.redemptions:
            return
        rid = data.draw(st.sampled_from(sorted(self.redemptions)), label="redemption")
        spent = self.redemptions[rid]
        member_id = spent["member"]
        command = CancelRedemption(actor=SUPPORT, member_id=member_id, redemption_id=rid,
                                   occurred_at=self.now if explicit_time else None)
        before_member = self.member(member_id)
        before = self.footprint()
        outcome, error = attempt(self.ledger, command)
        if spent["cancel"] is not None:  # the second time: a replay or a conflict, never a second cancel
            first_command, first_outcome = spent["cancel"]
            if isinstance(first_command, ReverseEvent):  # cancelled by a reversal: already reversed
                assert isinstance(error, AlreadyReversed), (outcome, error)
            elif first_command.request_hash() == command.request_hash():
                assert error is None and outcome is not None and outcome.replayed, (outcome, error)
                assert outcome.body == first_outcome.body
            else:
                assert isinstance(error, IdempotencyConflict), (outcome, error)
            assert self.footprint() == before
            return
        assert error is None, f"cancelling {rid} refused: {error!r}"
        assert outcome is not None and not outcome.replayed
        restored, lapsed = outcome.body["points_restored"], outcome.body["points_expired"]
        assert restored >= 0 and lapsed >= 0 and restored + lapsed == spent["points"]
        after_member = self.member(member_id)
        assert after_member.total_points == before_member.total_points + restored
        assert after_member.lifetime["redeemed"] == before_member.lifetime["redeemed"] - spent["points"]
        assert after_member.redemptions[rid]["cancelled"]
        self.assert_balance_view(outcome, member_id)
        spent["cancel"] = (command, outcome)
        self.postings.append((command, outcome))

    @precondition(lambda self: self.enrolments)
    @rule(data=st.data(), points=st.one_of(st.integers(1, 400), st.integers(1, 400), st.integers(-60, -1)),
          reason=st.sampled_from(ADJUSTMENT_REASONS))
    def adjust(self, data: st.DataObject, points: int, reason: str) -> None:
        member_id = self.draw_member(data)
        before_member = self.member(member_id)
        command = Adjust(actor=SUPPORT, member_id=member_id, adjustment_id=self.next_id("a"), points=points,
                         reason=reason, note="test")
        outcome = self.ledger.execute(command)
        after_member = self.member(member_id)
        assert after_member.total_points == before_member.total_points + points
        assert after_member.lifetime["adjusted"] == before_member.lifetime["adjusted"] + points
        self.assert_balance_view(outcome, member_id)
        self.adjusted[member_id].append(points)
        self.postings.append((command, outcome))

    @precondition(lambda self: self.enrolments)
    @rule(data=st.data(), fresh_id=st.booleans())
    def reverse(self, data: st.DataObject, fresh_id: bool) -> None:
        """Support reverses one earlier event by its version: a purchase (returns what is left),
        a redemption (cancels it) or an adjustment (the opposite one); each at most once."""
        member_id = self.draw_member(data)
        member = self.member(member_id)
        targets = [("purchase", k, p["version"]) for k, p in member.purchases.items()]
        targets += [("redemption", k, r["version"]) for k, r in member.redemptions.items()]
        targets += [("adjustment", k, a["version"]) for k, a in member.adjustments.items()]
        targets += [("none", "", member.version + 3)]
        kind, key, version = data.draw(st.sampled_from(targets), label="target")
        done = [c for c, _ in self.postings if isinstance(c, ReverseEvent) and c.member_id == member_id
                and c.version == version]
        if done and not fresh_id:
            return  # a repeat of the same reversal is the repeat rule's business
        command = ReverseEvent(actor=SUPPORT, member_id=member_id, reversal_id=self.next_id("v"), version=version,
                               note="reversed by support")
        before = self.footprint()
        outcome, error = attempt(self.ledger, command)
        if kind == "purchase":
            txn = member.purchases[key]["transaction_id"]
            accepted = member.purchases[key]["returned"] < member.purchases[key]["amount"]
        elif kind == "redemption":
            accepted = not member.redemptions[key]["cancelled"]
        else:
            accepted = kind == "adjustment"
        accepted = accepted and str(version) not in member.reversals
        if not accepted:
            assert isinstance(error, DomainError), (kind, key, outcome, error)
            assert self.footprint() == before
            return
        assert error is None, f"reversing {kind} {key} (version {version}) refused: {error!r}"
        assert outcome is not None and outcome.body["kind"] == kind
        after = self.member(member_id)
        assert after.reversals[str(version)] == command.reversal_id
        if kind == "purchase":
            bought = self.purchases[txn]
            assert after.purchases[key]["returned"] == bought["amount"]
            assert after.purchases[key]["reversed_points"] == bought["points"]
            bought["returned"] = bought["amount"]
        elif kind == "redemption":
            assert after.redemptions[key]["cancelled"]
            assert after.lifetime["redeemed"] == member.lifetime["redeemed"] - member.redemptions[key]["points"]
            self.redemptions[key]["cancel"] = (command, None)
        else:
            points = member.adjustments[key]["points"]
            assert after.adjustments[f"reversal:{command.reversal_id}"]["points"] == -points
            assert after.total_points == member.total_points - points
            self.adjusted[member_id].append(-points)
        self.assert_balance_view(outcome, member_id)
        self.postings.append((command, outcome))

    @precondition(lambda self: self.enrolments)
    @rule(data=st.data(), job=st.sampled_from(["expire", "expire twice", "review"]),
          back=st.sampled_from([timedelta(0), timedelta(0), timedelta(days=10)]))
    def run_job(self, data: st.DataObject, job: str, back: timedelta) -> None:
        member_id = self.draw_member(data)
        as_of = self.now - back
        if job == "review":
            self.ledger.execute(ReviewTier(actor=JOB, member_id=member_id, as_of=as_of))
            member = self.member(member_id)
            expected = DOMAIN_RULES.tier_for_spend(member.qualifying_spend(as_of, DOMAIN_RULES))
            assert member.tier_at(as_of) == expected.name  # a later-dated change still stands after it
            return
        before_member = self.member(member_id)
        due_points = sum(lot.remaining for lot in before_member.lots.values()
                         if lot.remaining > 0 and lot.expires_at is not None and lot.expires_at <= as_of)
        owed = -sum(lot.remaining for lot in before_member.lots.values() if lot.remaining < 0)
        # What is owed is paid from the expiring points first; only the rest is lost.
        due = max(due_points - owed, 0)
        command = ExpirePoints(actor=JOB, member_id=member_id, as_of=as_of)
        outcome = self.ledger.execute(command)
        assert outcome.body["points_expired"] == due
        after_member = self.member(member_id)
        assert after_member.total_points == before_member.total_points - due
        assert after_member.lifetime["expired"] == before_member.lifetime["expired"] + due
        assert not [lot for lot in after_member.lots.values()
                    if lot.remaining > 0 and lot.expires_at is not None and lot.expires_at <= as_of]
        assert -sum(lot.remaining for lot in after_member.lots.values() if lot.remaining < 0) == \
            owed - min(owed, due_points)
        if job == "expire twice":  # the same as_of again: nothing left to expire, nothing written
            before = self.footprint()
            again = self.ledger.execute(command)
            assert again.body["points_expired"] == 0
            assert self.footprint() == before

    @rule(delta=CLOCK_STEPS)
    def advance_clock(self, delta: timedelta) -> None:
        self.holder[0] = self.now + delta

    @rule(which=st.integers(0, 3), past=st.sampled_from([timedelta(0), timedelta(seconds=1), timedelta(days=1)]))
    def advance_to_a_boundary(self, which: int, past: timedelta) -> None:
        """Jumps to (or just past) a moment when some lot changes state: its points become
        available or it expires. Boundaries are where off-by-one rules break, and expiry is
        where returns, cancellations and the expiry job interact."""
        moments = sorted({moment for member_id in self.enrolments for lot in self.member(member_id).lots.values()
                          for moment in (lot.available_at, lot.expires_at) if moment is not None and moment > self.now})
        if moments:
            self.holder[0] = moments[min(which, len(moments) - 1)] + past
        else:
            self.holder[0] = self.now + timedelta(days=1)

    @precondition(lambda self: self.postings)
    @rule(data=st.data(), same=st.booleans())
    def repeat(self, data: st.DataObject, same: bool) -> None:
        """An earlier write again with the same id: the same body is replayed (the recorded
        outcome, nothing written); a different body is an idempotency conflict."""
        command, first = data.draw(st.sampled_from(self.postings), label="posting")
        if same:
            before = self.footprint()
            outcome = self.ledger.execute(command)
            assert outcome.replayed
            if not isinstance(command, EnrolMember):  # an enrolment replay shows the member as of now
                assert outcome.body == first.body and outcome.status == first.status
            assert self.footprint() == before
            return
        if isinstance(command, RecordPurchase):
            changed: Command = replace(command, amount=command.amount + 1)
        elif isinstance(command, ReturnPurchase):
            changed = replace(command, amount=command.amount + Decimal("0.01"))
        elif isinstance(command, Redeem):
            changed = replace(command, points=command.points + 1)
        elif isinstance(command, Adjust):
            changed = replace(command, note=command.note + " (edited)")
        elif isinstance(command, EnrolMember):
            changed = replace(command, name="Someone Else")
        elif isinstance(command, ReverseEvent):
            changed = replace(command, note=command.note + " (edited)")
        else:
            assert isinstance(command, CancelRedemption)
            changed = replace(command, occurred_at=None if command.occurred_at else self.now)
        before = self.footprint()
        outcome, error = attempt(self.ledger, changed)
        assert isinstance(error, IdempotencyConflict), (outcome, error)
        assert self.footprint() == before

    @precondition(lambda self: self.enrolments)
    @rule(data=st.data())
    def snapshot(self, data: st.DataObject) -> None:
        member = self.member(self.draw_member(data))
        assert self.ledger.snapshots is not None
        latest = list(self.ledger.snapshots.get(member.id, desc=True, limit=1))
        if not latest or latest[0].originator_version < member.version:  # one snapshot per version
            self.ledger.take_snapshot(member.id)

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def redemptions_never_overdrew(self) -> None:
        for entry in self.redeem_log:
            if entry["accepted"]:
                assert entry["points"] <= entry["available"], entry
                assert entry["version_after"] > entry["version_before"], entry
            else:
                assert entry["points"] > entry["available"], entry
                assert entry["version_after"] == entry["version_before"], entry

    @invariant()
    def members_are_consistent(self) -> None:
        """Each member loaded once and its stored events read once per step (decoding events is
        most of the cost), then every per-member invariant checked on them."""
        for member_id in self.enrolments:
            live = self.member(member_id)
            events = list(self.ledger.events.get(live.id))
            self.check_balances(member_id, live)
            self.check_reversals(member_id, live)
            self.check_lots(member_id, live, events)
            self.check_replay(member_id, live, events)

    def check_balances(self, member_id: str, member: Member) -> None:
        remaining = sum(lot.remaining for lot in member.lots.values())
        assert member.total_points == remaining
        balance = member.balance_at(self.now)
        assert balance["available"] + balance["pending"] + balance["due"] == remaining
        assert balance == expected_balance(member, self.now), f"{member_id}: {balance} at {self.now}"
        life = member.lifetime
        assert life["earned"] - life["redeemed"] - life["expired"] - life["reversed"] + life["adjusted"] == remaining, (
            f"{member_id}: lifetime {life} does not roll forward to {remaining}"
        )
        assert life["earned"] == sum(lot.points for lot in member.lots.values() if lot.source.startswith("purchase:"))
        assert life["earned"] == sum(p["points"] for p in member.purchases.values())
        assert life["expired"] == sum(lot.expired for lot in member.lots.values())
        assert life["reversed"] == sum(lot.reversed for lot in member.lots.values())
        assert life["redeemed"] == sum(r["points"] for r in member.redemptions.values() if not r["cancelled"])
        assert life["adjusted"] == sum(self.adjusted[member_id])
        assert member.tier in TIER_NAMES

    def check_reversals(self, member_id: str, member: Member) -> None:
        mine = {purchase_key(PARTNER, t): p for t, p in self.purchases.items() if p["member"] == member_id}
        assert set(member.purchases) == set(mine)
        for key, purchase in member.purchases.items():
            model = mine[key]
            assert purchase["amount"] == model["amount"] and purchase["points"] == model["points"]
            assert purchase["returned"] == model["returned"]
            assert 0 <= purchase["returned"] <= purchase["amount"], purchase
            assert 0 <= purchase["reversed_points"] <= purchase["points"], purchase
            if purchase["returned"] == purchase["amount"]:
                assert purchase["reversed_points"] == purchase["points"], purchase
        redeemed = {r: x for r, x in self.redemptions.items() if x["member"] == member_id}
        assert set(member.redemptions) == set(redeemed)
        for rid, redemption in member.redemptions.items():
            assert redemption["points"] == redeemed[rid]["points"]
            assert redemption["cancelled"] == (redeemed[rid]["cancel"] is not None)

    def check_lots(self, member_id: str, member: Member, events: list[Member.Event]) -> None:
        spent: dict[str, int] = {}  # points of each lot still out: live redemptions and debits
        for redemption in member.redemptions.values():
            if not redemption["cancelled"]:
                for lot_id, points in redemption["consumed"]:
                    spent[lot_id] = spent.get(lot_id, 0) + points
        for ev in events:
            if isinstance(ev, Member.PointsAdjusted):
                for lot_id, points in ev.consumed:
                    spent[lot_id] = spent.get(lot_id, 0) + points
        for lot in member.lots.values():
            if lot.points < 0:
                assert lot.remaining + lot.settled == lot.points and lot.expired == 0 and lot.reversed == 0, lot
                assert lot.points <= lot.remaining <= 0, lot
                continue
            outstanding = spent.get(lot.lot_id, 0)
            assert lot.points == lot.remaining + outstanding + lot.expired + lot.reversed + lot.settled, (
                lot, outstanding)
            assert min(lot.expired, lot.reversed, outstanding) >= 0, lot
            # Only points still spent can be clawed back below zero: no point of a lot is
            # both expired and reversed.
            # Points that paid a debt were spent too: a return claws them back. (A lot below zero
            # that a debt settlement lifted has settled < 0: it is not spending.)
            assert lot.remaining + outstanding + max(lot.settled, 0) >= 0, (
                f"{member_id}: lot {lot.lot_id} is {lot.remaining} with only {outstanding} still spent; "
                f"expired {lot.expired} + reversed {lot.reversed} > earned {lot.points}"
            )

    def check_replay(self, member_id: str, live: Member, events: list[Member.Event]) -> None:
        assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
        assert events[-1].originator_version == live.version
        expected = member_state(live)
        replayed = replay_member(events)
        assert replayed is not None
        assert member_state(replayed) == expected, f"{member_id}: replay_member differs from the live aggregate"
        assert member_state(walk_events(events)) == expected, f"{member_id}: projecting the events differs"
        # A fresh load (no cache) starts from the latest snapshot. Without one it would project
        # the same events as walk_events just did, so it is only worth its cost with a snapshot.
        assert self.ledger.snapshots is not None
        if list(self.ledger.snapshots.get(live.id, desc=True, limit=1)):
            fresh = self.ledger.repository.get(live.id, version=live.version)
            assert member_state(fresh) == expected, f"{member_id}: a fresh load differs from the live aggregate"


LedgerMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=50,
    deadline=None,
    database=None,  # nothing written into the repository's .hypothesis directory
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestLedgerInvariants = LedgerMachine.TestCase
