"""Finance reports on SQLite and PostgreSQL, against figures worked out by hand.

Every scenario is small enough to follow on paper; the arithmetic is written next to each
assertion. Reports read the projections, so each test catches the runner up after writing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

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
    ReviseProgram,
)
from application.errors import InvalidRequest
from application.ledger import Ledger
from domain.identity import member_id_to_uuid
from domain.member import Member, replay_member
from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config
from projections.members import issuer_of_source
from projections.read_model import ReadModel
from projections.reports import FinanceReports, Period

UTC = timezone.utc
STORES = {"a": "a-1", "b": "b-1"}


def rules(**changes: Any) -> dict[str, Any]:
    base = {
        "earn_rate": "1",
        "point_value": "0.01",
        "expected_redemption_rate": "0.8",
        "expiry": {"policy": "rolling", "months": 2},
        "pending_days": 0,
        "tiers": [{"name": "blue", "qualifying_spend": "0", "multiplier": "1"}],
        "tier_window_months": 12,
        "adjustment_approval_threshold": 500,
    }
    return {**base, **changes}


def at(month: int, day: int, hour: int = 10, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2025, month, day, hour, minute, second, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Books:
    """A ledger, its read model and the reports, with a clock moved to each command's time."""

    ledger: Ledger
    model: ReadModel
    clock: Clock

    @property
    def reports(self) -> FinanceReports:
        self.model.runner.catch_up()
        return FinanceReports(self.model)

    def do(self, command: Command, when: datetime | None = None) -> Outcome:
        if when is not None:
            self.clock.now = when + timedelta(minutes=1)
        return self.ledger.execute(command)

    # ---- the commands, effective at `when` ---------------------------------------------------

    def program(self, program_id: str = "club", **changes: Any) -> None:
        self.do(CreateProgram(actor="admin", program_id=program_id, name=program_id.title(), currency="EUR",
                              rules=rules(**changes), effective_at=datetime(2024, 12, 1, tzinfo=UTC)))
        for partner_id, store in STORES.items():
            self.do(RegisterPartner(actor="admin", partner_id=partner_id, name=partner_id.upper(),
                                    program_id=program_id, stores=[store]))

    def enrol(self, *member_ids: str, program_id: str = "club") -> None:
        for member_id in member_ids:
            self.do(EnrolMember(actor="admin", program_id=program_id, member_id=member_id,
                                occurred_at=datetime(2024, 12, 15, tzinfo=UTC)))

    def buy(self, member_id: str, partner_id: str, txn: str, amount: str, when: datetime) -> Outcome:
        return self.do(RecordPurchase(actor="pos", partner_id=partner_id, transaction_id=txn,
                                      store_id=STORES[partner_id], amount=Decimal(amount), currency="EUR",
                                      member_id=member_id, occurred_at=when), when)

    def give_back(self, partner_id: str, txn: str, original: str, amount: str, when: datetime) -> Outcome:
        return self.do(ReturnPurchase(actor="pos", partner_id=partner_id, transaction_id=txn,
                                      original_transaction_id=original, amount=Decimal(amount), occurred_at=when),
                       when)

    def redeem(self, member_id: str, redemption_id: str, points: int, when: datetime,
               partner_id: str | None = None) -> Outcome:
        return self.do(Redeem(actor="pos", member_id=member_id, redemption_id=redemption_id, points=points,
                              partner_id=partner_id, occurred_at=when), when)

    def cancel(self, member_id: str, redemption_id: str, when: datetime) -> Outcome:
        return self.do(CancelRedemption(actor="support", member_id=member_id, redemption_id=redemption_id,
                                        occurred_at=when), when)

    def adjust(self, member_id: str, adjustment_id: str, points: int, when: datetime) -> Outcome:
        outcome = self.do(Adjust(actor="support", member_id=member_id, adjustment_id=adjustment_id, points=points,
                                 reason="goodwill" if points > 0 else "correction", occurred_at=when), when)
        assert outcome.body["status"] == "applied"  # below the approval threshold of 500
        return outcome

    def expire(self, member_id: str, when: datetime) -> int:
        return self.do(ExpirePoints(actor="job", member_id=member_id, as_of=when), when).body["points_expired"]

    def revise(self, when: datetime, program_id: str = "club", **changes: Any) -> None:
        self.do(ReviseProgram(actor="admin", program_id=program_id, changes=changes, effective_at=when), when)

    # ---- the event log's own answer ------------------------------------------------------------

    def replayed(self, member_id: str, as_of: datetime) -> Member:
        member = replay_member(self.ledger.events.get(member_id_to_uuid(member_id)), as_of=as_of)
        assert isinstance(member, Member)
        return member

    def balances_at(self, members: tuple[str, ...], day: date, issuer: str | None = None) -> int:
        """Sum of the members' replayed points at the end of `day` (optionally only lots issued by `issuer`)."""
        moment = datetime.combine(day, time.max, tzinfo=UTC)
        return sum(lot.remaining for m in members for lot in self.replayed(m, moment).lots.values()
                   if issuer is None or issuer_of_source(lot.source) == issuer)


