"""Access control over real HTTP, against `loyalty serve` (gunicorn, two workers) on SQLite and
PostgreSQL: every route of /openapi.json against every kind of caller (the table is in
access_matrix.py); partners kept out of each other's postings; auditors and finance never write;
four eyes on adjustments; keys stored only as hashes and never logged; a revoked key refused at
once by every worker process."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from infrastructure.config import Config, Database
from tests.e2e.access_matrix import (
    ADMIN,
    AUDITOR,
    FINANCE,
    GARBAGE_KEY,
    ISSUED,
    KEYED,
    NO_KEY,
    PARTNER_A,
    PARTNER_B,
    PARTNER_C,
    READ_ONLY_POSTS,
    ROLES,
    ROWS,
    SUPERVISOR,
    SUPPORT,
    UNAUTHENTICATED,
    WRONG_SECRET,
    Ctx,
    Expect,
    describe,
    iso,
    judge,
    suffix,
)
from tests.e2e.conftest import OTHER_PROGRAM, PROGRAM, Client, Response, Server, expect, issue_key

PROBLEM_JSON = "application/problem+json"


# ---- the world: a coalition program with two partners, and a partner of another program ------------

@pytest.fixture
def coalition(server: Server) -> Ctx:
    """Program "club" with partners A (grocer, stores g-1 g-2) and B (baker, store b-1); program
    "rival-club" with partner C (rival, store r-1); a spare program for revisions; a key for every
    role; members ann (club) and cal (rival-club); a purchase and a redemption by A and by B."""
    root = server.admin  # the bootstrap key
    now = datetime.now(timezone.utc)
    for program in (PROGRAM, OTHER_PROGRAM, {**PROGRAM, "program_id": "spare", "name": "Spare"}):
        expect(root.post("/v1/programs", program), 201)
    for partner_id, program_id, stores in (("grocer", "club", ["g-1", "g-2"]), ("baker", "club", ["b-1"]),
                                           ("rival", "rival-club", ["r-1"])):
        expect(root.post("/v1/partners", {"partner_id": partner_id, "name": partner_id.title(),
                                          "program_id": program_id, "stores": stores}), 201)
    clients: dict[str, Client] = {}
    key_ids: dict[str, str] = {}
    for role, (issued_role, partner_id) in ISSUED.items():
        key, key_ids[role] = issue_key(root, issued_role, partner_id)
        clients[role] = server.client(key)
    clients[NO_KEY] = server.client(None)
    clients[GARBAGE_KEY] = server.client("garbage-" + secrets.token_urlsafe(24))
    clients[WRONG_SECRET] = server.client(f"llk_{key_ids[PARTNER_A]}_{secrets.token_urlsafe(32)}")
    expect(root.post("/v1/members", {"program_id": "club", "member_id": "ann", "card_number": "card-ann",
                                     "name": "Ann Example"}), 201)
    expect(root.post("/v1/members", {"program_id": "rival-club", "member_id": "cal", "card_number": "card-cal",
                                     "name": "Cal Example"}), 201)
    ctx = Ctx(root=root, clients=clients, key_ids=key_ids, now=now)
    bought_at = now - timedelta(days=1)
    ctx.facts["t_a1_at"] = bought_at
    a, b = clients[PARTNER_A], clients[PARTNER_B]
    ctx.facts["t_a1"] = expect(a.post("/v1/purchases", {
        "transaction_id": "t-a1", "member_id": "ann", "store_id": "g-1", "amount": "100.00", "currency": "EUR",
        "occurred_at": iso(bought_at)}), 201)
    ctx.facts["t_b1"] = expect(b.post("/v1/purchases", {
        "transaction_id": "t-b1", "member_id": "ann", "store_id": "b-1", "amount": "50.00", "currency": "EUR",
        "occurred_at": iso(bought_at)}), 201)
    assert ctx.facts["t_a1"]["points_earned"] == 200 and ctx.facts["t_b1"]["points_earned"] == 100
    expect(a.post("/v1/members/ann/redemptions", {"redemption_id": "rd-a1", "points": 10}), 201)
    expect(b.post("/v1/members/ann/redemptions", {"redemption_id": "rd-b1", "points": 10}), 201)
    return ctx


def head(ctx: Ctx) -> int:
    """The event log's head (the highest notification id): it moves whenever anything is stored."""
    return expect(ctx.root.get("/healthz", key=None), 200)["events"]


