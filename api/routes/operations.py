"""Jobs over every member, and health."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_principal, requires
from api.routes import ledger
from api.schemas import ExpiryJobSchema, HealthSchema, JobSchema, TierJobSchema
from application.commands import ExpirePoints, ReviewTier

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Ledger jobs (admin).")
health = Blueprint("health", __name__, description="Liveness.")


@jobs.route("/expire-points")
class ExpirePointsJob(MethodView):
    @requires("admin")
    @jobs.arguments(JobSchema())
    @jobs.response(200, ExpiryJobSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Expire every lot due by `as_of`, for every member. Running it again changes nothing."""
        actor, as_of = current_principal().actor, body["as_of"]
        outcomes = ledger().run_for_every_member(lambda m: ExpirePoints(actor=actor, member_id=m, as_of=as_of))
        return {"members": len(outcomes), "points_expired": sum(o.body["points_expired"] for o in outcomes)}


@jobs.route("/review-tiers")
class ReviewTiersJob(MethodView):
    @requires("admin")
    @jobs.arguments(JobSchema())
    @jobs.response(200, TierJobSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Re-qualify every member's tier on the spend in the window ending `as_of`."""
        actor, as_of = current_principal().actor, body["as_of"]
        outcomes = ledger().run_for_every_member(lambda m: ReviewTier(actor=actor, member_id=m, as_of=as_of))
        changes = [o.body["changed"] for o in outcomes]
        return {"members": len(outcomes), "upgraded": changes.count("up"), "downgraded": changes.count("down")}


@health.route("/healthz")
class Health(MethodView):
    @health.doc(security=[])
    @health.response(200, HealthSchema)
    def get(self) -> Any:
        """200 when the database answers."""
        return {"status": "ok", "database": ledger().database_kind, "events": ledger().recorder.max_notification_id() or 0}
