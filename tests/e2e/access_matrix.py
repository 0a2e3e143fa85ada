"""Who may call what: every route of the served API against every kind of caller, as one table.

Each row is one operation of /openapi.json, with a factory that builds a valid request for a
given caller (fresh ids per caller, and any setup the request needs), the roles allowed to make
it and, where the answer is neither "allowed" nor the default refusal, what that answer is and
why. The resources the rows act on belong to partner A (the grocer) in program "club":

- partner B (the baker) is another partner of the same program: it shares the program's members
  with A, but must not post for A, read A's postings, nor return or cancel them;
- partner C (the rival) is a partner of another program ("rival-club"): it must not see or touch
  club's members at all.

The default refusal is 401 unauthenticated for the three callers without a valid key and
403 forbidden for every valid key whose role is not allowed. Refused requests must leave the
event log exactly as it was (its head, /healthz "events", must not move).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.e2e.conftest import PROGRAM, Client, Response, expect, issue_key

# ---- callers --------------------------------------------------------------------------------------

NO_KEY = "no key"
GARBAGE_KEY = "garbage key"
WRONG_SECRET = "wrong secret"  # partner A's real key id with a made-up secret
ADMIN = "admin"  # an admin key issued through the API (not the bootstrap LOYALTY_ADMIN_KEY)
PARTNER_A = "partner A"
PARTNER_B = "partner B"
PARTNER_C = "partner C"
SUPPORT = "support"
SUPERVISOR = "supervisor"
AUDITOR = "auditor"
FINANCE = "finance"

UNAUTHENTICATED = (NO_KEY, GARBAGE_KEY, WRONG_SECRET)
KEYED = (ADMIN, PARTNER_A, PARTNER_B, PARTNER_C, SUPPORT, SUPERVISOR, AUDITOR, FINANCE)
ROLES = UNAUTHENTICATED + KEYED

# The key each caller is issued: (role, partner_id).
ISSUED: dict[str, tuple[str, str | None]] = {
    ADMIN: ("admin", None),
    PARTNER_A: ("partner", "grocer"),
    PARTNER_B: ("partner", "baker"),
    PARTNER_C: ("partner", "rival"),
    SUPPORT: ("support", None),
    SUPERVISOR: ("supervisor", None),
    AUDITOR: ("auditor", None),
    FINANCE: ("finance", None),
}

SLUG_FOR_STATUS = {401: "unauthenticated", 403: "forbidden", 404: "not-found"}


def suffix(role: str) -> str:
    """A per-caller piece for ids, so that every caller's write is a fresh one."""
    return role.replace(" ", "-").lower()


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# ---- expectations -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    statuses: tuple[int, ...]
    slug: str | None = None  # the problem type of a domain 4xx (401/403/404 have fixed ones)
    why: str = ""
    may_change: bool = False  # whether the event log may grow
    items: tuple[int, str | None] | None = None  # a batch: every item's status and problem type

    @property
    def label(self) -> str:
        if self.statuses[0] < 300:
            text = "allowed " + "/".join(map(str, self.statuses))
            if self.items:
                text += f" (items {self.items[0]}{' ' + self.items[1] if self.items[1] else ''})"
            return text
        return "/".join(f"{s} {self.slug or SLUG_FOR_STATUS.get(s, '')}".strip() for s in self.statuses)

    @property
    def short(self) -> str:
        if self.statuses[0] < 300:
            return "ok" if not self.items or self.items[0] < 300 else f"ok*{self.items[0]}"
        return "/".join(map(str, self.statuses))


UNAUTHENTICATED_401 = Expect((401,), why="no valid key")
FORBIDDEN_403 = Expect((403,), why="the role may not do this")


def hidden(why: str) -> Expect:
    return Expect((404,), why=why)


def refused(*statuses: int, why: str) -> Expect:
    return Expect(tuple(statuses), why=why)


# ---- requests ------------------------------------------------------------------------------------------

