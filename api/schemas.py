"""Request and response schemas: the same classes validate input and generate /openapi.json."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from domain.api_key import ROLES
from domain.calendar import EARLIEST, LATEST
from domain.member import ADJUSTMENT_REASONS
from domain.money import DECIMAL_TEXT

SLUG = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ID = validate.Length(min=1, max=128)
MAX_POINTS = 10**12


class Money(fields.String):
    """A decimal string such as "25.00": never a float, never NaN or Infinity."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"pattern": DECIMAL_TEXT.pattern, "example": "25.00", **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not DECIMAL_TEXT.fullmatch(text):
            raise ValidationError("Must be a decimal string such as \"25.00\".")
        try:
            return Decimal(text)
        except InvalidOperation:
            raise ValidationError("Must be a decimal string such as \"25.00\".") from None

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(value)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


# Query parameters as strictly as bodies: webargs would drop unknown ones (EXCLUDE); unknown=None
# leaves the schema's own RAISE, so a misspelt parameter (`limt=10`) is a 422, not ignored.
QUERY: dict[str, Any] = {"location": "query", "unknown": None}


def Points(**kwargs: Any) -> fields.Integer:  # noqa: N802 - a field factory reads like a field
    return fields.Integer(strict=True, **kwargs)


class Time(fields.AwareDateTime):
    """RFC 3339 with an offset, within the ledger's range of effective times."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        moment = super()._deserialize(value, attr, data, **kwargs)
        if not EARLIEST <= moment < LATEST:
            raise ValidationError(f"must be from {EARLIEST.year} up to {LATEST.year}")
        return moment


class Day(fields.Date):
    """A calendar day (UTC) within the ledger's range of effective times."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        day = super()._deserialize(value, attr, data, **kwargs)
        if not EARLIEST.date() <= day < LATEST.date():
            raise ValidationError(f"must be from {EARLIEST.year} up to {LATEST.year}")
        return day


# ---- problems ---------------------------------------------------------------------------------

