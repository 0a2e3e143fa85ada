"""The walkthrough of ../shared/API.md over real HTTP, against `loyalty serve` (gunicorn, two
worker processes) on SQLite and on PostgreSQL: keys and roles, purchases and their idempotent
replays, batches, returns, redemptions, cancellations, adjustments, as-of balances, history with
actors, revocation, jobs, and bad input that must be refused with a problem and change nothing."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.e2e.conftest import PROGRAM, Client, World, expect

PROBLEM_JSON = "application/problem+json"


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def replayed(response: Any) -> bool:
    return (response.headers.get("Idempotent-Replayed") or "").lower() == "true"


SETTLE_TIMEOUT = 10.0


def member(client: Client, member_id: str = "ann") -> dict[str, Any]:
    """GET /v1/members/{id} once it reflects every stored event of the member.

    The summary may come from a projection that follows the event log (run inside the server on
    SQLite), so it can lag a write by a moment. The history comes from the event log itself: wait
    (at most SETTLE_TIMEOUT) until the summary's version reaches the history's last version. A
    refused write that wrongly stored an event still shows, as a higher version."""
    history = expect(client.get(f"/v1/members/{member_id}/history?limit=1000"), 200)
    stored = history["events"][-1]["version"]
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        summary = expect(client.get(f"/v1/members/{member_id}"), 200)
        if summary["version"] >= stored or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert summary["version"] == stored, (
        f"GET /v1/members/{member_id} is at version {summary['version']} {SETTLE_TIMEOUT:.0f}s after the event "
        f"log reached version {stored}: {summary}")
    return summary


def purchase(transaction_id: str, amount: str, occurred_at: datetime | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"transaction_id": transaction_id, "member_id": "ann", "store_id": "g-1",
                            "amount": amount, "currency": "EUR"}
    if occurred_at is not None:
        body["occurred_at"] = iso(occurred_at)
    body.update(extra)
    return body


def test_walkthrough(world: World) -> None:
    admin, partner, rival, support, auditor = world.admin, world.partner, world.rival, world.support, world.auditor
    now = datetime.now(timezone.utc)
    bought_at = now - timedelta(days=1)

    # ---- the program as created, with its rules and revision history ----------------------------
    program = expect(auditor.get("/v1/programs/club"), 200)
    for field in ("earn_rate", "point_value", "expected_redemption_rate", "expiry", "pending_days", "tiers",
                  "tier_window_months", "adjustment_approval_threshold", "currency", "name"):
        assert program[field] == PROGRAM[field], (field, program)
    assert [r["revision"] for r in program["revisions"]] == [1], program

    # ---- a purchase: floor(40.00 x 2 x 1) = 80 points, available at once (pending_days 0) --------
    first_body = purchase("t-1001", "40.00", bought_at,
                          items=[{"sku": "apples", "category": "fruit", "quantity": 2, "amount": "40.00"}])
    first = partner.post("/v1/purchases", first_body)
    posted = expect(first, 201)
    assert first.content_type == "application/json"
    assert not replayed(first), dict(first.headers)
    assert posted["transaction_id"] == "t-1001" and posted["member_id"] == "ann", posted
    assert posted["points_earned"] == 80 and posted["status"] == "available" and posted["tier"] == "blue", posted
    assert posted["balance"]["available"] == 80 and posted["balance"]["pending"] == 0, posted

    # The identical request again: the same status and body, marked as a replay, nothing changed.
    again = partner.post("/v1/purchases", first_body)
    assert again.status == 201 and again.body == posted, again.body
    assert replayed(again), dict(again.headers)
    after_replay = member(auditor)
    assert after_replay["balance"]["available"] == 80 and after_replay["lifetime"]["earned"] == 80, after_replay

    # The same transaction id with another amount: 409 idempotency-conflict, nothing changed.
    conflict = partner.post("/v1/purchases", {**first_body, "amount": "41.00"})
    expect(conflict, 409, "idempotency-conflict")
    assert member(auditor)["version"] == after_replay["version"]

    # ---- another partner (another program) may not post for the grocer nor see its member --------
    version = member(auditor)["version"]
    expect(rival.post("/v1/purchases", purchase("x-1", "10.00", partner_id="grocer")), 403, "forbidden")
    foreign_store = rival.post("/v1/purchases", purchase("x-2", "10.00"))  # g-1 is the grocer's store
    assert foreign_store.status in (403, 404, 422), foreign_store.body
    assert foreign_store.content_type == PROBLEM_JSON, foreign_store.content_type
    expect(rival.get("/v1/members/ann"), 403, "forbidden")
    expect(rival.post("/v1/members/ann/redemptions", {"redemption_id": "x-r", "points": 1}), 403, "forbidden")
    by_card = rival.get("/v1/members/by-card/card-ann")
    assert by_card.status in (403, 404) and by_card.content_type == PROBLEM_JSON, by_card.body
    assert member(auditor)["version"] == version

    # ---- no key, a wrong key: 401 unauthenticated, whatever the route ----------------------------
    for key in (None, "llk_0123456789abcdef_not-the-secret", "not-a-key-at-all", ""):
        unauthenticated = partner.get("/v1/members/ann", key=key)
        expect(unauthenticated, 401, "unauthenticated")
        challenge = unauthenticated.headers.get("WWW-Authenticate") or ""
        assert "bearer" in challenge.lower(), dict(unauthenticated.headers)
    expect(partner.post("/v1/purchases", purchase("x-3", "1.00"), key=None), 401, "unauthenticated")
    expect(partner.post("/v1/purchases", purchase("x-3", "1.00"),
                        headers={"Authorization": f"Basic {world.server.admin_key}"}, key=None), 401, "unauthenticated")
    assert member(auditor)["version"] == version

    # ---- a batch: each item judged as if posted alone ---------------------------------------------
    batch = expect(partner.post("/v1/purchases/batch", {"purchases": [
        purchase("b-1", "10.00", bought_at),                          # new: 20 points
        first_body,                                                   # the same as t-1001: a replay
        purchase("b-3", "ten euros", bought_at),                      # invalid amount
        purchase("b-4", "10.00", bought_at, store_id="g-404"),        # not the grocer's store
        {**first_body, "amount": "99.00"},                            # t-1001 with another amount
        {**purchase("b-6", "5.00", bought_at), "member_id": None},    # invalid: null member_id
        {k: v for k, v in purchase("b-7", "5.00", bought_at).items() if k != "member_id"}
        | {"card_number": "card-ann"},                                # new, by card: 10 points
    ]}), 200)
    results = batch["results"]
    assert [r["transaction_id"] for r in results] == ["b-1", "t-1001", "b-3", "b-4", "t-1001", "b-6", "b-7"], \
        results
    assert [r["status"] for r in results] == [201, 200, 422, 422, 409, 422, 201], results
    assert results[0]["body"]["points_earned"] == 20 and results[6]["body"]["points_earned"] == 10, results
    assert results[1]["body"] == posted, results[1]
    assert results[2]["body"]["type"] == "validation-error" and "amount" in results[2]["body"]["errors"], results[2]
    assert results[3]["body"]["type"] == "unknown-store", results[3]
    assert results[4]["body"]["type"] == "idempotency-conflict", results[4]
    assert results[5]["body"]["type"] == "validation-error", results[5]
    assert member(auditor)["balance"]["available"] == 110
    # A batch item is a posting like any other: posted alone again, it is replayed.
    alone = partner.post("/v1/purchases", purchase("b-1", "10.00", bought_at))
    assert alone.status == 201 and replayed(alone) and alone.body == results[0]["body"], (alone.status, alone.body)
    refused_alone = partner.post("/v1/purchases", purchase("b-4", "10.00", bought_at, store_id="g-404"))
    expect(refused_alone, 422, "unknown-store")  # judged again, not replayed: refusals are not stored
    assert not replayed(refused_alone), dict(refused_alone.headers)

    # ---- returns reverse points in proportion, and the last one exactly what is left ---------------
    earned = expect(partner.post("/v1/purchases", purchase("t-1002", "10.01", bought_at)), 201)
    assert earned["points_earned"] == 20, earned  # floor(10.01 x 2) = 20
    first_return = partner.post("/v1/returns", {"transaction_id": "ret-1", "original_transaction_id": "t-1002",
                                                "amount": "5.00"})
    part = expect(first_return, 201)
    assert part["original_transaction_id"] == "t-1002" and part["transaction_id"] == "ret-1", part
    assert part["points_reversed"] in (9, 10), part  # 5.00 / 10.01 of 20 points
    rest = expect(partner.post("/v1/returns", {"transaction_id": "ret-2", "original_transaction_id": "t-1002",
                                               "amount": "5.01"}), 201)
    assert part["points_reversed"] + rest["points_reversed"] == 20, (part, rest)
    assert rest["balance"]["available"] == 110, rest
    replayed_return = partner.post("/v1/returns", {"transaction_id": "ret-1", "original_transaction_id": "t-1002",
                                                   "amount": "5.00"})
    assert replayed_return.status == 201 and replayed(replayed_return) and replayed_return.body == part
    expect(partner.post("/v1/returns", {"transaction_id": "ret-3", "original_transaction_id": "t-1002",
                                        "amount": "0.01"}), 422, "return-exceeds-purchase")
    assert member(auditor)["balance"]["available"] == 110

    # ---- a redemption, and one beyond the balance ------------------------------------------------
    redemption_body = {"redemption_id": "rd-1", "points": 30, "reward": "coffee"}
    redeemed = expect(partner.post("/v1/members/ann/redemptions", redemption_body), 201)
    assert redeemed["redemption_id"] == "rd-1" and redeemed["points"] == 30, redeemed
    assert redeemed["balance"]["available"] == 80, redeemed
    redeemed_again = partner.post("/v1/members/ann/redemptions", redemption_body)
    assert redeemed_again.status == 201 and replayed(redeemed_again) and redeemed_again.body == redeemed
    expect(partner.post("/v1/members/ann/redemptions", {**redemption_body, "points": 31}), 409, "idempotency-conflict")
    before = member(auditor)
    too_much = partner.post("/v1/members/ann/redemptions", {"redemption_id": "rd-2", "points": 81})
    expect(too_much, 422, "insufficient-points")
    after = member(auditor)
    assert after["balance"] == before["balance"] and after["version"] == before["version"], (before, after)

    # ---- cancelling the redemption restores its points, once -------------------------------------
    cancelled = expect(partner.post("/v1/members/ann/redemptions/rd-1/cancellation", {}), 201)
    assert cancelled["points_restored"] == 30 and cancelled["balance"]["available"] == 110, cancelled
    cancelled_again = partner.post("/v1/members/ann/redemptions/rd-1/cancellation", {})
    assert cancelled_again.status == 201 and replayed(cancelled_again), (cancelled_again.status, cancelled_again.body)
    assert member(auditor)["balance"]["available"] == 110
    expect(partner.post("/v1/members/ann/redemptions/rd-404/cancellation", {}), 404, "not-found")

    # ---- support corrects; a partner may not -------------------------------------------------------
    adjustment_body = {"adjustment_id": "adj-1", "points": 15, "reason": "goodwill", "note": "late delivery"}
    adjusted = expect(support.post("/v1/members/ann/adjustments", adjustment_body), 201)
    assert adjusted["points"] == 15 and adjusted["balance"]["available"] == 125, adjusted
    expect(partner.post("/v1/members/ann/adjustments", {**adjustment_body, "adjustment_id": "adj-2"}),
           403, "forbidden")
    expect(auditor.post("/v1/members/ann/adjustments", {**adjustment_body, "adjustment_id": "adj-3"}),
           403, "forbidden")

    # ---- reading the member: summary, by card, as of a time, and its history -----------------------
    summary = member(auditor)
    assert summary["member_id"] == "ann" and summary["program_id"] == "club" and summary["tier"] == "blue", summary
    assert summary["balance"]["available"] == 125 and summary["balance"]["pending"] == 0, summary
    assert summary["lifetime"] == {"earned": 130, "redeemed": 0, "expired": 0, "reversed": 20, "adjusted": 15}, summary
    assert summary["next_expiry"] is not None and summary["next_expiry"]["points"] > 0, summary
    assert parse_time(summary["next_expiry"]["at"]) > now, summary
    found = expect(auditor.get("/v1/members/by-card/card-ann"), 200)
    assert found["member_id"] == "ann" and found["balance"] == summary["balance"], found
    assert expect(partner.get("/v1/members/by-card/card-ann"), 200)["member_id"] == "ann"
    expect(auditor.get("/v1/members/by-card/card-404"), 404, "not-found")

    before_buying = expect(auditor.get(f"/v1/members/ann/balance?as_of={iso(bought_at - timedelta(hours=1))}"), 200)
    assert before_buying["available"] == 0 and before_buying["member_id"] == "ann", before_buying
    current = expect(auditor.get("/v1/members/ann/balance"), 200)
    assert current["available"] == 125 and current["pending"] == 0 and current["tier"] == "blue", current

    history = expect(auditor.get("/v1/members/ann/history?limit=1000"), 200)
    events = history["events"]
    assert history["member_id"] == "ann" and history["next"] is None, history
    assert [e["version"] for e in events] == list(range(1, len(events) + 1)), events
    assert events[-1]["version"] == summary["version"], (events[-1], summary)
    assert events[0]["type"] == "MemberEnrolled", events[0]
    for event in events:
        assert {"version", "type", "occurred_at", "recorded_at", "actor", "data", "hash"} <= set(event), event
        assert event["actor"].startswith("key:"), event
        parse_time(event["occurred_at"]), parse_time(event["recorded_at"])
    partner_actor, support_actor = f"key:{world.partner_key_id}", f"key:{world.support_key_id}"
    by_partner = [e for e in events if e["data"].get("transaction_id") in ("t-1001", "b-1", "b-7", "t-1002", "ret-1",
                                                                            "ret-2")
                  or e["data"].get("redemption_id") == "rd-1"]
    assert len(by_partner) >= 7, events  # four purchases, two returns, a redemption and its cancellation
    assert all(e["actor"] == partner_actor for e in by_partner), [(e["type"], e["actor"]) for e in by_partner]
    by_support = [e for e in events if e["data"].get("adjustment_id") == "adj-1"]
    assert by_support and all(e["actor"] == support_actor for e in by_support), by_support
    assert not any(e["actor"] == f"key:{world.rival_key_id}" for e in events), events
    purchase_event = next(e for e in events if e["data"].get("transaction_id") == "t-1001")
    assert parse_time(purchase_event["occurred_at"]) == parse_time(iso(bought_at)), purchase_event
    assert purchase_event["data"].get("revision") == 1, purchase_event  # the rules used are recorded

    # As known just before the adjustment was recorded: the balance without it.
    adjustment_recorded = parse_time(by_support[0]["recorded_at"])
    known_at = iso(adjustment_recorded - timedelta(milliseconds=1))
    earlier = expect(auditor.get(f"/v1/members/ann/balance?known_at={known_at}"), 200)
    assert earlier["available"] == 110, earlier

    page = expect(auditor.get("/v1/members/ann/history?limit=2"), 200)
    assert [e["version"] for e in page["events"]] == [1, 2] and page["next"] == 2, page
    next_page = expect(auditor.get(f"/v1/members/ann/history?limit=2&after={page['next']}"), 200)
    assert [e["version"] for e in next_page["events"]] == [3, 4], next_page
    expect(partner.get("/v1/members/ann/history"), 403, "forbidden")

    # ---- revoking the partner key: its very next request is refused, in every worker ------------
    expect(admin.delete(f"/v1/api-keys/{world.partner_key_id}"), 204)
    for _ in range(6):  # two worker processes: several requests, so both must have seen it
        expect(partner.get("/v1/members/ann"), 401, "unauthenticated")
    expect(partner.post("/v1/purchases", purchase("t-after-revoke", "1.00")), 401, "unauthenticated")
    expect(admin.delete("/v1/api-keys/0000000000000000"), 404, "not-found")
    assert member(support)["balance"]["available"] == 125  # other keys still work

    # ---- jobs: expiry and tier review over every member ------------------------------------------
    long_ago = now - timedelta(days=400)  # past the 12-month rolling expiry and the tier window
    expect(admin.post("/v1/members", {"program_id": "club", "member_id": "bob", "card_number": "card-bob",
                                      "occurred_at": iso(now - timedelta(days=800))}), 201)
    old = expect(admin.post("/v1/purchases", {"transaction_id": "t-old", "member_id": "bob", "store_id": "g-2",
                                              "amount": "1200.00", "currency": "EUR", "occurred_at": iso(long_ago),
                                              "partner_id": "grocer"}), 201)
    assert old["points_earned"] == 2400 and old["tier"] == "gold", old  # earned at blue, then upgraded
    expired = expect(admin.post("/v1/jobs/expire-points", {"as_of": iso(now)}), 200)
    assert expired == {"members": 2, "points_expired": 2400}, expired
    assert expect(admin.post("/v1/jobs/expire-points", {"as_of": iso(now)}), 200) == {"members": 2,
                                                                                         "points_expired": 0}
    bob = member(auditor, "bob")
    assert bob["lifetime"]["expired"] == 2400 and bob["balance"]["available"] == 0, bob
    reviewed = expect(admin.post("/v1/jobs/review-tiers", {"as_of": iso(now)}), 200)
    assert reviewed == {"members": 2, "upgraded": 0, "downgraded": 1}, reviewed
    assert member(auditor, "bob")["tier"] == "blue"
    assert expect(admin.post("/v1/jobs/review-tiers", {"as_of": iso(now)}), 200)["downgraded"] == 0
    expect(support.post("/v1/jobs/expire-points", {"as_of": iso(now)}), 403, "forbidden")
    assert member(auditor)["balance"]["available"] == 125  # ann's points are not due yet

    # ---- no secret ever reaches the log ------------------------------------------------------------
    log = world.server.log_text()
    assert world.server.admin_key not in log
    for client in (partner, rival, support, auditor):
        assert client.key and client.key not in log


# ---- bad input: a 4xx problem naming the issue, never a 500, and nothing changed --------------------

def named(body: Any, name: str) -> bool:
    if not isinstance(body, dict):
        return False
    errors = body.get("errors") or {}
    return any(name in key for key in errors) or name.lower() in (body.get("detail") or "").lower() \
        or name.lower() in (body.get("title") or "").lower()


def test_bad_input_is_refused_with_a_problem_and_changes_nothing(world: World) -> None:
    partner, auditor = world.partner, world.auditor
    good = purchase("bad-1", "10.00")
    as_json = json.dumps(good)
    json_headers = {"Content-Type": "application/json"}
    cases: list[tuple[str, dict[str, Any], int, str, str | None]] = [
        # (what, request, status, problem type, what the problem must name)
        ("unknown field", {"json_body": {**good, "discount": "5.00"}}, 422, "validation-error", "discount"),
        ("amount as a JSON float", {"json_body": {**good, "amount": 10.0}}, 422, "validation-error", "amount"),
        ("amount as a JSON integer", {"json_body": {**good, "amount": 10}}, 422, "validation-error", "amount"),
        ("amount 'NaN'", {"json_body": {**good, "amount": "NaN"}}, 422, "validation-error", "amount"),
        ("amount 'Infinity'", {"json_body": {**good, "amount": "Infinity"}}, 422, "validation-error", "amount"),
        ("amount as a bare NaN token", {"data": as_json.replace('"10.00"', "NaN").encode(),
                                        "headers": json_headers}, 422, "validation-error", "amount"),
        ("amount in exponent form", {"json_body": {**good, "amount": "1e3"}}, 422, "validation-error", "amount"),
        ("negative amount", {"json_body": {**good, "amount": "-10.00"}}, 422, "validation-error", "amount"),
        ("zero amount", {"json_body": {**good, "amount": "0.00"}}, 422, "validation-error", "amount"),
        ("amount with 30 digits", {"json_body": {**good, "amount": "1" * 30}}, 422, "validation-error", "amount"),
        ("malformed time", {"json_body": {**good, "occurred_at": "yesterday at noon"}}, 422, "validation-error",
         "occurred_at"),
        ("impossible time", {"json_body": {**good, "occurred_at": "2026-02-30T10:00:00Z"}}, 422, "validation-error",
         "occurred_at"),
        ("time without offset", {"json_body": {**good, "occurred_at": "2026-11-01T10:00:00"}}, 422,
         "validation-error", "occurred_at"),
        ("time in the far future", {"json_body": {**good, "occurred_at": "2099-01-01T00:00:00Z"}}, 422,
         "validation-error", "occurred_at"),
        ("wrong currency", {"json_body": {**good, "currency": "USD"}}, 422, "validation-error", "currency"),
        ("lower-case currency", {"json_body": {**good, "currency": "eur"}}, 422, "validation-error", "currency"),
        ("missing store", {"json_body": {k: v for k, v in good.items() if k != "store_id"}}, 422,
         "validation-error", "store_id"),
        ("member id and card number", {"json_body": {**good, "card_number": "card-ann"}}, 422,
         "validation-error", "member_id"),
        ("item amount as a float", {"json_body": {**good, "items": [{"sku": "a", "amount": 10.0}]}}, 422,
         "validation-error", "amount"),
        ("a JSON array", {"json_body": [good]}, 422, "validation-error", None),
        ("JSON null", {"data": b"null", "headers": json_headers}, 422, "validation-error", None),
        ("truncated JSON", {"data": as_json[:-15].encode(), "headers": json_headers}, 400, "malformed-request",
         "JSON"),
        ("invalid UTF-8", {"data": as_json.replace("bad-1", "bad-\udcff", 1).encode("utf-8", "surrogateescape"),
                           "headers": json_headers}, 400, "malformed-request", "JSON"),
        ("text/plain content type", {"data": as_json.encode(), "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported-media-type", None),
        ("form content type", {"data": as_json.encode(),
                               "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
         "unsupported-media-type", None),
        ("a body over 2 MB", {"data": json.dumps({**good, "items": [{"sku": "x" * 100, "amount": "0.01"}] * 25_000})
                              .encode(), "headers": json_headers}, 413, "payload-too-large", None),
    ]
    before = member(auditor)
    failures: list[str] = []
    for what, request, status, problem_type, must_name in cases:
        try:
            response = partner.post("/v1/purchases", **request)
        except OSError as error:
            failures.append(f"{what}: the connection failed instead of an answer: {error!r}")
            continue
        body = response.body
        problems = []
        if response.status != status:
            problems.append(f"status {response.status}, expected {status}")
        if response.content_type != PROBLEM_JSON:
            problems.append(f"content type {response.content_type!r}")
        if not isinstance(body, dict) or body.get("type") != problem_type or body.get("status") != response.status:
            problems.append(f"expected a {problem_type!r} problem")
        elif must_name and not named(body, must_name):
            problems.append(f"the problem does not name {must_name!r}")
        if problems:
            failures.append(f"{what}: {'; '.join(problems)}; got {response.status} {str(body)[:300]}")

    # Other routes' inputs.
    more: list[tuple[str, Any, int, str, str | None]] = [
        ("redemption points as a string",
         partner.post("/v1/members/ann/redemptions", {"redemption_id": "bad-r", "points": "10"}),
         422, "validation-error", "points"),
        ("redemption points as a float",
         partner.post("/v1/members/ann/redemptions", {"redemption_id": "bad-r", "points": 1.5}),
         422, "validation-error", "points"),
        ("redemption points as a boolean",
         partner.post("/v1/members/ann/redemptions", {"redemption_id": "bad-r", "points": True}),
         422, "validation-error", "points"),
        ("zero redemption", partner.post("/v1/members/ann/redemptions", {"redemption_id": "bad-r", "points": 0}),
         422, "validation-error", "points"),
        ("zero adjustment", world.support.post("/v1/members/ann/adjustments", {
            "adjustment_id": "bad-a", "points": 0, "reason": "goodwill", "note": "n"}), 422, "validation-error",
         "points"),
        ("unknown adjustment reason", world.support.post("/v1/members/ann/adjustments", {
            "adjustment_id": "bad-a", "points": 5, "reason": "because", "note": "n"}), 422, "validation-error",
         "reason"),
        ("history limit 0", auditor.get("/v1/members/ann/history?limit=0"), 422, "validation-error", "limit"),
        ("history limit not a number", auditor.get("/v1/members/ann/history?limit=ten"), 422, "validation-error",
         "limit"),
        ("balance as_of malformed", auditor.get("/v1/members/ann/balance?as_of=soon"), 422, "validation-error",
         "as_of"),
        ("balance as_of without offset", auditor.get("/v1/members/ann/balance?as_of=2026-11-01T10:00:00"), 422,
         "validation-error", "as_of"),
        ("job without as_of", world.admin.post("/v1/jobs/expire-points", {}), 422, "validation-error", "as_of"),
        ("program without rules", world.admin.post("/v1/programs", {"program_id": "p2", "name": "P2",
                                                                     "currency": "EUR"}),
         422, "validation-error", "earn_rate"),
        ("first tier not at zero spend", world.admin.post("/v1/programs", {
            **PROGRAM, "program_id": "p3", "tiers": [{"name": "x", "qualifying_spend": "5", "multiplier": "1"}]}),
         422, "validation-error", "tiers"),
        ("unknown role", world.admin.post("/v1/api-keys", {"role": "root"}), 422, "validation-error", "role"),
        ("unknown route", auditor.get("/v1/nothing-here"), 404, "not-found", None),
        ("unsupported method", auditor.request("PUT", "/v1/purchases", {}), 405, "method-not-allowed", None),
    ]
    for what, response, status, problem_type, must_name in more:
        body = response.body
        if (response.status != status or response.content_type != PROBLEM_JSON or not isinstance(body, dict)
                or body.get("type") != problem_type or (must_name and not named(body, must_name))):
            failures.append(f"{what}: expected {status} {problem_type} naming {must_name!r}; got "
                            f"{response.status} {response.content_type} {str(body)[:300]}")

    assert not failures, "bad input not refused as it should be:\n" + "\n".join(failures)

    # Nothing changed: the member is as before, and no posting was stored under the id used.
    after = member(auditor)
    assert after["version"] == before["version"] and after["balance"] == before["balance"], (before, after)
    assert after["lifetime"] == before["lifetime"], (before, after)
    expect(partner.get("/v1/postings/bad-1"), 404, "not-found")
    fresh = partner.post("/v1/purchases", good)
    assert fresh.status == 201 and not replayed(fresh) and fresh.body["points_earned"] == 20, fresh.body


def test_hostile_json_is_a_client_error_not_a_server_error(world: World) -> None:
    """JSON that the parser itself chokes on is bad input too: a 4xx problem, never a 500."""
    json_headers = {"Content-Type": "application/json"}
    good = json.dumps(purchase("hostile-1", "10.00"))
    cases = {
        "deeply nested arrays": b"[" * 100_000 + b"]" * 100_000,
        "deeply nested value in a field": good.replace('"10.00"', "[" * 5_000 + "]" * 5_000).encode(),
        "an integer of 5000 digits": good.replace('"10.00"', "1" * 5_000).encode(),
    }
    before = member(world.auditor)
    failures = []
    for what, data in cases.items():
        response = world.partner.post("/v1/purchases", data=data, headers=json_headers)
        if not (400 <= response.status < 500 and response.content_type == PROBLEM_JSON):
            failures.append(f"{what} ({len(data)} bytes): got {response.status} {response.content_type} "
                            f"{str(response.body)[:200]}")
    assert not failures, "hostile JSON answered with a server error:\n" + "\n".join(failures)
    assert member(world.auditor)["version"] == before["version"]


def test_batch_item_that_is_not_an_object_is_judged_alone(world: World) -> None:
    """API.md: each purchase of a batch is judged as if posted alone; one bad item does not reject
    the others. Posted alone, a non-object is a 422; in a batch it must not sink the good items."""
    response = world.partner.post("/v1/purchases/batch", {"purchases": [
        purchase("nb-1", "10.00"), 5, None, "purchase", purchase("nb-2", "5.00")]})
    body = expect(response, 200)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [201, 422, 422, 422, 201], body
    assert member(world.auditor)["balance"]["available"] == 30


def test_support_adjustment_above_the_threshold_awaits_approval(world: World) -> None:
    """API.md: a support adjustment above adjustment_approval_threshold (500 here) in absolute value
    needs a supervisor: 202, and the balance is unchanged until it is approved."""
    response = world.support.post("/v1/members/ann/adjustments", {
        "adjustment_id": "big-1", "points": 600, "reason": "goodwill", "note": "large gesture"})
    assert response.status == 202, (response.status, response.body)
    assert member(world.auditor)["balance"]["available"] == 0


def test_same_posting_raced_from_many_clients_is_recorded_once(world: World) -> None:
    """Idempotency under concurrency, across the two worker processes: eight clients post the same
    purchase and eight post different ones, all at once."""
    same = purchase("race-same", "10.00")
    answers: dict[str, Any] = {}
    start = threading.Barrier(16)

    def post(name: str, body: dict[str, Any]) -> None:
        client = world.server.client(world.partner.key)
        start.wait()
        answers[name] = client.post("/v1/purchases", body)

    threads = [threading.Thread(target=post, args=(f"same-{i}", same)) for i in range(8)]
    threads += [threading.Thread(target=post, args=(f"other-{i}", purchase(f"race-{i}", "1.00"))) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 16
    statuses = {name: (r.status, r.body) for name, r in answers.items() if r.status != 201}
    assert not statuses, statuses
    same_answers = [answers[f"same-{i}"] for i in range(8)]
    assert sum(not replayed(r) for r in same_answers) == 1, [dict(r.headers) for r in same_answers]
    assert all(r.body == same_answers[0].body for r in same_answers), [r.body for r in same_answers]
    summary = member(world.auditor)
    assert summary["balance"]["available"] == 20 + 8 * 2, summary
    events = expect(world.auditor.get("/v1/members/ann/history?limit=1000"), 200)["events"]
    assert sum(1 for e in events if e["type"] == "PurchaseRecorded"
               and e["data"].get("transaction_id") == "race-same") == 1, events


# ---- the OpenAPI document ------------------------------------------------------------------------

IMPLEMENTED_ROUTES = {
    "/v1/programs": {"post"},
    "/v1/programs/{program_id}": {"get"},
    "/v1/programs/{program_id}/revisions": {"post"},
    "/v1/partners": {"post"},
    "/v1/api-keys": {"post"},
    "/v1/api-keys/{key_id}": {"delete"},
    "/v1/members": {"post"},
    "/v1/members/{member_id}": {"get"},
    "/v1/members/by-card/{card_number}": {"get"},
    "/v1/members/{member_id}/balance": {"get"},
    "/v1/members/{member_id}/history": {"get"},
    "/v1/purchases": {"post"},
    "/v1/purchases/batch": {"post"},
    "/v1/returns": {"post"},
    "/v1/members/{member_id}/redemptions": {"post"},
    "/v1/members/{member_id}/redemptions/{redemption_id}/cancellation": {"post"},
    "/v1/members/{member_id}/adjustments": {"post"},
    "/v1/jobs/expire-points": {"post"},
    "/v1/jobs/review-tiers": {"post"},
}
# The rest of API.md's routes.
CONTRACT_ROUTES = {
    **IMPLEMENTED_ROUTES,
    "/v1/adjustments": {"get"},
    "/v1/adjustments/{adjustment_id}/approval": {"post"},
    "/v1/adjustments/{adjustment_id}/rejection": {"post"},
    "/v1/reports/liability": {"get"},
    "/v1/reports/reconciliation": {"get"},
    "/v1/reports/revenue": {"get"},
    "/v1/reports/settlement": {"get"},
    "/v1/reconciliations/partner-statements": {"post"},
    "/v1/audit/checkpoint": {"get"},
    "/v1/audit/verify": {"post"},
    "/healthz": {"get"},
    "/readyz": {"get"},
}


def openapi(world_or_client: Any) -> dict[str, Any]:
    response = world_or_client.get("/openapi.json", key=None)
    assert response.status == 200, (response.status, response.body)
    assert response.content_type == "application/json", response.content_type
    assert isinstance(response.body, dict), response.body  # parsed as JSON
    return response.body


def test_openapi_document_lists_the_v1_routes(world: World) -> None:
    document = openapi(world.auditor)
    assert document["openapi"].startswith("3."), document.get("openapi")
    paths = document["paths"]
    for path, methods in IMPLEMENTED_ROUTES.items():
        assert path in paths, (path, sorted(paths))
        assert methods <= set(paths[path]), (path, sorted(paths[path]))
    assert any(s.get("scheme") == "bearer" for s in document["components"]["securitySchemes"].values()), document
    # Every documented path answers (no key: 401, or 404/405 for made-up ids; never 5xx).
    for path, item in paths.items():
        for method in item:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            concrete = path.replace("{", "x-").replace("}", "")
            response = world.admin.request(method.upper(), concrete, key=None)
            assert response.status < 500, (method, concrete, response.status, response.body)


def test_openapi_document_describes_every_contract_route(world: World) -> None:
    """API.md: the served document must describe every route of the contract."""
    paths = openapi(world.auditor)["paths"]
    missing = sorted(f"{method.upper()} {path}" for path, methods in CONTRACT_ROUTES.items()
                     for method in methods if method not in paths.get(path, {}))
    assert not missing, "routes of API.md not served (not in /openapi.json):\n" + "\n".join(missing)


def test_a_card_held_in_two_programs_is_never_guessed(world: World) -> None:
    """Cards are unique in their program only: without program_id, a card two programs hold is a
    422 naming program_id, not the first program's member."""
    expect(world.admin.post("/v1/members", {"program_id": "rival-club", "member_id": "tina",
                                            "card_number": "card-ann"}), 201)
    ambiguous = expect(world.auditor.get("/v1/members/by-card/card-ann"), 422, "validation-error")
    assert "program_id" in ambiguous["errors"] and "club, rival-club" in ambiguous["detail"], ambiguous
    assert expect(world.auditor.get("/v1/members/by-card/card-ann?program_id=club"), 200)["member_id"] == "ann"
    assert expect(world.auditor.get("/v1/members/by-card/card-ann?program_id=rival-club"), 200)["member_id"] == "tina"
    # A partner looks in its own program only: no ambiguity there.
    assert expect(world.rival.get("/v1/members/by-card/card-ann"), 200)["member_id"] == "tina"
    assert expect(world.partner.get("/v1/members/by-card/card-ann"), 200)["member_id"] == "ann"


