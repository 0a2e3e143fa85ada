"""Partner postings: purchases (one or a batch), returns, and reading a posting back."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from api.auth import current_principal, posting_partner, requires
from api.errors import Forbidden
from api.problems import PROBLEMS, flatten_messages, refusal_errors
from api.routes import ledger, run
from api.schemas import (
    BatchCreateSchema,
    BatchSchema,
    PostingSchema,
    PurchaseCreateSchema,
    PurchaseSchema,
    ReturnCreateSchema,
    ReturnSchema,
)
from application.commands import Outcome, RecordPurchase, ReturnPurchase
from application.errors import ApplicationError, NotFound
from domain.errors import DomainError

blp = Blueprint("postings", __name__, url_prefix="/v1", description="Purchases and returns posted by partners.")


def purchase_command(body: dict[str, Any]) -> RecordPurchase:
    partner_id = posting_partner(body.pop("partner_id", None))
    return RecordPurchase(actor=current_principal().actor, partner_id=partner_id, **body)


@blp.route("/purchases")
class Purchases(MethodView):
    @requires("partner", "admin", confirm_in_commit=True)
    @blp.arguments(PurchaseCreateSchema())
    @blp.response(201, PurchaseSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Post a purchase: earns floor(amount x earn_rate x tier multiplier) points, exactly once."""
        return run(purchase_command(body))


@blp.route("/purchases/batch")
class PurchaseBatch(MethodView):
    @requires("partner", "admin")
    @blp.arguments(BatchCreateSchema())
    @blp.response(200, BatchSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Up to 1000 purchases committed together, each judged as if posted alone. A replayed
        item has status 200; a refused one its problem status and problem body."""
        schema = PurchaseCreateSchema()
        results: list[dict[str, Any] | None] = []
        commands, positions = [], []
        for index, raw in enumerate(body["purchases"]):
            if not isinstance(raw, dict):
                results.append(item(None, "validation-error", errors={"body": ["Not a valid mapping type."]}))
                continue
            transaction_id = raw.get("transaction_id") if isinstance(raw.get("transaction_id"), str) else None
            try:
                commands.append(purchase_command(schema.load(raw)))
                positions.append(index)
                results.append(None)
            except ValidationError as error:
                errors = flatten_messages(error.messages)
                results.append(item(transaction_id, "validation-error", errors=errors))
            except (DomainError, ApplicationError) as error:
                results.append(item(transaction_id, error.slug, detail=error.detail, errors=refusal_errors(error)))
        for index, command, outcome in zip(positions, commands, ledger().execute_batch(commands)):
            if isinstance(outcome, Outcome):
                results[index] = {"transaction_id": command.transaction_id,
                                  "status": 200 if outcome.replayed else outcome.status, "body": outcome.body}
            else:
                results[index] = item(command.transaction_id, outcome.slug, detail=outcome.detail,
                                      errors=refusal_errors(outcome))
        return {"results": results}


def item(transaction_id: str | None, slug: str, detail: str | None = None,
         errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    status, title = PROBLEMS.get(slug, (422, slug))
    problem = {"type": slug, "title": title, "status": status}
    if detail:
        problem["detail"] = detail
    if errors:  # as the same refusal of a single posting reads
        problem["errors"] = errors
        problem["detail"] = detail or "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
    return {"transaction_id": transaction_id, "status": status, "body": problem}


@blp.route("/returns")
class Returns(MethodView):
    @requires("partner", "admin", confirm_in_commit=True)
    @blp.arguments(ReturnCreateSchema())
    @blp.response(201, ReturnSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Return all or part of a purchase: points reversed in proportion, exactly once."""
        partner_id = posting_partner(body.pop("partner_id", None))
        return run(ReturnPurchase(actor=current_principal().actor, partner_id=partner_id, **body))


@blp.route("/postings/<string:transaction_id>")
class PostingById(MethodView):
    @requires("partner", "admin")
    @blp.response(200, PostingSchema)
    def get(self, transaction_id: str) -> Any:
        """A partner's own posting (purchase or return) and the outcome it was given."""
        principal = current_principal()
        if principal.role != "partner":
            raise Forbidden("only a partner key reads its postings by transaction id")
        receipt = ledger().posting(principal.partner_id or "", transaction_id)
        if receipt is None:
            raise NotFound(f"no posting {transaction_id!r} from partner {principal.partner_id!r}")
        return {"kind": receipt.kind, "status": receipt.status, "body": receipt.outcome}