class ProblemSchema(Schema):
    type = fields.String(required=True, metadata={"example": "validation-error"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.Raw())


# ---- administration ---------------------------------------------------------------------------

class TierSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    qualifying_spend = Money(required=True)
    multiplier = Money(required=True)


class ExpirySchema(StrictSchema):
    policy = fields.String(required=True, validate=validate.OneOf(["none", "rolling"]))
    months = fields.Integer(strict=True, validate=validate.Range(min=1, max=600))


class RuleFields(StrictSchema):
    earn_rate = Money()
    point_value = Money()
    expected_redemption_rate = Money()
    expiry = fields.Nested(ExpirySchema)
    pending_days = fields.Integer(strict=True, validate=validate.Range(min=0, max=3650))
    tiers = fields.List(fields.Nested(TierSchema), validate=validate.Length(min=1, max=20))
    tier_window_months = fields.Integer(strict=True, validate=validate.Range(min=1, max=120))
    adjustment_approval_threshold = Points(validate=validate.Range(min=0, max=MAX_POINTS))


class ProgramCreateSchema(RuleFields):
    program_id = fields.String(required=True, validate=validate.Regexp(SLUG))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    currency = fields.String(required=True, validate=validate.Regexp(r"^[A-Z]{3}$"))
    effective_at = Time()

    @validates_schema
    def all_rules(self, data: dict[str, Any], **kwargs: Any) -> None:
        missing = [name for name in RuleFields._declared_fields if name not in data]
        if missing:
            raise ValidationError({name: ["Missing data for required field."] for name in missing})


class RevisionCreateSchema(RuleFields):
    effective_at = Time(required=True)


class RevisionSchema(Schema):
    revision = fields.Integer()
    effective_at = fields.String()
    rules = fields.Dict()


class ProgramSchema(Schema):
    program_id = fields.String()
    name = fields.String()
    currency = fields.String()
    earn_rate = fields.String()
    point_value = fields.String()
    expected_redemption_rate = fields.String()
    expiry = fields.Dict()
    pending_days = fields.Integer()
    tiers = fields.List(fields.Dict())
    tier_window_months = fields.Integer()
    adjustment_approval_threshold = fields.Integer()
    revision = fields.Integer()
    revisions = fields.List(fields.Nested(RevisionSchema))


class PartnerCreateSchema(StrictSchema):
    partner_id = fields.String(required=True, validate=validate.Regexp(SLUG))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    program_id = fields.String(required=True, validate=validate.Regexp(SLUG))
    stores = fields.List(fields.String(validate=ID), required=True, validate=validate.Length(min=1, max=10000))


class PartnerSchema(Schema):
    partner_id = fields.String()
    name = fields.String()
    program_id = fields.String()
    stores = fields.List(fields.String())


class ApiKeyCreateSchema(StrictSchema):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    partner_id = fields.String(validate=validate.Regexp(SLUG))
    name = fields.String(validate=validate.Length(max=200))


class ApiKeySchema(Schema):
    key = fields.String(metadata={"description": "Shown once; only its hash is stored."})
    key_id = fields.String()
    role = fields.String()
    partner_id = fields.String(allow_none=True)
    name = fields.String(allow_none=True)


# ---- members ----------------------------------------------------------------------------------

class MemberCreateSchema(StrictSchema):
    program_id = fields.String(required=True, validate=validate.Regexp(SLUG))
    member_id = fields.String(validate=ID)
    card_number = fields.String(validate=ID)
    name = fields.String(validate=validate.Length(max=200))
    email = fields.Email(validate=validate.Length(max=320))
    birthday = fields.Date()
    occurred_at = Time()


class BalanceSchema(Schema):
    available = fields.Integer()
    pending = fields.Integer()
    due_for_expiry = fields.Integer()


class LifetimeSchema(Schema):
    earned = fields.Integer()
    redeemed = fields.Integer()
    expired = fields.Integer()
    reversed = fields.Integer()
    adjusted = fields.Integer()


class NextExpirySchema(Schema):
    points = fields.Integer()
    at = fields.String()


class MemberSchema(Schema):
    member_id = fields.String()
    program_id = fields.String()
    card_number = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    birthday = fields.String(allow_none=True)
    enrolled_at = fields.String()
    tier = fields.String()
    tier_since = fields.String()
    balance = fields.Nested(BalanceSchema)
    lifetime = fields.Nested(LifetimeSchema)
    next_expiry = fields.Nested(NextExpirySchema, allow_none=True)
    version = fields.Integer()


class CardQuerySchema(StrictSchema):
    program_id = fields.String(validate=validate.Regexp(SLUG))


class AsOfQuerySchema(StrictSchema):
    as_of = Time()
    known_at = Time()


class AsOfBalanceSchema(Schema):
    member_id = fields.String()
    as_of = fields.String()
    known_at = fields.String(allow_none=True)
    available = fields.Integer()
    pending = fields.Integer()
    due_for_expiry = fields.Integer()
    tier = fields.String()


class HistoryQuerySchema(StrictSchema):
    as_of = Time()
    limit = fields.Integer(validate=validate.Range(min=1, max=1000), load_default=100)
    after = fields.Integer(validate=validate.Range(min=0), load_default=0,
                           metadata={"description": "Cursor: the version after which to list."})


class HistoryEventSchema(Schema):
    version = fields.Integer()
    type = fields.String()
    occurred_at = fields.String()
    recorded_at = fields.String()
    actor = fields.String()
    data = fields.Dict()
    hash = fields.String(allow_none=True)


class HistorySchema(Schema):
    member_id = fields.String()
    events = fields.List(fields.Nested(HistoryEventSchema))
    next = fields.Integer(allow_none=True)


# ---- partner postings -------------------------------------------------------------------------

class ItemSchema(StrictSchema):
    sku = fields.String(required=True, validate=validate.Length(min=1, max=128))
    category = fields.String(validate=validate.Length(max=128))
    quantity = fields.Integer(strict=True, validate=validate.Range(min=1, max=1_000_000), load_default=1)
    amount = Money(required=True)


class PurchaseCreateSchema(StrictSchema):
    transaction_id = fields.String(required=True, validate=ID)
    member_id = fields.String(validate=ID)
    card_number = fields.String(validate=ID)
    store_id = fields.String(required=True, validate=ID)
    amount = Money(required=True)
    currency = fields.String(required=True, validate=validate.Regexp(r"^[A-Z]{3}$"))
    occurred_at = Time()
    items = fields.List(fields.Nested(ItemSchema), validate=validate.Length(max=1000))
    partner_id = fields.String(validate=validate.Regexp(SLUG),
                               metadata={"description": "Admin keys only: the partner posting."})

    @validates_schema
    def member_or_card(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("member_id" in data) == ("card_number" in data):
            raise ValidationError("Give exactly one of member_id or card_number.", "member_id")


class PurchaseSchema(Schema):
    transaction_id = fields.String()
    member_id = fields.String()
    points_earned = fields.Integer()
    status = fields.String(metadata={"enum": ["available", "pending"]})
    balance = fields.Nested(BalanceSchema)
    tier = fields.String()
    occurred_at = fields.String()
    revision = fields.Integer()


class BatchCreateSchema(StrictSchema):
    purchases = fields.List(fields.Raw(allow_none=True), required=True, validate=validate.Length(min=1, max=1000),
                            metadata={"description": "Up to 1000 purchases, each as for POST /v1/purchases."})


class BatchResultSchema(Schema):
    transaction_id = fields.String(allow_none=True)
    status = fields.Integer()
    body = fields.Dict()


class BatchSchema(Schema):
    results = fields.List(fields.Nested(BatchResultSchema))


class ReturnCreateSchema(StrictSchema):
    transaction_id = fields.String(required=True, validate=ID)
    original_transaction_id = fields.String(required=True, validate=ID)
    amount = Money(required=True)
    occurred_at = Time()
    partner_id = fields.String(validate=validate.Regexp(SLUG),
                               metadata={"description": "Admin keys only: the partner posting."})


class ReturnSchema(Schema):
    transaction_id = fields.String()
    original_transaction_id = fields.String()
    member_id = fields.String()
    points_reversed = fields.Integer()
    balance = fields.Nested(BalanceSchema)
    occurred_at = fields.String()


class PostingSchema(Schema):
    kind = fields.String()
    status = fields.Integer()
    body = fields.Dict()


# ---- redemptions and corrections --------------------------------------------------------------

class RedemptionCreateSchema(StrictSchema):
    redemption_id = fields.String(required=True, validate=ID)
    points = Points(required=True, validate=validate.Range(min=1, max=MAX_POINTS))
    reward = fields.String(validate=validate.Length(max=200))
    occurred_at = Time()
    partner_id = fields.String(validate=validate.Regexp(SLUG))


class RedemptionSchema(Schema):
    redemption_id = fields.String()
    member_id = fields.String()
    points = fields.Integer()
    balance = fields.Nested(BalanceSchema)
    occurred_at = fields.String()


class CancellationCreateSchema(StrictSchema):
    occurred_at = Time()


class CancellationSchema(Schema):
    redemption_id = fields.String()
    member_id = fields.String()
    points_restored = fields.Integer()
    points_expired = fields.Integer()
    balance = fields.Nested(BalanceSchema)
    occurred_at = fields.String()


class AdjustmentCreateSchema(StrictSchema):
    adjustment_id = fields.String(required=True, validate=ID)
    points = Points(required=True, validate=[validate.Range(min=-MAX_POINTS, max=MAX_POINTS),
                                             validate.NoneOf([0], error="Must be non-zero.")])
    reason = fields.String(required=True, validate=validate.OneOf(ADJUSTMENT_REASONS))
    note = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    occurred_at = Time()


class AdjustmentSchema(Schema):
    adjustment_id = fields.String()
    member_id = fields.String()
    points = fields.Integer()
    reason = fields.String()
    status = fields.String(metadata={"enum": ["applied", "pending_approval"]})
    balance = fields.Nested(BalanceSchema)
    occurred_at = fields.String()


# ---- jobs and health --------------------------------------------------------------------------

class JobSchema(StrictSchema):
    as_of = Time(required=True)


class ExpiryJobSchema(Schema):
    members = fields.Integer()
    points_expired = fields.Integer()


class TierJobSchema(Schema):
    members = fields.Integer()
    upgraded = fields.Integer()
    downgraded = fields.Integer()


class HealthSchema(Schema):
    status = fields.String()
    database = fields.String()
    events = fields.Integer()


# ---- audit and proofs -------------------------------------------------------------------------

class CheckpointSchema(Schema):
    position = fields.Integer()
    hash = fields.String(allow_none=True)
    created_at = fields.String()


class VerifyRequestSchema(StrictSchema):
    position = fields.Integer(strict=True, validate=validate.Range(min=1))
    hash = fields.String(validate=validate.Regexp(r"^[0-9a-f]{64}$"))

    @validates_schema
    def both_or_neither(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("position" in data) != ("hash" in data):
            raise ValidationError("Give both position and hash, or neither.", "position")


class VerificationSchema(Schema):
    ok = fields.Boolean()
    verified_through = fields.Integer()
    first_bad_position = fields.Integer(allow_none=True)
    reason = fields.String(allow_none=True)


class ReconciliationQuerySchema(StrictSchema):
    program_id = fields.String(validate=validate.Regexp(SLUG))


class ReconciliationSchema(Schema):
    ok = fields.Boolean()
    program_id = fields.String(allow_none=True)
    members = fields.Integer()
    event_log_total = fields.Integer()
    projection_total = fields.Integer()
    members_total = fields.Integer()
    liability_total = fields.Integer()
    differences = fields.List(fields.Dict())
    checked_at = fields.String()


class ProjectionStatusSchema(Schema):
    name = fields.String()
    position = fields.Integer()
    lag = fields.Integer()
    rebuilding = fields.Boolean()


class ReadinessSchema(Schema):
    ready = fields.Boolean()
    head = fields.Integer()
    lag = fields.Integer()
    projections = fields.List(fields.Nested(ProjectionStatusSchema))


# ---- approvals and reversals ------------------------------------------------------------------

class DecisionCreateSchema(StrictSchema):
    note = fields.String(validate=validate.Length(max=2000), load_default="")


class DecisionSchema(Schema):
    adjustment_id = fields.String()
    member_id = fields.String()
    points = fields.Integer()
    reason = fields.String()
    status = fields.String(metadata={"enum": ["pending", "approved", "rejected"]})
    requested_by = fields.String()
    decided_by = fields.String(allow_none=True)
    balance = fields.Nested(BalanceSchema)


class AdjustmentQuerySchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(["pending", "approved", "rejected"]))


class AdjustmentRequestSchema(Schema):
    adjustment_id = fields.String()
    member_id = fields.String()
    program_id = fields.String()
    points = fields.Integer()
    reason = fields.String()
    note = fields.String()
    requested_by = fields.String()
    occurred_at = fields.String()
    requested_at = fields.String()
    status = fields.String()
    decided_by = fields.String(allow_none=True)
    decided_at = fields.String(allow_none=True)
    decision_note = fields.String(allow_none=True)


class AdjustmentListSchema(Schema):
    adjustments = fields.List(fields.Nested(AdjustmentRequestSchema))


class ReversalCreateSchema(StrictSchema):
    reversal_id = fields.String(required=True, validate=ID)
    version = fields.Integer(strict=True, required=True, validate=validate.Range(min=1),
                             metadata={"description": "The version of the member's event to reverse (see history)."})
    note = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    occurred_at = Time()


class ReversalSchema(Schema):
    reversal_id = fields.String()
    member_id = fields.String()
    version = fields.Integer()
    kind = fields.String(metadata={"enum": ["purchase", "redemption", "adjustment"]})
    balance = fields.Nested(BalanceSchema)
    occurred_at = fields.String()


# ---- finance reports --------------------------------------------------------------------------

class PeriodQuerySchema(StrictSchema):
    program_id = fields.String(required=True, validate=validate.Regexp(SLUG))
    from_ = Day(required=True, data_key="from", metadata={"description": "First day (UTC), included."})
    to = Day(required=True, metadata={"description": "Last day (UTC), included."})

    @validates_schema
    def ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "from_" in data and "to" in data and data["to"] < data["from_"]:
            raise ValidationError("Must not be before from.", "to")
        if "from_" in data and "to" in data and (data["to"] - data["from_"]).days > 3660:
            raise ValidationError("A period is at most ten years.", "to")


class LiabilityQuerySchema(PeriodQuerySchema):
    partner_id = fields.String(validate=validate.Regexp(SLUG))
    monthly = fields.Boolean(load_default=False)


class RollForwardSchema(Schema):
    opening = fields.Raw()
    earned = fields.Raw()
    redeemed = fields.Raw()
    expired = fields.Raw()
    reversed = fields.Raw()
    adjusted = fields.Raw()
    closing = fields.Raw()


class LiabilityMonthSchema(Schema):
    month = fields.String()
    from_ = fields.String(attribute="from", data_key="from")
    to = fields.String()
    points = fields.Nested(RollForwardSchema)
    value = fields.Nested(RollForwardSchema)


class LiabilitySchema(Schema):
    program_id = fields.String()
    partner_id = fields.String(allow_none=True)
    from_ = fields.String(attribute="from", data_key="from")
    to = fields.String()
    currency = fields.String()
    point_value = fields.String()
    points = fields.Nested(RollForwardSchema)
    value = fields.Nested(RollForwardSchema)
    member_balances = fields.Integer()
    closing_equals_member_balances = fields.Boolean()
    months = fields.List(fields.Nested(LiabilityMonthSchema))


class SettlementLineSchema(Schema):
    issuer_partner_id = fields.String()
    redeeming_partner_id = fields.String()
    points = fields.Integer()
    value = fields.String()


class SettlementSchema(Schema):
    program_id = fields.String()
    from_ = fields.String(attribute="from", data_key="from")
    to = fields.String()
    currency = fields.String()
    point_value = fields.String()
    lines = fields.List(fields.Nested(SettlementLineSchema))


class RevenuePeriodSchema(Schema):
    from_ = fields.String(attribute="from", data_key="from")
    to = fields.String()
    allocated = fields.String()
    recognised = fields.String()
    cumulative_recognised = fields.String()
    contract_liability = fields.String()
    expected_redemption_rate = fields.String()


class RevenueSchema(RevenuePeriodSchema):
    program_id = fields.String()
    currency = fields.String()
    periods = fields.List(fields.Nested(RevenuePeriodSchema))


class StatementQuerySchema(StrictSchema):
    partner_id = fields.String(required=True, validate=validate.Regexp(SLUG))
    from_ = Day(required=True, data_key="from")
    to = Day(required=True)


class StatementSchema(Schema):
    partner_id = fields.String()
    from_ = fields.String(attribute="from", data_key="from")
    to = fields.String()
    matched = fields.List(fields.Dict())
    missing_in_ledger = fields.List(fields.Dict())
    missing_in_statement = fields.List(fields.Dict())
    amount_mismatches = fields.List(fields.Dict())
    totals = fields.Dict()
