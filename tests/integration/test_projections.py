"""The projections on SQLite and PostgreSQL: the projection path equals the aggregate path, a
rebuild equals the live tables, a crash mid-batch is rolled back whole and resumed exactly once,
racing runners never double count, and the liability roll-forward closes per issuing partner."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from application.commands import (
    Adjust,
    CancelRedemption,
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
from application.ledger import Ledger
from domain.errors import InsufficientPoints
from domain.member import Member
from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config
from projections.audit import AuditProjection, stored_events
from projections.base import Projection
from projections.liability import LiabilityProjection
from projections.members import MemberProjection, issuer_of_source
from projections.postings import PostingsProjection
from projections.read_model import ReadModel
from projections.runner import ProjectionRunner
from projections.store import open_store

START = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
RULES = {
    "earn_rate": "2",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 3},
    "pending_days": 3,
    "tiers": [
        {"name": "blue", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "gold", "qualifying_spend": "1000", "multiplier": "2"},
    ],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 500,
}
CLUB_MEMBERS = ("ann", "bob", "cat", "dan", "eve")
SPA_MEMBERS = ("zed",)
MEMBERS = CLUB_MEMBERS + SPA_MEMBERS
REQUIRED_TABLES = ("member_summaries", "member_lots", "card_index", "partner_postings", "audit_trail",
                   "liability_movements")
CORE = ("members", "postings", "audit", "liability")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# ---- the story ---------------------------------------------------------------------------------

STORES = {"grocer": "g-1", "fuel": "f-1", "spa-co": "s-1"}
LIFETIME = ("earned", "redeemed", "expired", "reversed", "adjusted")


def purchase(partner: str, txn: str, amount: str, member_id: str, at: datetime) -> RecordPurchase:
    return RecordPurchase(actor=f"key:{partner}-pos", partner_id=partner, transaction_id=txn, store_id=STORES[partner],
                          amount=Decimal(amount), currency="EUR", member_id=member_id, occurred_at=at)


def ok(results: list[Any]) -> list[Outcome]:
    for result in results:
        assert isinstance(result, Outcome), result
    return results


def day_0(ledger: Ledger, clock: Clock) -> None:
    """Two programs, three partners, six members; first purchases, all pending for 3 days; cat
    reaches gold with her first purchase."""
    clock.now = START + timedelta(hours=1)
    for program in ("club", "spa"):
        ledger.execute(CreateProgram(actor="admin", program_id=program, name=program.title(), currency="EUR",
                                     rules=RULES, effective_at=START - timedelta(days=30)))
    for partner, program, store in (("grocer", "club", "g-1"), ("fuel", "club", "f-1"), ("spa-co", "spa", "s-1")):
        ledger.execute(RegisterPartner(actor="admin", partner_id=partner, name=partner.title(), program_id=program,
                                       stores=[store]))
    ok(ledger.execute_batch([
        EnrolMember(actor="admin", program_id="spa" if m in SPA_MEMBERS else "club", member_id=m,
                    card_number=f"card-{m}", name=m.title(), email=f"{m}@example.org", occurred_at=START)
        for m in MEMBERS]))
    results = ok(ledger.execute_batch([
        purchase("grocer", "t-a1", "300", "ann", START),     # 600 points, lot L1
        purchase("fuel", "f-a1", "50", "ann", START),        # 100 points, lot L2
        purchase("grocer", "t-b1", "100", "bob", START),     # 200
        purchase("grocer", "t-c1", "1000", "cat", START),    # 2000, and cat goes gold
        purchase("fuel", "f-d1", "40", "dan", START),        # 80
        purchase("spa-co", "s-z1", "100", "zed", START),     # 200
    ]))
    assert [r.body["status"] for r in results] == ["pending"] * 6
    assert results[3].body["tier"] == "gold"


def day_1(ledger: Ledger, clock: Clock) -> None:
    clock.now = START + timedelta(days=1, hours=1)
    day = START + timedelta(days=1)
    assert ledger.execute(purchase("grocer", "t-b2", "20", "bob", day)).body["points_earned"] == 40
    assert ledger.execute(purchase("fuel", "f-c1", "10", "cat", day)).body["points_earned"] == 40  # gold: 10 x 2 x 2


def day_4(ledger: Ledger, clock: Clock) -> None:
    """Redemptions across issuers, a return with a clawback, a partial return, adjustments in
    both directions (one beyond the balance), and a refused redemption left out of the batch."""
    clock.now = START + timedelta(days=4, hours=1)
    results = ledger.execute_batch([
        Redeem(actor="key:pos", member_id="ann", redemption_id="r-a1", points=650),  # L1 600 + L2 50
        ReturnPurchase(actor="key:pos", partner_id="grocer", transaction_id="t-a1-r", original_transaction_id="t-a1",
                       amount=Decimal("150")),  # 300 points, all clawed back: L1 at -300
        ReturnPurchase(actor="key:pos", partner_id="grocer", transaction_id="t-b1-r", original_transaction_id="t-b1",
                       amount=Decimal("50")),  # 100 points from what remains
        Redeem(actor="key:pos", member_id="cat", redemption_id="r-c1", points=1500),
        Adjust(actor="support:sam", member_id="dan", adjustment_id="d-adj1", points=-200, reason="correction"),
        Adjust(actor="support:sam", member_id="eve", adjustment_id="e-adj1", points=300, reason="goodwill"),
        Adjust(actor="support:sam", member_id="bob", adjustment_id="b-adj1", points=50, reason="goodwill"),
        Redeem(actor="key:pos", member_id="eve", redemption_id="r-e-too-much", points=10_000),
        Redeem(actor="key:spa", member_id="zed", redemption_id="z-r1", points=150),
    ])
    assert isinstance(results[7], InsufficientPoints)
    ok(results[:7] + results[8:])
    assert results[1].body["points_reversed"] == 300
    assert results[1].body["balance"]["available"] == -300 + 50  # clawback L1, what is left of L2
    assert results[2].body["points_reversed"] == 100


def day_5(ledger: Ledger, clock: Clock) -> None:
    clock.now = START + timedelta(days=5, hours=1)
    ok(ledger.execute_batch([
        CancelRedemption(actor="support:sam", member_id="cat", redemption_id="r-c1"),
        Redeem(actor="key:pos", member_id="cat", redemption_id="r-c2", points=1000),
        purchase("fuel", "f-d2", "100", "dan", START + timedelta(days=5)),  # 200, pending until day 8
    ]))


def day_91(ledger: Ledger, clock: Clock) -> None:
    """Lots earned on days 0 and 1 are due (but not yet expired) when the day starts."""
    clock.now = START + timedelta(days=91, hours=1)


def expiry_job(ledger: Ledger, clock: Clock) -> None:
    as_of = START + timedelta(days=91)
    outcomes = ledger.run_for_every_member(lambda m: ExpirePoints(actor="job:expiry", member_id=m, as_of=as_of))
    expired = {o.body["member_id"]: o.body["points_expired"] for o in outcomes}
    # ann: her 50 due points pay back 50 of the 300 clawed back on day 4 (a debt), so none is lost.
    assert expired == {"ann": 0, "bob": 140, "cat": 1040, "dan": 0, "eve": 0, "zed": 50}


def day_92(ledger: Ledger, clock: Clock) -> None:
    """Cancellations after expiry (one repaying a clawback first), a return of expired points,
    a tier review down, an upgrade in a batch, a debit beyond a zero balance that needs (and gets)
    a supervisor's approval, a rejected credit, and support reversing one specific purchase."""
    clock.now = START + timedelta(days=92, hours=1)
    f_d2 = next(e["version"] for e in ledger.history("dan")
                if e["type"] == "PurchaseRecorded" and e["data"]["transaction_id"] == "f-d2")
    results = ok(ledger.execute_batch([
        CancelRedemption(actor="support:sam", member_id="ann", redemption_id="r-a1"),
        CancelRedemption(actor="support:sam", member_id="cat", redemption_id="r-c2"),
        ReturnPurchase(actor="key:pos", partner_id="grocer", transaction_id="t-c1-r", original_transaction_id="t-c1",
                       amount=Decimal("500")),
        ReviewTier(actor="job:tiers", member_id="cat", as_of=clock.now),  # counts the return just made
        purchase("grocer", "e-1", "600", "eve", START + timedelta(days=92)),
        purchase("grocer", "e-2", "500", "eve", START + timedelta(days=92)),
        Adjust(actor="support:sam", member_id="ann", adjustment_id="a-adj1", points=-1000, reason="fraud"),
        Adjust(actor="support:sam", member_id="dan", adjustment_id="d-adj2", points=400, reason="correction"),
        Redeem(actor="key:pos", member_id="bob", redemption_id="b-r2", points=50),
        Adjust(actor="support:sam", member_id="eve", adjustment_id="e-adj2", points=800, reason="goodwill"),
        ReverseEvent(actor="support:sam", member_id="dan", reversal_id="rv-d1", version=f_d2, note="duplicate"),
    ]))
    # ann's 650 back into L1 (600, past expiry, 250 still clawed back after day 91's job paid 50 of
    # it from L2) and L2 (50, past expiry): 250 repay the clawback, 350 + 50 come back expired.
    # Expired in all: 0 on day 91 + 400 now (before settling debts at expiry: 50 + 350, the same).
    assert (results[0].body["points_restored"], results[0].body["points_expired"]) == (250, 400)
    assert (results[1].body["points_restored"], results[1].body["points_expired"]) == (0, 1000)
    assert results[2].body["points_reversed"] == 1000  # all of it from points already expired
    assert results[3].body == {"member_id": "cat", "tier": "blue", "changed": "down"}
    assert results[5].body["tier"] == "gold" and results[5].body["status"] == "pending"
    assert results[6].status == results[9].status == 202  # above the threshold: awaiting approval
    assert results[10].body["kind"] == "purchase"
    approved, rejected = ok(ledger.execute_batch([
        DecideAdjustment(actor="supervisor:sue", adjustment_id="a-adj1", approve=True),
        DecideAdjustment(actor="supervisor:sue", adjustment_id="e-adj2", approve=False, note="no"),
    ]))
    assert approved.body["status"] == "approved" and approved.body["balance"]["available"] == -1000
    assert rejected.body["status"] == "rejected"


