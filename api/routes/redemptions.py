"""Redemptions, their cancellation, and support adjustments."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_principal, requires
from api.errors import Forbidden
from api.routes import ledger, run
from api.schemas import (
    QUERY,
    AdjustmentCreateSchema,
    AdjustmentListSchema,
    AdjustmentQuerySchema,
    AdjustmentSchema,
    CancellationCreateSchema,
    CancellationSchema,
    DecisionCreateSchema,
    DecisionSchema,
    RedemptionCreateSchema,
    RedemptionSchema,
    ReversalCreateSchema,
    ReversalSchema,
)
from application.commands import Adjust, CancelRedemption, DecideAdjustment, Redeem, ReverseEvent
from application.errors import NotFound

blp = Blueprint("redemptions", __name__, url_prefix="/v1", description="Redemptions and support corrections.")


def check_member_in_partner_program(member_id: str) -> None:
    principal = current_principal()
    if principal.role == "partner":
        member = ledger().get_member(member_id)
        if ledger().partner_program(principal.partner_id or "") != member.program_id:
            raise Forbidden("a partner key may only act on members of its own program")


@blp.route("/members/<string:member_id>/redemptions")
class Redemptions(MethodView):
    @requires("partner", "support", "admin")
    @blp.arguments(RedemptionCreateSchema())
    @blp.response(201, RedemptionSchema)
    def post(self, body: dict[str, Any], member_id: str) -> Any:
        """Spend available points, oldest first; never overdraws (422 insufficient-points)."""
        principal = current_principal()
        check_member_in_partner_program(member_id)
        if principal.role == "partner":
            if body.get("partner_id", principal.partner_id) != principal.partner_id:
                raise Forbidden("a partner key redeems only as its own partner")
            body["partner_id"] = principal.partner_id
        return run(Redeem(actor=principal.actor, member_id=member_id, **body))


@blp.route("/members/<string:member_id>/redemptions/<string:redemption_id>/cancellation")
class RedemptionCancellation(MethodView):
    @requires("partner", "support", "admin")
    @blp.arguments(CancellationCreateSchema())
    @blp.response(201, CancellationSchema)
    def post(self, body: dict[str, Any], member_id: str, redemption_id: str) -> Any:
        """Restore a redemption's points to the lots they came from, once. A partner key
        cancels only its own partner's redemptions (others' look not found)."""
        check_member_in_partner_program(member_id)
        principal = current_principal()
        if principal.role == "partner":
            made = ledger().get_member(member_id).redemptions.get(redemption_id)
            if made is None or made.get("partner_id") != principal.partner_id:
                raise NotFound(f"redemption {redemption_id!r} not found")
        return run(CancelRedemption(actor=current_principal().actor, member_id=member_id,
                                    redemption_id=redemption_id, **body))


@blp.route("/members/<string:member_id>/adjustments")
class Adjustments(MethodView):
    @requires("support", "supervisor")
    @blp.arguments(AdjustmentCreateSchema())
    @blp.response(201, AdjustmentSchema)
    @blp.alt_response(202, schema=AdjustmentSchema, description="Above the approval threshold: awaits a supervisor.")
    def post(self, body: dict[str, Any], member_id: str) -> Any:
        """A signed correction with a reason code and a note, recorded with its actor. Above the
        program's approval threshold it waits for a supervisor (202) and changes no balance."""
        return run(Adjust(actor=current_principal().actor, member_id=member_id, **body))


@blp.route("/adjustments")
class AdjustmentQueue(MethodView):
    @requires("supervisor", "support", "admin", "auditor")
    @blp.arguments(AdjustmentQuerySchema(), **QUERY)
    @blp.response(200, AdjustmentListSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """Adjustment requests, oldest first: `status=pending` is the supervisor's queue."""
        model = current_app.extensions.get("read_model")
        if model is None:
            raise NotFound("this deployment has no projections (in-memory store)")
        return {"adjustments": model.adjustment_requests(query.get("status"))}


@blp.route("/adjustments/<string:adjustment_id>/approval")
class AdjustmentApproval(MethodView):
    @requires("supervisor")
    @blp.arguments(DecisionCreateSchema())
    @blp.response(200, DecisionSchema)
    def post(self, body: dict[str, Any], adjustment_id: str) -> Any:
        """Approve: the adjustment is applied with the approval, in one transaction. Never by the requester."""
        return run(DecideAdjustment(actor=current_principal().actor, adjustment_id=adjustment_id, approve=True,
                                    note=body["note"]))


@blp.route("/adjustments/<string:adjustment_id>/rejection")
class AdjustmentRejection(MethodView):
    @requires("supervisor")
    @blp.arguments(DecisionCreateSchema())
    @blp.response(200, DecisionSchema)
    def post(self, body: dict[str, Any], adjustment_id: str) -> Any:
        """Reject: the balance never changes. Never by the requester."""
        return run(DecideAdjustment(actor=current_principal().actor, adjustment_id=adjustment_id, approve=False,
                                    note=body["note"]))


@blp.route("/members/<string:member_id>/reversals")
class Reversals(MethodView):
    @requires("support", "supervisor")
    @blp.arguments(ReversalCreateSchema())
    @blp.response(201, ReversalSchema)
    def post(self, body: dict[str, Any], member_id: str) -> Any:
        """Reverse one specific wrong event (a duplicate purchase, a mistaken redemption, an
        adjustment) by its version in the member's history: compensating events, at most once."""
        return run(ReverseEvent(actor=current_principal().actor, member_id=member_id, **body))