def available(ctx: Ctx, member_id: str = "ann") -> int:
    """Replayed from the member's events (not a projection that may lag)."""
    return expect(ctx.root.get(f"/v1/members/{member_id}/balance"), 200)["available"]


def replayed(response: Response) -> bool:
    return (response.headers.get("Idempotent-Replayed") or "").lower() == "true"


def served_operations(client: Client) -> set[tuple[str, str]]:
    document = expect(client.get("/openapi.json", key=None), 200)
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in ("get", "post", "put", "patch", "delete")}


class Refusals:
    """Collects what went wrong across many attempts, so one failure does not hide the others."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.failures: list[str] = []

    def check(self, what: str, send: Any, statuses: tuple[int, ...], problem_type: str | tuple[str, ...] | None,
              *, unchanged: bool = True) -> Response:
        before = head(self.ctx)
        response = send()
        after = head(self.ctx)
        types = (problem_type,) if isinstance(problem_type, str) else problem_type
        wrong = []
        if response.status not in statuses:
            wrong.append(f"expected {'/'.join(map(str, statuses))}")
        elif response.status >= 400 and (response.content_type != PROBLEM_JSON or not isinstance(response.body, dict)
                                         or (types and response.body.get("type") not in types)):
            wrong.append(f"expected a {types} problem")
        if unchanged and after != before:
            wrong.append(f"the event log grew from {before} to {after}")
        if wrong:
            self.failures.append(f"{what}: {'; '.join(wrong)}; got {describe(response)}")
        return response

    def expect_none(self, title: str) -> None:
        assert not self.failures, f"{title}:\n" + "\n".join(f"  - {f}" for f in self.failures)


# ---- 1. every route against every role -------------------------------------------------------------

def test_the_table_covers_every_role_and_never_lets_auditors_or_finance_write() -> None:
    """The table itself: one expectation per role on every row; no write for auditor or finance,
    no approval for support, no administration for anyone but admin, nothing without a key but health."""
    operations = [row.operation for row in ROWS]
    assert len(operations) == len(set(operations)), "a route appears twice in the table"
    problems = []
    for row in ROWS:
        for role in ROLES:
            expected: Expect = row.expect(role)
            writes = row.method in ("POST", "PUT", "PATCH", "DELETE") and row.operation not in READ_ONLY_POSTS
            if role in (AUDITOR, FINANCE) and writes and expected.statuses != (403,):
                problems.append(f"{role} may write with {row.method} {row.path}")
            if role == SUPPORT and row.path.startswith("/v1/adjustments/") and expected.statuses != (403,):
                problems.append(f"support may decide adjustments with {row.path}")
            if role in UNAUTHENTICATED and not row.public and expected.statuses != (401,):
                problems.append(f"{role} gets {expected.label} on {row.method} {row.path}")
            if row.path.startswith(("/v1/programs", "/v1/partners", "/v1/api-keys", "/v1/jobs")) \
                    and row.method != "GET" and role != ADMIN and expected.statuses[0] < 300:
                problems.append(f"{role} may administer with {row.method} {row.path}")
    assert not problems, "\n".join(problems)


def test_every_route_against_every_role(coalition: Ctx, server: Server) -> None:
    """Each operation of /openapi.json, called by each kind of caller with a valid request: allowed
    (the route's 2xx), or refused with the problem the table names, and then nothing was stored."""
    ctx = coalition
    served = served_operations(ctx.root)
    tabled = {row.operation for row in ROWS}
    assert served == tabled, (
        "the table must list exactly the served operations;\n  served but not in the table: "
        f"{sorted(served - tabled)}\n  in the table but not served: {sorted(tabled - served)}")

    grid: list[list[str]] = []
    mismatches: list[str] = []
    for row in ROWS:
        marks = []
        for role in ROLES:
            expected = row.expect(role)
            call = row.make(ctx, role, suffix(role))
            before = head(ctx)
            response = ctx.client(role).request(row.method, call.path, call.body, data=call.data, headers=call.headers)
            after = head(ctx)
            problems = judge(expected, response, before, after)
            if call.after is not None and (trouble := call.after(response)):
                problems.append(trouble)
            marks.append(expected.short + ("" if not problems else f"!{response.status}"))
            if problems:
                mismatches.append(f"{row.method:6} {row.path:62} {role:13} expected {expected.label}"
                                  f"{' (' + expected.why + ')' if expected.why else ''}\n{'':84}"
                                  f"got {describe(response)}"
                                  f" -- {'; '.join(problems)}")
        grid.append([f"{row.method} {row.path}"] + marks)

    width = max(len(line[0]) for line in grid)
    table = [" " * width + " | " + " | ".join(f"{r[:11]:11}" for r in ROLES)]
    table += [f"{line[0]:{width}} | " + " | ".join(f"{m:11}" for m in line[1:]) for line in grid]
    print(f"\n{len(ROWS)} operations x {len(ROLES)} callers = {len(ROWS) * len(ROLES)} checks "
          "('!' marks a mismatch and the status got):\n" + "\n".join(table))
    assert not mismatches, (f"{len(mismatches)} of {len(ROWS) * len(ROLES)} access checks went wrong:\n"
                            + "\n".join(mismatches))
    # Keys issued along the way work, and with the role asked for.
    for key in ctx.facts.get("issued_in_matrix", []):
        expect(Client(ctx.root.base_url, key).get("/v1/audit/checkpoint"), 200)


# ---- 2. partners are kept out of each other's postings ----------------------------------------------

def test_a_partner_cannot_post_for_read_or_reverse_another_partners_postings(coalition: Ctx) -> None:
    ctx = coalition
    a, c = ctx.client(PARTNER_A), ctx.client(PARTNER_C)
    attempts = Refusals(ctx)
    at_b = {"transaction_id": "x-1", "member_id": "ann", "store_id": "b-1", "amount": "10.00", "currency": "EUR"}

    # Posting for B.
    attempts.check("A posts a purchase at B's store", lambda: a.post("/v1/purchases", at_b), (422,), "unknown-store")
    attempts.check("A posts a purchase naming partner B",
                   lambda: a.post("/v1/purchases", {**at_b, "partner_id": "baker"}), (403,), "forbidden")
    in_batch = attempts.check("A's batch: one item at B's store, one naming B", lambda: a.post(
        "/v1/purchases/batch", {"purchases": [at_b, {**at_b, "transaction_id": "x-2", "partner_id": "baker"}]}),
        (200,), None)
    if in_batch.status == 200:
        items = [(r["status"], r["body"].get("type")) for r in in_batch.body["results"]]
        if items != [(422, "unknown-store"), (403, "forbidden")]:
            attempts.failures.append(f"A's batch for B: items {items}")
    attempts.check("A redeems naming B as the redeeming partner", lambda: a.post(
        "/v1/members/ann/redemptions", {"redemption_id": "x-r", "points": 1, "partner_id": "baker"}),
        (403,), "forbidden")

    # Reading B's posting: hidden exactly like one that does not exist.
    foreign = attempts.check("A reads B's posting t-b1", lambda: a.get("/v1/postings/t-b1"), (404,), "not-found")
    unknown = a.get("/v1/postings/t-never")
    if (foreign.status, foreign.body.get("title")) != (unknown.status, unknown.body.get("title")) \
            or "points_earned" in str(foreign.body) or "b-1" in str(foreign.body):
        attempts.failures.append(f"A can tell B's posting from none: {foreign.body} vs {unknown.body}")

    # Reversing B's postings: returning B's purchase, cancelling B's redemption.
    attempts.check("A returns B's purchase t-b1", lambda: a.post("/v1/returns", {
        "transaction_id": "x-ret", "original_transaction_id": "t-b1", "amount": "1.00"}), (404,), "not-found")
    attempts.check("A returns B's purchase naming B", lambda: a.post("/v1/returns", {
        "transaction_id": "x-ret", "original_transaction_id": "t-b1", "amount": "1.00", "partner_id": "baker"}),
        (403,), "forbidden")
    attempts.check("A cancels B's redemption rd-b1",
                   lambda: a.post("/v1/members/ann/redemptions/rd-b1/cancellation", {}),
                   (403, 404), ("forbidden", "not-found"))

    # A partner of another program sees none of it.
    attempts.check("C posts for club's member at its own store", lambda: c.post("/v1/purchases", {
        "transaction_id": "x-c", "member_id": "ann", "store_id": "r-1", "amount": "10.00", "currency": "USD"}),
        (404,), "not-found")
    attempts.check("C reads A's posting", lambda: c.get("/v1/postings/t-a1"), (404,), "not-found")
    attempts.check("C cancels A's redemption", lambda: c.post("/v1/members/ann/redemptions/rd-a1/cancellation", {}),
                   (403, 404), ("forbidden", "not-found"))

    # Transaction ids are the partner's own: A reusing B's id posts A's purchase, not a replay of B's.
    own = a.post("/v1/purchases", {**at_b, "transaction_id": "t-b1", "store_id": "g-1"})
    if own.status != 201 or replayed(own) or own.body.get("points_earned") != 20:
        attempts.failures.append(f"A's own purchase t-b1: {own.status} replayed={replayed(own)} {own.body}")

    # B's postings are as B left them: its purchase, and its redemption still to be cancelled (once, by B).
    b = ctx.client(PARTNER_B)
    mine = expect(b.get("/v1/postings/t-b1"), 200)
    assert mine["kind"] == "purchase" and mine["body"] == ctx.facts["t_b1"], mine
    cancelled = b.post("/v1/members/ann/redemptions/rd-b1/cancellation", {})
    if cancelled.status != 201 or replayed(cancelled):
        attempts.failures.append(f"B's own cancellation of rd-b1 was not the first: {cancelled.status} "
                                 f"replayed={replayed(cancelled)} (someone else cancelled B's redemption)")
    attempts.expect_none("partner isolation broken")


# ---- 4. four eyes on adjustments -----------------------------------------------------------------------

def test_nobody_approves_their_own_adjustment_and_an_approval_applies_once(coalition: Ctx) -> None:
    ctx = coalition
    root, support, v1 = ctx.root, ctx.client(SUPPORT), ctx.client(SUPERVISOR)
    v2, v3 = (ctx.root.with_key(issue_key(root, "supervisor")[0]) for _ in range(2))
    attempts = Refusals(ctx)
    start = available(ctx)

    def ask(client: Client, adjustment_id: str, points: int) -> None:
        body = expect(client.post("/v1/members/ann/adjustments", {
            "adjustment_id": adjustment_id, "points": points, "reason": "goodwill", "note": "large"}), 202)
        assert body["status"] == "pending_approval", body

    def decide(client: Client, adjustment_id: str, decision: str) -> Any:
        return lambda: client.post(f"/v1/adjustments/{adjustment_id}/{decision}", {"note": "checked"})

    # Support asks; support may neither approve nor reject, nor may admin, auditors or partners.
    ask(support, "big-s", 600)
    for who, client in (("support", support), ("admin", ctx.client(ADMIN)), ("the bootstrap admin", root),
                        ("an auditor", ctx.client(AUDITOR)), ("finance", ctx.client(FINANCE)),
                        ("partner A", ctx.client(PARTNER_A))):
        for decision in ("approval", "rejection"):
            attempts.check(f"{who}: {decision} of support's request", decide(client, "big-s", decision),
                           (403,), "forbidden")

    # A supervisor's own request (supervisors ask too, and above the threshold it waits as well).
    ask(v1, "big-v1", 700)
    for decision in ("approval", "rejection"):
        attempts.check(f"supervisor 1: {decision} of its own request", decide(v1, "big-v1", decision),
                       (403,), "forbidden")
    if available(ctx) != start:
        attempts.failures.append(f"the balance moved from {start} to {available(ctx)} with nothing approved")
    attempts.expect_none("an adjustment was decided by its requester or by a role that may not decide")

    # Another supervisor approves: applied once, with both names on it.
    approved = attempts.check("supervisor 2 approves supervisor 1's request", decide(v2, "big-v1", "approval"),
                              (200,), None, unchanged=False)
    if approved.status == 200:
        assert approved.body["status"] == "approved", approved.body
        assert approved.body["requested_by"] == f"key:{ctx.key_ids[SUPERVISOR]}", approved.body
    assert available(ctx) == start + 700
    again = attempts.check("supervisor 2 approves again", decide(v2, "big-v1", "approval"), (200,), None)
    if not replayed(again):
        attempts.failures.append("supervisor 2's second approval is not marked as a replay")
    attempts.check("supervisor 3 approves the approved request", decide(v3, "big-v1", "approval"), (409,), "conflict")
    attempts.check("supervisor 2 rejects what it approved", decide(v2, "big-v1", "rejection"), (409,), "conflict")
    attempts.check("supervisor 1 approves its own, now approved", decide(v1, "big-v1", "approval"), (403, 409),
                   ("forbidden", "conflict"))
    assert available(ctx) == start + 700

    # A rejection: the balance never moves, and no approval can follow it.
    ask(support, "big-rj", 650)
    attempts.check("supervisor 3 rejects support's request", decide(v3, "big-rj", "rejection"), (200,), None,
                   unchanged=False)
    attempts.check("supervisor 2 approves the rejected request", decide(v2, "big-rj", "approval"), (409,), "conflict")
    assert available(ctx) == start + 700

    # Two supervisors approving the same request at once, from both worker processes: applied once.
    ask(support, "big-race", 800)
    answers: list[tuple[str, Response]] = []
    barrier = threading.Barrier(8)

    def approve(name: str, client: Client) -> None:
        barrier.wait()
        answers.append((name, client.post("/v1/adjustments/big-race/approval", {"note": "race"})))

    threads = [threading.Thread(target=approve, args=(name, client))
               for name, client in [("v2", v2), ("v3", v3)] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = {name for name, response in answers if response.status == 200}
    statuses = sorted(response.status for _, response in answers)
    assert len(answers) == 8 and set(statuses) <= {200, 409} and len(winners) == 1, (
        f"expected one supervisor's approvals (and replays) to win, the other's 409: "
        f"{[(n, r.status, r.body.get('type') if isinstance(r.body, dict) else r.body) for n, r in answers]}")
    assert available(ctx) == start + 700 + 800

    events = expect(root.get("/v1/members/ann/history?limit=1000"), 200)["events"]
    applied = {}
    for event in events:
        if event["type"] == "PointsAdjusted" and event["data"].get("adjustment_id", "").startswith("big-"):
            applied.setdefault(event["data"]["adjustment_id"], []).append(event)
    assert sorted(applied) == ["big-race", "big-v1"] and all(len(v) == 1 for v in applied.values()), applied
    assert applied["big-v1"][0]["actor"] == f"key:{ctx.key_ids[SUPERVISOR]}", applied["big-v1"]
    attempts.expect_none("four eyes broken")


# ---- 5. keys stored only as hashes, never logged -------------------------------------------------------

def database_texts(database_url: str, files_under: Path, skip: Path) -> Iterator[tuple[str, bytes]]:
    """Every value in every table of the ledger's database (bytes, and decompressed when they are),
    and the raw bytes of every file the server wrote next to it (the SQLite file, its WAL...)."""
    database = Database.from_url(database_url)
    rows: Iterator[tuple[str, tuple[Any, ...]]]
    if database.kind == "sqlite":
        assert database.path is not None
        connection = sqlite3.connect(f"file:{database.path}?mode=ro", uri=True)
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = ((table, row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"'))
    else:
        import psycopg

        connection = psycopg.connect(host=database.host, port=database.port, user=database.user,
                                     password=database.password, dbname=database.dbname, autocommit=True)
        schema = database.schema or "public"
        tables = [name for (name,) in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
        assert tables, f"no tables in schema {schema}"
        rows = ((table, row) for table in tables
                for row in connection.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall())
    try:
        for table, row in rows:
            for value in row:
                if value is None:
                    continue
                raw = value.tobytes() if isinstance(value, memoryview) else value
                raw = raw if isinstance(raw, bytes) else str(raw).encode()
                yield table, raw
                try:
                    yield table, zlib.decompress(raw, 47)  # zlib or gzip, if the state is compressed
                except zlib.error:
                    pass
    finally:
        connection.close()
    for path in sorted(files_under.rglob("*")):
        if path.is_file() and path != skip:
            yield f"file {path.name}", path.read_bytes()


def windows(secret: str, width: int = 16) -> set[bytes]:
    return {secret[i:i + width].encode() for i in range(len(secret) - width + 1)}


def test_keys_are_stored_only_as_hashes_and_never_logged(coalition: Ctx, server: Server) -> None:
    ctx = coalition
    # Whether the stored events could hide a secret from a plain scan: neither is configured.
    env = Database.from_url(server.database_url).eventsourcing_env(create_schema=False)
    assert not any(k in env for k in ("COMPRESSOR_TOPIC", "CIPHER_TOPIC")), env
    keys = {role: ctx.client(role).key for role in KEYED}
    secrets_of = {role: key.split("_", 2)[2] for role, key in keys.items()}
    assert all(key.startswith(f"llk_{ctx.key_ids[role]}_") for role, key in keys.items()), keys

    # Each key at work; then the same ids with wrong secrets, the right secrets with wrong ids, other schemes.
    presented: list[str] = []  # every string sent as a credential that must never be stored or logged
    for role, key in keys.items():
        assert ctx.client(role).get("/healthz").status == 200
        assert ctx.client(role).get("/v1/programs/club").status == 200
        wrong_secret = f"llk_{ctx.key_ids[role]}_{secrets.token_urlsafe(32)}"
        stolen_secret = f"llk_{secrets.token_hex(8)}_{secrets_of[role]}"
        presented += [wrong_secret, stolen_secret]
        for attempt in (wrong_secret, stolen_secret, key + "x", key[:-1]):
            expect(ctx.root.get("/v1/programs/club", key=attempt), 401, "unauthenticated")
        expect(ctx.root.post("/v1/purchases", {"transaction_id": "k-1"}, key=wrong_secret), 401, "unauthenticated")
        expect(ctx.root.get("/v1/programs/club", key=None, headers={"Authorization": f"Basic {key}"}),
               401, "unauthenticated")
        expect(ctx.root.get("/v1/programs/club", key=None, headers={"Authorization": f"Token {key}"}),
               401, "unauthenticated")
    revoked, revoked_id = issue_key(ctx.root, "support")
    expect(ctx.root.delete(f"/v1/api-keys/{revoked_id}"), 204)
    expect(ctx.root.get("/v1/programs/club", key=revoked), 401, "unauthenticated")
    keys["revoked support"] = revoked
    secrets_of["revoked support"] = revoked.split("_", 2)[2]

    # The log: no key, no secret, nothing presented; but the key ids of the requests that were let in.
    log = server.log_text()
    leaked = [f"{role}'s key" for role, key in keys.items() if key in log]
    leaked += [f"{role}'s secret" for role, secret in secrets_of.items()
               if any(w.decode() in log for w in windows(secret))]
    leaked += [f"a presented credential {p[:12]}..." for p in presented
               if any(w.decode() in log for w in windows(p.split("_", 2)[2]))]
    leaked += ["the bootstrap admin key"] if server.admin_key in log else []
    leaked += ["the garbage key"] if ctx.client(GARBAGE_KEY).key in log else []
    assert not leaked, f"found in the server log: {leaked}"
    logged_ids = {r.get("key_id") for r in server.log_records() if r.get("event") == "request"}
    assert {ctx.key_ids[role] for role in KEYED} <= logged_ids, "requests are logged with the key id"
    assert any(r.get("status") == 401 and r.get("key_id") is None for r in server.log_records()), \
        "refused requests are logged, without a key id"

    # The database, every table (the stored events' state included) and every file next to it.
    found_secret: dict[str, list[str]] = {}
    found_hash: set[str] = set()
    hashes = {role: hashlib.sha256(secret.encode()).hexdigest() for role, secret in secrets_of.items()}
    # Any 16 characters in a row of a secret (96 random bits) count: a truncated or split copy too.
    needles = {(role, window) for role, secret in secrets_of.items() for window in windows(secret)}
    needles |= {(f"presented {p[:12]}", window) for p in presented for window in windows(p.split("_", 2)[2])}
    needles |= {("bootstrap admin key", window) for window in windows(server.admin_key)}
    scanned = 0
    for where, text in database_texts(server.database_url, Path(server.log_path).parent.parent, server.log_path):
        scanned += 1
        for role, needle in needles:
            if needle in text and where not in found_secret.get(role, []):
                found_secret.setdefault(role, []).append(where)
        found_hash |= {role for role, digest in hashes.items() if digest.encode() in text}
    assert not found_secret, f"plaintext secrets stored: {found_secret}"
    # The scan did read the keys' stored events: each key's hash is there, as the contract says.
    assert found_hash == set(hashes), f"scanned {scanned} values; no stored hash for {set(hashes) - found_hash}"


# ---- 6. a revoked key stops working at once, in every worker -------------------------------------------

def worker_pids(master_pid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
                pids.append(int(entry))
    return sorted(pids)


def serving_worker(connection: http.client.HTTPConnection, server_port: int, workers: list[int]) -> int | None:
    """The worker process holding the server end of this (kept-alive) connection."""
    client_port = connection.sock.getsockname()[1]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if local == server_port and remote == client_port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in workers:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def pinned_request(connection: http.client.HTTPConnection, key: str, path: str = "/v1/members/ann") -> int:
    connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    reply = connection.getresponse()
    reply.read()
    return reply.status


def pin_every_worker(port: int, workers: list[int], serve: Callable[[http.client.HTTPConnection, int], None],
                     ) -> tuple[dict[int, http.client.HTTPConnection], list[http.client.HTTPConnection]]:
    """One kept-alive connection to each worker ({pid: connection}), each having served one
    request (`serve(connection, attempt)`), and the spare connections opened on the way."""
    pinned: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    for attempt in range(60):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        serve(connection, attempt)
        pid = serving_worker(connection, port, workers)
        if pid is not None and pid not in pinned:
            pinned[pid] = connection
        else:
            spare.append(connection)
        if len(pinned) == len(workers):
            break
    return pinned, spare


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="maps connections to workers through Linux /proc")
def test_a_revoked_key_stops_working_at_once_in_every_worker(coalition: Ctx, server: Server) -> None:
    """A key both workers have just used (so each has it in its aggregate cache) is revoked; the
    very next request on a kept-alive connection to each worker is refused, and so is a burst."""
    ctx = coalition
    till_key, till_id = issue_key(ctx.root, "partner", "grocer")
    till = ctx.root.with_key(till_key)
    workers = worker_pids(server.process.pid)
    assert len(workers) == 2, f"expected gunicorn's two workers under {server.process.pid}: {workers}"
    port = int(server.base_url.rsplit(":", 1)[1])

    def serve(connection: http.client.HTTPConnection, _: int) -> None:
        assert pinned_request(connection, till_key) == 200

    pinned, spare = pin_every_worker(port, workers, serve)  # each worker has served the key
    try:
        assert sorted(pinned) == workers, f"could not reach both workers: {sorted(pinned)} of {workers}"
        for pid, connection in pinned.items():  # warm again just before: each worker knows the key as valid
            assert pinned_request(connection, till_key) == 200, pid
        expect(ctx.root.delete(f"/v1/api-keys/{till_id}"), 204)
        after_revocation = {pid: pinned_request(connection, till_key) for pid, connection in pinned.items()}
        assert after_revocation == dict.fromkeys(workers, 401), (
            f"the first request after the revocation, per worker: {after_revocation}")
        assert all(serving_worker(c, port, workers) == pid for pid, c in pinned.items()), "connections moved"
    finally:
        for connection in [*pinned.values(), *spare]:
            connection.close()

    # A burst of fresh connections at once, reads and writes: all 401, nothing stored.
    before = head(ctx)
    answers: list[Response] = []
    barrier = threading.Barrier(20)

    def call(index: int) -> None:
        barrier.wait()
        if index % 2:
            answers.append(till.get("/v1/members/ann"))
        else:
            answers.append(till.post("/v1/purchases", {"transaction_id": f"rv-{index}", "member_id": "ann",
                                                       "store_id": "g-1", "amount": "1.00", "currency": "EUR"}))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.status for r in answers] == [401] * 20, [describe(r) for r in answers]
    assert all(r.body.get("type") == "unauthenticated" for r in answers)
    assert head(ctx) == before
    # Revoking again is harmless; the other keys still work; the revoked one stays revoked.
    expect(ctx.root.delete(f"/v1/api-keys/{till_id}"), 204)
    expect(ctx.client(PARTNER_A).get("/v1/members/ann"), 200)
    expect(till.get("/v1/members/ann"), 401, "unauthenticated")


def pinned_post(connection: http.client.HTTPConnection, key: str, body: dict[str, Any],
                path: str = "/v1/purchases") -> tuple[int, str | None]:
    """(status, problem type) of a POST on this kept-alive connection."""
    connection.request("POST", path, body=json.dumps(body),
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    reply = connection.getresponse()
    payload = reply.read()
    kind = json.loads(payload).get("type") if payload and reply.status >= 400 else None
    return reply.status, kind


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="maps connections to workers through Linux /proc")
@pytest.mark.parametrize("ending", ["valid purchase", "invalid body", "another partner", "replay", "return"])
def test_a_revoked_key_is_refused_on_the_purchase_path_in_every_worker(coalition: Ctx, server: Server,
                                                                        ending: str) -> None:
    """Purchases and returns admit a caller on the worker's own copy of its key and leave the
    confirmation to the batch that commits the command (api/auth.py). Each worker has posted
    with the key (so holds a copy that admits it) when the key is revoked; the first request
    after that on each worker is 401 and stores nothing, however it would otherwise have ended:
    a purchase (201), a body that is not valid (422), another partner named (403), a replay of
    a stored purchase (201), a return (201)."""
    ctx = coalition
    till_key, till_id = issue_key(ctx.root, "partner", "grocer")
    workers = worker_pids(server.process.pid)
    assert len(workers) == 2, f"expected gunicorn's two workers under {server.process.pid}: {workers}"
    port = int(server.base_url.rsplit(":", 1)[1])
    tag = ending.replace(" ", "-")

    def purchase(transaction_id: str, **extra: Any) -> dict[str, Any]:
        return {"transaction_id": f"{tag}-{transaction_id}", "member_id": "ann", "store_id": "g-1",
                "amount": "2.00", "currency": "EUR", **extra}

    posted_on: dict[int, str] = {}  # the connection's first purchase

    def serve(connection: http.client.HTTPConnection, attempt: int) -> None:
        assert pinned_post(connection, till_key, purchase(f"pin-{attempt}")) == (201, None)
        posted_on[id(connection)] = f"pin-{attempt}"

    pinned, spare = pin_every_worker(port, workers, serve)
    posted = {pid: posted_on[id(connection)] for pid, connection in pinned.items()}
    try:
        assert sorted(pinned) == workers, f"could not reach both workers: {sorted(pinned)} of {workers}"
        for pid, connection in pinned.items():  # each worker admits the key on its copy now
            assert pinned_post(connection, till_key, purchase(f"warm-{pid}")) == (201, None), pid
        expect(ctx.root.delete(f"/v1/api-keys/{till_id}"), 204)
        before = head(ctx)

        def first_after(pid: int) -> tuple[int, str | None]:
            connection = pinned[pid]
            if ending == "valid purchase":
                return pinned_post(connection, till_key, purchase(f"after-{pid}"))
            if ending == "invalid body":
                return pinned_post(connection, till_key, purchase(f"bad-{pid}", amount="not money"))
            if ending == "another partner":
                return pinned_post(connection, till_key, purchase(f"other-{pid}", partner_id="baker"))
            if ending == "replay":
                return pinned_post(connection, till_key, purchase(posted[pid]))
            return pinned_post(connection, till_key, {"transaction_id": f"{tag}-ret-{pid}", "amount": "1.00",
                                                      "original_transaction_id": f"{tag}-{posted[pid]}"},
                               path="/v1/returns")

        answers = {pid: first_after(pid) for pid in pinned}
        assert answers == dict.fromkeys(workers, (401, "unauthenticated")), answers
        assert all(serving_worker(c, port, workers) == pid for pid, c in pinned.items()), "connections moved"
        assert head(ctx) == before
    finally:
        for connection in [*pinned.values(), *spare]:
            connection.close()


# ---- the served description of who needs a key -----------------------------------------------------------

def test_openapi_says_which_routes_need_no_key() -> None:
    """API.md: the served OpenAPI document describes every route truthfully. The public routes
    (health) must declare `security: []`; every other route needs the bearer key."""
    from api.app import create_app, openapi_document
    from infrastructure.bootstrap import build_ledger

    config = Config(database_url="memory://")
    ledger = build_ledger(config)
    document = openapi_document(create_app(config, ledger, None))
    default = document.get("security")
    public = {row.operation for row in ROWS if row.public}
    wrong = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            security = operation.get("security", default)
            needs_key = bool(security) and {} not in security
            if needs_key == ((method.upper(), path) in public):
                wrong.append(f"{method.upper()} {path}: documented security {security!r}, but the route is "
                             f"{'public' if (method.upper(), path) in public else 'behind the bearer key'}")
    assert not wrong, "\n".join(wrong)
