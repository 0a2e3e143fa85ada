"""A command's request hash is stored in every receipt and compared with a retry's: it must never
change. The canonical JSON is written by orjson where its text is json's (sorted keys, compact,
UTF-8) and by json otherwise; both must give the same bytes for any content."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from application.commands import CreateProgram, EnrolMember, RecordPurchase, Redeem, canonical_json


def by_json(content: Any) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_every_code_point_in_keys_and_values_is_written_as_json_writes_it() -> None:
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 4096):
        text = "".join(chr(c) for c in points[start:start + 4096])
        content = {text: text, "k": [text, {"x" + text[:50]: "a" + text + "b"}]}
        assert canonical_json(content) == by_json(content)
    for c in range(0, 0x80):  # one at a time: escapes, and key order around each
        content = {chr(c): chr(c), "a" + chr(c): 1, "b": "x" + chr(c) + "y"}
        assert canonical_json(content) == by_json(content)


class Colour(str, Enum):
    RED = "red"


def test_what_orjson_would_write_differently_is_written_by_json() -> None:
    for content in ({"f": 1e16}, {"f": 0.1}, {"f": float("nan")}, {"big": 1 << 64}, {"neg": -(1 << 63) - 1},
                    {"edge": (1 << 64) - 1, "low": -(1 << 63)}, {"n": {"x": [1.5]}},
                    {"sub": Colour.RED}, {"t": True, "z": None}, {"é": "ü", "e": "u"}):
        assert canonical_json(content) == by_json(content), content
    # A lone surrogate has no UTF-8: refused as before (a request body cannot hold one).
    for write in (canonical_json, by_json):
        with pytest.raises(UnicodeEncodeError):
            write({"s": "\ud800"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=400)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=8))
def test_generated_contents_give_the_same_bytes(content: dict[str, Any]) -> None:
    assert canonical_json(content) == by_json(content)


def test_the_hashes_of_known_requests_never_change() -> None:
    """Computed with the json-only code (before orjson): receipts already stored hold these."""
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    purchase = RecordPurchase(actor="a", partner_id="shop", transaction_id="t-123456", store_id="s-1",
                              amount=Decimal("12.34"), currency="EUR", member_id="m-000123", card_number=None,
                              occurred_at=when, items=[])
    assert purchase.request_hash() == "79d5ae1863448873090885bb2212b96f0b0c260064c82d817798feab1e7d7446"
    same = RecordPurchase(actor="someone else", partner_id="shop", transaction_id="t-123456", store_id="s-1",
                          amount=Decimal("12.340"), currency="EUR", member_id="m-000123", card_number=None,
                          occurred_at=when.astimezone(timezone(timedelta(hours=2))), items=[])
    assert same.request_hash() == purchase.request_hash()
    with_items = RecordPurchase(actor="a", partner_id="shop", transaction_id="t-9", store_id="s-1",
                                amount=Decimal("3"), currency="EUR", member_id="m-1", card_number="c-1",
                                occurred_at=None, items=[{"sku": "café", "quantity": 2, "price": 1.5}])
    assert with_items.request_hash() == "9662116909e3468624406fcec6812163a40d9ed3a5f0c7e66267148f600dac17"  # a float
    assert EnrolMember(actor="a", program_id="p", member_id="m-1", card_number="c-1", name="Zoë \u2028 \"Q\"",
                       occurred_at=when).request_hash() == \
        "b2ea4d0bd884dd05d310e14de4fe9b21ab24463fc1383bce947515ce77bce15e"
    assert Redeem(actor="a", member_id="m-1", redemption_id="r-1", points=250, reward="mug",
                  occurred_at=when).request_hash() == "edb1d0bb4e890b9f7de3575715c29caa9eb0090d8ff2339007338cf9abe0c803"
    assert CreateProgram(actor="a", program_id="p", name="P", currency="EUR",
                         rules={"points_per_unit": Decimal("1.50"), "tiers": [{"name": "base", "threshold": 0}],
                                "x": None}, effective_at=None).request_hash() == \
        "49bb2e2a59427f47d09c353d4bad576a1c36f77a10893a2c822fa94cc9515a37"
