"""Commands: what a caller asks the ledger to do, as plain immutable values.

Each command's request hash covers what the client sent (not the actor, not defaults the
server fills in), so a retry of the same request matches and a changed one conflicts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any


def canonical(value: Any) -> Any:
    """A JSON-ready form in which equal values encode equally ("25.0" == "25.00")."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


@dataclass(frozen=True)
class Command:
    actor: str

    def request_hash(self) -> str:
        content = {f.name: canonical(getattr(self, f.name)) for f in fields(self) if f.name != "actor"}
        content["command"] = type(self).__name__
        encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class CreateProgram(Command):
    program_id: str
    name: str
    currency: str
    rules: dict[str, Any]
    effective_at: datetime | None = None


@dataclass(frozen=True)
class ReviseProgram(Command):
    program_id: str
    changes: dict[str, Any]
    effective_at: datetime


@dataclass(frozen=True)
class RegisterPartner(Command):
    partner_id: str
    name: str
    program_id: str
    stores: list[str]


@dataclass(frozen=True)
class EnrolMember(Command):
    program_id: str
    member_id: str | None = None
    card_number: str | None = None
    name: str | None = None
    email: str | None = None
    birthday: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class RecordPurchase(Command):
    partner_id: str
    transaction_id: str
    store_id: str
    amount: Decimal
    currency: str
    member_id: str | None = None
    card_number: str | None = None
    occurred_at: datetime | None = None
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ReturnPurchase(Command):
    partner_id: str
    transaction_id: str
    original_transaction_id: str
    amount: Decimal
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Redeem(Command):
    member_id: str
    redemption_id: str
    points: int
    reward: str | None = None
    partner_id: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class CancelRedemption(Command):
    member_id: str
    redemption_id: str
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Adjust(Command):
    member_id: str
    adjustment_id: str
    points: int
    reason: str
    note: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class DecideAdjustment(Command):
    """A supervisor approves or rejects an adjustment that waits for approval."""

    adjustment_id: str
    approve: bool
    note: str = ""


@dataclass(frozen=True)
class ReverseEvent(Command):
    """Support reverses one specific earlier event of a member (by its version), once."""

    member_id: str
    reversal_id: str
    version: int
    note: str
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class ExpirePoints(Command):
    member_id: str
    as_of: datetime


@dataclass(frozen=True)
class ReviewTier(Command):
    member_id: str
    as_of: datetime


@dataclass(frozen=True)
class Outcome:
    """What a command returned: the response body, its status, and whether it is a replay."""

    body: dict[str, Any]
    status: int = 201
    replayed: bool = False
