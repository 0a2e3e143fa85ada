"""The finance reports over HTTP (Flask's test client): a finance key issued through the API
reads the liability roll-forward, settlement and revenue, and reconciles a partner's CSV
statement; a partner key may not; a period ending before it starts is a 422 problem."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from application.commands import (
    Adjust,
    CreateProgram,
    EnrolMember,
    ExpirePoints,
    RecordPurchase,
    Redeem,
    RegisterPartner,
    ReturnPurchase,
)
from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config

UTC = timezone.utc
ADMIN_KEY = "finance-test-admin"
RULES = {
    "earn_rate": "1",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 2},
    "pending_days": 0,
    "tiers": [{"name": "blue", "qualifying_spend": "0", "multiplier": "1"}],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 500,
}
PROBLEM_JSON = "application/problem+json"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def at(month: int, day: int, hour: int = 10) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC)


@pytest.fixture
def client(database_url: str) -> Iterator[FlaskClient]:
    """ann earns 200 at A in January and 300 at A in February, redeems 150 of them at B in
    February and returns 100 EUR of the February purchase; bob earns 100 at B in January and
    gets 40 goodwill points in February; ann's January lot (50 left) expires in March."""
    clock = Clock(at(6, 1))
    config = Config(database_url=database_url, admin_key=ADMIN_KEY)
    ledger = build_ledger(config, clock=clock)
    model = build_read_model(config, ledger)
    assert model is not None
    ledger.execute(CreateProgram(actor="admin", program_id="club", name="Club", currency="EUR", rules=RULES,
                                 effective_at=datetime(2024, 12, 1, tzinfo=UTC)))
    for partner_id in ("a", "b"):
        ledger.execute(RegisterPartner(actor="admin", partner_id=partner_id, name=partner_id.upper(),
                                       program_id="club", stores=[f"{partner_id}-1"]))
    for member_id in ("ann", "bob"):
        ledger.execute(EnrolMember(actor="admin", program_id="club", member_id=member_id,
                                   occurred_at=datetime(2024, 12, 15, tzinfo=UTC)))

    def buy(member_id: str, partner_id: str, txn: str, amount: str, when: datetime) -> None:
        ledger.execute(RecordPurchase(actor="pos", partner_id=partner_id, transaction_id=txn,
                                      store_id=f"{partner_id}-1", amount=Decimal(amount), currency="EUR",
                                      member_id=member_id, occurred_at=when))

    buy("ann", "a", "a-1", "200.00", at(1, 10))
    buy("bob", "b", "b-1", "100.00", at(1, 20))
    buy("ann", "a", "a-2", "300.00", at(2, 5))
    ledger.execute(Redeem(actor="pos", member_id="ann", redemption_id="r-1", points=150, partner_id="b",
                          occurred_at=at(2, 10)))
    ledger.execute(ReturnPurchase(actor="pos", partner_id="a", transaction_id="a-2r", original_transaction_id="a-2",
                                  amount=Decimal("100.00"), occurred_at=at(2, 15)))
    ledger.execute(Adjust(actor="support", member_id="bob", adjustment_id="adj-1", points=40, reason="goodwill",
                          occurred_at=at(2, 20)))
    assert ledger.execute(ExpirePoints(actor="job", member_id="ann", as_of=at(3, 11))).body["points_expired"] == 50

    app = create_app(config, ledger, model)
    yield app.test_client()
    model.store.close()
    ledger.close()