PHASES: tuple[Callable[[Ledger, Clock], None], ...] = (day_0, day_1, day_4, day_5, day_91, expiry_job, day_92)


def tell(ledger: Ledger, clock: Clock, phases: tuple[Callable[[Ledger, Clock], None], ...] = PHASES,
         after: Callable[[str], None] = lambda name: None) -> None:
    for phase in phases:
        phase(ledger, clock)
        after(phase.__name__)


# ---- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def world(database_url: str, clock: Clock) -> Iterator[tuple[Config, Ledger, ReadModel]]:
    config = Config(database_url=database_url)
    ledger = build_ledger(config, clock=clock)
    read_model = build_read_model(config, ledger)
    assert read_model is not None
    yield config, ledger, read_model
    read_model.store.close()
    ledger.close()


def tables(read_model: ReadModel) -> list[str]:
    names = [table for projection in read_model.runner.projections for table in projection.tables]
    assert set(REQUIRED_TABLES) <= set(names)
    return names


def dump(read_model: ReadModel) -> dict[str, list[tuple[Any, ...]]]:
    return {table: sorted((tuple(row) for row in read_model.store.query(f"SELECT * FROM {table}")), key=repr)
            for table in tables(read_model)}


def positions(read_model: ReadModel, names: tuple[str, ...] | None = None) -> dict[str, int]:
    return {name: int(position) for name, position in
            read_model.store.query("SELECT name, position FROM projection_positions")
            if names is None or name in names}