@dataclass
class Call:
    path: str  # concrete, with its query string
    body: Any = None  # JSON
    data: bytes | None = None  # a raw body (with headers)
    headers: dict[str, str] | None = None
    # Checked after the answer: the state the answer implies (e.g. a revoked key no longer works).
    after: Callable[[Response], str | None] | None = None


@dataclass
class Ctx:
    """What the factories need: the bootstrap admin, every caller's client, and the seeded world."""

    root: Client  # the bootstrap admin (LOYALTY_ADMIN_KEY): used for setup only
    clients: dict[str, Client]
    key_ids: dict[str, str]
    now: datetime
    facts: dict[str, Any] = field(default_factory=dict)

    def client(self, role: str) -> Client:
        return self.clients[role]

    def event_version(self, member_id: str, **data: Any) -> int:
        """The version of the member's latest event whose data has these values (from the event log)."""
        events = expect(self.root.get(f"/v1/members/{member_id}/history?limit=1000"), 200)["events"]
        found = [e["version"] for e in events if all(e["data"].get(k) == v for k, v in data.items())]
        assert found, (data, events[-5:])
        return found[-1]


Factory = Callable[[Ctx, str, str], Call]


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # the OpenAPI template
    ok: int  # the status of an allowed call
    allowed: frozenset[str]
    make: Factory
    special: Mapping[str, Expect] = field(default_factory=dict)
    read_only: bool = False  # even an allowed call must not change the event log
    public: bool = False  # no key needed
    allowed_items: tuple[int, str | None] | None = None
    note: str = ""

    def expect(self, role: str) -> Expect:
        if role in self.special:
            return self.special[role]
        if self.public:
            return Expect((self.ok,), why="public", may_change=False)
        if role in UNAUTHENTICATED:
            return UNAUTHENTICATED_401
        if role in self.allowed:
            return Expect((self.ok,), why="allowed", may_change=not self.stores_nothing, items=self.allowed_items)
        return FORBIDDEN_403

    @property
    def stores_nothing(self) -> bool:
        return self.read_only or self.method == "GET"

    @property
    def operation(self) -> tuple[str, str]:
        return self.method, self.path


def roles(*names: str) -> frozenset[str]:
    return frozenset(names)


EVERY_KEY = roles(*KEYED)
FINANCE_READERS = roles(FINANCE, AUDITOR, ADMIN)
MEMBER_AUDIT_READERS = roles(ADMIN, SUPPORT, SUPERVISOR, AUDITOR, FINANCE)


# ---- the factories -----------------------------------------------------------------------------------

def new_program(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/programs", {**PROGRAM, "program_id": f"p-{s}", "name": f"Program of {role}"})


def program_revision(ctx: Ctx, role: str, s: str) -> Call:
    # "spare" is a program of its own, so that an allowed revision changes no other row's rules.
    ctx.facts["spare_revision_at"] = ctx.facts.get("spare_revision_at", ctx.now - timedelta(days=30)) \
        + timedelta(hours=1)
    return Call("/v1/programs/spare/revisions", {"earn_rate": "3", "effective_at": iso(ctx.facts["spare_revision_at"])})


def new_partner(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/partners", {"partner_id": f"np-{s}", "name": f"Partner of {role}", "program_id": "club",
                                 "stores": [f"np-{s}-1"]})


def new_key(ctx: Ctx, role: str, s: str) -> Call:
    def after(response: Response) -> str | None:
        if response.status == 201:
            ctx.facts.setdefault("issued_in_matrix", []).append(response.body["key"])
        return None

    return Call("/v1/api-keys", {"role": "auditor", "name": f"asked by {role}"}, after=after)


def revoke_key(ctx: Ctx, role: str, s: str) -> Call:
    victim, victim_id = issue_key(ctx.root, "auditor")
    victim_client = Client(ctx.root.base_url, victim)

    def after(response: Response) -> str | None:
        status = victim_client.get("/v1/programs/club").status
        if response.status == 204 and status != 401:
            return f"the revoked key still answers {status}"
        if response.status != 204 and status != 200:
            return f"the key that was not revoked answers {status}"
        return None

    return Call(f"/v1/api-keys/{victim_id}", after=after)


