"""Redemptions, their cancellation, and support adjustments."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_principal, requires
from api.errors import Forbidden
from api.routes import ledger, run
from api.schemas import (
    AdjustmentCreateSchema,
    AdjustmentSchema,
    CancellationCreateSchema,
    CancellationSchema,
    RedemptionCreateSchema,
    RedemptionSchema,
)
from application.commands import Adjust, CancelRedemption, Redeem

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
    @blp.arguments(RedemptionCreateSchema)
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
    @blp.arguments(CancellationCreateSchema)
    @blp.response(201, CancellationSchema)
    def post(self, body: dict[str, Any], member_id: str, redemption_id: str) -> Any:
        """Restore a redemption's points to the lots they came from, once."""
        check_member_in_partner_program(member_id)
        return run(CancelRedemption(actor=current_principal().actor, member_id=member_id,
                                    redemption_id=redemption_id, **body))


@blp.route("/members/<string:member_id>/adjustments")
class Adjustments(MethodView):
    @requires("support", "supervisor")
    @blp.arguments(AdjustmentCreateSchema)
    @blp.response(201, AdjustmentSchema)
    def post(self, body: dict[str, Any], member_id: str) -> Any:
        """A signed correction with a reason code and a note, recorded with its actor."""
        return run(Adjust(actor=current_principal().actor, member_id=member_id, **body))
