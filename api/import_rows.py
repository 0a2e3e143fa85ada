"""Rows of an import file read by the same schema as `POST /v1/purchases`: a row the API would
refuse is refused here too, for the same reason (a float for money, a fractional quantity, text a
database cannot store), and nothing the API would not store is stored."""

from __future__ import annotations

from functools import cache
from typing import Any

from marshmallow import ValidationError

from api.problems import flatten_messages
from api.schemas import PurchaseCreateSchema
from application.commands import RecordPurchase
from application.json_input import unstorable_strings


@cache
def _schema() -> PurchaseCreateSchema:
    return PurchaseCreateSchema()


def row_to_command(row: dict[str, Any], partner_id: str, actor: str) -> RecordPurchase:
    """The row's purchase for `partner_id`; ValueError says which fields are wrong and why."""
    if "partner_id" in row:
        raise ValueError("partner_id: the partner is the import's (--partner), not a row's")
    unstorable = unstorable_strings(row)
    if unstorable:
        raise ValueError(f"{', '.join(unstorable)}: must not hold a NUL or an unpaired surrogate character")
    try:
        body = _schema().load(row)
    except ValidationError as error:
        raise ValueError("; ".join(f"{name}: {' '.join(messages)}"
                                   for name, messages in flatten_messages(error.messages).items())) from None
    return RecordPurchase(actor=actor, partner_id=partner_id, **body)