@pytest.fixture
def books(database_url: str) -> Iterator[Books]:
    clock = Clock(at(1, 1))
    config = Config(database_url=database_url)
    ledger = build_ledger(config, clock=clock)
    model = build_read_model(config, ledger)
    assert model is not None
    yield Books(ledger, model, clock)
    model.store.close()
    ledger.close()


def points(report: dict[str, Any]) -> dict[str, int]:
    return report["points"]


def closes(row: dict[str, int]) -> bool:
    return row["opening"] + row["earned"] - row["redeemed"] - row["expired"] - row["reversed"] \
        + row["adjusted"] == row["closing"]


FEB, MAR, FEB_MAR = (Period(date(2025, 2, 1), date(2025, 2, 28)), Period(date(2025, 3, 1), date(2025, 3, 31)),
                     Period(date(2025, 2, 1), date(2025, 3, 31)))


# ---- liability roll-forward ---------------------------------------------------------------------

def liability_story(books: Books) -> None:
    """earn_rate 1 point per EUR, point_value 0.01 until 1 March, 0.02 from then; lots expire
    after 2 months; approval threshold 500 points."""
    books.program()
    books.enrol("ann", "bob")
    # Before the period (the opening balance): ann 200 points at A (lot expires 10 Mar),
    # bob 100 points at B (lot expires 20 Mar).
    assert books.buy("ann", "a", "a-1", "200.00", at(1, 10)).body["points_earned"] == 200
    assert books.buy("bob", "b", "b-1", "100.00", at(1, 20)).body["points_earned"] == 100
    # February: ann earns 300 at A; redeems 150 (from her oldest lot, January's: 50 left);
    # returns 100 EUR of the 300 EUR purchase: floor(300 x 100/300) = 100 points reversed;
    # bob is credited 40 goodwill points (a program lot, no partner).
    assert books.buy("ann", "a", "a-2", "300.00", at(2, 5)).body["points_earned"] == 300
    books.redeem("ann", "r-1", 150, at(2, 10))
    assert books.give_back("a", "a-2r", "a-2", "100.00", at(2, 15)).body["points_reversed"] == 100
    books.adjust("bob", "adj-1", 40, at(2, 20))
    # 1 March: a point is worth 0.02 from now on.
    books.revise(datetime(2025, 3, 1, tzinfo=UTC), point_value="0.02")
    # March: bob is debited 30 (from his oldest lot, B's January lot: 70 left); the expiry job
    # expires ann's January lot (50 left) on 11 March and bob's (70 left) on 25 March.
    books.adjust("bob", "adj-2", -30, at(3, 5))
    assert books.expire("ann", at(3, 11)) == 50
    assert books.expire("bob", at(3, 25)) == 70
    # After the period: ann earns 50 at A on 5 April.
    assert books.buy("ann", "a", "a-3", "50.00", at(4, 5)).body["points_earned"] == 50


