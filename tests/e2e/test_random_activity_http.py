"""Invariants under random activity over HTTP: the seeded generator of
tests/integration/test_random_activity.py, shorter, against the real `loyalty serve` (gunicorn, two
workers) on SQLite and on PostgreSQL (with `loyalty projections run` beside it, as the README
says to deploy it there).

A `random.Random(seed)` drives LOYALTY_HTTP_STEPS (150 by default) random requests for three
members of a program with two partners: purchases, returns (partial, completing, beyond what is
left), redemptions (some asking for too much), cancellations, adjustments in both directions
(above the threshold: 202, then approvals, rejections, self-approvals and decisions by the wrong
role), reversals of one event by version (some twice), repeats of earlier writes with the same id
(the same body: a replay; another body: 409), the expiry job and the tier review.

The client keeps its OWN model of every member's lots (points, when they become available, when
they expire, what remains, what expired), applying the README's rules to what it sent: oldest
spendable lot first, clawbacks, debt lots, cancellations past expiry, expiry by as_of. The server's
clock cannot be moved, so effective times (`occurred_at`, `as_of`) come from a simulated clock
that walks from about 420 days ago to 4 days ago. Its time of day stays about 12 hours away from
the real one, so no lot becomes available or due (by the real clock, which the server's balances
use) while the test runs.

After EVERY step:
1. a write's response balance equals the model's; a refused write or a replay stores nothing
   (`/healthz`'s event count does not move);
2. once `/readyz` shows no projection lag, GET /v1/members/{id} equals the model (balance and
   lifetime totals) for every member, and GET /v1/members/{id}/balance (a replay of the event
   store) equals it (available, pending, due, tier);
3. GET /v1/reports/liability closes (opening + movements = closing) and its closing equals the
   member balances and the model's total; GET /v1/reports/reconciliation is ok.

A failure prints its seed: replay with `LOYALTY_SEED=<seed> pytest tests/e2e/test_random_activity_http.py`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Any

import pytest

from domain.calendar import add_months
from tests.e2e.conftest import REPO, Client, Response, Server, expect, issue_key

UTC = timezone.utc
SEED = int(os.environ["LOYALTY_SEED"].split(",")[0]) if os.environ.get("LOYALTY_SEED") else 90210
STEPS = int(os.environ.get("LOYALTY_HTTP_STEPS", "150"))
READY_TIMEOUT = 15.0
PROBLEM_JSON = "application/problem+json"

PROGRAM_ID = "rand"
THRESHOLD = 300
PENDING_DAYS = 3
EXPIRY_MONTHS = 3
MULTIPLIERS = (Fraction(1), Fraction(2))
PROGRAM = {
    "program_id": PROGRAM_ID, "name": "Random", "currency": "EUR", "earn_rate": "2", "point_value": "0.01",
    "expected_redemption_rate": "0.8", "expiry": {"policy": "rolling", "months": EXPIRY_MONTHS},
    "pending_days": PENDING_DAYS,
    "tiers": [{"name": "blue", "qualifying_spend": "0", "multiplier": "1"},
              {"name": "gold", "qualifying_spend": "800", "multiplier": "2"}],
    "tier_window_months": 6, "adjustment_approval_threshold": THRESHOLD, "effective_at": "2020-01-01T00:00:00Z",
}
PARTNERS = {"north": "n-1", "south": "s-1"}
MEMBERS = ("m1", "m2", "m3")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def replayed(response: Response) -> bool:
    return (response.headers.get("Idempotent-Replayed") or "").lower() == "true"


# ---- the client's own model of the ledger ----------------------------------------------------

@dataclass
class Lot:
    points: int
    earned_at: datetime
    available_at: datetime
    expires_at: datetime | None
    remaining: int
    expired: int = 0
    expired_reversed: int = 0

    def state(self, moment: datetime) -> str:
        if self.remaining < 0:
            return "available"
        if self.expires_at is not None and self.expires_at <= moment:
            return "due"
        if self.available_at > moment:
            return "pending"
        return "available"


@dataclass
class Account:
    lots: list[Lot] = field(default_factory=list)
    life: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("earned", "redeemed", "expired", "reversed", "adjusted"), 0))

    def balance(self, moment: datetime) -> dict[str, int]:
        totals = {"available": 0, "pending": 0, "due_for_expiry": 0}
        for lot in self.lots:
            state = lot.state(moment)
            totals["due_for_expiry" if state == "due" else state] += lot.remaining
        return totals

    @property
    def total(self) -> int:
        return sum(lot.remaining for lot in self.lots)

    def spend(self, points: int, at: datetime) -> list[tuple[Lot, int]]:
        taken, wanted = [], points
        for lot in sorted((lot for lot in self.lots if lot.remaining > 0 and lot.state(at) == "available"),
                          key=lambda lot: lot.earned_at):
            if not wanted:
                break
            take = min(wanted, lot.remaining)
            taken.append((lot, take))
            wanted -= take
        for lot, take in taken:
            lot.remaining -= take
        return taken

    def earn(self, points: int, at: datetime) -> Lot | None:
        self.life["earned"] += points
        if not points:
            return None
        lot = Lot(points, at, at + timedelta(days=PENDING_DAYS), add_months(at, EXPIRY_MONTHS), points)
        self.lots.append(lot)
        return lot

    def reverse(self, lot: Lot | None, points: int) -> None:
        if lot is None or not points:
            return
        from_remaining = min(points, max(lot.remaining, 0))
        from_expired = min(points - from_remaining, lot.expired - lot.expired_reversed)
        clawback = points - from_remaining - from_expired
        lot.remaining -= from_remaining + clawback
        lot.expired_reversed += from_expired
        self.life["reversed"] += from_remaining + clawback

    def redeem(self, points: int, at: datetime) -> list[tuple[Lot, int]]:
        self.life["redeemed"] += points
        return self.spend(points, at)

    def cancel(self, points: int, consumed: list[tuple[Lot, int]], at: datetime) -> None:
        for lot, taken in consumed:
            past_expiry = lot.expires_at is not None and lot.expires_at <= at
            repaid = min(taken, max(-lot.remaining, 0)) if past_expiry else taken
            lot.remaining += repaid
            lot.expired += taken - repaid
            self.life["expired"] += taken - repaid
        self.life["redeemed"] -= points

    def expire(self, as_of: datetime) -> int:
        """Due points pay what is owed (lots below zero, oldest first) before the rest expires."""
        total = 0
        debts = sorted((lot for lot in self.lots if lot.remaining < 0), key=lambda lot: lot.earned_at)
        for lot in sorted((lot for lot in self.lots if lot.remaining > 0 and lot.state(as_of) == "due"),
                          key=lambda lot: lot.earned_at):
            while lot.remaining and debts:
                paid = min(lot.remaining, -debts[0].remaining)
                lot.remaining -= paid
                debts[0].remaining += paid
                if not debts[0].remaining:
                    debts.pop(0)
            total += lot.remaining
            lot.expired += lot.remaining
            lot.remaining = 0
        self.life["expired"] += total
        return total

    def adjust(self, points: int, at: datetime) -> None:
        self.life["adjusted"] += points
        if points > 0:
            self.lots.append(Lot(points, at, at, add_months(at, EXPIRY_MONTHS), points))
            return
        consumed = self.spend(-points, at)
        shortfall = -points - sum(taken for _, taken in consumed)
        if shortfall:
            self.lots.append(Lot(-shortfall, at, at, None, -shortfall))


def reversed_by(points: int, amount_cents: int, returned_cents: int) -> int:
    return points if returned_cents >= amount_cents else points * returned_cents // amount_cents


class Mismatch(AssertionError):
    pass


# ---- the generator ---------------------------------------------------------------------------

class HttpActivity:
    def __init__(self, seed: int, server: Server) -> None:
        self.rng = random.Random(seed)
        self.server = server
        self.admin = server.admin
        self.step = 0
        self.counter = 0
        self.log: list[str] = []
        self.counts: Counter[str] = Counter()
        self.accounts = {m: Account() for m in MEMBERS}
        self.purchases: dict[tuple[str, str], dict[str, Any]] = {}
        self.redemptions: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.adjustments: dict[str, dict[str, Any]] = {}  # applied: member, points
        self.reversed: set[tuple[str, int]] = set()
        self.writes: list[tuple[Client, str, dict[str, Any], Response]] = []
        real_now = datetime.now(UTC)
        # Effective times keep a time of day ~12 h from the real one: no lot boundary is crossed
        # by the real clock while the test runs.
        band = (real_now + timedelta(hours=12)).replace(minute=0, second=0, microsecond=0)
        self.cap = band - timedelta(days=5)  # the latest effective time: nothing is pending any more by then
        self.virtual = self.cap - timedelta(days=min(6 * STEPS, 3000))  # reports take at most ten years
        self.first_day = (self.virtual - timedelta(days=2)).date()
        self.offset = 0

    # ---- set-up: keys and the world -------------------------------------------------------

    def set_up(self) -> None:
        admin = self.admin
        expect(admin.post("/v1/programs", PROGRAM), 201)
        self.partners: dict[str, Client] = {}
        for partner, store in PARTNERS.items():
            expect(admin.post("/v1/partners", {"partner_id": partner, "name": partner.title(), "program_id": PROGRAM_ID,
                                               "stores": [store]}), 201)
            self.partners[partner] = self.server.client(issue_key(admin, "partner", partner)[0])
        self.support = self.server.client(issue_key(admin, "support")[0])
        self.supervisors = [self.server.client(issue_key(admin, "supervisor")[0]) for _ in range(2)]
        self.finance = self.server.client(issue_key(admin, "finance")[0])
        self.auditor = self.server.client(issue_key(admin, "auditor")[0])
        for member_id in MEMBERS:
            expect(admin.post("/v1/members", {"program_id": PROGRAM_ID, "member_id": member_id,
                                              "card_number": f"card-{member_id}",
                                              "occurred_at": iso(self.virtual - timedelta(days=1))}), 201)

    # ---- helpers --------------------------------------------------------------------------

    @property
    def at(self) -> datetime:
        return self.virtual + timedelta(seconds=self.offset)

    def tick(self) -> None:
        days = self.rng.choice([0, 0, 0, 1, 1, 2, 3, 5, 8, 13, 30])
        if days and self.virtual + timedelta(days=days) <= self.cap:
            self.virtual += timedelta(days=days)
            self.offset = self.rng.randint(0, 300)
        else:
            self.offset += self.rng.randint(1, 20)  # the same day, a little later (the band is 1 hour wide)
        assert self.offset < 3600, "the simulated clock left its band of the day"

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def note(self, text: str) -> None:
        self.log.append(f"step {self.step} @ {iso(self.at)}: {text}")

    def events(self) -> int:
        return expect(self.admin.get("/healthz"), 200)["events"]

    def accepted(self, response: Response, status: int, what: str) -> dict[str, Any]:
        if response.status != status or replayed(response):
            raise Mismatch(f"{what}: expected {status}, got {response.status} replayed={replayed(response)} "
                           f"{response.body!r}")
        self.counts[f"{what.split()[0]} {status}"] += 1
        return response.body

    def refused(self, response: Response, status: int, slug: str, what: str, events_before: int) -> None:
        if response.status != status or response.content_type != PROBLEM_JSON or not isinstance(response.body, dict) \
                or response.body.get("type") != slug:
            raise Mismatch(f"{what}: expected {status} {slug}, got {response.status} {response.content_type} "
                           f"{response.body!r}")
        if self.events() != events_before:
            raise Mismatch(f"{what}: refused with {status} {slug}, yet events were stored")
        self.counts[f"{what.split()[0]} refused {slug}"] += 1

    def check_balance(self, body: dict[str, Any], member_id: str, what: str) -> None:
        expected = self.accounts[member_id].balance(datetime.now(UTC))
        if body["balance"] != expected:
            raise Mismatch(f"{what}: the response's balance {body['balance']} is not the model's {expected}")

    def post(self, client: Client, path: str, body: dict[str, Any]) -> Response:
        return client.post(path, body)

    def remember(self, client: Client, path: str, body: dict[str, Any], response: Response) -> None:
        self.writes.append((client, path, body, response))

    def version_of(self, member_id: str, kind: str, field_name: str, value: str) -> int:
        events = expect(self.auditor.get(f"/v1/members/{member_id}/history?limit=1000"), 200)["events"]
        return next(e["version"] for e in events if e["type"] == kind and e["data"].get(field_name) == value)

    # ---- the commands ---------------------------------------------------------------------

    def do_purchase(self) -> None:
        member_id = self.rng.choice(MEMBERS)
        partner = self.rng.choice(list(PARTNERS))
        amount = self.rng.choice([self.rng.randint(1, 300), self.rng.randint(300, 20_000), self.rng.randint(20_000, 60_000)])
        txn = self.next_id("t")
        body = {"transaction_id": txn, "store_id": PARTNERS[partner], "amount": str(Decimal(amount) / 100),
                "currency": "EUR", "occurred_at": iso(self.at)}
        body.update({"card_number": f"card-{member_id}"} if self.rng.random() < 0.2 else {"member_id": member_id})
        self.note(f"purchase {partner}/{txn} {body['amount']} for {member_id}")
        response = self.post(self.partners[partner], "/v1/purchases", body)
        result = self.accepted(response, 201, f"purchase {txn}")
        points = result["points_earned"]
        if points not in {floor(Fraction(amount, 100) * 2 * m) for m in MULTIPLIERS}:
            raise Mismatch(f"purchase {txn} of {body['amount']} earned {points}")
        lot = self.accounts[member_id].earn(points, self.at)
        self.purchases[(partner, txn)] = {"member": member_id, "cents": amount, "returned": 0, "points": points,
                                          "lot": lot, "at": self.at}
        self.check_balance(result, member_id, f"purchase {txn}")
        self.remember(self.partners[partner], "/v1/purchases", body, response)

    def do_return(self) -> None:
        if not self.purchases:
            return self.do_purchase()
        partner, txn = self.rng.choice(list(self.purchases))
        bought = self.purchases[(partner, txn)]
        left = bought["cents"] - bought["returned"]
        kind = self.rng.choice(["part", "part", "rest", "over"])
        amount = (self.rng.randint(1, left - 1) if kind == "part" and left > 1
                  else left + self.rng.randint(1, 300) if kind == "over" else max(left, 1))
        return_id = self.next_id("r")
        body = {"transaction_id": return_id, "original_transaction_id": txn, "amount": str(Decimal(amount) / 100),
                "occurred_at": iso(self.at)}
        self.note(f"return {kind} {return_id} of {partner}/{txn}: {body['amount']} of {Decimal(left) / 100} left")
        before = self.events()
        response = self.post(self.partners[partner], "/v1/returns", body)
        if amount > left:
            self.refused(response, 422, "return-exceeds-purchase", f"return {return_id}", before)
            return None
        result = self.accepted(response, 201, f"return {return_id}")
        points = (reversed_by(bought["points"], bought["cents"], bought["returned"] + amount)
                  - reversed_by(bought["points"], bought["cents"], bought["returned"]))
        if result["points_reversed"] != points:
            raise Mismatch(f"return {return_id}: reversed {result['points_reversed']}, the model {points}")
        bought["returned"] += amount
        self.accounts[bought["member"]].reverse(bought["lot"], points)
        self.check_balance(result, bought["member"], f"return {return_id}")
        self.remember(self.partners[partner], "/v1/returns", body, response)
        return None

    def do_redeem(self) -> None:
        member_id = self.rng.choice(MEMBERS)
        account = self.accounts[member_id]
        available = account.balance(self.at)["available"]
        kind = self.rng.choice(["part", "part", "all", "over"])
        points = (self.rng.randint(1, available - 1) if kind == "part" and available > 1
                  else available if kind == "all" and available > 0 else max(available, 0) + self.rng.randint(1, 100))
        partner = self.rng.choice(list(PARTNERS))
        redemption_id = self.next_id("rd")
        body = {"redemption_id": redemption_id, "points": points, "reward": "gift", "occurred_at": iso(self.at)}
        self.note(f"redeem {member_id}/{redemption_id} {points} of {available} at {partner}")
        before = self.events()
        response = self.post(self.partners[partner], f"/v1/members/{member_id}/redemptions", body)
        if points > available:
            self.refused(response, 422, "insufficient-points", f"redemption {redemption_id}", before)
            return
        result = self.accepted(response, 201, f"redemption {redemption_id}")
        consumed = account.redeem(points, self.at)
        if account.balance(self.at)["available"] < 0:
            raise Mismatch(f"redemption {redemption_id} took available below zero in the model")
        self.redemptions[(member_id, redemption_id)] = {"points": points, "consumed": consumed, "at": self.at,
                                                        "cancelled": None, "partner": partner}
        self.check_balance(result, member_id, f"redemption {redemption_id}")
        self.remember(self.partners[partner], f"/v1/members/{member_id}/redemptions", body, response)

    def do_cancel(self) -> None:
        if not self.redemptions:
            return self.do_redeem()
        member_id, redemption_id = self.rng.choice(list(self.redemptions))
        redemption = self.redemptions[(member_id, redemption_id)]
        path = f"/v1/members/{member_id}/redemptions/{redemption_id}/cancellation"
        body = {"occurred_at": iso(self.at)}
        self.note(f"cancel {member_id}/{redemption_id} (cancelled by {redemption['cancelled']})")
        before = self.events()
        response = self.post(self.partners[redemption["partner"]], path, body)
        if redemption["cancelled"] == "reversal":
            self.refused(response, 409, "already-reversed", f"cancellation of {redemption_id}", before)
            return None
        if redemption["cancelled"] == "cancellation":  # another body under the same cancellation
            self.refused(response, 409, "idempotency-conflict", f"cancellation of {redemption_id}", before)
            return None
        result = self.accepted(response, 201, f"cancellation of {redemption_id}")
        self.accounts[member_id].cancel(redemption["points"], redemption["consumed"], self.at)
        redemption["cancelled"] = "cancellation"
        self.check_balance(result, member_id, f"cancellation of {redemption_id}")
        self.remember(self.partners[redemption["partner"]], path, body, response)
        return None

    def do_adjust(self) -> None:
        member_id = self.rng.choice(MEMBERS)
        big = self.rng.random() < 0.35
        points = (self.rng.randint(THRESHOLD + 1, 4 * THRESHOLD) if big else self.rng.randint(1, 200)) * \
            self.rng.choice([1, -1])
        adjustment_id = self.next_id("adj")
        requester = self.rng.choice(["support", "support", "supervisor 0"])
        client = self.support if requester == "support" else self.supervisors[0]
        body = {"adjustment_id": adjustment_id, "points": points, "reason": self.rng.choice(["goodwill", "correction"]),
                "note": "random", "occurred_at": iso(self.at)}
        self.note(f"adjust {member_id}/{adjustment_id} {points:+} by {requester}")
        response = self.post(client, f"/v1/members/{member_id}/adjustments", body)
        result = self.accepted(response, 202 if big else 201, f"adjustment {adjustment_id}")
        if big:
            self.requests[adjustment_id] = {"member": member_id, "points": points, "at": self.at,
                                            "requester": requester, "status": "pending", "decider": None}
        else:
            self.accounts[member_id].adjust(points, self.at)
            self.adjustments[adjustment_id] = {"member": member_id, "points": points}
        self.check_balance(result, member_id, f"adjustment {adjustment_id}")
        self.remember(client, f"/v1/members/{member_id}/adjustments", body, response)

    def do_decide(self) -> None:
        if not self.requests:
            return self.do_adjust()
        adjustment_id = self.rng.choice(list(self.requests))
        request = self.requests[adjustment_id]
        approve = self.rng.random() < 0.6
        decision = "approved" if approve else "rejected"
        who = self.rng.choice(["supervisor 0", "supervisor 1", "supervisor 1", "support"])
        client = {"supervisor 0": self.supervisors[0], "supervisor 1": self.supervisors[1], "support": self.support}[who]
        path = f"/v1/adjustments/{adjustment_id}/{'approval' if approve else 'rejection'}"
        self.note(f"{decision} {adjustment_id} ({request}) by {who}")
        before = self.events()
        response = self.post(client, path, {"note": "decided"})
        if who == "support":
            self.refused(response, 403, "forbidden", f"decision on {adjustment_id} by support", before)
            return None
        if request["status"] == decision and request["decider"] == who:
            if response.status != 200 or self.events() != before:
                raise Mismatch(f"repeating one's own decision on {adjustment_id}: {response.status} {response.body}")
            self.counts["decision replayed"] += 1
            return None
        if request["requester"] == who:
            self.refused(response, 403, "forbidden", f"self-approval of {adjustment_id}", before)
            return None
        if request["status"] != "pending":
            self.refused(response, 409, "conflict", f"second decision on {adjustment_id}", before)
            return None
        result = self.accepted(response, 200, f"decision on {adjustment_id}")
        if approve:
            self.accounts[request["member"]].adjust(request["points"], request["at"])
            self.adjustments[adjustment_id] = {"member": request["member"], "points": request["points"]}
        request.update(status=decision, decider=who)
        self.check_balance(result, request["member"], f"decision on {adjustment_id}")
        return None

    def do_reverse(self) -> None:
        member_id = self.rng.choice(MEMBERS)
        targets: list[tuple[str, Any]] = [("purchase", k) for k, p in self.purchases.items() if p["member"] == member_id]
        targets += [("redemption", rid) for (m, rid) in self.redemptions if m == member_id]
        targets += [("adjustment", a) for a, r in self.adjustments.items() if r["member"] == member_id]
        if not targets:
            return self.do_purchase()
        kind, key = self.rng.choice(targets)
        if kind == "purchase":
            version = self.version_of(member_id, "PurchaseRecorded", "transaction_id", key[1])
        elif kind == "redemption":
            version = self.version_of(member_id, "PointsRedeemed", "redemption_id", key)
        else:
            version = self.version_of(member_id, "PointsAdjusted", "adjustment_id", key)
        reversal_id = self.next_id("rev")
        body = {"reversal_id": reversal_id, "version": version, "note": "random reversal", "occurred_at": iso(self.at)}
        self.note(f"reverse {member_id} v{version} ({kind} {key})")
        before = self.events()
        response = self.post(self.support, f"/v1/members/{member_id}/reversals", body)
        account = self.accounts[member_id]
        already = ((member_id, version) in self.reversed
                   or (kind == "purchase" and self.purchases[key]["returned"] >= self.purchases[key]["cents"])
                   or (kind == "redemption" and self.redemptions[(member_id, key)]["cancelled"] is not None))
        if already:
            self.refused(response, 409, "already-reversed", f"reversal of v{version}", before)
            return None
        result = self.accepted(response, 201, f"reversal of v{version}")
        if kind == "purchase":
            bought = self.purchases[key]
            points = bought["points"] - reversed_by(bought["points"], bought["cents"], bought["returned"])
            account.reverse(bought["lot"], points)
            bought["returned"] = bought["cents"]
        elif kind == "redemption":
            redemption = self.redemptions[(member_id, key)]
            account.cancel(redemption["points"], redemption["consumed"], max(self.at, redemption["at"]))
            redemption["cancelled"] = "reversal"
        else:
            account.adjust(-self.adjustments[key]["points"], self.at)
        self.reversed.add((member_id, version))
        self.check_balance(result, member_id, f"reversal of v{version}")
        self.remember(self.support, f"/v1/members/{member_id}/reversals", body, response)
        return None

    def do_repeat(self) -> None:
        if not self.writes:
            return self.do_purchase()
        client, path, body, first = self.rng.choice(self.writes)
        before = self.events()
        if self.rng.random() < 0.5:
            self.note(f"repeat {path} {body}")
            again = self.post(client, path, body)
            if again.status != first.status or again.body != first.body or not replayed(again) or self.events() != before:
                raise Mismatch(f"repeat of {path} {body}: {again.status} {again.body} replayed={replayed(again)}, "
                               f"first {first.status} {first.body}")
            self.counts["repeat replayed"] += 1
            return None
        changed = {**body, "occurred_at": iso(self.at + timedelta(seconds=1))}
        self.note(f"repeat with another body {path} {changed}")
        self.refused(self.post(client, path, changed), 409, "idempotency-conflict", f"repeat of {path}", before)
        return None

    def do_expire(self) -> None:
        as_of = self.at
        due = sum(account.expire(as_of) for account in self.accounts.values())
        self.note(f"expiry job as of {iso(as_of)}: {due} due")
        result = expect(self.admin.post("/v1/jobs/expire-points", {"as_of": iso(as_of)}), 200)
        if result != {"members": len(MEMBERS), "points_expired": due}:
            raise Mismatch(f"expiry job as of {iso(as_of)}: {result}, the model expected {due}")
        self.counts["expiry job"] += 1

    def do_review(self) -> None:
        self.note("tier review")
        result = expect(self.admin.post("/v1/jobs/review-tiers", {"as_of": iso(self.at)}), 200)
        if result["members"] != len(MEMBERS):
            raise Mismatch(f"tier review: {result}")
        self.counts["tier review"] += 1

    ACTIONS = (("purchase", 26), ("return", 9), ("redeem", 14), ("cancel", 5), ("adjust", 8), ("decide", 6),
               ("reverse", 7), ("repeat", 8), ("expire", 4), ("review", 2))

    # ---- the run and the checks -------------------------------------------------------------

    def run(self, steps: int) -> None:
        names = [name for name, _ in self.ACTIONS]
        weights = [weight for _, weight in self.ACTIONS]
        for self.step in range(1, steps + 1):
            self.tick()
            action = self.rng.choices(names, weights)[0]
            getattr(self, f"do_{action}")()
            self.check()

    def wait_until_projected(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            ready = self.admin.get("/readyz")
            if ready.status == 200 and ready.body["lag"] == 0:
                return
            if time.monotonic() > deadline:
                raise Mismatch(f"projections still behind {READY_TIMEOUT:.0f}s after the write: {ready.body}")
            time.sleep(0.02)

    def check(self) -> None:
        self.wait_until_projected()
        now = datetime.now(UTC)
        total = 0
        for member_id, account in self.accounts.items():
            summary = expect(self.auditor.get(f"/v1/members/{member_id}"), 200)
            expected = account.balance(now)
            if summary["balance"] != expected or summary["lifetime"] != account.life:
                raise Mismatch(f"GET /v1/members/{member_id}: {summary['balance']} {summary['lifetime']}; "
                               f"the model: {expected} {account.life}")
            replay = expect(self.auditor.get(f"/v1/members/{member_id}/balance"), 200)
            if (replay["available"], replay["pending"], replay["due_for_expiry"], replay["tier"]) != (
                    expected["available"], expected["pending"], expected["due_for_expiry"], summary["tier"]):
                raise Mismatch(f"{member_id}: the replayed balance {replay} differs from the projection {summary}")
            total += account.total
        start = self.first_day.isoformat()
        liability = expect(self.finance.get(
            f"/v1/reports/liability?program_id={PROGRAM_ID}&from={start}&to={now.date().isoformat()}"), 200)
        p = liability["points"]
        if p["opening"] + p["earned"] - p["redeemed"] - p["expired"] - p["reversed"] + p["adjusted"] != p["closing"]:
            raise Mismatch(f"the liability roll-forward does not close: {p}")
        if not (p["closing"] == liability.get("member_balances") == total and liability.get("closing_equals_member_balances")):
            raise Mismatch(f"liability closing {p['closing']}, member balances {liability.get('member_balances')}, "
                           f"the model's total {total}")
        reconciliation = expect(self.finance.get(f"/v1/reports/reconciliation?program_id={PROGRAM_ID}"), 200)
        if not reconciliation["ok"] or reconciliation["differences"]:
            raise Mismatch(f"reconciliation: {reconciliation}")
        if reconciliation["event_log_total"] != total:
            raise Mismatch(f"reconciliation's event log total {reconciliation['event_log_total']}, the model's {total}")


@pytest.fixture
def projections_beside(server: Server) -> Any:
    """On PostgreSQL the server does not run the projections: `loyalty projections run` beside it."""
    if not server.database_url.startswith("postgresql"):
        yield None
        return
    log_path = Path(server.log_path).with_name("projections.log")
    env = dict(os.environ)
    env.update({"LOYALTY_DATABASE_URL": server.database_url, "LOYALTY_LOG_FORMAT": "json",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))})
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "api.cli", "projections", "run"], cwd=log_path.parent,
                                   env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert "Traceback" not in log_path.read_text(errors="replace"), log_path.read_text(errors="replace")[-3000:]


def test_invariants_hold_under_random_activity_over_http(server: Server, projections_beside: Any) -> None:
    activity = HttpActivity(SEED, server)
    database = server.database_url.split(":", 1)[0]
    try:
        activity.set_up()
        activity.run(STEPS)
    except Exception as error:
        trail = "\n".join(activity.log[-20:])
        message = (f"random activity over HTTP failed on {database} at step {activity.step} of {STEPS}, seed {SEED}: "
                   f"{error}\nreplay with LOYALTY_SEED={SEED} LOYALTY_HTTP_STEPS={STEPS}\nthe last steps:\n{trail}")
        print("\n" + message)
        raise AssertionError(message) from error
    print(f"\n[{database} seed {SEED}] {STEPS} steps over HTTP; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(activity.counts.items())))
    assert activity.counts["expiry job"] and activity.counts["repeat replayed"], activity.counts