def issue(client: FlaskClient, role: str, **extra: Any) -> dict[str, str]:
    response = client.post("/v1/api-keys", json={"role": role, **extra},
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["role"] == role
    return {"Authorization": f"Bearer {response.get_json()['key']}"}


def test_finance_reports_over_http(client: FlaskClient) -> None:
    finance = issue(client, "finance", name="controller")

    # Liability, February to March, monthly. opening 200 + 100 = 300; earned 300; redeemed 150;
    # expired 50; reversed 100; adjusted +40; closing 300 + 300 - 150 - 50 - 100 + 40 = 340.
    response = client.get("/v1/reports/liability?program_id=club&from=2025-02-01&to=2025-03-31&monthly=true",
                          headers=finance)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["points"] == {"opening": 300, "earned": 300, "redeemed": 150, "expired": 50, "reversed": 100,
                              "adjusted": 40, "closing": 340}
    assert body["value"]["closing"] == "3.40" and body["point_value"] == "0.01" and body["currency"] == "EUR"
    assert (body["from"], body["to"], body["program_id"]) == ("2025-02-01", "2025-03-31", "club")
    # Nothing after March: closing is checked against today's lots (ann 200, bob 100 + 40).
    assert body["member_balances"] == 340 and body["closing_equals_member_balances"] is True
    # February 300 + 300 - 150 - 100 + 40 = 390; March 390 - 50 = 340.
    assert [(m["month"], m["points"]["opening"], m["points"]["closing"]) for m in body["months"]] == [
        ("2025-02", 300, 390), ("2025-03", 390, 340)]
    assert body["months"][1]["value"] == {"opening": "3.90", "earned": "0.00", "redeemed": "0.00",
                                          "expired": "0.50", "reversed": "0.00", "adjusted": "0.00",
                                          "closing": "3.40"}
    # Without monthly, no months; by issuing partner A: 200 + 300 - 150 - 50 - 100 = 200.
    response = client.get("/v1/reports/liability?program_id=club&from=2025-02-01&to=2025-03-31&partner_id=a",
                          headers=finance)
    assert response.status_code == 200
    assert "months" not in response.get_json() and response.get_json()["partner_id"] == "a"
    assert response.get_json()["points"]["closing"] == 200

    # Settlement: the 150 points ann redeemed at B came from A's January lot: A owes B 1.50.
    response = client.get("/v1/reports/settlement?program_id=club&from=2025-02-01&to=2025-02-28", headers=finance)
    assert response.status_code == 200
    assert response.get_json()["lines"] == [
        {"issuer_partner_id": "a", "redeeming_partner_id": "b", "points": 150, "value": "1.50"}]

    # Revenue for January: SSP of 200 points = 200 x 0.01 x 0.8 = 1.60, allocated 200 x 1.6 / 201.6
    # = 1.5873... = 1.59; bob's 100 EUR: SSP 0.80, 100 x 0.8 / 100.8 = 0.7936... = 0.79; together
    # 2.3809... = 2.38.
    response = client.get("/v1/reports/revenue?program_id=club&from=2025-01-01&to=2025-01-31", headers=finance)
    assert response.status_code == 200
    revenue = response.get_json()
    expected_allocated = Decimal(200) * Decimal("1.6") / Decimal("201.6") + Decimal(100) * Decimal("0.8") / Decimal("100.8")
    assert revenue["allocated"] == str(expected_allocated.quantize(Decimal("0.01"))) == "2.38"
    assert revenue["recognised"] == "0.00" and revenue["contract_liability"] == "2.38"
    assert revenue["expected_redemption_rate"] == "0.8" and revenue["currency"] == "EUR"
    assert len(revenue["periods"]) == 1

    # A partner statement for A, February: a-2 and its return match, x-1 is not in the ledger.
    statement = ("transaction_id,amount,occurred_at\n"
                 "a-2,300.00,2025-02-05T10:00:00Z\n"
                 "a-2r,-100.00,2025-02-15T10:00:00Z\n"
                 "x-1,9.99,2025-02-16T10:00:00Z\n"
                 "a-1,200.00,2025-01-10T10:00:00Z\n")
    response = client.post("/v1/reconciliations/partner-statements?partner_id=a&from=2025-02-01&to=2025-02-28",
                           data=statement, content_type="text/csv", headers=finance)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert [r["transaction_id"] for r in result["matched"]] == ["a-2", "a-2r"]
    assert result["missing_in_ledger"] == [{"transaction_id": "x-1", "amount": "9.99"}]
    assert result["missing_in_statement"] == [] and result["amount_mismatches"] == []
    assert result["totals"]["outside_period"] == 1
    assert Decimal(result["totals"]["matched"]["amount"]) == Decimal("200.00")


def test_finance_reports_refuse_partner_keys_and_bad_periods(client: FlaskClient) -> None:
    finance = issue(client, "finance")
    partner = issue(client, "partner", partner_id="a")

    for path in ("/v1/reports/liability?program_id=club&from=2025-02-01&to=2025-03-31",
                 "/v1/reports/settlement?program_id=club&from=2025-02-01&to=2025-03-31",
                 "/v1/reports/revenue?program_id=club&from=2025-02-01&to=2025-03-31"):
        response = client.get(path, headers=partner)
        assert response.status_code == 403, path
        assert response.mimetype == PROBLEM_JSON and response.get_json()["type"] == "forbidden"
        assert client.get(path).status_code == 401
    response = client.post("/v1/reconciliations/partner-statements?partner_id=a&from=2025-02-01&to=2025-02-28",
                           data="transaction_id,amount,occurred_at\n", content_type="text/csv", headers=partner)
    assert response.status_code == 403

    # `to` before `from`: 422 problem+json naming the field, on every report.
    for path in ("/v1/reports/liability?program_id=club&from=2025-03-01&to=2025-02-28&monthly=true",
                 "/v1/reports/settlement?program_id=club&from=2025-03-01&to=2025-02-28",
                 "/v1/reports/revenue?program_id=club&from=2025-03-01&to=2025-02-28"):
        response = client.get(path, headers=finance)
        assert response.status_code == 422, path
        assert response.mimetype == PROBLEM_JSON
        problem = response.get_json()
        assert problem["status"] == 422 and problem["type"] == "validation-error"
        assert "to" in problem["errors"], problem
    response = client.post("/v1/reconciliations/partner-statements?partner_id=a&from=2025-03-01&to=2025-02-28",
                           data="transaction_id,amount,occurred_at\n", content_type="text/csv", headers=finance)
    assert response.status_code == 422 and response.mimetype == PROBLEM_JSON
    assert "to" in response.get_json()["errors"]

    # A malformed statement is a 422 about the statement; JSON instead of CSV is refused too.
    response = client.post("/v1/reconciliations/partner-statements?partner_id=a&from=2025-02-01&to=2025-02-28",
                           data="transaction_id,amount,occurred_at\na-2,lots,2025-02-05T10:00:00Z\n",
                           content_type="text/csv", headers=finance)
    assert response.status_code == 422 and response.mimetype == PROBLEM_JSON
    assert "statement" in response.get_json()["errors"]
    response = client.post("/v1/reconciliations/partner-statements?partner_id=a&from=2025-02-01&to=2025-02-28",
                           data="transaction_id,amount,occurred_at\na-2,1e1000000,2025-02-05T10:00:00Z\n",
                           content_type="text/csv", headers=finance)
    assert response.status_code == 422 and response.mimetype == PROBLEM_JSON, response.get_data(as_text=True)
    assert "line 2: amount must be a decimal" in response.get_json()["errors"]["statement"][0]
    response = client.post("/v1/reconciliations/partner-statements?partner_id=a&from=2025-02-01&to=2025-02-28",
                           json={"transaction_id": "a-2"}, headers=finance)
    assert response.status_code in (415, 422) and response.mimetype == PROBLEM_JSON

    # Unknown program: 404; missing dates: 422.
    response = client.get("/v1/reports/liability?program_id=nope&from=2025-02-01&to=2025-03-31", headers=finance)
    assert response.status_code == 404 and response.mimetype == PROBLEM_JSON
    response = client.get("/v1/reports/revenue?program_id=club&to=2025-03-31", headers=finance)
    assert response.status_code == 422 and "from" in response.get_json()["errors"]


def test_auditors_read_reports_too(client: FlaskClient) -> None:
    auditor = issue(client, "auditor")
    response = client.get("/v1/reports/liability?program_id=club&from=2025-01-01&to=2025-01-31", headers=auditor)
    assert response.status_code == 200
    # January: 200 (ann) + 100 (bob) earned from nothing.
    assert response.get_json()["points"]["closing"] == 300
    for role in ("support", "supervisor"):
        key = issue(client, role)
        response = client.get("/v1/reports/settlement?program_id=club&from=2025-01-01&to=2025-01-31", headers=key)
        assert response.status_code == 403, role


def test_reports_name_an_unknown_program_or_partner_instead_of_answering_zero(client: FlaskClient) -> None:
    """A typo in an id must not read as 'ok' or as a liability of zero."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    other = {"program_id": "other", "name": "Other", "currency": "EUR", **RULES,
             "effective_at": "2024-12-01T00:00:00Z"}
    assert client.post("/v1/programs", json=other, headers=admin).status_code == 201
    assert client.post("/v1/partners", json={"partner_id": "elsewhere", "name": "E", "program_id": "other",
                                             "stores": ["e-1"]}, headers=admin).status_code == 201
    finance = issue(client, "finance", name="controller")
    response = client.get("/v1/reports/reconciliation?program_id=nope", headers=finance)
    assert response.status_code == 404 and response.mimetype == PROBLEM_JSON, response.get_json()
    assert response.get_json()["type"] == "not-found"
    body = client.get("/v1/reports/reconciliation?program_id=club", headers=finance).get_json()
    assert body["ok"] is True, body
    period = "program_id=club&from=2025-02-01&to=2025-03-31"
    response = client.get(f"/v1/reports/liability?{period}&partner_id=nope", headers=finance)
    assert response.status_code == 404 and response.get_json()["type"] == "not-found", response.get_json()
    response = client.get(f"/v1/reports/liability?{period}&partner_id=elsewhere", headers=finance)
    assert response.status_code == 422 and response.mimetype == PROBLEM_JSON, response.get_json()
    assert "partner_id" in response.get_json()["errors"]
    assert client.get(f"/v1/reports/liability?{period}&partner_id=a", headers=finance).status_code == 200