def event_ids(ledger: Ledger) -> list[int]:
    return [n.id for n in stored_events(ledger.recorder)]


def assert_summaries_match(ledger: Ledger, read_model: ReadModel, when: str = "") -> None:
    for member_id in MEMBERS:
        assert read_model.member_summary(member_id) == ledger.member_summary(member_id), (when, member_id)


def assert_reconciled(read_model: ReadModel) -> dict[str, Any]:
    report = read_model.reconcile()
    assert report["differences"] == []
    totals = {k: report[k] for k in ("event_log_total", "projection_total", "members_total", "liability_total")}
    assert report["ok"], totals
    assert report["members"] == len(MEMBERS)
    assert report["event_log_total"] == report["projection_total"] == report["members_total"] \
        == report["liability_total"]
    for program, members in (("club", CLUB_MEMBERS), ("spa", SPA_MEMBERS)):
        per_program = read_model.reconcile(program)
        assert per_program["ok"] and per_program["members"] == len(members), per_program
    return report


def replayed_by_issuer(ledger: Ledger) -> dict[tuple[str, str], int]:
    """Remaining points per (program, issuing partner), from the aggregates themselves."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for member_id in MEMBERS:
        member = ledger.get_member(member_id)
        for lot in member.lots.values():
            totals[(member.program_id, issuer_of_source(lot.source))] += lot.remaining
    return dict(totals)


def projected_by_issuer(read_model: ReadModel) -> dict[tuple[str, str], int]:
    return {(program, issuer): int(total) for program, issuer, total in read_model.store.query(
        "SELECT program_id, issuer, SUM(remaining) FROM member_lots GROUP BY program_id, issuer")}


def liability_by_issuer(read_model: ReadModel) -> dict[tuple[str, str], int]:
    return {(program, issuer): int(total) for program, issuer, total in read_model.store.query(
        """SELECT program_id, issuer, SUM(earned - redeemed - expired - reversed + adjusted)
           FROM liability_movements GROUP BY program_id, issuer""")}


def assert_exactly_once(ledger: Ledger, read_model: ReadModel) -> None:
    """Everything projected once: positions at the head, one audit row per stored event, totals
    equal to the replay, and the tables equal to a fresh rebuild."""
    ids = event_ids(ledger)
    assert set(positions(read_model).values()) == {ids[-1]}
    assert [int(p) for (p,) in read_model.store.query("SELECT position FROM audit_trail ORDER BY position")] == ids
    assert_reconciled(read_model)
    assert liability_by_issuer(read_model) == projected_by_issuer(read_model) == replayed_by_issuer(ledger)
    assert read_model.verify().ok
    live = dump(read_model)
    read_model.runner.rebuild()
    assert dump(read_model) == live


class Crash(RuntimeError):
    pass


def crashing(base: type[Projection], on_call: int) -> Projection:
    """The projection, except that its `on_call`th apply writes its rows and then raises."""

    class Crashing(base):  # type: ignore[misc, valid-type]
        calls = 0
        rows_seen_before_crash = 0

        def apply(self, tx: Any, batch: Any, context: Any) -> None:
            super().apply(tx, batch, context)
            self.calls += 1
            if self.calls == on_call:
                self.rows_seen_before_crash = tx.execute(f"SELECT COUNT(*) FROM {self.tables[0]}")[0][0]
                raise Crash(f"{self.name} crashed after writing its rows")

    return Crashing()


# ---- the projection path against the aggregate path ---------------------------------------------

def test_projection_path_equals_aggregate_path_through_the_story(world: tuple[Config, Ledger, ReadModel],
                                                                  clock: Clock) -> None:
    _, ledger, read_model = world
    read_model.runner.batch_size = 7  # many small batches: lots and members span batch boundaries

    def check(phase: str) -> None:
        read_model.runner.catch_up()
        assert_summaries_match(ledger, read_model, phase)

    tell(ledger, clock, after=check)
    balances = [ledger.member_summary(m)["balance"] for m in MEMBERS]
    assert any(b["pending"] for b in balances) and any(b["available"] < 0 for b in balances)
    clock.now = START + timedelta(days=92)  # before eve's lots are available, after the day-91 lots are due
    assert_summaries_match(ledger, read_model, "day 92, 00:00")
    clock.now = START + timedelta(days=200)  # everything left is due
    assert_summaries_match(ledger, read_model, "day 200")
    assert ledger.member_summary("eve")["balance"]["due_for_expiry"] > 0
    clock.now = START + timedelta(days=92, hours=1)

    for member_id in MEMBERS:
        program = "spa" if member_id in SPA_MEMBERS else "club"
        assert read_model.member_id_for_card(program, f"card-{member_id}") == member_id
        assert read_model.member_id_for_card(program, f"card-{member_id}") == ledger.member_id_for_card(
            program, f"card-{member_id}")
    report = assert_reconciled(read_model)
    assert report["event_log_total"] == sum(ledger.get_member(m).total_points for m in MEMBERS)
    summary = read_model.member_summary("ann")
    assert summary["lifetime"] == {"earned": 700, "redeemed": 0, "expired": 400, "reversed": 300, "adjusted": -1000}
    assert summary["balance"]["available"] == -1000
    assert read_model.member_summary("cat")["tier"] == "blue" and read_model.member_summary("eve")["tier"] == "gold"
    readiness = read_model.readiness()
    assert readiness["ready"] and readiness["lag"] == 0
    # The audit trail's per-event deltas add up to each member's points, with the actor recorded.
    deltas = {m: int(total) for m, total in read_model.store.query(
        "SELECT member_id, SUM(points_delta) FROM audit_trail WHERE member_id IS NOT NULL GROUP BY member_id")}
    assert deltas == {m: ledger.get_member(m).total_points for m in MEMBERS}
    assert read_model.store.query(
        "SELECT event_type, actor, points_delta FROM audit_trail WHERE member_id = 'cat' AND event_type = %s"
        " ORDER BY position",
        ("RedemptionCancelled",)) == [("RedemptionCancelled", "support:sam", 1500),
                                      ("RedemptionCancelled", "support:sam", 0)]


def test_incremental_catch_up_equals_replay(world: tuple[Config, Ledger, ReadModel], clock: Clock) -> None:
    _, ledger, read_model = world
    tell(ledger, clock, PHASES[:3])
    first = read_model.runner.catch_up()
    assert first == len(event_ids(ledger))
    assert read_model.runner.run_once() == 0 and read_model.runner.catch_up() == 0
    assert_summaries_match(ledger, read_model, "after day 4")
    assert_reconciled(read_model)
    head = event_ids(ledger)[-1]

    tell(ledger, clock, PHASES[3:])
    assert read_model.runner.status()[0].lag > 0
    assert read_model.runner.catch_up() == len([i for i in event_ids(ledger) if i > head])
    assert_summaries_match(ledger, read_model, "after day 92")
    assert_exactly_once(ledger, read_model)


# ---- rebuilds ----------------------------------------------------------------------------------

def test_rebuild_equals_live(world: tuple[Config, Ledger, ReadModel], clock: Clock) -> None:
    _, ledger, read_model = world
    read_model.runner.batch_size = 5
    tell(ledger, clock, after=lambda phase: read_model.runner.catch_up())
    live = dump(read_model)
    assert all(live[table] for table in REQUIRED_TABLES), {t: len(r) for t, r in live.items()}

    read_model.runner.batch_size = 10_000  # the rebuild folds everything in one batch
    assert read_model.runner.rebuild() == len(event_ids(ledger))
    assert dump(read_model) == live
    assert all(not s.rebuilding and s.lag == 0 for s in read_model.runner.status())

    for name in [p.name for p in read_model.runner.projections]:
        read_model.runner.batch_size = 3
        flags: list[bool] = []  # after each committed batch: is the projection still flagged?
        read_model.runner.rebuild([name], on_progress=lambda applied: flags.append(
            {s.name: s.rebuilding for s in read_model.runner.status()}[name]))
        # Readers go around a half-rebuilt projection until its last batch, not only its first.
        assert len(flags) > 2 and all(flags[:-1]) and not flags[-1], (name, flags)
        assert dump(read_model) == live, name
        assert set(positions(read_model).values()) == {event_ids(ledger)[-1]}
    assert_reconciled(read_model)
    assert read_model.verify().ok


def test_rebuilding_projection_is_read_around(world: tuple[Config, Ledger, ReadModel], clock: Clock) -> None:
    """While the member projection is rebuilding, reads come from the event store."""
    _, ledger, read_model = world
    tell(ledger, clock, PHASES[:3])
    read_model.runner.catch_up()
    with read_model.store.transaction() as tx:
        MemberProjection().reset(tx)
        tx.execute("UPDATE projection_positions SET position = 0, rebuilding = 1 WHERE name = 'members'")
    assert not read_model.readiness()["ready"]
    assert_summaries_match(ledger, read_model, "rebuilding")
    assert read_model.member_id_for_card("club", "card-bob") == "bob"
    read_model.runner.catch_up()
    assert read_model.readiness()["ready"]
    assert_summaries_match(ledger, read_model, "rebuilt")
    assert_reconciled(read_model)


@pytest.mark.parametrize(("names", "caught_up", "in_flight"), [
    (None, 4, 7),  # rebuild everything while the runner applies days 91 and 92
    (["liability"], 5, 6),  # rebuild one projection while the runner applies the expiry job
], ids=["all", "liability"])
def test_rebuild_while_the_live_runner_is_mid_batch(database_url: str, clock: Clock, names: list[str] | None,
                                                   caught_up: int, in_flight: int) -> None:
    """`loyalty projections rebuild` runs while the server's background runner keeps going ("the
    API keeps serving meanwhile"). A rebuild that starts while the runner is inside a batch must
    neither keep that batch's rows and replay the same events again, nor fail on them."""
    config = Config(database_url=database_url)
    ledger = build_ledger(config, clock=clock)
    read_model = build_read_model(config, ledger)
    assert read_model is not None
    tell(ledger, clock, PHASES[:caught_up])
    read_model.runner.catch_up()
    tell(ledger, clock, PHASES[caught_up:in_flight])  # rows the next batch inserts, not only updates

    in_batch = threading.Event()

    class SlowLiability(LiabilityProjection):
        def apply(self, tx: Any, batch: Any, context: Any) -> None:
            super().apply(tx, batch, context)
            in_batch.set()
            time.sleep(0.5)  # the batch's rows are written, not yet committed

    other = build_ledger(config, clock=clock, create_schema=False)
    store = open_store(config.database)
    live = ProjectionRunner(other, store, [MemberProjection(), PostingsProjection(), AuditProjection(),
                                           SlowLiability()])
    errors: list[BaseException] = []

    def run_live() -> None:
        try:
            live.run_once()
        except BaseException as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    thread = threading.Thread(target=run_live)
    try:
        thread.start()
        assert in_batch.wait(30)
        read_model.runner.rebuild(names)  # what `loyalty projections rebuild [NAME]` does
        thread.join(60)
        assert errors == []
        tell(ledger, clock, PHASES[in_flight:])
        read_model.runner.catch_up()
        assert_summaries_match(ledger, read_model)
        assert_exactly_once(ledger, read_model)
    finally:
        thread.join(60)
        store.close()
        other.close()
        read_model.store.close()
        ledger.close()


