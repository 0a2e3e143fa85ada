"""Administration: programs and their revisions, partners, API keys."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import ALL_ROLES, current_principal, requires
from api.routes import ledger, run
from api.schemas import (
    ApiKeyCreateSchema,
    ApiKeySchema,
    PartnerCreateSchema,
    PartnerSchema,
    ProgramCreateSchema,
    ProgramSchema,
    RevisionCreateSchema,
)
from application.access import IssueApiKey, RevokeApiKey
from application.commands import CreateProgram, RegisterPartner, ReviseProgram
from domain.rules import RULE_FIELDS

blp = Blueprint("administration", __name__, url_prefix="/v1", description="Programs, partners and API keys (admin).")


@blp.route("/programs")
class Programs(MethodView):
    @requires("admin")
    @blp.arguments(ProgramCreateSchema())
    @blp.response(201, ProgramSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a program with its first rules revision."""
        rules = {name: body[name] for name in RULE_FIELDS}
        return run(CreateProgram(actor=current_principal().actor, program_id=body["program_id"], name=body["name"],
                                 currency=body["currency"], rules=rules, effective_at=body.get("effective_at")))


@blp.route("/programs/<string:program_id>")
class ProgramById(MethodView):
    @requires(*ALL_ROLES)
    @blp.response(200, ProgramSchema)
    def get(self, program_id: str) -> Any:
        """The current rules and their revision history."""
        return ledger().program_summary(program_id)


@blp.route("/programs/<string:program_id>/revisions")
class ProgramRevisions(MethodView):
    @requires("admin")
    @blp.arguments(RevisionCreateSchema())
    @blp.response(201, ProgramSchema)
    def post(self, body: dict[str, Any], program_id: str) -> Any:
        """Revise some rules from `effective_at` on; postings are valued with the rules in force."""
        effective_at = body.pop("effective_at")
        return run(ReviseProgram(actor=current_principal().actor, program_id=program_id, changes=body,
                                 effective_at=effective_at))


@blp.route("/partners")
class Partners(MethodView):
    @requires("admin")
    @blp.arguments(PartnerCreateSchema())
    @blp.response(201, PartnerSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Register a partner and its stores in a program."""
        return run(RegisterPartner(actor=current_principal().actor, **body))


@blp.route("/api-keys")
class ApiKeys(MethodView):
    @requires("admin")
    @blp.arguments(ApiKeyCreateSchema())
    @blp.response(201, ApiKeySchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Issue a key; the key itself is shown only in this response."""
        return run(IssueApiKey(actor=current_principal().actor, **body))


@blp.route("/api-keys/<string:key_id>")
class ApiKeyById(MethodView):
    @requires("admin")
    @blp.response(204)
    def delete(self, key_id: str) -> Any:
        """Revoke a key: it stops working at once."""
        ledger().execute(RevokeApiKey(actor=current_principal().actor, key_id=key_id))
        return "", 204
