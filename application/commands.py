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

import orjson


def canonical(value: Any) -> Any:
    """A JSON-ready form in which equal values encode equally ("25.0" == "25.00")."""
    if type(value) is str or value is None:  # most fields: nothing to do
        return value
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def canonical_json(content: dict[str, Any]) -> bytes:
    """The canonical form's JSON: sorted keys, compact, UTF-8. orjson writes exactly that for
    strings, 64-bit integers, booleans and null in dicts and lists (tests/unit/test_request_hash.py);
    anything else (floats, whose text differs; subclasses; larger integers) goes to json."""
    if _plain(content):
        try:
            return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate, which json writes as an escape
            pass
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -(1 << 63) <= value < (1 << 64)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not (type(item) is str or item is None or _plain(item)):
                return False
        return True
    if kind is list:
        return all(_plain(v) for v in value)
    return False


@dataclass(frozen=True)
class Command:
    actor: str

    def request_hash(self) -> str:
        names = _hashed_fields.get(type(self))
        if names is None:
            names = _hashed_fields[type(self)] = tuple(f.name for f in fields(self) if f.name != "actor")
        content = {name: canonical(getattr(self, name)) for name in names}
        content["command"] = type(self).__name__
        return hashlib.sha256(canonical_json(content)).hexdigest()


_hashed_fields: dict[type, tuple[str, ...]] = {}


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
