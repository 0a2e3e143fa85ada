"""Races over real HTTP, against `loyalty serve` (gunicorn, two worker processes of four threads)
on SQLite and on PostgreSQL. Fifty clients are released at the same instant by a barrier:

- fifty redemptions on one member, worth well over her balance: never an overdraft, every refusal
  a 422 insufficient-points, the balance and the history agree with the successes exactly;
- fifty copies of one purchase: applied once, forty-nine replays with the original body; fifty
  different bodies under one transaction id: one applied, forty-nine idempotency conflicts;
- fifty approvals of one adjustment by ten supervisors, and approvals racing rejections: one
  decision takes effect, the points are applied at most once, the queue empties;
- redemptions racing purchases on one member: the balance is exactly the sum of what was applied.

Each race prints its figures (requests sent, applied, refused, replayed, ...) and, when
LOYALTY_FIGURES_FILE names a file, appends them to it as one JSON line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO, Client, Response, World, expect, issue_key

RACERS = 50
BARRIER_TIMEOUT = 30.0
JOIN_TIMEOUT = 120.0
SETTLE_TIMEOUT = 10.0
PROBLEM_JSON = "application/problem+json"


@pytest.fixture(autouse=True)
def projector(world: World, tmp_path: Path) -> Iterator[None]:
    """On PostgreSQL the server does not run the projections (operators run `loyalty projections
    run` as its own process): run it beside the server, as a deployment does. On SQLite they run
    inside the server."""
    if database_kind(world) != "postgresql":
        yield
        return
    log_path = tmp_path / "projector.log"
    env = dict(os.environ)
    env.update({"LOYALTY_DATABASE_URL": world.server.database_url, "LOYALTY_LOG_FORMAT": "json",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1"})
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "api.cli", "projections", "run"], cwd=tmp_path, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    text = log_path.read_text(errors="replace")
    assert "Traceback (most recent call last)" not in text, f"the projector failed:\n{text[-3000:]}"


# ---- racing ----------------------------------------------------------------------------------------

@dataclass
class Race:
    """The answers of one race, in the order the requests were built."""

    name: str
    database: str
    answers: list[Response]
    seconds: float
    failures: list[str] = field(default_factory=list)  # exceptions raised in a racing thread

    def applied(self) -> list[int]:
        return [i for i, r in enumerate(self.answers) if 200 <= r.status < 300 and not replayed(r)]

    def replays(self) -> list[int]:
        return [i for i, r in enumerate(self.answers) if 200 <= r.status < 300 and replayed(r)]

    def refused(self, status: int | None = None, problem_type: str | None = None) -> list[int]:
        return [i for i, r in enumerate(self.answers) if 400 <= r.status < 500
                and (status is None or r.status == status)
                and (problem_type is None or problem_slug(r) == problem_type)]

    def server_errors(self) -> list[tuple[int, int, Any]]:
        return [(i, r.status, r.body) for i, r in enumerate(self.answers) if r.status >= 500]

    def figures(self, **extra: Any) -> dict[str, Any]:
        refusals = Counter(f"{self.answers[i].status} {problem_slug(self.answers[i])}" for i in self.refused())
        return {
            "race": self.name, "database": self.database, "sent": len(self.answers),
            "applied": len(self.applied()), "refused": len(self.refused()), "replayed": len(self.replays()),
            "server_errors": len(self.server_errors()), "refusals": dict(sorted(refusals.items())),
            "seconds": round(self.seconds, 3), **extra,
        }


def replayed(response: Response) -> bool:
    return (response.headers.get("Idempotent-Replayed") or "").lower() == "true"


def problem_slug(response: Response) -> str | None:
    return response.body.get("type") if isinstance(response.body, dict) else None


def database_kind(world: World) -> str:
    return "sqlite" if world.server.database_url.startswith("sqlite") else "postgresql"


def race(world: World, name: str, requests: list[Callable[[], Response]]) -> Race:
    """Runs every request in its own thread, all released at once by a barrier; the answers."""
    barrier = threading.Barrier(len(requests))
    answers: list[Response | None] = [None] * len(requests)
    failures: list[str] = []

    def run(index: int) -> None:
        try:
            barrier.wait(BARRIER_TIMEOUT)
            answers[index] = requests[index]()
        except Exception as error:  # noqa: BLE001 - reported by the race's assertions
            failures.append(f"request {index}: {error!r}")

    threads = [threading.Thread(target=run, args=(i,), name=f"{name}-{i}") for i in range(len(requests))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    seconds = time.perf_counter() - started
    assert not any(t.is_alive() for t in threads), f"{name}: requests still running after {JOIN_TIMEOUT}s"
    assert not failures, f"{name}: requests that got no HTTP answer:\n" + "\n".join(failures)
    done = [a for a in answers if a is not None]
    assert len(done) == len(requests), f"{name}: {len(requests) - len(done)} requests got no answer"
    return Race(name=name, database=database_kind(world), answers=done, seconds=seconds)


def report(figures: dict[str, Any]) -> None:
    """Prints the race's figures (pytest -s shows them) and appends them to LOYALTY_FIGURES_FILE."""
    line = json.dumps(figures, sort_keys=True)
    print(f"\nrace figures: {line}")
    path = os.environ.get("LOYALTY_FIGURES_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def check_problem(response: Response, status: int, problem_type: str) -> None:
    assert response.status == status, (response.status, response.body)
    assert response.content_type == PROBLEM_JSON, (response.content_type, response.body)
    assert isinstance(response.body, dict) and response.body.get("type") == problem_type, response.body
    assert response.body.get("status") == status and response.body.get("title"), response.body
    assert not replayed(response), dict(response.headers)


def check_no_server_errors(outcome: Race) -> None:
    assert not outcome.server_errors(), f"{outcome.name}: 5xx answers: {outcome.server_errors()[:5]}"


# ---- reading the ledger ----------------------------------------------------------------------------

def history(client: Client, member_id: str = "ann") -> list[dict[str, Any]]:
    body = expect(client.get(f"/v1/members/{member_id}/history?limit=1000"), 200)
    assert body["next"] is None, "more than 1000 events: the race tests expect fewer"
    events = body["events"]
    assert [e["version"] for e in events] == list(range(1, len(events) + 1)), [e["version"] for e in events]
    return events


def settled_member(client: Client, member_id: str = "ann") -> dict[str, Any]:
    """GET /v1/members/{id} once its summary (a projection, which may lag a write by a moment)
    reaches the last version of the member's event log."""
    stored = history(client, member_id)[-1]["version"]
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        summary = expect(client.get(f"/v1/members/{member_id}"), 200)
        if summary["version"] >= stored or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert summary["version"] == stored, (
        f"GET /v1/members/{member_id} is at version {summary['version']} {SETTLE_TIMEOUT:.0f}s after "
        f"the event log reached version {stored}")
    return summary


def replayed_balance(client: Client, member_id: str = "ann") -> dict[str, Any]:
    """GET /v1/members/{id}/balance: computed by replaying the member's stored events."""
    return expect(client.get(f"/v1/members/{member_id}/balance"), 200)


def check_balance(world: World, available: int, member_id: str = "ann", **lifetime: int) -> dict[str, Any]:
    """The balance, from the event log and from the projection, is exactly `available`."""
    assert available >= 0, f"the expected balance itself is negative: {available}"
    from_events = replayed_balance(world.auditor, member_id)
    assert from_events["available"] == available, (from_events, available)
    summary = settled_member(world.auditor, member_id)
    assert summary["balance"]["available"] == available, (summary, available)
    for key, value in lifetime.items():
        assert summary["lifetime"][key] == value, (key, summary["lifetime"], lifetime)
    return summary


def check_reconciled(world: World) -> None:
    """The projections agree with a fresh replay of the event log (they may lag for a moment)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        body = expect(world.auditor.get("/v1/reports/reconciliation?program_id=club"), 200)
        if body["ok"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["ok"], body


def events_of(events: list[dict[str, Any]], kind: str, **data: Any) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and all(e["data"].get(k) == v for k, v in data.items())]


def running_balance_never_negative(events: list[dict[str, Any]]) -> None:
    """Walks the history: points accrued minus points redeemed, in the order they were stored."""
    balance, lowest = 0, 0
    for event in events:
        if event["type"] == "PointsAccrued":
            balance += event["data"]["points"]
        elif event["type"] == "PointsRedeemed":
            balance -= event["data"]["points"]
        elif event["type"] == "PointsAdjusted":
            balance += event["data"]["points"]
        lowest = min(lowest, balance)
    assert lowest >= 0, f"the history went {lowest} points below zero"


def earn(world: World, transaction_id: str, amount: str, member_id: str = "ann") -> int:
    """A purchase that is available at once (pending_days 0): its points."""
    body = expect(world.partner.post("/v1/purchases", {
        "transaction_id": transaction_id, "member_id": member_id, "store_id": "g-1", "amount": amount,
        "currency": "EUR"}), 201)
    assert body["status"] == "available", body
    return body["points_earned"]


def supervisors(world: World, count: int) -> list[tuple[Client, str]]:
    """`count` supervisor keys: (client, actor) each."""
    issued = []
    for _ in range(count):
        key, key_id = issue_key(world.admin, "supervisor")
        issued.append((world.server.client(key), f"key:{key_id}"))
    return issued


def adjustment_queue(world: World, status: str) -> list[dict[str, Any]]:
    return expect(world.auditor.get(f"/v1/adjustments?status={status}"), 200)["adjustments"]


def queue_settles(world: World, adjustment_id: str, status: str) -> dict[str, Any]:
    """Waits for the adjustment-request projection to show `adjustment_id` with `status`, once,
    and nowhere else; returns its row."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        # Three requests, not one snapshot: the projection may move between them, so a pass
        # counts only if it saw the row once, in `status`, and nowhere else.
        queues = {s: [a for a in adjustment_queue(world, s) if a["adjustment_id"] == adjustment_id]
                  for s in ("pending", "approved", "rejected")}
        settled = len(queues[status]) == 1 and all(not rows for s, rows in queues.items() if s != status)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(queues[status]) == 1, queues
    assert all(not rows for s, rows in queues.items() if s != status), queues
    return queues[status][0]


# ---- 1. redemptions beyond the balance ---------------------------------------------------------------

def test_fifty_redemptions_beyond_the_balance_never_overdraw(world: World) -> None:
    """Fifty redemptions of a twentieth of the balance each, at once: at most twenty can succeed,
    and since nothing else changes the balance, every refusal must come once it is spent."""
    earn(world, "seed-1", "300.00")
    earn(world, "seed-2", "200.00")  # two lots: redemptions spend across them, oldest first
    balance = replayed_balance(world.auditor)["available"]
    assert balance == 1000
    points = balance // 20
    bodies = [{"redemption_id": f"race-r-{i}", "points": points, "reward": "race"} for i in range(RACERS)]
    outcome = race(world, "redemptions-beyond-balance", [
        (lambda body=body: world.server.client(world.partner.key).post("/v1/members/ann/redemptions", body))
        for body in bodies])

    check_no_server_errors(outcome)
    won, refused = outcome.applied(), outcome.refused(422, "insufficient-points")
    assert not outcome.replays(), [outcome.answers[i].body for i in outcome.replays()]
    assert len(won) + len(refused) == RACERS, Counter((r.status, problem_slug(r)) for r in outcome.answers)
    for i in refused:
        check_problem(outcome.answers[i], 422, "insufficient-points")
    for i in won:
        answer = outcome.answers[i]
        assert answer.status == 201 and answer.content_type == "application/json", (answer.status, answer.body)
        assert answer.body["redemption_id"] == bodies[i]["redemption_id"] and answer.body["points"] == points
    spent = points * len(won)
    assert spent <= balance, f"{len(won)} redemptions of {points} succeeded on a balance of {balance}"
    # Each success saw its own state of the member, one after the other: the balances it reported
    # are balance - points, balance - 2 x points, ... with none repeated and none below zero.
    reported = sorted((outcome.answers[i].body["balance"]["available"] for i in won), reverse=True)
    assert reported == [balance - points * k for k in range(1, len(won) + 1)], reported
    left = balance - spent
    # Nothing else moved the balance: a refusal is only right once fewer than `points` remain.
    assert not refused or left < points, f"{len(refused)} refused while {left} points were left"
    report(outcome.figures(balance_before=balance, points_each=points, balance_after=left))

    check_balance(world, left, redeemed=spent)
    events = history(world.auditor)
    redeemed = events_of(events, "PointsRedeemed")
    assert sorted(e["data"]["redemption_id"] for e in redeemed) == sorted(bodies[i]["redemption_id"] for i in won)
    assert all(e["data"]["points"] == points for e in redeemed), redeemed
    running_balance_never_negative(events)
    check_reconciled(world)

    # Each success, sent again: the same status and body, marked as a replay, nothing changed.
    version = events[-1]["version"]
    for i in won:
        again = world.partner.post("/v1/members/ann/redemptions", bodies[i])
        assert again.status == 201 and replayed(again), (again.status, dict(again.headers), again.body)
        assert again.body == outcome.answers[i].body, (again.body, outcome.answers[i].body)
    # A refusal is not stored: sent again, it is judged again (and refused again), not replayed.
    for i in refused[:5]:
        check_problem(world.partner.post("/v1/members/ann/redemptions", bodies[i]), 422, "insufficient-points")
    assert history(world.auditor)[-1]["version"] == version


# ---- 2. one posting, fifty times ------------------------------------------------------------------------

def purchase(transaction_id: str, amount: str) -> dict[str, Any]:
    return {"transaction_id": transaction_id, "member_id": "ann", "store_id": "g-1", "amount": amount,
            "currency": "EUR"}


def test_fifty_copies_of_one_purchase_apply_once(world: World) -> None:
    """The same purchase fifty times at once: one 201, forty-nine 201 replays with the same body."""
    body = purchase("race-same", "25.00")  # 50 points
    outcome = race(world, "same-purchase-50-copies", [
        (lambda: world.server.client(world.partner.key).post("/v1/purchases", body)) for _ in range(RACERS)])

    check_no_server_errors(outcome)
    report(outcome.figures())
    statuses = Counter((r.status, replayed(r)) for r in outcome.answers)
    assert statuses == {(201, False): 1, (201, True): RACERS - 1}, statuses
    first = outcome.answers[outcome.applied()[0]].body
    assert first["points_earned"] == 50 and first["transaction_id"] == "race-same", first
    assert all(r.body == first for r in outcome.answers), [r.body for r in outcome.answers if r.body != first][:3]

    check_balance(world, 50, earned=50)
    events = history(world.auditor)
    assert len(events_of(events, "PurchaseRecorded", transaction_id="race-same")) == 1, events
    assert sum(e["data"]["points"] for e in events_of(events, "PointsAccrued")) == 50, events
    check_reconciled(world)


def test_fifty_bodies_under_one_transaction_id_apply_one(world: World) -> None:
    """Fifty different purchases under one transaction id at once: exactly one is applied; the
    others are 409 idempotency-conflict (none can be a replay: no two bodies are the same)."""
    bodies = [purchase("race-clash", f"{10 + i}.00") for i in range(RACERS)]  # 2 x (10 + i) points
    outcome = race(world, "same-id-different-bodies", [
        (lambda body=body: world.server.client(world.partner.key).post("/v1/purchases", body)) for body in bodies])

    check_no_server_errors(outcome)
    report(outcome.figures())
    won, conflicts = outcome.applied(), outcome.refused(409, "idempotency-conflict")
    assert len(won) == 1, [(outcome.answers[i].status, outcome.answers[i].body) for i in won]
    assert not outcome.replays(), [outcome.answers[i].body for i in outcome.replays()]
    assert len(conflicts) == RACERS - 1, Counter((r.status, problem_slug(r)) for r in outcome.answers)
    for i in conflicts:
        check_problem(outcome.answers[i], 409, "idempotency-conflict")
    winner = won[0]
    posted = outcome.answers[winner].body
    assert outcome.answers[winner].status == 201 and posted["points_earned"] == 2 * (10 + winner), (winner, posted)

    check_balance(world, posted["points_earned"], earned=posted["points_earned"])
    recorded = events_of(history(world.auditor), "PurchaseRecorded", transaction_id="race-clash")
    assert len(recorded) == 1, recorded
    assert Decimal(str(recorded[0]["data"]["amount"])) == Decimal(bodies[winner]["amount"]), recorded
    # The winner's body is the one replayed from now on; any other body still conflicts.
    again = world.partner.post("/v1/purchases", bodies[winner])
    assert again.status == 201 and replayed(again) and again.body == posted, (again.status, again.body)
    check_problem(world.partner.post("/v1/purchases", bodies[(winner + 1) % RACERS]), 409, "idempotency-conflict")
    check_reconciled(world)


# ---- 3. supervisors racing to decide one adjustment ---------------------------------------------------

SUPERVISORS = 10


def request_adjustment(client: Client, adjustment_id: str, points: int) -> dict[str, Any]:
    body = expect(client.post("/v1/members/ann/adjustments", {
        "adjustment_id": adjustment_id, "points": points, "reason": "goodwill", "note": "race"}), 202)
    assert body["status"] == "pending_approval", body
    return body


def test_fifty_approvals_of_one_adjustment_apply_it_once(world: World) -> None:
    """Ten supervisors, five requests each, approve one pending adjustment at once: one approval
    takes effect; the winner's other requests are replays of it, everyone else's a 409 conflict."""
    earn(world, "seed-1", "500.00")  # 1000 points
    request_adjustment(world.support, "race-approve", 600)  # above the threshold of 500
    assert queue_settles(world, "race-approve", "pending")["requested_by"] == f"key:{world.support_key_id}"
    deciders = supervisors(world, SUPERVISORS)
    who = [i % SUPERVISORS for i in range(RACERS)]
    outcome = race(world, "approvals-of-one-adjustment", [
        (lambda s=s: deciders[s][0].post("/v1/adjustments/race-approve/approval",
                                         {"note": f"approved by supervisor {s}"})) for s in who])

    check_no_server_errors(outcome)
    won = outcome.applied()
    assert len(won) == 1, [(i, outcome.answers[i].body) for i in won]
    winner = who[won[0]]
    decision = outcome.answers[won[0]].body
    report(outcome.figures(supervisors=SUPERVISORS, winner_requests=who.count(winner)))
    assert outcome.answers[won[0]].status == 200, decision
    assert decision["status"] == "approved" and decision["decided_by"] == deciders[winner][1], decision
    assert decision["requested_by"] == f"key:{world.support_key_id}" and decision["points"] == 600, decision
    assert decision["balance"]["available"] == 1600, decision
    for i, answer in enumerate(outcome.answers):
        if i == won[0]:
            continue
        if who[i] == winner:  # the winner asking again: its own decision, replayed
            assert answer.status == 200 and replayed(answer), (i, answer.status, answer.body)
            assert answer.body == decision, (answer.body, decision)
        else:  # anyone else: already decided
            check_problem(answer, 409, "conflict")

    check_balance(world, 1600, adjusted=600)
    events = history(world.auditor)
    adjusted = events_of(events, "PointsAdjusted", adjustment_id="race-approve")
    assert len(adjusted) == 1, adjusted
    assert adjusted[0]["data"]["approved_by"] == deciders[winner][1], adjusted
    assert adjusted[0]["actor"] == f"key:{world.support_key_id}", adjusted
    row = queue_settles(world, "race-approve", "approved")
    assert row["decided_by"] == deciders[winner][1], row
    # Late decisions after the race: a rejection is a conflict, the winner's approval a replay
    # (with another note, the same decision said differently: an idempotency conflict).
    loser = (winner + 1) % SUPERVISORS
    check_problem(deciders[loser][0].post("/v1/adjustments/race-approve/rejection", {"note": "late"}), 409, "conflict")
    late = deciders[winner][0].post("/v1/adjustments/race-approve/approval", {"note": f"approved by supervisor {winner}"})
    assert late.status == 200 and replayed(late) and late.body == decision, (late.status, late.body)
    check_problem(deciders[winner][0].post("/v1/adjustments/race-approve/approval", {"note": "again"}), 409,
                  "idempotency-conflict")
    assert history(world.auditor)[-1]["version"] == events[-1]["version"]
    check_reconciled(world)


def test_approvals_racing_rejections_decide_once(world: World) -> None:
    """Ten supervisors, one of whom requested the adjustment, send approvals and rejections at
    once: exactly one decision takes effect, the requester is always refused (four eyes), and
    the points are applied once if it was an approval, never if it was a rejection."""
    earn(world, "seed-1", "500.00")  # 1000 points
    deciders = supervisors(world, SUPERVISORS)
    requester = 0
    request_adjustment(deciders[requester][0], "race-split", 700)
    queue_settles(world, "race-split", "pending")
    plan = [(i % SUPERVISORS, "approval" if i % 2 == 0 else "rejection") for i in range(RACERS)]
    # i % 2 and i % 10 share parity: make every supervisor send both kinds by shifting half of them.
    plan = [(s, kind if i < RACERS // 2 else ("rejection" if kind == "approval" else "approval"))
            for i, (s, kind) in enumerate(plan)]
    assert all({k for s2, k in plan if s2 == s} == {"approval", "rejection"} for s in range(SUPERVISORS))
    outcome = race(world, "approvals-racing-rejections", [
        (lambda s=s, kind=kind: deciders[s][0].post(f"/v1/adjustments/race-split/{kind}", {"note": f"{kind} {s}"}))
        for s, kind in plan])

    check_no_server_errors(outcome)
    won = outcome.applied()
    assert len(won) == 1, [(i, plan[i], outcome.answers[i].body) for i in won]
    winner, kind = plan[won[0]]
    decision = outcome.answers[won[0]].body
    decided = "approved" if kind == "approval" else "rejected"
    report(outcome.figures(supervisors=SUPERVISORS, decision=decided))
    assert winner != requester, decision
    assert outcome.answers[won[0]].status == 200, decision
    assert decision["status"] == decided and decision["decided_by"] == deciders[winner][1], decision
    for i, answer in enumerate(outcome.answers):
        if i == won[0]:
            continue
        s, k = plan[i]
        if s == requester:
            check_problem(answer, 403, "forbidden")
        elif (s, k) == (winner, kind):
            assert answer.status == 200 and replayed(answer) and answer.body == decision, (i, answer.status,
                                                                                          answer.body)
        else:
            check_problem(answer, 409, "conflict")

    points = 700 if decided == "approved" else 0
    check_balance(world, 1000 + points, adjusted=points)
    adjusted = events_of(history(world.auditor), "PointsAdjusted", adjustment_id="race-split")
    assert len(adjusted) == (1 if points else 0), adjusted
    assert queue_settles(world, "race-split", decided)["decided_by"] == deciders[winner][1]
    check_reconciled(world)


# ---- 4. redemptions racing purchases on one member --------------------------------------------------

def test_redemptions_racing_purchases_balance_is_the_sum_of_what_was_applied(world: World) -> None:
    """Twenty-five redemptions of 50 points and twenty-five purchases of 20 points at once, on a
    member holding 500: 1250 points asked for, at most 1000 ever held, so some redemptions must be
    refused; whatever the order, the balance is 500 + earned - redeemed, never below zero."""
    start = earn(world, "seed-1", "250.00")
    assert start == 500
    half = RACERS // 2
    requests: list[Callable[[], Response]] = []
    kinds: list[str] = []
    for i in range(half):
        requests.append(lambda i=i: world.server.client(world.partner.key).post(
            "/v1/members/ann/redemptions", {"redemption_id": f"mix-r-{i}", "points": 50}))
        kinds.append("redemption")
        requests.append(lambda i=i: world.server.client(world.partner.key).post(
            "/v1/purchases", purchase(f"mix-p-{i}", "10.00")))
        kinds.append("purchase")
    outcome = race(world, "redemptions-racing-purchases", requests)

    check_no_server_errors(outcome)
    assert not outcome.replays(), [outcome.answers[i].body for i in outcome.replays()]
    earned = redeemed = 0
    won_redemptions = []
    for i, answer in enumerate(outcome.answers):
        if kinds[i] == "purchase":
            assert answer.status == 201 and not replayed(answer), (i, answer.status, answer.body)
            assert answer.body["points_earned"] == 20 and answer.body["tier"] == "blue", answer.body
            earned += answer.body["points_earned"]
        elif answer.status == 201:
            assert answer.body["points"] == 50 and answer.body["balance"]["available"] >= 0, answer.body
            redeemed += 50
            won_redemptions.append(answer.body["redemption_id"])
        else:
            check_problem(answer, 422, "insufficient-points")
    report(outcome.figures(purchases=half, redemptions=half, points_earned=earned, points_redeemed=redeemed,
                           balance_before=start, balance_after=start + earned - redeemed))
    assert redeemed <= start + earned, (redeemed, start, earned)
    assert len(won_redemptions) < half, "1250 points redeemed out of at most 1000"

    check_balance(world, start + earned - redeemed, earned=start + earned, redeemed=redeemed)
    events = history(world.auditor)
    assert sorted(e["data"]["redemption_id"] for e in events_of(events, "PointsRedeemed")) == sorted(won_redemptions)
    assert len(events_of(events, "PurchaseRecorded")) == 1 + half, events
    running_balance_never_negative(events)
    check_reconciled(world)
