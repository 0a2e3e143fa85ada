"""Aggregates rendered as JSON-ready dicts (money as decimal strings, times as RFC 3339)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from domain.member import Member
from domain.program import Program


def json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return rfc3339(value)
    if is_dataclass(value) and not isinstance(value, type):
        return json_value(asdict(value))
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def balance_view(member: Member, moment: datetime) -> dict[str, int]:
    balance = member.balance_at(moment)
    return {"available": balance["available"], "pending": balance["pending"], "due_for_expiry": balance["due"]}


def member_view(member: Member, moment: datetime) -> dict[str, Any]:
    next_expiry = member.next_expiry(moment)
    return {
        "member_id": member.member_id,
        "program_id": member.program_id,
        "card_number": member.card_number,
        "name": member.name,
        "email": member.email,
        "birthday": member.birthday,
        "enrolled_at": rfc3339(member.enrolled_at),
        "tier": member.tier,
        "tier_since": rfc3339(member.tier_since),
        "balance": balance_view(member, moment),
        "lifetime": dict(member.lifetime),
        "next_expiry": None if next_expiry is None else json_value(next_expiry),
        "version": member.version,
    }


def program_view(program: Program) -> dict[str, Any]:
    latest = program.revisions[-1]
    return {
        "program_id": program.program_id,
        "name": program.name,
        "currency": program.currency,
        **json_value(latest["rules"]),
        "revision": latest["revision"],
        "revisions": [
            {"revision": r["revision"], "effective_at": rfc3339(r["effective_at"]), "rules": json_value(r["rules"])}
            for r in program.revisions
        ],
    }
