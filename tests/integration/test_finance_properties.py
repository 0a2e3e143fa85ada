"""Finance reports under random activity (SQLite): for random periods the liability roll-forward
closes, its closing and opening equal the members' balances replayed from the event log (in
total and per issuing partner), the monthly rows chain, settlement equals the flows read off
the events, and revenue never recognises more than was allocated."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.commands import (
    Adjust,
    CancelRedemption,
    Command,
    CreateProgram,
    EnrolMember,
    ExpirePoints,
    RecordPurchase,
    Redeem,
    RegisterPartner,
    ReturnPurchase,
    ReviseProgram,
)
from application.errors import ApplicationError
from application.ledger import Ledger
from domain.errors import DomainError
from domain.identity import member_id_to_uuid
from domain.member import Member, replay_member
from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config
from projections.members import issuer_of_source
from projections.reports import FinanceReports, Period

UTC = timezone.utc
BASE = datetime(2025, 1, 1, 8, 0, tzinfo=UTC)
INCEPTION = date(2024, 11, 1)  # before the program and any period drawn
MEMBERS = ("ann", "bob", "cat")
PARTNERS = ("a", "b")
STORES = {"a": "a-1", "b": "b-1"}
RULES = {
    "earn_rate": "1",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 2},
    "pending_days": 0,
    "tiers": [{"name": "blue", "qualifying_spend": "0", "multiplier": "1"}],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 500,
}
CENT = Decimal("0.01")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


member = st.integers(0, len(MEMBERS) - 1)
day = st.integers(0, 150)
operation = st.one_of(
    st.tuples(st.just("buy"), day, member, st.integers(0, 1), st.integers(100, 40_000)),
    st.tuples(st.just("buy"), day, member, st.integers(0, 1), st.integers(100, 40_000)),
    st.tuples(st.just("return"), day, member, st.integers(0, 50), st.integers(1, 100)),
    st.tuples(st.just("redeem"), day, member, st.integers(1, 110), st.integers(0, 2)),
    st.tuples(st.just("redeem"), day, member, st.integers(1, 110), st.integers(0, 2)),
    st.tuples(st.just("cancel"), day, member, st.integers(0, 50)),
    st.tuples(st.just("cancel"), day, member, st.integers(0, 50)),
    st.tuples(st.just("expire"), day, member),
    st.tuples(st.just("adjust"), day, member, st.integers(-300, 300).filter(bool)),
    st.tuples(st.just("revise"), day, st.sampled_from(["0.01", "0.02", "0.005"]),
              st.sampled_from(["0", "0.5", "0.8", "1"])),
)
period = st.tuples(st.integers(-40, 190), st.integers(0, 130)).map(
    lambda p: Period(BASE.date() + timedelta(days=p[0]), BASE.date() + timedelta(days=p[0] + p[1])))


def money(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def end_of(day_: date) -> datetime:
    return datetime.combine(day_, time.max, tzinfo=UTC)


def play(ledger: Ledger, clock: Clock, operations: list[tuple[Any, ...]], delays: list[int]) -> None:
    """Runs the operations, each effective a minute after the one before at the latest. Most are
    recorded as they happen; one with a delay is recorded that many days late (a backdated
    posting). Commands the ledger refuses (not enough points, nothing to cancel) are skipped."""
    purchases: dict[str, list[tuple[str, str, Decimal]]] = defaultdict(list)  # member -> (partner, txn, amount)
    redemptions: dict[str, list[str]] = defaultdict(list)
    timed = [(BASE + timedelta(days=op[1], minutes=index), op)
             for index, op in enumerate(sorted(operations, key=lambda o: o[1]))]
    delays = [*delays, *[0] * len(timed)]
    schedule = sorted(range(len(timed)), key=lambda i: (timed[i][0] + timedelta(days=delays[i]), i))
    for index in schedule:
        when, op = timed[index]
        clock.now = max(clock.now, when + timedelta(minutes=1))
        kind = op[0]
        command: Command
        if kind == "revise":
            command = ReviseProgram(actor="admin", program_id="club", effective_at=when,
                                    changes={"point_value": op[2], "expected_redemption_rate": op[3]})
        else:
            member_id = MEMBERS[op[2]]
            if kind == "buy":
                partner_id, amount = PARTNERS[op[3]], Decimal(op[4]).scaleb(-2)
                txn = f"t{index}"
                purchases[member_id].append((partner_id, txn, amount))
                command = RecordPurchase(actor="pos", partner_id=partner_id, transaction_id=txn,
                                         store_id=STORES[partner_id], amount=amount, currency="EUR",
                                         member_id=member_id, occurred_at=when)
            elif kind == "return":
                if not purchases[member_id]:
                    continue
                partner_id, txn, amount = purchases[member_id][op[3] % len(purchases[member_id])]
                returned = max(money(amount * op[4] / 100), CENT)
                command = ReturnPurchase(actor="pos", partner_id=partner_id, transaction_id=f"t{index}",
                                         original_transaction_id=txn, amount=returned, occurred_at=when)
            elif kind == "redeem":  # a share of what is available (sometimes more: refused)
                available = ledger.get_member(member_id).balance_at(when)["available"]
                if available <= 0:
                    continue
                points = max(available * op[3] // 100, 1)
                redemption_id = f"r{index}"
                command = Redeem(actor="pos", member_id=member_id, redemption_id=redemption_id, points=points,
                                 partner_id=(*PARTNERS, None)[op[4]], occurred_at=when)
            elif kind == "cancel":
                if not redemptions[member_id]:
                    continue
                command = CancelRedemption(actor="support", member_id=member_id, occurred_at=when,
                                           redemption_id=redemptions[member_id].pop(op[3] % len(redemptions[member_id])))
            elif kind == "expire":
                command = ExpirePoints(actor="job", member_id=member_id, as_of=when)
            else:
                command = Adjust(actor="support", member_id=member_id, adjustment_id=f"adj{index}", points=op[3],
                                 reason="goodwill" if op[3] > 0 else "correction", occurred_at=when)
        try:
            outcome = ledger.execute(command)
        except (DomainError, ApplicationError):
            continue
        if kind == "adjust":
            assert outcome.body["status"] == "applied"
        elif kind == "redeem":
            redemptions[MEMBERS[op[2]]].append(outcome.body["redemption_id"])


class EventLog:
    """What the event log itself says, independently of the projections."""

    def __init__(self, ledger: Ledger) -> None:
        self.events = {m: list(ledger.events.get(member_id_to_uuid(m))) for m in MEMBERS}

    def balance(self, at: datetime, issuer: str | None = None) -> int:
        total = 0
        for events in self.events.values():
            replayed = replay_member(events, as_of=at)
            assert isinstance(replayed, Member)
            total += sum(lot.remaining for lot in replayed.lots.values()
                         if issuer is None or issuer_of_source(lot.source) == issuer)
        return total

    def allocated(self, by: date) -> Decimal:
        total = Decimal(0)
        for events in self.events.values():
            bought: dict[str, tuple[Decimal, Decimal]] = {}
            for event in events:
                if isinstance(event, Member.PurchaseRecorded):
                    share = event.allocated_to_points or Decimal(0)
                    bought[event.transaction_id] = (event.amount, share)
                    if event.occurred_at.date() <= by:
                        total += share
                elif isinstance(event, Member.PurchaseReturned) and event.occurred_at.date() <= by:
                    amount, share = bought[event.original_transaction_id]
                    total -= share * event.amount / amount
        return total

    def flows(self, period: Period) -> dict[tuple[str, str], int]:
        """Points issued by one partner ('' = the program) and redeemed at another, in the period."""
        flows: dict[tuple[str, str], int] = defaultdict(int)
        for events in self.events.values():
            issuers: dict[str, str] = {}
            redeemers: dict[str, str] = {}
            for event in events:
                if isinstance(event, Member.PointsAccrued):
                    issuers[event.lot_id] = event.purchase.partition(":")[0]
                elif isinstance(event, Member.PointsAdjusted) and event.lot is not None:
                    issuers[event.lot["lot_id"]] = ""
                elif isinstance(event, Member.PointsRedeemed):
                    redeemers[event.redemption_id] = event.partner_id or ""
                if not period.start <= event.occurred_at.date() <= period.end:
                    continue
                if isinstance(event, Member.PointsRedeemed):
                    for lot_id, points in event.consumed:
                        flows[(issuers[lot_id], redeemers[event.redemption_id])] += points
                elif isinstance(event, Member.RedemptionCancelled):
                    for lot_id, points in [*event.restored, *event.restored_expired]:
                        flows[(issuers[lot_id], redeemers[event.redemption_id])] -= points
        return {k: v for k, v in flows.items() if v and k[1] and k[0] != k[1]}


def check_liability(reports: FinanceReports, log: EventLog, p: Period) -> None:
    program = reports.program("club")
    point_value = program.rules_at(p.end_moment)[1].point_value
    issuers: dict[str | None, dict[str, int]] = {}
    for issuer in (None, *PARTNERS, ""):
        report = reports.liability("club", p, partner_id=issuer, monthly=True)
        rolled = report["points"]
        issuers[issuer] = rolled
        assert rolled["opening"] + rolled["earned"] - rolled["redeemed"] - rolled["expired"] - rolled["reversed"] \
            + rolled["adjusted"] == rolled["closing"], (issuer, rolled)
        assert rolled["closing"] == log.balance(p.end_moment, issuer), (issuer, rolled)
        assert rolled["opening"] == log.balance(end_of(p.start - timedelta(days=1)), issuer), (issuer, rolled)
        assert report["point_value"] == str(point_value)
        assert {k: Decimal(v) for k, v in report["value"].items()} == {
            k: money(v * point_value) for k, v in rolled.items()}
        if "member_balances" in report:
            assert report["member_balances"] == rolled["closing"] and report["closing_equals_member_balances"]
        months = report["months"]
        assert months[0]["from"] == p.start.isoformat() and months[-1]["to"] == p.end.isoformat()
        assert months[0]["points"]["opening"] == rolled["opening"]
        assert months[-1]["points"]["closing"] == rolled["closing"]
        for before, after in zip(months, months[1:]):
            assert before["points"]["closing"] == after["points"]["opening"], (issuer, before, after)
            assert date.fromisoformat(before["to"]) + timedelta(days=1) == date.fromisoformat(after["from"])
        for movement in ("earned", "redeemed", "expired", "reversed", "adjusted"):
            assert sum(m["points"][movement] for m in months) == rolled[movement]
        for m in months:
            row = m["points"]
            assert row["opening"] + row["earned"] - row["redeemed"] - row["expired"] - row["reversed"] \
                + row["adjusted"] == row["closing"]
            assert row["closing"] == log.balance(end_of(date.fromisoformat(m["to"])), issuer)
    for key in issuers[None]:
        assert sum(issuers[i][key] for i in (*PARTNERS, "")) == issuers[None][key], key


def check_settlement(reports: FinanceReports, log: EventLog, p: Period) -> None:
    lines = reports.settlement("club", p)["lines"]
    got = {("" if line["issuer_partner_id"] == "program" else line["issuer_partner_id"],
            line["redeeming_partner_id"]): line["points"] for line in lines}
    assert got == log.flows(p)


def check_revenue(reports: FinanceReports, log: EventLog, p: Period) -> None:
    since_inception = reports.revenue("club", Period(INCEPTION, p.end))
    report = reports.revenue("club", p)
    # The same end, whatever the start: the same cumulative figures.
    assert report["cumulative_recognised"] == since_inception["cumulative_recognised"]
    assert report["contract_liability"] == since_inception["contract_liability"]
    assert report["periods"][-1]["cumulative_recognised"] == report["cumulative_recognised"]
    for line in since_inception["periods"]:
        allocated = log.allocated(date.fromisoformat(line["to"]))
        cumulative = Decimal(line["cumulative_recognised"])
        liability = Decimal(line["contract_liability"])
        assert Decimal(0) <= cumulative <= money(allocated), (line, allocated)
        assert liability >= 0, line
        # Cumulative figures are rounded first, so the rounded figures foot exactly.
        assert liability == money(allocated) - cumulative, (line, allocated)
    assert money(log.allocated(p.end)) == Decimal(since_inception["allocated"])
    assert money(log.allocated(p.end)) - money(log.allocated(p.start - timedelta(days=1))) == Decimal(report["allocated"])
    assert sum(Decimal(line["allocated"]) for line in report["periods"]) == Decimal(report["allocated"])
    assert sum(Decimal(line["recognised"]) for line in report["periods"]) == Decimal(report["recognised"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(operation, min_size=15, max_size=60), periods=st.lists(period, min_size=1, max_size=2),
       delays=st.lists(st.one_of(st.just(0), st.just(0), st.integers(1, 30)), max_size=60))
def test_finance_reports_hold_under_random_activity(operations: list[tuple[Any, ...]], periods: list[Period],
                                                    delays: list[int]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        clock = Clock(BASE)
        config = Config(database_url=f"sqlite:///{Path(directory) / 'ledger.db'}")
        ledger = build_ledger(config, clock=clock)
        model = build_read_model(config, ledger)
        assert model is not None
        try:
            ledger.execute(CreateProgram(actor="admin", program_id="club", name="Club", currency="EUR",
                                         rules=RULES, effective_at=datetime(2024, 12, 1, tzinfo=UTC)))
            for partner_id, store in STORES.items():
                ledger.execute(RegisterPartner(actor="admin", partner_id=partner_id, name=partner_id,
                                               program_id="club", stores=[store]))
            for member_id in MEMBERS:
                ledger.execute(EnrolMember(actor="admin", program_id="club", member_id=member_id,
                                           occurred_at=datetime(2024, 12, 15, tzinfo=UTC)))
            play(ledger, clock, operations, delays)
            model.runner.catch_up()
            reports = FinanceReports(model)
            log = EventLog(ledger)
            assert model.reconcile("club")["ok"]
            for p in periods:
                check_liability(reports, log, p)
                check_settlement(reports, log, p)
                check_revenue(reports, log, p)
        finally:
            model.store.close()
            ledger.close()