def test_liability_roll_forward_by_hand(books: Books) -> None:
    liability_story(books)
    report = books.reports.liability("club", FEB_MAR, monthly=True)

    # opening  = 200 (ann, A) + 100 (bob, B)                                  = 300
    # earned   = 300 (ann, 5 Feb)                                             = 300
    # redeemed = 150 (ann, 10 Feb)                                            = 150
    # expired  = 50 (ann, 11 Mar) + 70 (bob, 25 Mar)                          = 120
    # reversed = 100 (ann's return, 15 Feb)                                   = 100
    # adjusted = +40 (bob, 20 Feb) - 30 (bob, 5 Mar)                          = +10
    # closing  = 300 + 300 - 150 - 120 - 100 + 10                             = 240
    expected = {"opening": 300, "earned": 300, "redeemed": 150, "expired": 120, "reversed": 100, "adjusted": 10,
                "closing": 240}
    assert points(report) == expected
    assert closes(points(report))
    # At 0.02 per point (in force on 31 March): 300 x 0.02 = 6.00, ..., 240 x 0.02 = 4.80.
    assert report["point_value"] == "0.02" and report["currency"] == "EUR"
    assert report["value"] == {"opening": "6.00", "earned": "6.00", "redeemed": "3.00", "expired": "2.40",
                               "reversed": "2.00", "adjusted": "0.20", "closing": "4.80"}
    assert (report["from"], report["to"], report["partner_id"]) == ("2025-02-01", "2025-03-31", None)

    # Closing equals the members' balances replayed from the event log at the end of 31 March:
    # ann 300 - 100 (lot of 5 Feb) = 200, January lot 0; bob 40 (goodwill lot), January lot 0.
    assert books.balances_at(("ann", "bob"), date(2025, 3, 31)) == 200 + 40 == expected["closing"]
    # The opening equals the balances at the end of 31 January.
    assert books.balances_at(("ann", "bob"), date(2025, 1, 31)) == expected["opening"]
    # Something happened after the period, so today's balances are not the period-end ones.
    assert "member_balances" not in report

    # February: 300 + 300 - 150 - 0 - 100 + 40 = 390; March: 390 + 0 - 0 - 120 - 0 - 30 = 240.
    months = report["months"]
    assert [(m["month"], m["from"], m["to"]) for m in months] == [
        ("2025-02", "2025-02-01", "2025-02-28"), ("2025-03", "2025-03-01", "2025-03-31")]
    assert months[0]["points"] == {"opening": 300, "earned": 300, "redeemed": 150, "expired": 0, "reversed": 100,
                                   "adjusted": 40, "closing": 390}
    assert months[1]["points"] == {"opening": 390, "earned": 0, "redeemed": 0, "expired": 120, "reversed": 0,
                                   "adjusted": -30, "closing": 240}
    # The months are valued at the report's point value (0.02), so they chain in money too:
    # 390 x 0.02 = 7.80 closes February and opens March.
    assert months[0]["value"]["closing"] == months[1]["value"]["opening"] == "7.80"
    assert months[1]["value"] == {"opening": "7.80", "earned": "0.00", "redeemed": "0.00", "expired": "2.40",
                                  "reversed": "0.00", "adjusted": "-0.60", "closing": "4.80"}
    assert months[0]["points"]["opening"] == expected["opening"]
    assert months[0]["points"]["closing"] == months[1]["points"]["opening"]
    assert months[-1]["points"]["closing"] == expected["closing"]
    assert all(closes(m["points"]) for m in months)
    assert books.balances_at(("ann", "bob"), date(2025, 2, 28)) == 390


def test_liability_values_at_the_point_value_in_force_at_the_period_end(books: Books) -> None:
    liability_story(books)
    reports = books.reports
    # February alone ends before the revision: 0.01 per point. Closing 390 x 0.01 = 3.90.
    february = reports.liability("club", FEB)
    assert february["point_value"] == "0.01"
    assert points(february) == {"opening": 300, "earned": 300, "redeemed": 150, "expired": 0, "reversed": 100,
                                "adjusted": 40, "closing": 390}
    assert february["value"] == {"opening": "3.00", "earned": "3.00", "redeemed": "1.50", "expired": "0.00",
                                 "reversed": "1.00", "adjusted": "0.40", "closing": "3.90"}
    # March alone opens with February's closing: 390, now at 0.02 = 7.80.
    march = reports.liability("club", MAR)
    assert points(march)["opening"] == 390 and points(march)["closing"] == 240
    assert march["value"]["opening"] == "7.80" and march["value"]["closing"] == "4.80"
    # A period ending on the day before the revision (28 Feb 23:59:59.999999) still uses 0.01;
    # one ending on 1 March uses 0.02.
    assert reports.liability("club", Period(date(2025, 2, 28), date(2025, 2, 28)))["point_value"] == "0.01"
    assert reports.liability("club", Period(date(2025, 3, 1), date(2025, 3, 1)))["point_value"] == "0.02"


def test_liability_up_to_today_shows_member_balances(books: Books) -> None:
    liability_story(books)
    # Nothing after 30 April: the closing is compared with today's lots.
    # closing = 240 (31 March) + 50 (ann, 5 April) = 290 = ann 200 + 50, bob 40.
    report = books.reports.liability("club", Period(date(2025, 2, 1), date(2025, 4, 30)), monthly=True)
    assert points(report) == {"opening": 300, "earned": 350, "redeemed": 150, "expired": 120, "reversed": 100,
                              "adjusted": 10, "closing": 290}
    assert report["member_balances"] == 290 and report["closing_equals_member_balances"] is True
    assert books.balances_at(("ann", "bob"), date(2025, 4, 30)) == 290
    assert [m["points"]["closing"] for m in report["months"]] == [390, 240, 290]
    assert [m["points"]["opening"] for m in report["months"]] == [300, 390, 240]


