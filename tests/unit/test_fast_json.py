"""The ledger's transcoder writes exactly the library's bytes and reads them back to the same values.

Stored states are hashed by the audit chain and read by anything that uses the library, so the
faster encoder (infrastructure/fast_json.py) must never change a byte: compared here with the
library's JSONTranscoder, with the same transcodings registered, over every code point, the
edges of integers, generated states, and every event of a ledger's stories.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError
from hypothesis import given, settings
from hypothesis import strategies as st

from application.ledger import Ledger
from domain.lots import Lot
from infrastructure.bootstrap import build_ledger
from infrastructure.config import Config
from infrastructure.fast_json import FastJSONTranscoder


def registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    Ledger.register_transcodings(Ledger.__new__(Ledger), transcoder)
    return transcoder


LIBRARY = registered(JSONTranscoder())
FAST = registered(FastJSONTranscoder())


def assert_same(value: Any) -> bytes:
    expected = LIBRARY.encode(value)
    assert FAST.encode(value) == expected
    # repr, not ==: 2**64 == float(2**64), and the types must match too
    assert repr(FAST.decode(expected)) == repr(LIBRARY.decode(expected))
    return expected


def test_every_code_point_is_written_as_the_library_writes_it() -> None:
    points = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for start in range(0, len(points), 4096):
        text = "".join(chr(c) for c in points[start:start + 4096])
        assert_same({text: [text, "a" + text[::-1] + "z"], "k": {"nested": text}})
    for c in range(0x80):  # each control and escaped character alone, where escapes differ most
        assert_same({chr(c): chr(c), "x": "a" + chr(c) + "b"})


@pytest.mark.parametrize("number", [0, 1, -1, 2**31, 2**63 - 1, -2**63, 2**64 - 1, 2**64, -2**63 - 1, 10**40, -10**40])
def test_integers_at_and_beyond_64_bits_round_trip(number: int) -> None:
    for value in ({"n": number}, {"l": [number]}, {"n": number, "l": [number]}):
        assert FAST.decode(assert_same(value)) == value
    assert type(FAST.decode(LIBRARY.encode({"n": number}))["n"]) is int


def test_floats_are_left_to_the_library_both_ways() -> None:
    for number in (0.1, 1e-07, 1e16, 1.5, -0.0, 1e308):
        stored = assert_same({"f": number, "l": [number, 1]})
        assert FAST.decode(stored) == {"f": number, "l": [number, 1]}
    stored = LIBRARY.encode({"f": math.nan})
    assert FAST.encode({"f": math.nan}) == stored
    assert math.isnan(FAST.decode(stored)["f"])


def test_registered_types_use_the_library_tags() -> None:
    moment = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    lot = Lot(lot_id="l1", source="purchase:shop:t1", points=10, earned_at=moment, available_at=moment,
              expires_at=None, remaining=7)
    value = {"id": UUID(int=5), "amount": Decimal("12.30"), "at": moment, "lots": [lot], "t": (1, "a")}
    stored = assert_same(value)
    assert stored.startswith(b'{"id":{"_type_":"uuid_hex","_data_":"00000000000000000000000000000005"}')
    decoded = FAST.decode(stored)
    assert decoded["lots"] == [lot] and decoded["at"] == moment and decoded["t"] == [1, "a"]


def test_what_the_fast_path_cannot_write_exactly_goes_to_the_library() -> None:
    class Text(str):
        pass

    assert_same({"s": Text("sub"), 1: "int key", "b": True, "n": None})
    with pytest.raises(TypeError):  # an unregistered type fails as the library fails
        FAST.encode({"x": object()})
    with pytest.raises(TranscodingNotRegisteredError):
        FAST.decode(b'{"x":{"_type_":"nobody","_data_":1}}')


def test_lookalike_dicts_decode_as_the_library_decodes_them() -> None:
    for text in (b'{"_type_":"decimal_str","_data_":"1.5","extra":1}', b'{"_type_":"x"}',
                 b'{"a":{"_type_":"decimal_str","_data_":"2"}}', b'[{"_type_":"uuid_hex","_data_":"' + b"0" * 32 + b'"}]',
                 b'"plain"', b"3", b"null"):
        assert FAST.decode(text) == LIBRARY.decode(text)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.uuids(),
                    st.decimals(allow_nan=False, allow_infinity=False),
                    st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-5))])),
                    st.floats(allow_nan=False))
states = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=12), states, max_size=8))
def test_generated_states_are_byte_identical_and_read_back_the_same(state: dict[str, Any]) -> None:
    assert_same(state)


def test_the_ledger_uses_it_and_every_event_of_a_story_is_byte_identical(story: Any) -> None:
    assert isinstance(build_ledger(Config(database_url="memory://")).mapper.transcoder, FastJSONTranscoder)
    assert isinstance(story.ledger.mapper.transcoder, FastJSONTranscoder)
    story.purchase("t1", "120.00")
    story.purchase("t2", "80.50")
    story.redeem("r1", 50)
    story.return_("t3", "t1", "20.00")
    story.adjust("a1", 7)
    story.ledger.take_snapshot(story.member().id)
    events = story.events()
    assert len(events) >= 6
    for event in events:
        assert_same(dict(vars(event)))
    snapshot = next(iter(story.ledger.snapshots.get(story.member().id, desc=True, limit=1)))
    assert any(isinstance(lot, Lot) for lot in vars(snapshot)["state"]["lots"].values())
    assert_same(dict(vars(snapshot)))