# ---- crashes and races ---------------------------------------------------------------------------

def test_crash_in_the_first_batch_rolls_everything_back(world: tuple[Config, Ledger, ReadModel], clock: Clock) -> None:
    _, ledger, read_model = world
    tell(ledger, clock)
    broken = crashing(MemberProjection, on_call=1)
    runner = ProjectionRunner(ledger, read_model.store,
                              [broken, PostingsProjection(), AuditProjection(), LiabilityProjection()])
    with pytest.raises(Crash):
        runner.catch_up()
    assert broken.rows_seen_before_crash > 0  # it did write, inside the transaction
    assert positions(read_model, CORE) == dict.fromkeys(CORE, 0)
    assert all(rows == [] for table, rows in dump(read_model).items() if table in REQUIRED_TABLES)

    assert read_model.runner.catch_up() == len(event_ids(ledger))
    assert_summaries_match(ledger, read_model)
    assert_exactly_once(ledger, read_model)


def test_crash_in_a_later_projection_rolls_back_the_earlier_ones_of_its_batch(
    world: tuple[Config, Ledger, ReadModel], clock: Clock
) -> None:
    _, ledger, read_model = world
    tell(ledger, clock)
    ids = event_ids(ledger)
    broken = crashing(LiabilityProjection, on_call=3)
    runner = ProjectionRunner(ledger, read_model.store,
                              [MemberProjection(), PostingsProjection(), AuditProjection(), broken], batch_size=10)
    with pytest.raises(Crash):
        runner.catch_up()
    assert broken.rows_seen_before_crash > 0
    # Two batches committed; the third is gone from every projection, not just the one that failed.
    assert positions(read_model, CORE) == dict.fromkeys(CORE, ids[19])
    assert [int(p) for (p,) in read_model.store.query("SELECT position FROM audit_trail ORDER BY position")] == ids[:20]
    assert int(read_model.store.query("SELECT COALESCE(MAX(position), 0) FROM partner_postings")[0][0]) <= ids[19]
    committed_versions: dict[str, int] = {}
    for notification in stored_events(ledger.recorder):
        if notification.id <= ids[19]:
            committed_versions[str(notification.originator_id)] = notification.originator_version
    for originator, version in read_model.store.query("SELECT originator_id, version FROM member_summaries"):
        assert int(version) == committed_versions[originator]

    # A restart with the ordinary projections resumes from the committed positions.
    read_model.runner.catch_up()
    assert_summaries_match(ledger, read_model)
    assert_exactly_once(ledger, read_model)


