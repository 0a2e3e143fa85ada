"""Hand-written bad input over HTTP, against the real `loyalty serve` on SQLite and PostgreSQL:
each request must be answered with a clear `application/problem+json` 4xx (never a 5xx, never
HTML) and must change nothing (the store's event count, from /healthz, and the member's summary
are checked before and after every case; the server must still answer afterwards).

Already covered by test_walkthrough.py (not repeated here): unknown field; amount as a JSON float
or integer; amount "NaN" and "Infinity"; a bare NaN token; "1e3"; negative and zero amounts; an
amount of 30 digits; malformed, impossible and offset-less occurred_at on purchases; occurred_at
in 2099; wrong and lower-case currency; missing store; member id and card together; an item amount
as a float; a JSON array and JSON null as the purchase body; truncated JSON and invalid UTF-8 on
purchases; text/plain and form content types with a Content-Length; a body over 2 MB; redemption
points as a string, float, boolean or zero; a zero adjustment; an unknown reason; bad history
limits; malformed and offset-less balance as_of; a job without as_of; deep nesting and a
5,000-digit integer amount; non-object batch items.

New here:
- huge and non-finite numbers: points 10**30 and -10**30 (redemptions, adjustments), a
  4,000-digit integer (below the parser's digit limit), 1e400 and bare Infinity/-Infinity/NaN
  tokens as points, "NaN"/"Infinity"/"-Infinity" strings as points, amount "1e400", "-Infinity",
  "sNaN", a 1,000-digit amount, "+10.00", " 10.00", three decimals in EUR; negative and zero
  amounts on returns, negative redemption points;
- times: occurred_at in year 9999 (also with a -12:00 offset that puts it in year 10000 UTC),
  10000, 0000, 0001 (also +01:00, which is year 0 in UTC) and 1900 on purchases, redemptions,
  adjustments, returns and cancellations; offset-less times on redemptions, adjustments,
  returns, cancellations, jobs and known_at; the same extremes as as_of/known_at and report
  periods, where a 200 is fine but a 5xx is not;
- identifiers: NUL, right-to-left override, zero-width space, newline, tab, leading space and
  10,000 characters in body ids are refused; emoji, combining and right-to-left (Arabic) ids are
  printable, which the README allows: they must either be refused or round-trip exactly (and
  their replay be recognised); NUL in free-text fields (member name, adjustment note, reward),
  which PostgreSQL cannot store in the projections' text columns; NUL and emoji in URL paths;
  a 10,000-character id in the URL (gunicorn's request-line limit: see that test);
- content types: no Content-Type at all, application/json with charset=latin-1 and a non-UTF-8
  byte, a chunked body without Content-Length (text/plain), an empty body; truncated JSON, JSON
  arrays and duplicate keys on the other write routes;
- size: a 10 MB body, a 10 MB string field, a 10 MB chunked body (413 or 400, and the server
  still healthy and still accepting a normal posting afterwards), a 1.9 MB string field under
  the body limit.
"""

from __future__ import annotations

import http.client
import json
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import Client, Response, World, expect

PROBLEM_JSON = "application/problem+json"
JSON_HEADERS = {"Content-Type": "application/json"}


def purchase(transaction_id: str, **extra: Any) -> dict[str, Any]:
    return {"transaction_id": transaction_id, "member_id": "ann", "store_id": "g-1", "amount": "10.00",
            "currency": "EUR", **extra}


def problem_issue(status: int, content_type: str, body: Any, allowed: tuple[int, ...] | None = None) -> str | None:
    """What is wrong with an answer that should be a clear 4xx problem (None: nothing)."""
    issues = []
    if not 400 <= status < 500:
        issues.append(f"status {status}")
    elif allowed is not None and status not in allowed:
        issues.append(f"status {status}, expected one of {allowed}")
    if content_type != PROBLEM_JSON:
        issues.append(f"content type {content_type!r}")
    elif not isinstance(body, dict) or body.get("status") != status or not body.get("type") or not body.get("title"):
        issues.append("not a problem document")
    elif body["type"] == "validation-error" and not (isinstance(body.get("errors"), dict) and body["errors"]):
        issues.append("a validation-error without its errors member")
    return "; ".join(issues) or None