def enrol(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/members", {"program_id": "club", "member_id": f"m-{s}", "card_number": f"card-{s}",
                                "name": f"Member enrolled by {role}"})


def purchase_body(transaction_id: str) -> dict[str, Any]:
    return {"transaction_id": transaction_id, "member_id": "ann", "store_id": "g-1", "amount": "10.00",
            "currency": "EUR", "partner_id": "grocer"}


def purchase(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/purchases", purchase_body(f"tx-{s}"))


def batch(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/purchases/batch", {"purchases": [purchase_body(f"bx-{s}")]})


def a_return(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/returns", {"transaction_id": f"ret-{s}", "original_transaction_id": "t-a1", "amount": "1.00",
                                "partner_id": "grocer"})


def redemption(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/members/ann/redemptions", {"redemption_id": f"rd-{s}", "points": 1, "reward": "sticker"})


def cancellation(ctx: Ctx, role: str, s: str) -> Call:
    # A fresh redemption made by partner A, for every caller to try to cancel.
    redemption_id = f"rdc-{s}"
    expect(ctx.client(PARTNER_A).post("/v1/members/ann/redemptions", {"redemption_id": redemption_id, "points": 1}),
           201)
    return Call(f"/v1/members/ann/redemptions/{redemption_id}/cancellation", {})


def adjustment(ctx: Ctx, role: str, s: str) -> Call:
    return Call("/v1/members/ann/adjustments", {"adjustment_id": f"adj-{s}", "points": 5, "reason": "goodwill",
                                                "note": f"by {role}"})


def pending_adjustment(ctx: Ctx, adjustment_id: str) -> None:
    """Support asks for 600 points (above club's threshold of 500): it awaits a supervisor."""
    body = expect(ctx.client(SUPPORT).post("/v1/members/ann/adjustments", {
        "adjustment_id": adjustment_id, "points": 600, "reason": "goodwill", "note": "big gesture"}), 202)
    assert body["status"] == "pending_approval", body


def approval(ctx: Ctx, role: str, s: str) -> Call:
    pending_adjustment(ctx, f"big-ap-{s}")
    return Call(f"/v1/adjustments/big-ap-{s}/approval", {"note": f"approved by {role}"})


def rejection(ctx: Ctx, role: str, s: str) -> Call:
    pending_adjustment(ctx, f"big-rj-{s}")
    return Call(f"/v1/adjustments/big-rj-{s}/rejection", {"note": f"rejected by {role}"})


def reversal(ctx: Ctx, role: str, s: str) -> Call:
    # A fresh small adjustment (applied at once) for every caller to try to reverse.
    expect(ctx.client(SUPPORT).post("/v1/members/ann/adjustments", {
        "adjustment_id": f"small-{s}", "points": 1, "reason": "correction", "note": "to be reversed"}), 201)
    version = ctx.event_version("ann", adjustment_id=f"small-{s}")
    return Call("/v1/members/ann/reversals", {"reversal_id": f"rv-{s}", "version": version, "note": "wrong"})


def job(path: str) -> Factory:
    return lambda ctx, role, s: Call(path, {"as_of": iso(ctx.now)})


def get(path: str) -> Factory:
    return lambda ctx, role, s: Call(path)


def period(ctx: Ctx) -> str:
    today = ctx.now.date()
    return f"from={today - timedelta(days=365)}&to={today}"


def report(path: str) -> Factory:
    return lambda ctx, role, s: Call(f"{path}?program_id=club&{period(ctx)}")


def partner_statement(ctx: Ctx, role: str, s: str) -> Call:
    csv = f"transaction_id,amount,occurred_at\nt-a1,100.00,{iso(ctx.facts['t_a1_at'])}\n".encode()
    return Call(f"/v1/reconciliations/partner-statements?partner_id=grocer&{period(ctx)}", data=csv,
                headers={"Content-Type": "text/csv"})


# ---- the table ---------------------------------------------------------------------------------------

ROWS: tuple[Row, ...] = (
    # Administration: admin only.
    Row("POST", "/v1/programs", 201, roles(ADMIN), new_program),
    Row("GET", "/v1/programs/{program_id}", 200, EVERY_KEY, get("/v1/programs/club"),
        note="every role, partner C included, reads any program's rules"),
    Row("POST", "/v1/programs/{program_id}/revisions", 201, roles(ADMIN), program_revision),
    Row("POST", "/v1/partners", 201, roles(ADMIN), new_partner),
    Row("POST", "/v1/api-keys", 201, roles(ADMIN), new_key),
    Row("DELETE", "/v1/api-keys/{key_id}", 204, roles(ADMIN), revoke_key),
    # Members: partners of club share its members; partner C sees none of them.
    Row("POST", "/v1/members", 201, roles(ADMIN, SUPPORT, PARTNER_A, PARTNER_B), enrol,
        special={PARTNER_C: refused(403, why="club is not partner C's program")}),
    Row("GET", "/v1/members/{member_id}", 200, EVERY_KEY, get("/v1/members/ann"),
        special={PARTNER_C: refused(403, 404, why="ann is not in partner C's program")}),
    Row("GET", "/v1/members/by-card/{card_number}", 200, EVERY_KEY, get("/v1/members/by-card/card-ann"),
        special={PARTNER_C: hidden("a partner's card search covers its own program only")}),
    Row("GET", "/v1/members/{member_id}/balance", 200, MEMBER_AUDIT_READERS, get("/v1/members/ann/balance"),
        read_only=True),
    Row("GET", "/v1/members/{member_id}/history", 200, MEMBER_AUDIT_READERS, get("/v1/members/ann/history?limit=5"),
        read_only=True),
    # Partner postings, all naming partner A (partner_id "grocer"): B and C may not post for A.
    Row("POST", "/v1/purchases", 201, roles(ADMIN, PARTNER_A), purchase),
    Row("POST", "/v1/purchases/batch", 200, roles(ADMIN, PARTNER_A), batch, allowed_items=(201, None),
        special={p: Expect((200,), why="every item refused: it names another partner", items=(403, "forbidden"))
                 for p in (PARTNER_B, PARTNER_C)}),
    Row("POST", "/v1/returns", 201, roles(ADMIN, PARTNER_A), a_return),
    Row("GET", "/v1/postings/{transaction_id}", 200, roles(PARTNER_A), get("/v1/postings/t-a1"), read_only=True,
        special={PARTNER_B: hidden("looked up among B's own postings: A's does not exist there"),
                 PARTNER_C: hidden("looked up among C's own postings: A's does not exist there")},
        note="admin is refused too: the route reads a partner key's own postings"),
    # Redemptions: partners and support. A cancellation reverses a redemption: only its partner's.
    Row("POST", "/v1/members/{member_id}/redemptions", 201, roles(ADMIN, SUPPORT, PARTNER_A, PARTNER_B), redemption,
        special={PARTNER_C: refused(403, why="ann is not in partner C's program")}),
    Row("POST", "/v1/members/{member_id}/redemptions/{redemption_id}/cancellation", 201,
        roles(ADMIN, SUPPORT, PARTNER_A), cancellation,
        special={PARTNER_B: refused(403, 404, why="the redemption was made by partner A, not B"),
                 PARTNER_C: refused(403, 404, why="ann is not in partner C's program")}),
    # Support corrections and the four-eyes approval.
    Row("POST", "/v1/members/{member_id}/adjustments", 201, roles(SUPPORT, SUPERVISOR), adjustment),
    Row("GET", "/v1/adjustments", 200, roles(SUPERVISOR, SUPPORT, ADMIN, AUDITOR),
        get("/v1/adjustments?status=pending")),
    Row("POST", "/v1/adjustments/{adjustment_id}/approval", 200, roles(SUPERVISOR), approval),
    Row("POST", "/v1/adjustments/{adjustment_id}/rejection", 200, roles(SUPERVISOR), rejection),
    Row("POST", "/v1/members/{member_id}/reversals", 201, roles(SUPPORT, SUPERVISOR), reversal),
    # Jobs: admin.
    Row("POST", "/v1/jobs/expire-points", 200, roles(ADMIN), job("/v1/jobs/expire-points")),
    Row("POST", "/v1/jobs/review-tiers", 200, roles(ADMIN), job("/v1/jobs/review-tiers")),
    # Audit and finance: reads (two of them are POSTs that compute, and must change nothing).
    Row("GET", "/v1/audit/checkpoint", 200, roles(AUDITOR, ADMIN), get("/v1/audit/checkpoint"), read_only=True),
    Row("POST", "/v1/audit/verify", 200, roles(AUDITOR, ADMIN), lambda ctx, role, s: Call("/v1/audit/verify", {}),
        read_only=True),
    Row("GET", "/v1/reports/reconciliation", 200, FINANCE_READERS, get("/v1/reports/reconciliation?program_id=club"),
        read_only=True),
    Row("GET", "/v1/reports/liability", 200, FINANCE_READERS, report("/v1/reports/liability"), read_only=True),
    Row("GET", "/v1/reports/settlement", 200, FINANCE_READERS, report("/v1/reports/settlement"), read_only=True),
    Row("GET", "/v1/reports/revenue", 200, FINANCE_READERS, report("/v1/reports/revenue"), read_only=True),
    Row("POST", "/v1/reconciliations/partner-statements", 200, FINANCE_READERS, partner_statement, read_only=True),
    # Health: public.
    Row("GET", "/healthz", 200, EVERY_KEY, get("/healthz"), read_only=True, public=True),
    Row("GET", "/readyz", 200, EVERY_KEY, get("/readyz"), read_only=True, public=True),
)

# POST routes that compute an answer and store nothing (auditors and finance may call them).
READ_ONLY_POSTS = {("POST", "/v1/audit/verify"), ("POST", "/v1/reconciliations/partner-statements")}


# ---- judging one answer -------------------------------------------------------------------------------

PROBLEM_JSON = "application/problem+json"


def judge(expected: Expect, response: Response, head_before: int, head_after: int) -> list[str]:
    """What is wrong with this answer, if anything."""
    problems: list[str] = []
    body = response.body
    if response.status not in expected.statuses:
        problems.append(f"status {response.status}")
    elif response.status >= 400:
        slug = SLUG_FOR_STATUS.get(response.status) or expected.slug
        if response.content_type != PROBLEM_JSON:
            problems.append(f"content type {response.content_type!r}")
        if not isinstance(body, dict) or body.get("status") != response.status or (slug and body.get("type") != slug):
            problems.append(f"not a {slug!r} problem")
        if response.status == 401 and "bearer" not in (response.headers.get("WWW-Authenticate") or "").lower():
            problems.append("no 'WWW-Authenticate: Bearer' challenge")
    elif response.status != 204 and response.content_type != "application/json":
        problems.append(f"content type {response.content_type!r}")
    if expected.items is not None and response.status == 200:
        results = body.get("results") if isinstance(body, dict) else None
        want_status, want_type = expected.items
        if not results or any(r.get("status") != want_status or (want_type and r["body"].get("type") != want_type)
                              for r in results):
            problems.append(f"batch items {[(r.get('status'), r.get('body', {}).get('type')) for r in results or []]}")
    if not expected.may_change and head_after != head_before:
        problems.append(f"the event log grew from {head_before} to {head_after}")
    return problems


def describe(response: Response) -> str:
    body = response.body
    if isinstance(body, dict):
        if "type" in body and "status" in body:
            return f"{response.status} {body.get('type')}: {str(body.get('detail', ''))[:90]}"
        return f"{response.status} {str(body)[:90]}"
    return f"{response.status} {str(body)[:90]}"