def test_crash_mid_story_then_more_events(world: tuple[Config, Ledger, ReadModel], clock: Clock) -> None:
    """A runner dies part way (after some batches committed); events keep arriving; the restarted
    runner neither skips nor repeats."""
    _, ledger, read_model = world
    tell(ledger, clock, PHASES[:4])
    broken = crashing(PostingsProjection, on_call=2)
    runner = ProjectionRunner(ledger, read_model.store,
                              [MemberProjection(), broken, AuditProjection(), LiabilityProjection()], batch_size=8)
    with pytest.raises(Crash):
        runner.catch_up()
    committed = set(positions(read_model, CORE).values())
    assert len(committed) == 1 and 0 < committed.pop() < event_ids(ledger)[-1]
    tell(ledger, clock, PHASES[4:])
    read_model.runner.catch_up()
    assert_summaries_match(ledger, read_model)
    assert_exactly_once(ledger, read_model)


def test_two_runners_racing_with_writers_never_double_count_or_skip(database_url: str, clock: Clock) -> None:
    """Every server worker runs a runner; two of them race over the same positions while two
    other processes keep committing events."""
    config = Config(database_url=database_url)
    ledger = build_ledger(config, clock=clock)
    tell(ledger, clock)
    read_model = build_read_model(config, ledger)
    assert read_model is not None
    ledgers = [build_ledger(config, clock=clock, create_schema=False) for _ in range(3)]
    stores = [open_store(config.database) for _ in range(2)]
    runners = [ProjectionRunner(other, store, batch_size=4) for other, store in zip(ledgers, stores)]
    for runner in runners:
        runner.create_tables()  # idempotent, as every process does at start-up
    barrier = threading.Barrier(4)
    writers_left = [2]
    writing_done = threading.Event()
    lock = threading.Lock()
    applied = [0, 0]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            while not writing_done.is_set():
                applied[index] += runners[index].catch_up()
            applied[index] += runners[index].catch_up()
        except BaseException as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    def write(writer: Ledger, tag: str) -> None:
        try:
            barrier.wait()
            for i in range(10):
                writer.execute(purchase("grocer", f"{tag}-{i}", "5", CLUB_MEMBERS[i % len(CLUB_MEMBERS)], clock.now))
        except BaseException as error:  # noqa: BLE001 - asserted below
            errors.append(error)
        finally:
            with lock:
                writers_left[0] -= 1
                if not writers_left[0]:
                    writing_done.set()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)] + [
        threading.Thread(target=write, args=(ledger, "w1")), threading.Thread(target=write, args=(ledgers[2], "w2"))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert sum(applied) == len(event_ids(ledger))  # every event read by exactly one runner
        assert read_model.runner.catch_up() == 0
        assert_summaries_match(ledger, read_model)
        assert_exactly_once(ledger, read_model)
    finally:
        for store in stores:
            store.close()
        for other in ledgers:
            other.close()
        read_model.store.close()
        ledger.close()


def test_background_runner_retries_a_failed_batch_and_follows_new_events(world: tuple[Config, Ledger, ReadModel],
                                                                          clock: Clock) -> None:
    """run_forever, as each server worker runs it: a failed batch is rolled back and retried,
    and new events are picked up (PostgreSQL: LISTEN/NOTIFY; SQLite: polling)."""
    _, ledger, read_model = world
    tell(ledger, clock, PHASES[:3])
    broken = crashing(LiabilityProjection, on_call=1)
    runner = ProjectionRunner(ledger, read_model.store,
                              [MemberProjection(), PostingsProjection(), AuditProjection(), broken])
    stop = threading.Event()
    thread = threading.Thread(target=runner.run_forever, args=(stop, 0.05))

    def wait_until_caught_up() -> None:
        deadline = time.monotonic() + 20
        while any(s.lag for s in runner.status()):
            assert time.monotonic() < deadline, runner.status()
            time.sleep(0.05)

    thread.start()
    try:
        wait_until_caught_up()
        assert broken.calls >= 2  # the first attempt failed, a retry succeeded
        tell(ledger, clock, PHASES[3:])
        wait_until_caught_up()
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()
    read_model.runner.catch_up()  # projections this runner was not given
    assert_summaries_match(ledger, read_model)
    assert_exactly_once(ledger, read_model)


# ---- postings and liability ------------------------------------------------------------------------

def test_partner_postings_index_purchases_and_returns(world: tuple[Config, Ledger, ReadModel], clock: Clock) -> None:
    _, ledger, read_model = world
    tell(ledger, clock, after=lambda phase: read_model.runner.catch_up())
    rows = {(r[0], r[1]): r for r in read_model.store.query(
        """SELECT partner_id, transaction_id, program_id, kind, member_id, store_id, amount, points,
                  original_transaction_id, position FROM partner_postings""")}
    expected_points = {
        ("grocer", "t-a1"): 600, ("fuel", "f-a1"): 100, ("grocer", "t-b1"): 200, ("grocer", "t-c1"): 2000,
        ("fuel", "f-d1"): 80, ("spa-co", "s-z1"): 200, ("grocer", "t-b2"): 40, ("fuel", "f-c1"): 40,
        ("fuel", "f-d2"): 200, ("grocer", "e-1"): 1200, ("grocer", "e-2"): 1000,
        ("grocer", "t-a1-r"): -300, ("grocer", "t-b1-r"): -100, ("grocer", "t-c1-r"): -1000,
        ("fuel", "reversal:rv-d1"): -200,  # support reversed dan's purchase f-d2
    }
    assert {key: int(row[7]) for key, row in rows.items()} == expected_points
    returns = {key: row for key, row in rows.items() if row[3] == "return"}
    assert set(returns) == {("grocer", "t-a1-r"), ("grocer", "t-b1-r"), ("grocer", "t-c1-r"),
                            ("fuel", "reversal:rv-d1")}
    assert [(r[2], r[4], r[5], Decimal(r[6]), r[8]) for r in (returns[("grocer", "t-a1-r")],)] == [
        ("club", "ann", None, Decimal("150"), "t-a1")]
    assert all(int(r[7]) < 0 for r in returns.values())
    assert rows[("spa-co", "s-z1")][2:6] == ("spa", "purchase", "zed", "s-1")
    assert rows[("grocer", "t-c1")][2:6] == ("club", "purchase", "cat", "g-1")
    assert Decimal(rows[("grocer", "t-c1")][6]) == Decimal("1000")
    # Each row's position is the stored event that recorded it.
    by_position = {n.id: ledger.mapper.to_domain_event(n) for n in stored_events(ledger.recorder)}
    for (partner, txn), row in rows.items():
        event = by_position[int(row[9])]
        assert isinstance(event, (Member.PurchaseRecorded, Member.PurchaseReturned))
        assert (event.partner_id, event.transaction_id) == (partner, txn)
    # Points on purchase rows equal what the members earned from those partners.
    earned = defaultdict(int)
    for member_id in MEMBERS:
        for key, p in ledger.get_member(member_id).purchases.items():
            earned[p["partner_id"]] += p["points"] - p["reversed_points"]
    posted = defaultdict(int)
    for (partner, _), row in rows.items():
        posted[partner] += int(row[7])
    assert dict(posted) == dict(earned)


def test_liability_roll_forward_closes_per_issuing_partner(world: tuple[Config, Ledger, ReadModel],
                                                           clock: Clock) -> None:
    _, ledger, read_model = world
    read_model.runner.batch_size = 6
    tell(ledger, clock, after=lambda phase: read_model.runner.catch_up())
    movements = liability_by_issuer(read_model)
    assert set(movements) == {("club", "grocer"), ("club", "fuel"), ("club", ""), ("spa", "spa-co")}
    assert movements == projected_by_issuer(read_model) == replayed_by_issuer(ledger)
    # The running totals the liability report reads (one row per program and issuer) equal the lots' sums.
    running = {(program, issuer): int(total) for program, issuer, total in read_model.store.query(
        "SELECT program_id, issuer, remaining FROM lot_totals")}
    assert {k: v for k, v in running.items() if v} == {k: v for k, v in movements.items() if v}
    by_issuer = {issuer: int(total) for issuer, total in read_model.store.query(
        """SELECT issuer, SUM(earned - redeemed - expired - reversed + adjusted) FROM liability_movements
           GROUP BY issuer""")}
    lots = {issuer: int(total) for issuer, total in read_model.store.query(
        "SELECT issuer, SUM(remaining) FROM member_lots GROUP BY issuer")}
    assert by_issuer == lots
    # Each column is a real flow, attributed to the lot's issuer.
    columns = dict(zip(LIFETIME, (int(v) for v in read_model.store.query(
        """SELECT SUM(earned), SUM(redeemed), SUM(expired), SUM(reversed), SUM(adjusted)
           FROM liability_movements WHERE issuer = 'grocer'""")[0])))
    assert columns["earned"] == 600 + 200 + 2000 + 40 + 1200 + 1000
    assert columns["reversed"] == 300 + 100  # cat's return took only points that had expired
    lifetime = defaultdict(int)
    for member_id in MEMBERS:
        for key, value in ledger.get_member(member_id).lifetime.items():
            lifetime[key] += value
    totals = read_model.store.query(
        "SELECT SUM(earned), SUM(redeemed), SUM(expired), SUM(reversed), SUM(adjusted) FROM liability_movements")[0]
    assert dict(zip(LIFETIME, (int(v) for v in totals))) == dict(lifetime)