class Checker:
    """Runs cases, checks each is a 4xx problem that changed nothing, and collects failures."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.failures: list[str] = []
        self.failed: set[str] = set()
        self.cases = 0

    def footprint(self) -> tuple[int, int, dict[str, Any]]:
        health = expect(self.world.admin.get("/healthz"), 200)
        ann = history_version(self.world.auditor)
        balance = expect(self.world.auditor.get("/v1/members/ann/balance"), 200)
        return health["events"], ann, {k: balance[k] for k in ("available", "pending", "due_for_expiry")}

    def refused(self, what: str, send: Any, allowed: tuple[int, ...] | None = None) -> Response | None:
        """`send()` must be answered with a 4xx problem (of `allowed` statuses, if given) and store nothing."""
        self.cases += 1
        before = self.footprint()
        try:
            response = send()
        except OSError as error:
            self.fail(what, f"the connection failed instead of an answer: {error!r}")
            return None
        issue = problem_issue(response.status, response.content_type, response.body, allowed)
        if issue:
            self.fail(what, f"{issue}; got {response.status} {str(response.body)[:240]}")
        after = self.footprint()
        if after != before:
            self.fail(what, f"changed the ledger (events, ann's version, balance): {before} -> {after}")
        return response

    def fail(self, what: str, text: str) -> None:
        self.failed.add(what)
        self.failures.append(f"{what}: {text}")

    def never_a_server_error(self, what: str, send: Any) -> Response | None:
        """A read with extreme parameters: 200 or a 4xx problem are both fine; a 5xx is not."""
        self.cases += 1
        response = send()
        if response.status >= 500 or (response.status >= 400 and response.content_type != PROBLEM_JSON):
            self.fail(what, f"{response.status} {response.content_type} {str(response.body)[:200]}")
        return response

    def assert_ok(self) -> None:
        assert expect(self.world.admin.get("/healthz"), 200)["status"] == "ok"
        assert not self.failures, (f"{len(self.failed)} of {self.cases} cases not answered cleanly:\n"
                                   + "\n".join(self.failures))


def history_version(client: Client, member_id: str = "ann") -> int:
    events = expect(client.get(f"/v1/members/{member_id}/history?limit=1000"), 200)["events"]
    return events[-1]["version"]


@pytest.fixture
def checker(world: World) -> Iterator[Checker]:
    # Some points and a redemption to cancel, so refusals are not just "nothing to spend".
    expect(world.partner.post("/v1/purchases", purchase("base-1", amount="100.00")), 201)
    expect(world.partner.post("/v1/members/ann/redemptions", {"redemption_id": "base-r", "points": 10}), 201)
    yield Checker(world)


def raw(world: World, method: str, path: str, body: bytes | Iterator[bytes] | None, headers: dict[str, str],
        key: str | None, chunked: bool = False) -> Response:
    """A request exactly as given (no Content-Type added, optionally chunked), reading the answer
    even when the server answered before the whole body was sent and closed the connection."""
    host, port = world.server.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    all_headers = dict(headers)
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    try:
        try:
            if chunked:
                connection.request(method, path, body=body, headers=all_headers, encode_chunked=True)
            else:
                connection.putrequest(method, path, skip_accept_encoding=True)
                for name, value in all_headers.items():
                    connection.putheader(name, value)
                assert isinstance(body, bytes | None)
                connection.putheader("Content-Length", str(len(body or b"")))
                connection.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413) and stopped reading: its answer is still there
        reply = connection.getresponse()
        raw_body = reply.read()
        parsed: Any = raw_body
        try:
            parsed = json.loads(raw_body) if raw_body else None
        except ValueError:
            pass
        return Response(reply.status, reply.headers, parsed)
    finally:
        connection.close()


# ---- numbers ---------------------------------------------------------------------------------

def test_huge_and_non_finite_numbers_are_refused(world: World, checker: Checker) -> None:
    partner, support = world.partner, world.support
    redeem = "/v1/members/ann/redemptions"
    adjust = "/v1/members/ann/adjustments"

    def redemption(points: Any) -> dict[str, Any]:
        return {"redemption_id": "bad-r", "points": points}

    def adjustment(points: Any) -> dict[str, Any]:
        return {"adjustment_id": "bad-a", "points": points, "reason": "goodwill", "note": "n"}

    def raw_json(path: str, text: str, client: Client) -> Any:
        return lambda: client.post(path, data=text.encode(), headers=JSON_HEADERS)

    for points in (10**30, -10**30, -5, -1, 10**12 + 1, int("9" * 4000)):
        checker.refused(f"redemption of {str(points)[:20]} points", lambda p=points: partner.post(redeem, redemption(p)),
                        (422,))
    for points in (10**30, -10**30, 10**12 + 1, -(10**12) - 1):
        checker.refused(f"adjustment of {str(points)[:20]} points", lambda p=points: support.post(adjust, adjustment(p)),
                        (422,))
    for token in ("1e400", "-1e400", "Infinity", "-Infinity", "NaN", "1e2", "1.0", "-0"):
        checker.refused(f"redemption points as the bare token {token}",
                        raw_json(redeem, f'{{"redemption_id": "bad-r", "points": {token}}}', partner), (400, 422))
        checker.refused(f"adjustment points as the bare token {token}",
                        raw_json(adjust, f'{{"adjustment_id": "bad-a", "points": {token}, "reason": "goodwill",'
                                         f' "note": "n"}}', support), (400, 422))
    for text in ("NaN", "Infinity", "-Infinity", "1e400", "10"):
        checker.refused(f"redemption points as the string {text!r}", lambda t=text: partner.post(redeem, redemption(t)),
                        (422,))
        checker.refused(f"adjustment points as the string {text!r}", lambda t=text: support.post(adjust, adjustment(t)),
                        (422,))
    for amount in ("1e400", "-1e400", "-Infinity", "+Infinity", "inf", "nan", "sNaN", "1" * 1000, "0." + "0" * 999 + "1",
                   "+10.00", " 10.00", "10.00 ", "10.001", "1,000.00", "0x10", "١٠", "10.00\u0000", "1_000"):
        checker.refused(f"purchase amount {amount[:24]!r}",  # a NUL may be refused up front as malformed (400)
                        lambda a=amount: partner.post("/v1/purchases", purchase("bad-amount", amount=a)), (400, 422))
    for amount in ("-1.00", "0", "0.00", "1e400", "1" * 1000, "NaN", "-Infinity"):
        checker.refused(f"return amount {amount[:24]!r}", lambda a=amount: partner.post("/v1/returns", {
            "transaction_id": "bad-ret", "original_transaction_id": "base-1", "amount": a}), (422,))
    checker.refused("item quantity 10**30", lambda: partner.post("/v1/purchases", purchase(
        "bad-item", items=[{"sku": "a", "amount": "10.00", "quantity": 10**30}])), (422,))
    checker.assert_ok()


# ---- times -----------------------------------------------------------------------------------

FAR_FUTURE = ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59-12:00", "10000-01-01T00:00:00Z", "+10000-01-01T00:00:00Z")
IMPOSSIBLE = ("0000-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T24:00:01Z", "2026-01-01T00:00:00+25:00")
FAR_PAST = ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "1900-01-01T00:00:00Z")
NO_OFFSET = ("2026-01-01T10:00:00", "2026-01-01 10:00:00", "2026-01-01")


def write_routes(world: World, moment: str) -> list[tuple[str, Client, str, dict[str, Any]]]:
    """One request per write route dated `moment`, each with an id of its own: if one were wrongly
    accepted, the next would not be refused merely as a conflicting repeat of it."""
    tag = moment.replace(":", "").replace("+", "p").replace(" ", "_")
    return [  # the writes that create points last: one wrongly accepted must not make a later case pass or fail
        ("redemption", world.partner, "/v1/members/ann/redemptions",
         {"redemption_id": f"r-{tag}", "points": 1, "occurred_at": moment}),
        ("return", world.partner, "/v1/returns",
         {"transaction_id": f"ret-{tag}", "original_transaction_id": "base-1", "amount": "1.00", "occurred_at": moment}),
        ("cancellation", world.partner, "/v1/members/ann/redemptions/base-r/cancellation", {"occurred_at": moment}),
        ("purchase", world.partner, "/v1/purchases", purchase(f"t-{tag}", occurred_at=moment)),
        ("adjustment", world.support, "/v1/members/ann/adjustments",
         {"adjustment_id": f"a-{tag}", "points": 5, "reason": "goodwill", "note": "n", "occurred_at": moment}),
    ]


def test_far_future_impossible_and_offsetless_times_are_refused(world: World, checker: Checker) -> None:
    for moment in FAR_FUTURE + IMPOSSIBLE + NO_OFFSET:
        for route, client, path, body in write_routes(world, moment):
            checker.refused(f"{route} occurred_at {moment}", lambda c=client, p=path, b=body: c.post(p, b), (422,))
    for moment in FAR_FUTURE + IMPOSSIBLE + NO_OFFSET:
        checker.refused(f"expiry job as_of {moment}", lambda m=moment: world.admin.post("/v1/jobs/expire-points",
                                                                                         {"as_of": m}), (422,))
        checker.refused(f"tier review as_of {moment}", lambda m=moment: world.admin.post("/v1/jobs/review-tiers",
                                                                                          {"as_of": m}), (422,))
    for moment in NO_OFFSET:
        checker.refused(f"balance known_at {moment}", lambda m=moment: world.auditor.get(
            f"/v1/members/ann/balance?known_at={quote(m)}"), (422,))
    checker.assert_ok()


def test_far_past_times_are_refused(world: World, checker: Checker) -> None:
    """Year 1 and 1900 are long before the member (or the program) existed. Neither README nor
    API.md sets a lower bound, but a posting dated before its member's enrolment is a data error,
    and none of them may be a 500."""
    for moment in FAR_PAST:
        for route, client, path, body in write_routes(world, moment):
            checker.refused(f"{route} occurred_at {moment}", lambda c=client, p=path, b=body: c.post(p, b))
    for moment in FAR_PAST:  # a job as of long ago may run (and find nothing to do), but never fail
        for job in ("expire-points", "review-tiers"):
            checker.never_a_server_error(f"job {job} as_of {moment}",
                                         lambda j=job, m=moment: world.admin.post(f"/v1/jobs/{j}", {"as_of": m}))
    checker.assert_ok()


def test_extreme_times_in_queries_are_never_a_server_error(world: World, checker: Checker) -> None:
    """Reads with extreme as_of / known_at / report periods: an answer or a 4xx problem, never a 5xx."""
    finance_key = expect(world.admin.post("/v1/api-keys", {"role": "finance"}), 201)["key"]
    finance = world.server.client(finance_key)
    for moment in ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
                   "0001-01-01T00:00:00+01:00", "1900-01-01T00:00:00Z"):
        for name in ("as_of", "known_at"):
            checker.never_a_server_error(f"balance {name}={moment}", lambda n=name, m=moment: world.auditor.get(
                f"/v1/members/ann/balance?{n}={quote(m)}"))
        checker.never_a_server_error(f"history as_of={moment}", lambda m=moment: world.auditor.get(
            f"/v1/members/ann/history?as_of={quote(m)}"))
    for start, end in (("0001-01-01", "0001-12-31"), ("9990-01-01", "9999-12-31"), ("1900-01-01", "1900-01-31"),
                       ("0001-01-01", "0010-12-31")):
        for report in ("liability", "revenue", "settlement"):
            checker.never_a_server_error(f"{report} from {start} to {end}", lambda r=report, s=start, e=end: finance.get(
                f"/v1/reports/{r}?program_id=club&from={s}&to={e}"))
        checker.never_a_server_error(f"monthly liability from {start} to {end}", lambda s=start, e=end: finance.get(
            f"/v1/reports/liability?program_id=club&from={s}&to={e}&monthly=true"))
    checker.assert_ok()


# ---- identifiers -----------------------------------------------------------------------------

NOT_PRINTABLE = {"NUL": "a\u0000b", "right-to-left override": "\u202eabc", "zero-width space": "ab\u200bc",
                 "newline": "ab\ncd", "tab": "ab\tcd", "leading space": " abc", "10,000 characters": "x" * 10_000,
                 "empty": "", "lone surrogate escape": "\udcff"}


IDS = (400, 422)  # a NUL or a lone surrogate may be refused up front as malformed JSON (400)


def test_unprintable_and_overlong_ids_are_refused(world: World, checker: Checker) -> None:
    partner, support, admin = world.partner, world.support, world.admin
    for label, value in NOT_PRINTABLE.items():
        if label == "lone surrogate escape":  # not encodable as UTF-8: sent as the JSON escape \udcff
            data = json.dumps(purchase("PLACEHOLDER")).replace("PLACEHOLDER", "\\udcff").encode()
            checker.refused("transaction id with a lone surrogate", lambda d=data: partner.post(
                "/v1/purchases", data=d, headers=JSON_HEADERS), (400, 422))
            continue
        checker.refused(f"transaction id: {label}", lambda v=value: partner.post("/v1/purchases", purchase(v)), IDS)
        checker.refused(f"redemption id: {label}", lambda v=value: partner.post(
            "/v1/members/ann/redemptions", {"redemption_id": v, "points": 1}), IDS)
        checker.refused(f"adjustment id: {label}", lambda v=value: support.post(
            "/v1/members/ann/adjustments", {"adjustment_id": v, "points": 1, "reason": "goodwill", "note": "n"}), IDS)
        checker.refused(f"return id: {label}", lambda v=value: partner.post("/v1/returns", {
            "transaction_id": v, "original_transaction_id": "base-1", "amount": "1.00"}), IDS)
        checker.refused(f"member id: {label}", lambda v=value: admin.post("/v1/members", {
            "program_id": "club", "member_id": v}), IDS)
        checker.refused(f"card number: {label}", lambda v=value: admin.post("/v1/members", {
            "program_id": "club", "member_id": "new-member", "card_number": v}), IDS)
        checker.refused(f"store id: {label}", lambda v=value: partner.post("/v1/purchases", purchase(
            "bad-store", store_id=v)), IDS)
    checker.assert_ok()


def test_nul_in_free_text_is_refused(world: World, checker: Checker) -> None:
    """NUL cannot be stored in PostgreSQL text columns (the projections' names and notes): a
    request carrying one must be refused up front, on every database, not stored in the event
    log to break the projections later."""
    partner, support, admin = world.partner, world.support, world.admin
    cases = {
        "member name": lambda: admin.post("/v1/members", {"program_id": "club", "member_id": "nul-name",
                                                          "name": "A\u0000B"}),
        "adjustment note (awaiting approval)": lambda: support.post("/v1/members/ann/adjustments", {
            "adjustment_id": "nul-note", "points": 600, "reason": "goodwill", "note": "x\u0000y"}),
        "adjustment note": lambda: support.post("/v1/members/ann/adjustments", {
            "adjustment_id": "nul-note-2", "points": 5, "reason": "goodwill", "note": "x\u0000y"}),
        "redemption reward": lambda: partner.post("/v1/members/ann/redemptions", {
            "redemption_id": "nul-reward", "points": 1, "reward": "x\u0000y"}),
        "item sku": lambda: partner.post("/v1/purchases", purchase(
            "nul-sku", items=[{"sku": "a\u0000b", "amount": "10.00"}])),
        "reversal note": lambda: support.post("/v1/members/ann/reversals", {
            "reversal_id": "nul-rev", "version": 2, "note": "x\u0000y"}),
    }
    for label, send in cases.items():
        checker.refused(f"NUL in the {label}", send, (400, 422))
    # Whatever was answered, the read side must still work.
    finance_key = expect(admin.post("/v1/api-keys", {"role": "finance"}), 201)["key"]
    today = datetime.now(timezone.utc).date()
    checker.never_a_server_error("liability report after the NUL cases", lambda: world.server.client(finance_key).get(
        f"/v1/reports/liability?program_id=club&from={today - timedelta(days=30)}&to={today + timedelta(days=1)}"))
    checker.assert_ok()


def test_nul_and_unicode_in_url_paths(world: World, checker: Checker) -> None:
    auditor = world.auditor
    for label, segment in (("NUL", "a%00b"), ("emoji", quote("🛒")), ("right-to-left override", quote("\u202eabc")),
                           ("invalid UTF-8", "%ff%fe"), ("encoded slash", "a%2Fb")):
        checker.refused(f"member {label} in the path", lambda s=segment: auditor.get(f"/v1/members/{s}"), (400, 404))
        checker.refused(f"card {label} in the path", lambda s=segment: auditor.get(f"/v1/members/by-card/{s}"), (400, 404))
        checker.refused(f"cancellation of redemption {label}", lambda s=segment: world.partner.post(
            f"/v1/members/ann/redemptions/{s}/cancellation", {}), (400, 404))
    checker.assert_ok()


@pytest.mark.parametrize("label, identifier", [
    ("emoji", "🛒-1"),
    ("combining acute accent", "cafe\u0301-1"),
    ("right-to-left script", "معاملة-1"),
], ids=["emoji", "combining", "rtl-script"])
def test_printable_unicode_ids_are_refused_or_round_trip_exactly(world: World, label: str, identifier: str) -> None:
    """The README allows 1 to 128 printable characters, so these may be accepted: then the id
    comes back exactly as sent, a replay with it is recognised, and it finds the posting; or they
    may be refused with a 4xx problem. Never a 5xx."""
    partner = world.partner
    body = purchase(identifier)
    first = partner.post("/v1/purchases", body)
    if first.status != 201:
        assert problem_issue(first.status, first.content_type, first.body) is None, (first.status, first.body)
        return
    assert first.body["transaction_id"] == identifier, first.body
    again = partner.post("/v1/purchases", body)
    assert again.status == 201 and again.body == first.body, (again.status, again.body)
    assert (again.headers.get("Idempotent-Replayed") or "").lower() == "true"
    posting = expect(partner.get(f"/v1/postings/{quote(identifier)}"), 200)
    assert posting["body"]["transaction_id"] == identifier, posting
    expect(partner.post("/v1/purchases", {**body, "amount": "11.00"}), 409, "idempotency-conflict")
    member_id = f"m-{identifier}"
    enrolled = expect(world.admin.post("/v1/members", {"program_id": "club", "member_id": member_id,
                                                       "card_number": f"c-{identifier}"}), 201)
    assert enrolled["member_id"] == member_id
    assert expect(world.auditor.get(f"/v1/members/{quote(member_id)}"), 200)["member_id"] == member_id
    assert expect(world.auditor.get(f"/v1/members/by-card/{quote('c-' + identifier)}"), 200)["member_id"] == member_id


def test_a_10k_character_id_in_the_url(world: World, checker: Checker) -> None:
    """Gunicorn refuses request lines over 4094 bytes itself, before the app sees them; its
    worker answers with a problem too (api/serve.py)."""
    before = checker.footprint()
    response = world.auditor.get("/v1/members/" + "x" * 10_000)
    assert 400 <= response.status < 500, (response.status, response.body)
    posted = world.partner.post(f"/v1/members/{'x' * 10_000}/redemptions", {"redemption_id": "r", "points": 1})
    assert 400 <= posted.status < 500, (posted.status, posted.body)
    assert checker.footprint() == before
    assert expect(world.admin.get("/healthz"), 200)["status"] == "ok"
    for answer in (response, posted):
        assert answer.status == 414 and answer.content_type == PROBLEM_JSON, (answer.status, answer.content_type)
        assert answer.body["type"] == "uri-too-long" and answer.body["status"] == 414, answer.body


# ---- content types and malformed JSON ----------------------------------------------------------

def test_wrong_content_types_and_malformed_bodies_are_refused(world: World, checker: Checker) -> None:
    partner, support = world.partner, world.support
    key = partner.key
    good = json.dumps(purchase("ct-1")).encode()
    checker.refused("no Content-Type at all", lambda: raw(world, "POST", "/v1/purchases", good, {}, key), (415,))
    latin1 = '{"redemption_id": "ct-r", "points": 1, "reward": "caf\xe9"}'.encode("latin-1")
    checker.refused("application/json; charset=latin-1 with a non-UTF-8 byte", lambda: partner.post(
        "/v1/members/ann/redemptions", data=latin1, headers={"Content-Type": "application/json; charset=latin-1"}),
                    (400, 415))
    checker.refused("text/plain, chunked without Content-Length", lambda: raw(
        world, "POST", "/v1/purchases", iter([good]), {"Content-Type": "text/plain"}, key, chunked=True),
                    (400, 415, 422))
    checker.refused("no Content-Type, chunked without Content-Length", lambda: raw(
        world, "POST", "/v1/purchases", iter([good]), {}, key, chunked=True), (400, 415, 422))
    checker.refused("multipart/form-data", lambda: partner.post(
        "/v1/purchases", data=b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=x"}), (415,))
    checker.refused("application/xml", lambda: partner.post(
        "/v1/purchases", data=b"<purchase/>", headers={"Content-Type": "application/xml"}), (415,))

    routes = [
        ("redemption", partner, "/v1/members/ann/redemptions", {"redemption_id": "mal-r", "points": 1}),
        ("adjustment", support, "/v1/members/ann/adjustments",
         {"adjustment_id": "mal-a", "points": 1, "reason": "goodwill", "note": "n"}),
        ("return", partner, "/v1/returns", {"transaction_id": "mal-ret", "original_transaction_id": "base-1",
                                            "amount": "1.00"}),
        ("cancellation", partner, "/v1/members/ann/redemptions/base-r/cancellation", {"occurred_at": None}),
        ("batch", partner, "/v1/purchases/batch", {"purchases": [purchase("mal-b")]}),
        ("reversal", support, "/v1/members/ann/reversals", {"reversal_id": "mal-v", "version": 2, "note": "n"}),
    ]
    for route, client, path, body in routes:
        text = json.dumps(body)
        for cut, label in ((len(text) - 1, "without its last brace"), (len(text) // 2, "cut in half"), (1, "just '{'")):
            checker.refused(f"{route}: truncated JSON, {label}", lambda c=client, p=path, t=text[:cut]: c.post(
                p, data=t.encode(), headers=JSON_HEADERS), (400,))
        checker.refused(f"{route}: a JSON array", lambda c=client, p=path, b=body: c.post(p, [b]), (400, 422))
        checker.refused(f"{route}: a JSON string", lambda c=client, p=path: c.post(
            p, data=b'"hello"', headers=JSON_HEADERS), (400, 422))
        if route != "cancellation":  # every field of a cancellation is optional: no body is read as {}
            checker.refused(f"{route}: an empty body", lambda c=client, p=path: c.post(
                p, data=b"", headers=JSON_HEADERS), (400, 422))
        checker.refused(f"{route}: trailing garbage", lambda c=client, p=path, t=text: c.post(
            p, data=(t + "}").encode(), headers=JSON_HEADERS), (400,))
    checker.assert_ok()


def test_duplicate_json_keys_are_refused(world: World, checker: Checker) -> None:
    """{"amount": "10.00", "amount": "99.00"}: parsers disagree on which value wins (Python's json
    keeps the last, others the first), so a proxy or log may see another request than the ledger
    books. RFC 8259 leaves it undefined; a ledger should refuse it."""
    cases = {
        "purchase amount twice": ("/v1/purchases", world.partner,
                                  '{"transaction_id": "dup-1", "member_id": "ann", "store_id": "g-1", '
                                  '"amount": "10.00", "amount": "99.00", "currency": "EUR"}'),
        "purchase member twice (ann, then bob)": ("/v1/purchases", world.partner,
                                  '{"transaction_id": "dup-2", "member_id": "ann", "member_id": "bob", "store_id": "g-1",'
                                  ' "amount": "10.00", "currency": "EUR"}'),
        "redemption points twice": ("/v1/members/ann/redemptions", world.partner,
                                    '{"redemption_id": "dup-r", "points": 1, "points": 100}'),
        "adjustment points twice": ("/v1/members/ann/adjustments", world.support,
                                    '{"adjustment_id": "dup-a", "points": -1, "points": 1, "reason": "goodwill", '
                                    '"note": "n"}'),
    }
    expect(world.admin.post("/v1/members", {"program_id": "club", "member_id": "bob"}), 201)
    for label, (path, client, text) in cases.items():
        checker.refused(f"duplicate keys: {label}", lambda p=path, c=client, t=text: c.post(
            p, data=t.encode(), headers=JSON_HEADERS), (400, 422))
    checker.assert_ok()


# ---- size ------------------------------------------------------------------------------------

def test_ten_megabyte_bodies_are_refused_and_the_server_stays_healthy(world: World, checker: Checker) -> None:
    key = world.partner.key
    ten_mb_items = json.dumps(purchase("big-1", items=[{"sku": "x" * 100, "amount": "0.01"}] * 90_000)).encode()
    ten_mb_string = json.dumps(purchase("big-2", items=[{"sku": "a", "category": "c" * 10_000_000,
                                                         "amount": "10.00"}])).encode()
    assert len(ten_mb_items) > 10_000_000 and len(ten_mb_string) > 10_000_000
    checker.refused("a 10 MB body", lambda: raw(world, "POST", "/v1/purchases", ten_mb_items, JSON_HEADERS, key),
                    (400, 413))
    checker.refused("a 10 MB JSON string field", lambda: raw(
        world, "POST", "/v1/purchases", ten_mb_string, JSON_HEADERS, key), (400, 413))
    checker.refused("a 10 MB JSON string as the transaction id", lambda: raw(
        world, "POST", "/v1/purchases", json.dumps(purchase("t" * 10_000_000)).encode(), JSON_HEADERS, key), (400, 413))

    def chunks() -> Iterator[bytes]:
        yield ten_mb_string[:-1]
        yield ten_mb_string[-1:]

    checker.refused("a 10 MB chunked body without Content-Length", lambda: raw(
        world, "POST", "/v1/purchases", chunks(), JSON_HEADERS, key, chunked=True), (400, 413))
    checker.refused("a 1.9 MB note (under the body limit)", lambda: world.support.post(
        "/v1/members/ann/adjustments", {"adjustment_id": "big-a", "points": 1, "reason": "goodwill",
                                        "note": "n" * 1_900_000}), (422,))
    checker.refused("a 1.9 MB transaction id (under the body limit)", lambda: world.partner.post(
        "/v1/purchases", purchase("t" * 1_900_000)), (422,))
    # The workers survived: health, and an ordinary posting still goes through, on both workers.
    for index in range(4):
        expect(world.admin.get("/healthz"), 200)
        expect(world.partner.post("/v1/purchases", purchase(f"after-big-{index}")), 201)
    checker.assert_ok()
