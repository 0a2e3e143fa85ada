"""Audit and proofs: the hash chain's checkpoint and verification, reconciliation, readiness."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import requires
from api.schemas import (
    QUERY,
    CheckpointSchema,
    ReadinessSchema,
    ReconciliationQuerySchema,
    ReconciliationSchema,
    VerificationSchema,
    VerifyRequestSchema,
)
from application.errors import NotFound
from projections.read_model import ReadModel

audit = Blueprint("audit", __name__, url_prefix="/v1", description="Tamper evidence and reconciliation.")
ready = Blueprint("readiness", __name__, description="Readiness, with projection lag.")


def read_model() -> ReadModel:
    model = current_app.extensions.get("read_model")
    if model is None:
        raise NotFound("this deployment has no projections (in-memory store)")
    return model


@audit.route("/audit/checkpoint")
class Checkpoint(MethodView):
    @requires("auditor", "admin")
    @audit.response(200, CheckpointSchema)
    def get(self) -> Any:
        """The head of the SHA-256 chain over every stored event: keep it outside the database."""
        return read_model().checkpoint()


@audit.route("/audit/verify")
class Verify(MethodView):
    @requires("auditor", "admin")
    @audit.arguments(VerifyRequestSchema())
    @audit.response(200, VerificationSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Recompute the chain from the events themselves; name the first position that does not
        match (the recorded chain, or the checkpoint given)."""
        against = (body["position"], body["hash"]) if "position" in body else None
        result = read_model().verify(against)
        return {"ok": result.ok, "verified_through": result.verified_through,
                "first_bad_position": result.first_bad_position, "reason": result.reason}


@audit.route("/reports/reconciliation")
class Reconciliation(MethodView):
    @requires("finance", "auditor", "admin")
    @audit.arguments(ReconciliationQuerySchema(), **QUERY)
    @audit.response(200, ReconciliationSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """Every projected balance against a fresh replay of the event log, and the liability
        roll-forward against the sum of member balances; differences listed per member."""
        model = read_model()
        model.runner.catch_up()  # as the reports: everything committed before the request is compared
        return model.reconcile(query.get("program_id"))


@ready.route("/readyz")
class Readiness(MethodView):
    @ready.doc(security=[])
    @ready.response(200, ReadinessSchema)
    @ready.alt_response(503, schema=ReadinessSchema, description="Projections are rebuilding or too far behind.")
    def get(self) -> Any:
        """200 when the database answers and the projections are close to the head."""
        model = current_app.extensions.get("read_model")
        if model is None:
            return {"ready": True, "head": 0, "lag": 0, "projections": []}
        report = model.readiness()
        return report, (200 if report["ready"] else 503)