def test_liability_by_issuing_partner_closes_too(books: Books) -> None:
    liability_story(books)
    reports = books.reports

    # Partner A issued ann's lots: opening 200; earned 300; redeemed 150 (from A's January lot);
    # expired 50; reversed 100; no adjustment touched an A lot.
    # closing = 200 + 300 - 150 - 50 - 100 + 0 = 200 = ann's lot of 5 Feb.
    a = reports.liability("club", FEB_MAR, partner_id="a", monthly=True)
    assert a["partner_id"] == "a"
    assert points(a) == {"opening": 200, "earned": 300, "redeemed": 150, "expired": 50, "reversed": 100,
                         "adjusted": 0, "closing": 200}
    assert a["value"]["closing"] == "4.00"  # 200 x 0.02
    assert books.balances_at(("ann", "bob"), date(2025, 3, 31), issuer="a") == 200
    # February for A: 200 + 300 - 150 - 100 = 250; March: 250 - 50 = 200.
    assert [m["points"]["closing"] for m in a["months"]] == [250, 200]
    assert a["months"][1]["points"]["opening"] == 250

    # Partner B issued bob's January lot: opening 100; the debit of 30 came from it (adjusted -30);
    # its last 70 expired. closing = 100 - 70 - 30 = 0.
    b = reports.liability("club", FEB_MAR, partner_id="b", monthly=True)
    assert points(b) == {"opening": 100, "earned": 0, "redeemed": 0, "expired": 70, "reversed": 0,
                         "adjusted": -30, "closing": 0}
    assert books.balances_at(("ann", "bob"), date(2025, 3, 31), issuer="b") == 0
    assert [m["points"]["closing"] for m in b["months"]] == [100, 0]

    # The program itself issued bob's goodwill lot (40), which nobody has touched.
    program = reports.liability("club", FEB_MAR, partner_id="")
    assert points(program)["closing"] == 40 == books.balances_at(("ann", "bob"), date(2025, 3, 31), issuer="")
    # The partners' roll-forwards add up to the program's, line by line.
    total = reports.liability("club", FEB_MAR)
    for key in points(total):
        assert points(a)[key] + points(b)[key] + points(program)[key] == points(total)[key], key

    # Up to today (nothing after April at A), A's closing is compared with A's lots:
    # 200 + 50 (5 April) = 250.
    a_today = reports.liability("club", Period(date(2025, 2, 1), date(2025, 4, 30)), partner_id="a")
    assert points(a_today)["closing"] == 250
    assert a_today["member_balances"] == 250 and a_today["closing_equals_member_balances"] is True


def test_a_period_with_to_before_from_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        Period(date(2025, 3, 1), date(2025, 2, 28))
    assert Period(date(2025, 11, 15), date(2026, 1, 2)).months() == [
        Period(date(2025, 11, 15), date(2025, 11, 30)), Period(date(2025, 12, 1), date(2025, 12, 31)),
        Period(date(2026, 1, 1), date(2026, 1, 2))]


# ---- settlement between partners ----------------------------------------------------------------

def test_settlement_between_partners_by_hand(books: Books) -> None:
    books.program(expiry={"policy": "none"})
    books.enrol("ann", "bob", "cat", "dan")
    books.buy("ann", "a", "a-1", "500.00", at(1, 5))          # ann: 500 points issued by A
    books.buy("bob", "b", "b-1", "100.00", at(1, 6))          # bob: 100 points issued by B
    books.adjust("cat", "adj-1", 50, at(1, 7))                # cat: 50 points issued by the program
    books.buy("dan", "a", "a-2", "30.00", at(1, 2))           # dan: 30 from A (older lot) ...
    books.buy("dan", "b", "b-2", "50.00", at(1, 3))           # ... and 50 from B

    books.redeem("ann", "r-1", 120, at(1, 10), partner_id="b")  # A -> B 120
    books.redeem("ann", "r-2", 80, at(1, 12), partner_id="a")   # A -> A: no settlement
    books.redeem("ann", "r-3", 60, at(1, 15), partner_id="b")   # A -> B 60 ...
    books.cancel("ann", "r-3", at(1, 16))                       # ... cancelled the next day: -60
    books.redeem("bob", "r-4", 30, at(1, 18), partner_id="a")   # B -> A 30
    books.redeem("cat", "r-5", 50, at(1, 20), partner_id="b")   # program -> B 50
    books.redeem("ann", "r-6", 40, at(1, 22))                   # by support, no partner: no settlement
    books.redeem("dan", "r-7", 60, at(1, 23), partner_id="b")   # oldest first: 30 from A's lot (A -> B 30),
    #                                                             30 from B's own lot (B -> B: nothing)
    books.redeem("ann", "r-8", 100, at(1, 25), partner_id="b")  # A -> B 100 in January ...
    books.cancel("ann", "r-8", at(2, 3))                        # ... cancelled in February: -100

    reports = books.reports
    january = reports.settlement("club", Period(date(2025, 1, 1), date(2025, 1, 31)))
    # A owes B: 120 + 60 - 60 + 30 + 100 = 250 points x 0.01 = 2.50
    # B owes A: 30 points = 0.30; the program owes B: 50 points = 0.50.
    assert january["point_value"] == "0.01" and january["currency"] == "EUR"
    assert january["lines"] == [
        {"issuer_partner_id": "program", "redeeming_partner_id": "b", "points": 50, "value": "0.50"},
        {"issuer_partner_id": "a", "redeeming_partner_id": "b", "points": 250, "value": "2.50"},
        {"issuer_partner_id": "b", "redeeming_partner_id": "a", "points": 30, "value": "0.30"},
    ]
    # February: only the cancellation of r-8, which B gives back to A: -100 = -1.00.
    february = reports.settlement("club", Period(date(2025, 2, 1), date(2025, 2, 28)))
    assert february["lines"] == [
        {"issuer_partner_id": "a", "redeeming_partner_id": "b", "points": -100, "value": "-1.00"}]
    # Over both months A owes B the net: 250 - 100 = 150 points = 1.50.
    both = reports.settlement("club", Period(date(2025, 1, 1), date(2025, 2, 28)))
    assert both["lines"] == [
        {"issuer_partner_id": "program", "redeeming_partner_id": "b", "points": 50, "value": "0.50"},
        {"issuer_partner_id": "a", "redeeming_partner_id": "b", "points": 150, "value": "1.50"},
        {"issuer_partner_id": "b", "redeeming_partner_id": "a", "points": 30, "value": "0.30"},
    ]
    # Nothing in March.
    assert reports.settlement("club", Period(date(2025, 3, 1), date(2025, 3, 31)))["lines"] == []

    # A cancelled-on-the-same-day pair nets to nothing and leaves no line.
    books.redeem("bob", "r-9", 20, at(3, 2), partner_id="a")
    books.cancel("bob", "r-9", at(3, 2, 11))
    assert books.reports.settlement("club", Period(date(2025, 3, 1), date(2025, 3, 31)))["lines"] == []


