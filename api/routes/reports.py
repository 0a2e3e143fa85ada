"""Finance reports (finance, auditor): liability, settlement, revenue, partner statements."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import requires
from api.schemas import (
    QUERY,
    LiabilityQuerySchema,
    LiabilitySchema,
    PeriodQuerySchema,
    RevenueSchema,
    SettlementSchema,
    StatementQuerySchema,
    StatementSchema,
)
from application.errors import InvalidRequest, NotFound
from projections.reports import FinanceReports, Period

blp = Blueprint("reports", __name__, url_prefix="/v1", description="Finance reports, from the projections.")
FINANCE = ("finance", "auditor", "admin")
MAX_STATEMENT_BYTES = 20 * 1024 * 1024


def reports() -> FinanceReports:
    model = current_app.extensions.get("read_model")
    if model is None:
        raise NotFound("this deployment has no projections (in-memory store)")
    model.runner.catch_up()  # reports include everything committed before the request
    return FinanceReports(model)


@blp.route("/reports/liability")
class Liability(MethodView):
    @requires(*FINANCE)
    @blp.arguments(LiabilityQuerySchema(), **QUERY)
    @blp.response(200, LiabilitySchema)
    def get(self, query: dict[str, Any]) -> Any:
        """The points liability roll-forward for a period (optionally one issuing partner, monthly):
        opening + earned - redeemed - expired - reversed + adjusted = closing, in points and currency."""
        return reports().liability(query["program_id"], Period(query["from_"], query["to"]),
                                   query.get("partner_id"), query["monthly"])


@blp.route("/reports/settlement")
class Settlement(MethodView):
    @requires(*FINANCE)
    @blp.arguments(PeriodQuerySchema(), **QUERY)
    @blp.response(200, SettlementSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """Who owes whom: points issued by one partner and redeemed at another in the period."""
        return reports().settlement(query["program_id"], Period(query["from_"], query["to"]))


@blp.route("/reports/revenue")
class Revenue(MethodView):
    @requires(*FINANCE)
    @blp.arguments(PeriodQuerySchema(), **QUERY)
    @blp.response(200, RevenueSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """IFRS 15 / ASC 606: price allocated to points, revenue recognised (redemptions, breakage,
        expiry), cumulative, and the contract liability, per month and for the period."""
        return reports().revenue(query["program_id"], Period(query["from_"], query["to"]))


@blp.route("/reconciliations/partner-statements")
class PartnerStatements(MethodView):
    @requires(*FINANCE)
    @blp.arguments(StatementQuerySchema(), **QUERY)
    @blp.doc(requestBody={"required": True, "content": {"text/csv": {"schema": {
        "type": "string", "description": "CSV with a header: transaction_id,amount,occurred_at (returns negative)"}}}})
    @blp.response(200, StatementSchema)
    def post(self, query: dict[str, Any]) -> Any:
        """Match a partner's own CSV of transactions with the ledger's postings for the period."""
        if request.mimetype != "text/csv":
            raise InvalidRequest("send the statement as text/csv", field="statement")
        text = request.get_data(cache=False).decode("utf-8", errors="replace")
        return reports().partner_statement(query["partner_id"], Period(query["from_"], query["to"]), text)
