"""The races of tests/e2e/test_races.py through the application layer, on SQLite and PostgreSQL:
fifty threads released at once by a barrier, spread over two ledgers on the same database (two
server processes, two pools). Each race runs on two paths: `Ledger.execute` called straight from
the threads (fifty optimistic writers on one member), and the server's path, one group-commit
queue per ledger (infrastructure.group_commit.CommitQueue).

Each race prints its figures and, when LOYALTY_FIGURES_FILE names a file, appends them to it as
one JSON line."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from application.commands import (
    Adjust,
    Command,
    CreateProgram,
    DecideAdjustment,
    EnrolMember,
    Outcome,
    RecordPurchase,
    Redeem,
    RegisterPartner,
)
from application.errors import ApplicationError
from application.ledger import Ledger
from domain.errors import DomainError
from infrastructure.bootstrap import build_ledger
from infrastructure.config import Config
from infrastructure.group_commit import CommitQueue

RACERS = 50
SUPERVISORS = 10
START = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
RULES = {
    "earn_rate": "2",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 12},
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


@dataclass
class Lanes:
    """Two ledgers on one database, as two server processes; `run` executes a command on one."""

    database: str
    path: str
    ledgers: list[Ledger]
    runners: list[Callable[[Command], Outcome]]

    @property
    def ledger(self) -> Ledger:
        return self.ledgers[0]

    def run(self, lane: int, command: Command) -> Outcome:
        return self.runners[lane % len(self.runners)](command)


@pytest.fixture(params=["execute", "group-commit"])
def lanes(request: pytest.FixtureRequest, database_url: str) -> Iterator[Lanes]:
    clock = Clock(START + timedelta(hours=1))
    first = build_ledger(Config(database_url=database_url), clock=clock, create_schema=True)
    second = build_ledger(Config(database_url=database_url), clock=clock, create_schema=False)
    ledgers = [first, second]
    queues: list[CommitQueue] = []
    if request.param == "group-commit":
        queues = [CommitQueue(ledger) for ledger in ledgers]
        runners = [queue.execute for queue in queues]
    else:
        runners = [ledger.execute for ledger in ledgers]
    first.execute(CreateProgram(actor="admin", program_id="club", name="Club", currency="EUR", rules=RULES,
                                effective_at=START - timedelta(days=30)))
    first.execute(RegisterPartner(actor="admin", partner_id="grocer", name="Grocer", program_id="club",
                                  stores=["g-1", "g-2"]))
    first.execute(EnrolMember(actor="admin", program_id="club", member_id="ann", card_number="card-ann",
                              occurred_at=START))
    try:
        yield Lanes(database="sqlite" if database_url.startswith("sqlite") else "postgresql", path=request.param,
                    ledgers=ledgers, runners=runners)
    finally:
        for queue in queues:
            queue.close()
        for ledger in ledgers:
            ledger.close()


def purchase(transaction_id: str, amount: str) -> RecordPurchase:
    return RecordPurchase(actor="key:pos-1", partner_id="grocer", transaction_id=transaction_id, store_id="g-1",
                          amount=Decimal(amount), currency="EUR", member_id="ann", occurred_at=START)


def redeem(redemption_id: str, points: int) -> Redeem:
    return Redeem(actor="key:pos-1", member_id="ann", redemption_id=redemption_id, points=points,
                  occurred_at=START + timedelta(minutes=1))


# ---- racing ----------------------------------------------------------------------------------------

@dataclass
class Race:
    name: str
    lanes: Lanes
    results: list[Outcome | Exception]
    seconds: float

    def applied(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if isinstance(r, Outcome) and not r.replayed]

    def replays(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if isinstance(r, Outcome) and r.replayed]

    def refused(self, slug: str | None = None) -> list[int]:
        return [i for i, r in enumerate(self.results) if isinstance(r, (DomainError, ApplicationError))
                and (slug is None or r.slug == slug)]

    def slugs(self) -> Counter[str]:
        return Counter(r.slug for r in self.results if isinstance(r, (DomainError, ApplicationError)))

    def errors(self) -> list[str]:
        """Anything but an outcome or a refusal (Contention is a refusal of sorts: counted apart)."""
        return [f"{i}: {r!r}" for i, r in enumerate(self.results)
                if isinstance(r, Exception) and not isinstance(r, (DomainError, ApplicationError))]

    def report(self, **extra: Any) -> None:
        figures = {
            "race": self.name, "layer": "application", "path": self.lanes.path, "database": self.lanes.database,
            "sent": len(self.results), "applied": len(self.applied()), "refused": len(self.refused()),
            "replayed": len(self.replays()), "refusals": dict(sorted(self.slugs().items())),
            "errors": len(self.errors()), "seconds": round(self.seconds, 3), **extra,
        }
        line = json.dumps(figures, sort_keys=True)
        print(f"\nrace figures: {line}")
        path = os.environ.get("LOYALTY_FIGURES_FILE")
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(line + "\n")


def race(name: str, lanes: Lanes, commands: list[Command]) -> Race:
    """Each command in its own thread, all released at once, alternating between the two ledgers."""
    barrier = threading.Barrier(len(commands))
    results: list[Outcome | Exception | None] = [None] * len(commands)

    def run(index: int) -> None:
        barrier.wait(30)
        try:
            results[index] = lanes.run(index, commands[index])
        except Exception as error:  # noqa: BLE001 - classified and asserted by each race
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(commands))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    seconds = time.perf_counter() - started
    assert not any(t.is_alive() for t in threads), f"{name}: commands still running after 120s"
    assert all(r is not None for r in results)
    outcome = Race(name=name, lanes=lanes, results=results, seconds=seconds)  # type: ignore[arg-type]
    outcome.report()
    return outcome


def check_clean(outcome: Race) -> None:
    assert not outcome.errors(), f"{outcome.name}: unexpected errors:\n" + "\n".join(outcome.errors()[:10])
    assert not outcome.refused("contention"), f"{outcome.name}: {len(outcome.refused('contention'))} gave up " \
                                              "on contention (HTTP 503)"


def stored(ledger: Ledger, kind: str, **data: Any) -> list[dict[str, Any]]:
    return [e for e in ledger.history("ann")
            if e["type"] == kind and all(e["data"].get(k) == v for k, v in data.items())]


def available(ledger: Ledger) -> int:
    return ledger.balance_as_of("ann", as_of=START + timedelta(hours=1))["available"]


# ---- the races -------------------------------------------------------------------------------------

def test_fifty_redemptions_beyond_the_balance_never_overdraw(lanes: Lanes) -> None:
    lanes.ledger.execute(purchase("seed-1", "500"))  # 1000 points
    commands = [redeem(f"r-{i}", 50) for i in range(RACERS)]
    outcome = race("redemptions-beyond-balance", lanes, commands)

    check_clean(outcome)
    won, refused = outcome.applied(), outcome.refused("insufficient-points")
    assert len(won) + len(refused) == RACERS and not outcome.replays(), outcome.slugs()
    assert 50 * len(won) <= 1000
    assert len(won) == 20, f"only {len(won)} of 20 affordable redemptions succeeded"
    reported = sorted((outcome.results[i].body["balance"]["available"]  # type: ignore[union-attr]
                       for i in won), reverse=True)
    assert reported == [1000 - 50 * k for k in range(1, 21)], reported
    assert available(lanes.ledger) == 0
    member = lanes.ledger.get_member("ann")
    assert member.lifetime["redeemed"] == 1000
    assert all(lot.remaining >= 0 for lot in member.lots.values())
    assert sorted(e["data"]["redemption_id"] for e in stored(lanes.ledger, "PointsRedeemed")) == \
        sorted(f"r-{i}" for i in won)
    for i in won:
        again = lanes.run(i + 1, commands[i])  # the other ledger this time
        assert again.replayed and again.body == outcome.results[i].body  # type: ignore[union-attr]


def test_fifty_copies_of_one_purchase_apply_once(lanes: Lanes) -> None:
    outcome = race("same-purchase-50-copies", lanes, [purchase("t-same", "25") for _ in range(RACERS)])

    check_clean(outcome)
    assert len(outcome.applied()) == 1 and len(outcome.replays()) == RACERS - 1, outcome.slugs()
    bodies = [r.body for r in outcome.results]  # type: ignore[union-attr]
    assert all(b == bodies[0] for b in bodies) and bodies[0]["points_earned"] == 50
    assert available(lanes.ledger) == 50
    assert len(stored(lanes.ledger, "PurchaseRecorded", transaction_id="t-same")) == 1


def test_fifty_bodies_under_one_transaction_id_apply_one(lanes: Lanes) -> None:
    commands = [purchase("t-clash", f"{10 + i}") for i in range(RACERS)]
    outcome = race("same-id-different-bodies", lanes, commands)

    check_clean(outcome)
    won, conflicts = outcome.applied(), outcome.refused("idempotency-conflict")
    assert len(won) == 1 and len(conflicts) == RACERS - 1 and not outcome.replays(), outcome.slugs()
    assert outcome.results[won[0]].body["points_earned"] == 2 * (10 + won[0])  # type: ignore[union-attr]
    assert available(lanes.ledger) == 2 * (10 + won[0])
    recorded = stored(lanes.ledger, "PurchaseRecorded", transaction_id="t-clash")
    assert len(recorded) == 1 and Decimal(str(recorded[0]["data"]["amount"])) == Decimal(10 + won[0]), recorded


SKEW = ("a decision that lost the race must be a replay (the winner's own decision) or AlreadyDecided "
        "(conflict); DuplicatePosting (idempotency-conflict) means the handler read the adjustment request "
        "before the winning approval was committed and the member after it")


def test_fifty_approvals_of_one_adjustment_apply_it_once(lanes: Lanes) -> None:
    lanes.ledger.execute(purchase("seed-1", "500"))
    pending = lanes.ledger.execute(Adjust(actor="key:support", member_id="ann", adjustment_id="a-big", points=600,
                                          reason="goodwill", note="race"))
    assert pending.status == 202
    who = [f"key:supervisor-{i % SUPERVISORS}" for i in range(RACERS)]
    outcome = race("approvals-of-one-adjustment", lanes, [
        DecideAdjustment(actor=actor, adjustment_id="a-big", approve=True, note=f"ok {actor}") for actor in who])

    check_clean(outcome)
    won = outcome.applied()
    assert len(won) == 1, outcome.slugs()
    winner = who[won[0]]
    decision = outcome.results[won[0]].body  # type: ignore[union-attr]
    assert decision["status"] == "approved" and decision["decided_by"] == winner
    for i, result in enumerate(outcome.results):
        if i == won[0]:
            continue
        if who[i] == winner:
            assert isinstance(result, Outcome) and result.replayed and result.body == decision, (i, result, SKEW)
        else:
            assert isinstance(result, DomainError) and result.slug == "conflict", (i, result, SKEW)
    assert available(lanes.ledger) == 1600
    adjusted = stored(lanes.ledger, "PointsAdjusted", adjustment_id="a-big")
    assert len(adjusted) == 1 and adjusted[0]["data"]["approved_by"] == winner, adjusted


def test_approvals_racing_rejections_decide_once(lanes: Lanes) -> None:
    lanes.ledger.execute(purchase("seed-1", "500"))
    requester = "key:supervisor-0"
    pending = lanes.ledger.execute(Adjust(actor=requester, member_id="ann", adjustment_id="a-split", points=700,
                                          reason="goodwill", note="race"))
    assert pending.status == 202
    plan = [(f"key:supervisor-{i % SUPERVISORS}", (i % 2 == 0) != (i >= RACERS // 2)) for i in range(RACERS)]
    outcome = race("approvals-racing-rejections", lanes, [
        DecideAdjustment(actor=actor, adjustment_id="a-split", approve=approve, note="decided")
        for actor, approve in plan])

    check_clean(outcome)
    won = outcome.applied()
    assert len(won) == 1, outcome.slugs()
    winner, approve = plan[won[0]]
    assert winner != requester
    decision = outcome.results[won[0]].body  # type: ignore[union-attr]
    assert decision["status"] == ("approved" if approve else "rejected") and decision["decided_by"] == winner
    for i, result in enumerate(outcome.results):
        if i == won[0]:
            continue
        if plan[i][0] == requester:
            assert isinstance(result, DomainError) and result.slug == "forbidden", (i, result)
        elif plan[i] == (winner, approve):
            assert isinstance(result, Outcome) and result.replayed and result.body == decision, (i, result, SKEW)
        else:
            assert isinstance(result, DomainError) and result.slug == "conflict", (i, result, SKEW)
    assert available(lanes.ledger) == 1000 + (700 if approve else 0)
    assert len(stored(lanes.ledger, "PointsAdjusted", adjustment_id="a-split")) == (1 if approve else 0)


def test_redemptions_racing_purchases_balance_is_the_sum_of_what_was_applied(lanes: Lanes) -> None:
    lanes.ledger.execute(purchase("seed-1", "250"))  # 500 points
    commands: list[Command] = []
    for i in range(RACERS // 2):
        commands += [redeem(f"mix-r-{i}", 50), purchase(f"mix-p-{i}", "10")]
    outcome = race("redemptions-racing-purchases", lanes, commands)

    check_clean(outcome)
    earned = redeemed = 0
    for command, result in zip(commands, outcome.results):
        if isinstance(command, RecordPurchase):
            assert isinstance(result, Outcome) and not result.replayed and result.body["points_earned"] == 20, result
            earned += 20
        elif isinstance(result, Outcome):
            assert not result.replayed and result.body["balance"]["available"] >= 0, result
            redeemed += 50
        else:
            assert isinstance(result, DomainError) and result.slug == "insufficient-points", result
    assert redeemed <= 500 + earned
    assert available(lanes.ledger) == 500 + earned - redeemed
    member = lanes.ledger.get_member("ann")
    assert member.lifetime["earned"] == 500 + earned and member.lifetime["redeemed"] == redeemed
    assert all(lot.remaining >= 0 for lot in member.lots.values())