# ---- IFRS 15 revenue ----------------------------------------------------------------------------

def revenue_line(allocated: str, recognised: str, cumulative: str, liability: str, err: str) -> dict[str, str]:
    return {"allocated": allocated, "recognised": recognised, "cumulative_recognised": cumulative,
            "contract_liability": liability, "expected_redemption_rate": err}


def figures(line: dict[str, Any]) -> dict[str, str]:
    return {k: line[k] for k in ("allocated", "recognised", "cumulative_recognised", "contract_liability",
                                 "expected_redemption_rate")}


def month(number: int) -> Period:
    start = date(2025, number, 1)
    return Period(start, date(2025, number + 1, 1) - timedelta(days=1))


def test_revenue_allocation_redemption_revision_and_expiry_by_hand(books: Books) -> None:
    # 5 points per EUR, a point is worth 0.05, 80% of points are expected to be redeemed,
    # lots expire after 3 months.
    books.program(earn_rate="5", point_value="0.05", expected_redemption_rate="0.8",
                  expiry={"policy": "rolling", "months": 3})
    books.enrol("ann")

    # Period 1 (January): ann pays 120.00 at A and earns 120 x 5 = 600 points.
    #   points' stand-alone selling price SSP = 600 x 0.05 x 0.8 = 24.00
    #   allocated A = 120 x 24 / (120 + 24) = 2880 / 144 = 20 (exactly)
    assert books.buy("ann", "a", "a-1", "120.00", at(1, 10)).body["points_earned"] == 600
    recorded = [e for e in books.ledger.events.get(member_id_to_uuid("ann"))
                if isinstance(e, Member.PurchaseRecorded)]
    assert len(recorded) == 1
    assert recorded[0].allocated_to_points == Decimal(120) * Decimal(24) / Decimal(144) == Decimal(20)
    assert (recorded[0].point_value, recorded[0].expected_redemption_rate) == (Decimal("0.05"), Decimal("0.8"))

    # Period 2 (February): ann redeems 240 points.
    #   by redemption = A x R / (E x ERR) = 20 x 240 / (600 x 0.8) = 4800 / 480 = 10.00
    #   by extinction = A x (R + X) / E = 20 x 240 / 600 = 8.00; the larger, 10.00, is recognised.
    books.redeem("ann", "r-1", 240, at(2, 10))
    before_revision = books.reports.revenue("club", Period(date(2025, 1, 1), date(2025, 2, 28)))

    # Period 3 (March): from 1 March only 50% of points are expected to be redeemed.
    #   cumulative = 20 x 240 / (600 x 0.5) = 4800 / 300 = 16.00: 6.00 caught up in March.
    books.revise(datetime(2025, 3, 1, tzinfo=UTC), expected_redemption_rate="0.5")

    # Period 4 (April): the lot (600 - 240 = 360 left) expires on 10 April; the job runs on 11 April.
    #   by extinction = 20 x (240 + 360) / 600 = 20.00 = A: the remaining 4.00 is recognised.
    assert books.expire("ann", at(4, 11)) == 360

    reports = books.reports
    expected = {
        1: revenue_line("20.00", "0.00", "0.00", "20.00", "0.8"),
        2: revenue_line("0.00", "10.00", "10.00", "10.00", "0.8"),
        3: revenue_line("0.00", "6.00", "16.00", "4.00", "0.5"),
        4: revenue_line("0.00", "4.00", "20.00", "0.00", "0.5"),
    }
    for number, line in expected.items():
        report = reports.revenue("club", month(number))
        assert figures(report) == line, number
        assert (report["from"], report["to"], report["currency"]) == (
            month(number).start.isoformat(), month(number).end.isoformat(), "EUR")
        assert len(report["periods"]) == 1 and figures(report["periods"][0]) == line

    # The whole of January to April: 20.00 allocated and recognised; the monthly lines as above.
    whole = reports.revenue("club", Period(date(2025, 1, 1), date(2025, 4, 30)))
    assert figures(whole) == revenue_line("20.00", "20.00", "20.00", "0.00", "0.5")
    assert [figures(p) for p in whole["periods"]] == list(expected.values())

    # The changed estimate was caught up in March: January and February, reported again, are
    # exactly what they were before the revision.
    assert reports.revenue("club", Period(date(2025, 1, 1), date(2025, 2, 28))) == before_revision
    assert [figures(p) for p in before_revision["periods"]] == [expected[1], expected[2]]

    # Cumulative never exceeds the allocation, and the liability is what is left of it.
    for line in whole["periods"]:
        assert Decimal(line["cumulative_recognised"]) <= Decimal("20.00")
        assert Decimal(line["contract_liability"]) == Decimal("20.00") - Decimal(line["cumulative_recognised"])

    # Later, after everything is recognised: nothing more, however far on.
    assert figures(reports.revenue("club", Period(date(2025, 5, 1), date(2025, 12, 31)))) == revenue_line(
        "0.00", "0.00", "20.00", "0.00", "0.5")