def test_a_refused_batch_item_reads_as_the_same_purchase_refused_alone(world: World) -> None:
    """Each item of a batch is judged as if posted alone: the same problem body, errors included."""
    future = datetime.now(timezone.utc) + timedelta(days=3)
    bodies = [purchase("bad-1", "10.001"), purchase("bad-2", "10.00", future), purchase("bad-3", "10.00", currency="USD")]
    alone = [expect(world.partner.post("/v1/purchases", body), 422, "validation-error") for body in bodies]
    batch = expect(world.partner.post("/v1/purchases/batch", {"purchases": bodies}), 200)
    assert [item["status"] for item in batch["results"]] == [422, 422, 422]
    assert [item["body"] for item in batch["results"]] == alone
    assert [sorted(problem["errors"]) for problem in alone] == [["amount"], ["occurred_at"], ["currency"]]


def test_a_misspelt_query_parameter_is_refused_not_ignored(world: World) -> None:
    """Query parameters are read as strictly as bodies: `limt=1` must not silently mean no limit."""
    for client, path, name in ((world.auditor, "/v1/members/ann/balance?as_of=2025-01-01T00:00:00Z&foo=1", "foo"),
                               (world.auditor, "/v1/members/ann/history?limt=1", "limt"),
                               (world.support, "/v1/adjustments?status=pending&limit=1", "limit")):
        problem = expect(client.get(path), 422, "validation-error")
        assert any(name in key for key in problem["errors"]), (path, problem)
    expect(world.auditor.get("/v1/members/ann/history?limit=1"), 200)
