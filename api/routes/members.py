"""Members: enrolment, summaries, as-of balances and history."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import READERS, current_principal, requires
from api.errors import Forbidden
from api.routes import ledger, reads, run
from api.schemas import (
    QUERY,
    AsOfBalanceSchema,
    AsOfQuerySchema,
    CardQuerySchema,
    HistoryQuerySchema,
    HistorySchema,
    MemberCreateSchema,
    MemberSchema,
)
from application.commands import EnrolMember
from application.errors import InvalidRequest, NotFound

blp = Blueprint("members", __name__, url_prefix="/v1", description="Members and their balances.")
AUDIT_READERS = ("admin", "support", "supervisor", "auditor", "finance")


def check_partner_may_see(program_id: str) -> None:
    """A partner key sees only members of its own partner's program."""
    principal = current_principal()
    if principal.role == "partner" and ledger().partner_program(principal.partner_id or "") != program_id:
        raise Forbidden("a partner key may only see members of its own program")


@blp.route("/members")
class Members(MethodView):
    @requires("admin", "support", "partner")
    @blp.arguments(MemberCreateSchema())
    @blp.response(201, MemberSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Enrol a member; the card number is unique in the program."""
        check_partner_may_see(body["program_id"])
        if "birthday" in body:
            body["birthday"] = body["birthday"].isoformat()
        return run(EnrolMember(actor=current_principal().actor, **body))


@blp.route("/members/<string:member_id>")
class MemberById(MethodView):
    @requires(*READERS)
    @blp.response(200, MemberSchema)
    def get(self, member_id: str) -> Any:
        """Tier, balances, lifetime totals and the next expiry."""
        summary = reads().member_summary(member_id)
        check_partner_may_see(summary["program_id"])
        return summary


@blp.route("/members/by-card/<string:card_number>")
class MemberByCard(MethodView):
    @requires(*READERS)
    @blp.arguments(CardQuerySchema(), **QUERY)
    @blp.response(200, MemberSchema)
    def get(self, query: dict[str, Any], card_number: str) -> Any:
        """Find a member by card number (in `program_id`, or in any program)."""
        principal = current_principal()
        programs = [query["program_id"]] if "program_id" in query else (
            [ledger().partner_program(principal.partner_id or "")] if principal.role == "partner"
            else ledger().program_ids())
        found = {}
        for program_id in programs:
            try:
                found[program_id] = reads().member_id_for_card(program_id, card_number)
            except NotFound:
                continue
        if not found:
            raise NotFound(f"no member with card {card_number!r}")
        if len(found) > 1:  # a card is unique in its program only: never guess whose account is meant
            raise InvalidRequest(f"card {card_number!r} is held in programs {', '.join(sorted(found))}: "
                                 "give program_id", field="program_id")
        summary = reads().member_summary(next(iter(found.values())))
        check_partner_may_see(summary["program_id"])
        return summary


@blp.route("/members/<string:member_id>/balance")
class MemberBalance(MethodView):
    @requires(*AUDIT_READERS)
    @blp.arguments(AsOfQuerySchema(), **QUERY)
    @blp.response(200, AsOfBalanceSchema)
    def get(self, query: dict[str, Any], member_id: str) -> Any:
        """The balance and tier as of an effective time, as known at a recorded time: the lot
        movements of exactly the events that pass both filters (the same sums a replay applies)."""
        return reads().balance_as_of(member_id, as_of=query.get("as_of"), known_at=query.get("known_at"))


@blp.route("/members/<string:member_id>/history")
class MemberHistory(MethodView):
    @requires(*AUDIT_READERS)
    @blp.arguments(HistoryQuerySchema(), **QUERY)
    @blp.response(200, HistorySchema)
    def get(self, query: dict[str, Any], member_id: str) -> Any:
        """Every event of the member, oldest first, with who caused it."""
        events = [e for e in ledger().history(member_id, as_of=query.get("as_of")) if e["version"] > query["after"]]
        page = events[: query["limit"]]
        model = current_app.extensions.get("read_model")
        hashes = model.event_hashes(member_id) if model is not None and page else {}
        for event in page:
            event["hash"] = hashes.get(event["version"])  # None until the audit projection reaches it
        more = len(events) > len(page)
        return {"member_id": member_id, "events": page, "next": page[-1]["version"] if more else None}