def test_revenue_allocation_is_recorded_at_full_precision_and_returns_take_their_share(books: Books) -> None:
    books.program(earn_rate="5", point_value="0.05", expected_redemption_rate="0.8",
                  expiry={"policy": "none"})
    books.enrol("ann")
    # 100.00 EUR earns 500 points; SSP = 500 x 0.05 x 0.8 = 20.00;
    # allocated = 100 x 20 / (100 + 20) = 2000 / 120 = 16.666... (28 significant digits).
    books.buy("ann", "a", "a-1", "100.00", at(1, 10))
    recorded = [e for e in books.ledger.events.get(member_id_to_uuid("ann"))
                if isinstance(e, Member.PurchaseRecorded)]
    assert recorded[0].allocated_to_points == Decimal("16.66666666666666666666666667")
    assert recorded[0].allocated_to_points == Decimal(2000) / Decimal(120)

    # A return of 30.00 of it in February takes back 30/100 of the allocation, 5.000..., and
    # floor(500 x 30/100) = 150 points.
    assert books.give_back("a", "a-1r", "a-1", "30.00", at(2, 10)).body["points_reversed"] == 150
    reports = books.reports
    january = reports.revenue("club", month(1))
    assert january["allocated"] == "16.67" and january["contract_liability"] == "16.67"
    february = reports.revenue("club", month(2))
    # allocated in February: -16.666... x 30 / 100 = -5.00; left 11.666... = 11.67.
    assert february["allocated"] == "-5.00"
    assert february["recognised"] == "0.00" and february["contract_liability"] == "11.67"

    # March: ann redeems 140 of her 350 points.
    #   cumulative = 11.666... x 140 / (350 x 0.8) = 11.666... x 0.5 = 5.8333... = 5.83
    books.redeem("ann", "r-1", 140, at(3, 10))
    march = books.reports.revenue("club", month(3))
    exact = (Decimal(2000) / Decimal(120) * 7 / 10) * 140 / (350 * Decimal("0.8"))
    assert march["cumulative_recognised"] == "5.83" == str(exact.quantize(Decimal("0.01")))
    assert Decimal(march["cumulative_recognised"]) <= Decimal("11.67")


def test_revenue_rounded_figures_foot(books: Books) -> None:
    """What finance reads must add up: contract liability = allocated - cumulative recognised,
    and the periods' recognised revenue adds up to the cumulative, in the rounded figures."""
    books.program(earn_rate="5", point_value="0.05", expected_redemption_rate="0.8",
                  expiry={"policy": "none"})
    books.enrol("ann")
    # allocated = 100 x 20 / 120 = 16.666...: shown as 16.67.
    books.buy("ann", "a", "a-1", "100.00", at(1, 10))
    # Redeeming 200 of 500 points: 16.666... x 200 / (500 x 0.8) = 8.333... recognised in
    # February (8.33), and another 200 in March: 16.666... in all (16.67), 8.333... in March.
    books.redeem("ann", "r-1", 200, at(2, 10))
    books.redeem("ann", "r-2", 200, at(3, 10))
    report = books.reports.revenue("club", Period(date(2025, 1, 1), date(2025, 3, 31)))
    allocated = Decimal(report["allocated"])
    cumulative = Decimal(report["cumulative_recognised"])
    assert allocated == Decimal("16.67") and cumulative == Decimal("16.67")
    assert Decimal(report["contract_liability"]) == allocated - cumulative
    unfooted = []
    # The months' recognised revenue, 0.00 + 8.33 + 8.33, must add up to the cumulative 16.67.
    months_total = sum(Decimal(p["recognised"]) for p in report["periods"])
    if months_total != cumulative:
        unfooted.append(f"months recognised add up to {months_total}, cumulative is {cumulative}")
    # At the end of February: contract liability + cumulative recognised = allocated so far (16.67).
    february = report["periods"][1]
    allocated_by_february = sum(Decimal(p["allocated"]) for p in report["periods"][:2])
    if Decimal(february["contract_liability"]) + Decimal(february["cumulative_recognised"]) != allocated_by_february:
        unfooted.append(f"February: liability {february['contract_liability']} + cumulative "
                        f"{february['cumulative_recognised']} != allocated {allocated_by_february}")
    assert unfooted == []


