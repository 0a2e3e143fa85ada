"""The same ledger story on SQLite and PostgreSQL, through the real recorders."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from application.commands import (
    Adjust,
    CancelRedemption,
    CreateProgram,
    EnrolMember,
    ExpirePoints,
    RecordPurchase,
    Redeem,
    RegisterPartner,
    ReturnPurchase,
    ReviewTier,
)
from application.errors import IdempotencyConflict
from application.ledger import Ledger
from domain.errors import InsufficientPoints
from domain.member import Member, replay_member
from infrastructure.bootstrap import build_ledger
from infrastructure.config import Config

START = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
RULES = {
    "earn_rate": "2",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 3},
    "pending_days": 0,
    "tiers": [
        {"name": "blue", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "gold", "qualifying_spend": "1000", "multiplier": "2"},
    ],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 500,
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def open_ledger(url: str, clock: Clock, create_schema: bool = True) -> Ledger:
    return build_ledger(Config(database_url=url), clock=clock, create_schema=create_schema)


def purchase(txn: str, amount: str, member_id: str = "ann", at: datetime | None = None) -> RecordPurchase:
    return RecordPurchase(actor="key:pos-1", partner_id="grocer", transaction_id=txn, store_id="g-1",
                          amount=Decimal(amount), currency="EUR", member_id=member_id, occurred_at=at)


def set_up(ledger: Ledger, members: tuple[str, ...] = ("ann",)) -> None:
    ledger.execute(CreateProgram(actor="admin", program_id="club", name="Club", currency="EUR",
                                 rules=RULES, effective_at=START - timedelta(days=30)))
    ledger.execute(RegisterPartner(actor="admin", partner_id="grocer", name="Grocer", program_id="club",
                                   stores=["g-1", "g-2"]))
    for member_id in members:
        ledger.execute(EnrolMember(actor="admin", program_id="club", member_id=member_id,
                                   card_number=f"card-{member_id}", occurred_at=START))


@pytest.fixture
def clock() -> Clock:
    return Clock(START + timedelta(hours=1))


@pytest.fixture
def ledger(database_url: str, clock: Clock):
    ledger = open_ledger(database_url, clock)
    set_up(ledger)
    yield ledger
    ledger.close()


def test_a_year_of_one_member_survives_a_restart(database_url: str, ledger: Ledger, clock: Clock) -> None:
    # Ann buys for 300 EUR: 600 points at blue; a repeat of the same posting changes nothing.
    first = ledger.execute(purchase("t-1", "300.00", at=START))
    again = ledger.execute(purchase("t-1", "300.0", at=START))
    assert first.body["points_earned"] == 600 and not first.replayed
    assert again.replayed and again.body == first.body
    with pytest.raises(IdempotencyConflict):
        ledger.execute(purchase("t-1", "301.00", at=START))

    # She spends 500, returns half the purchase (300 points back out of the lot: 100 remain,
    # 200 are clawed back), and support credits 50 goodwill points.
    clock.now = START + timedelta(days=2)
    ledger.execute(Redeem(actor="key:pos-1", member_id="ann", redemption_id="r-1", points=500))
    ret = ledger.execute(ReturnPurchase(actor="key:pos-1", partner_id="grocer", transaction_id="t-1-r",
                                        original_transaction_id="t-1", amount=Decimal("150")))
    assert ret.body["points_reversed"] == 300
    assert ret.body["balance"]["available"] == -200
    ledger.execute(Adjust(actor="support:sam", member_id="ann", adjustment_id="a-1", points=50,
                          reason="goodwill", note="late delivery"))

    # Cancelling the redemption restores its 500 points to the lot they came from.
    cancelled = ledger.execute(CancelRedemption(actor="support:sam", member_id="ann", redemption_id="r-1"))
    assert cancelled.body["points_restored"] == 500
    assert ledger.member_summary("ann")["balance"]["available"] == 350

    # Three months on (day 90) the purchase's lot expires; the goodwill lot, earned on day 2,
    # lasts until day 92. The job run twice on day 91 expires the purchase lot once.
    clock.now = START + timedelta(days=91, hours=1)
    as_of = START + timedelta(days=91)
    assert ledger.execute(ExpirePoints(actor="job", member_id="ann", as_of=as_of)).body["points_expired"] == 300
    assert ledger.execute(ExpirePoints(actor="job", member_id="ann", as_of=as_of)).body["points_expired"] == 0
    summary = ledger.member_summary("ann")
    assert summary["balance"]["available"] == 50
    assert summary["lifetime"] == {"earned": 600, "redeemed": 0, "expired": 300, "reversed": 300, "adjusted": 50}

    # An auditor asks what the balance was on day 1, and what was known before the return.
    assert ledger.balance_as_of("ann", as_of=START + timedelta(days=1))["available"] == 600

    # A restart: a new process on the same database sees the same state and the same receipts.
    before = ledger.member_summary("ann")
    ledger.close()
    reopened = open_ledger(database_url, clock, create_schema=False)
    try:
        assert reopened.member_summary("ann") == before
        replayed = reopened.execute(purchase("t-1", "300", at=START))
        assert replayed.replayed and replayed.body == first.body
        stored = list(reopened.events.get(reopened.get_member("ann").id))
        rebuilt = replay_member(stored)
        assert rebuilt is not None and rebuilt.lifetime == summary["lifetime"]
        assert [type(e).__name__ for e in stored].count("PurchaseRecorded") == 1
    finally:
        reopened.close()


def test_tier_upgrade_and_review_downgrade(ledger: Ledger, clock: Clock) -> None:
    first = ledger.execute(purchase("t-1", "1000", at=START))
    assert first.body["points_earned"] == 2000 and first.body["tier"] == "gold"
    assert ledger.execute(purchase("t-2", "10", at=START + timedelta(minutes=5))).body["points_earned"] == 40
    clock.now = START + timedelta(days=400)
    review = ledger.execute(ReviewTier(actor="job", member_id="ann", as_of=START + timedelta(days=399)))
    assert review.body == {"member_id": "ann", "tier": "blue", "changed": "down"}


def test_two_racing_identical_postings_apply_once(database_url: str, ledger: Ledger, clock: Clock) -> None:
    # Two server processes (two ledgers, two pools) receive the same posting at the same moment.
    other = open_ledger(database_url, clock, create_schema=False)
    barrier = threading.Barrier(8)
    outcomes, errors = [], []

    def post(target: Ledger) -> None:
        barrier.wait()
        try:
            outcomes.append(target.execute(purchase("t-race", "50", at=START)))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=post, args=(ledger if i % 2 else other,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()

    assert errors == []
    assert len(outcomes) == 8
    assert sum(not o.replayed for o in outcomes) == 1
    assert all(o.body == outcomes[0].body for o in outcomes)
    member = ledger.get_member("ann")
    assert member.lifetime["earned"] == 100
    assert len(member.purchases) == 1


def test_racing_redemptions_never_overdraw(database_url: str, ledger: Ledger, clock: Clock) -> None:
    ledger.execute(purchase("t-1", "500", at=START))  # 1000 points
    other = open_ledger(database_url, clock, create_schema=False)
    barrier = threading.Barrier(10)
    accepted, refused, errors = [], [], []

    def redeem(index: int) -> None:
        target = ledger if index % 2 else other
        barrier.wait()
        try:
            accepted.append(target.execute(Redeem(actor="key:pos-1", member_id="ann",
                                                  redemption_id=f"r-{index}", points=300)))
        except InsufficientPoints as error:
            refused.append(error)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=redeem, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()

    assert errors == []
    assert (len(accepted), len(refused)) == (3, 7)
    member = ledger.get_member("ann")
    assert member.balance_at(clock.now)["available"] == 100
    assert member.lifetime["redeemed"] == 900
    assert all(lot.remaining >= 0 for lot in member.lots.values())


def test_a_batch_that_loses_a_race_is_retried_command_by_command(
    database_url: str, ledger: Ledger, clock: Clock
) -> None:
    # While a batch is being assembled, another process writes to the same member: the batch's
    # save fails on the version clash, and each command is then applied alone, none lost.
    other = open_ledger(database_url, clock, create_schema=False)
    original_save = ledger.save_aggregates
    interfered = []

    def save_after_interference(aggregates):
        if not interfered:
            interfered.append(other.execute(purchase("t-other", "10", at=START)))
        return original_save(aggregates)

    ledger.save_aggregates = save_after_interference  # type: ignore[method-assign]
    results = ledger.execute_batch([purchase(f"t-{i}", "10", at=START) for i in range(5)] + [purchase("t-0", "10", at=START)])
    other.close()

    assert [r.body["points_earned"] for r in results] == [20] * 6
    assert [r.replayed for r in results] == [False] * 5 + [True]
    member = ledger.get_member("ann")
    assert member.lifetime["earned"] == 20 * 6  # five batch postings and the interfering one
    assert sorted(member.purchases) == sorted([f"grocer:t-{i}" for i in range(5)] + ["grocer:t-other"])


def test_snapshots_and_replay_agree_for_a_long_lived_member(ledger: Ledger, clock: Clock) -> None:
    results = ledger.execute_batch([purchase(f"t-{i}", "1", at=START + timedelta(seconds=i)) for i in range(130)])
    assert all(not r.replayed for r in results)
    live = ledger.get_member("ann")
    assert live.version == Member.INITIAL_VERSION + 260  # snapshots were taken at versions 100 and 200
    assert ledger.snapshots is not None and list(ledger.snapshots.get(live.id))
    rebuilt = replay_member(list(ledger.events.get(live.id)))
    assert rebuilt is not None
    assert rebuilt.lots == live.lots and rebuilt.lifetime == live.lifetime


def test_as_of_balances_from_snapshots_equal_full_replays(ledger: Ledger, clock: Clock) -> None:
    # 130 purchases a day apart, then redemptions: snapshots exist at versions 100 and 200.
    clock.now = START + timedelta(days=200)
    ledger.execute_batch([purchase(f"t-{i}", "5", at=START + timedelta(days=i)) for i in range(130)])
    ledger.execute_batch([Redeem(actor="pos", member_id="ann", redemption_id=f"r-{i}", points=7,
                                 occurred_at=START + timedelta(days=131 + i)) for i in range(30)])
    events = list(ledger.events.get(ledger.get_member("ann").id))
    assert ledger.snapshots is not None and len(list(ledger.snapshots.get(events[0].originator_id))) >= 2
    recorded = [e.timestamp for e in events]
    for as_of in [START + timedelta(days=d, hours=1) for d in (0, 10, 49, 50, 99, 120, 140, 160, 199)]:
        for known_at in (None, recorded[len(recorded) // 3], recorded[-40]):
            expected = replay_member(events, as_of=as_of, known_at=known_at)
            assert expected is not None
            answer = ledger.balance_as_of("ann", as_of=as_of, known_at=known_at)
            balance = expected.balance_at(as_of)
            assert (answer["available"], answer["pending"], answer["tier"]) == (
                balance["available"], balance["pending"], expected.tier), (as_of, known_at)