# ---- partner statement reconciliation ---------------------------------------------------------

STATEMENT = """transaction_id,amount,occurred_at
t-1,100.00,2025-02-01T01:00:00+01:00
t-2,250,2025-02-05T10:00:00Z
t-2r,-50.00,2025-02-10T10:00:00Z
t-3,85.00,2025-02-07T10:00:00Z
t-9,12.50,2025-02-12T10:00:00Z
t-0,40.00,2025-01-31T23:00:00Z
t-6,30.00,2025-03-01T00:30:00Z
"""


def test_partner_statement_reconciliation_by_hand(books: Books) -> None:
    books.program()
    books.enrol("ann", "bob")
    # Partner A's postings in the ledger:
    books.buy("ann", "a", "t-0", "40.00", at(1, 31, 23))              # before February
    books.buy("ann", "a", "t-1", "100.00", at(2, 1, 0))               # first instant of February
    books.buy("bob", "a", "t-2", "250.00", at(2, 5))
    books.buy("ann", "a", "t-3", "80.00", at(2, 7))                   # the statement says 85.00
    books.buy("bob", "a", "t-4", "60.00", at(2, 9))                   # not on the statement
    books.give_back("a", "t-2r", "t-2", "50.00", at(2, 10))           # a return: -50.00
    books.buy("ann", "a", "t-5", "10.00", at(2, 28, 23, 59, 59))      # last second of February, not on it
    books.buy("ann", "a", "t-6", "30.00", at(3, 1, 0))                # after February
    # Partner B's postings, with an id that A also uses, stay out of A's reconciliation.
    books.buy("ann", "b", "t-1", "999.00", at(2, 3))
    books.buy("bob", "b", "t-b", "70.00", at(2, 6))

    result = books.reports.partner_statement("a", FEB, STATEMENT)
    assert (result["partner_id"], result["from"], result["to"]) == ("a", "2025-02-01", "2025-02-28")

    def amounts(rows: list[dict[str, Any]], *fields: str) -> list[tuple[Any, ...]]:
        return [(row["transaction_id"], *(Decimal(row[f]) for f in fields)) for row in rows]

    # t-1 (01:00+01:00 is 00:00 UTC on 1 Feb), t-2 (250 = 250.00) and the return t-2r (-50.00) match.
    assert amounts(result["matched"], "amount") == [("t-1", Decimal("100")), ("t-2", Decimal("250")),
                                                    ("t-2r", Decimal("-50"))]
    # t-3: the partner says 85.00, the ledger 80.00: 5.00 more on the statement.
    assert amounts(result["amount_mismatches"], "statement_amount", "ledger_amount", "difference") == [
        ("t-3", Decimal("85"), Decimal("80"), Decimal("5"))]
    # t-9 is on the statement only.
    assert amounts(result["missing_in_ledger"], "amount") == [("t-9", Decimal("12.50"))]
    # t-4 and t-5 are in the ledger only (t-0 and t-6 are outside February, B's t-1 is B's).
    assert amounts(result["missing_in_statement"], "amount") == [("t-4", Decimal("60")), ("t-5", Decimal("10"))]

    totals = {name: (t["count"], Decimal(t["amount"])) if isinstance(t, dict) else t
              for name, t in result["totals"].items()}
    assert totals == {
        # statement, in February: 100 + 250 - 50 + 85 + 12.50 = 397.50 in 5 rows
        "statement": (5, Decimal("397.50")),
        # ledger, A in February: 100 + 250 + 80 + 60 - 50 + 10 = 450.00 in 6 rows
        "ledger": (6, Decimal("450.00")),
        "matched": (3, Decimal("300.00")),              # 100 + 250 - 50
        "missing_in_ledger": (1, Decimal("12.50")),
        "missing_in_statement": (2, Decimal("70.00")),  # 60 + 10
        "amount_mismatches": (1, Decimal("5.00")),      # the difference 85 - 80
        "outside_period": 2,                            # t-0 and t-6
    }
    # Both sides reconcile: statement = matched + mismatched (statement side) + missing in ledger,
    # 300 + 85 + 12.50 = 397.50; ledger = matched + mismatched (ledger side) + missing in
    # statement, 300 + 80 + 70 = 450.
    assert totals["matched"][1] + Decimal("85") + totals["missing_in_ledger"][1] == totals["statement"][1]
    assert totals["matched"][1] + Decimal("80") + totals["missing_in_statement"][1] == totals["ledger"][1]


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("t-1,100.00,2025-02-01T10:00:00Z\n", id="no header"),
    pytest.param("transaction_id,amount\nt-1,100.00\n", id="header without occurred_at"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,ten,2025-02-01T10:00:00Z\n", id="bad amount"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,,2025-02-01T10:00:00Z\n", id="empty amount"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,NaN,2025-02-01T10:00:00Z\n", id="NaN amount"),
    # Exponents: 1e1000000 overflowed Decimal's arithmetic (a 500); none is an amount a till prints.
    pytest.param("transaction_id,amount,occurred_at\nt-1,1e1000000,2025-02-01T10:00:00Z\n", id="huge exponent"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,-1E+2,2025-02-01T10:00:00Z\n", id="exponent"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,1234567890123456.00,2025-02-01T10:00:00Z\n",
                 id="16 digits before the point"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,100.00,yesterday\n", id="bad time"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,100.00,2025-02-01T10:00:00\n", id="time without offset"),
    pytest.param("transaction_id,amount,occurred_at\n,100.00,2025-02-01T10:00:00Z\n", id="no transaction id"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,100.00\n", id="short row"),
    pytest.param("transaction_id,amount,occurred_at\nt-1,100.00,2025-02-01T10:00:00Z\n"
                 "t-1,100.00,2025-02-02T10:00:00Z\n", id="duplicate id"),
])
def test_malformed_statements_are_refused(books: Books, text: str) -> None:
    books.program()
    with pytest.raises(InvalidRequest) as raised:
        books.reports.partner_statement("a", FEB, text)
    assert raised.value.field == "statement"


def test_a_transaction_id_twice_on_a_statement_is_refused_even_across_the_period_end(books: Books) -> None:
    """A statement that lists one transaction twice is malformed whatever the dates: the copy
    outside the period must not be silently counted as 'outside the period'."""
    books.program()
    reports = books.reports
    header = "transaction_id,amount,occurred_at\n"
    inside, after, before = ("t-1,100.00,2025-02-28T10:00:00Z\n", "t-1,100.00,2025-03-01T10:00:00Z\n",
                             "t-1,100.00,2025-01-31T10:00:00Z\n")
    accepted = []
    for rows in (inside + after, after + inside, before + after):
        try:
            reports.partner_statement("a", FEB, header + rows)
        except InvalidRequest:
            continue
        accepted.append(rows)
    assert accepted == []


def test_periods_are_utc_days_whatever_the_offset_a_posting_was_sent_with(books: Books) -> None:
    books.program()
    books.enrol("ann")
    # 00:30 on 1 March in Paris (+01:00) is 23:30 on 28 February UTC: a February posting.
    paris = timezone(timedelta(hours=1))
    books.buy("ann", "a", "t-1", "70.00", datetime(2025, 3, 1, 0, 30, tzinfo=paris))
    # 23:30 on 31 January in Sao Paulo (-03:00) is 02:30 on 1 February UTC: also February.
    books.buy("ann", "a", "t-2", "30.00", datetime(2025, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-3))))
    reports = books.reports
    assert points(reports.liability("club", FEB))["earned"] == 70 + 30
    assert points(reports.liability("club", MAR))["earned"] == 0
    assert points(reports.liability("club", Period(date(2025, 1, 1), date(2025, 1, 31))))["earned"] == 0
    statement = "transaction_id,amount,occurred_at\nt-1,70.00,2025-03-01T00:30:00+01:00\nt-2,30.00,2025-02-01T02:30:00Z\n"
    result = reports.partner_statement("a", FEB, statement)
    assert [r["transaction_id"] for r in result["matched"]] == ["t-1", "t-2"]
    assert result["totals"]["outside_period"] == 0 and result["missing_in_statement"] == []


def test_statement_totals_are_exact_however_many_digits_they_need(books: Books) -> None:
    """Sums of amounts with 15 digits before the point and 10 after need more than Decimal's
    default 28 digits: they are not rounded."""
    books.program()
    rows = "".join(f"big-{i},999999999999999.9999999999,2025-02-{1 + i % 28:02d}T10:00:00Z\n" for i in range(1100))
    result = books.reports.partner_statement("a", FEB, "transaction_id,amount,occurred_at\n" + rows)
    assert result["totals"]["statement"] == {"count": 1100, "amount": "1099999999999999999.9999998900"}
    assert result["totals"]["missing_in_ledger"]["amount"] == "1099999999999999999.9999998900"
