"""Times as the projections store them: fixed-width UTC text, ordered as the moments are."""

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from projections.store import db_time, from_db_time

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
                       timezones=st.one_of(st.just(timezone.utc), offsets))


@given(moments)
def test_a_moment_is_written_in_utc_and_read_back_unchanged(moment):
    text = db_time(moment)
    assert len(text) == len("2026-12-01T16:31:24.000000Z") and text.endswith("Z")
    assert from_db_time(text) == moment


@given(moments, moments)
def test_the_text_orders_as_the_moments_do(first, second):
    assert (db_time(first) < db_time(second)) == (first < second)


def test_the_same_moment_in_any_offset_is_the_same_text():
    moment = datetime(2026, 12, 1, 16, 31, 24, 5, tzinfo=timezone.utc)
    assert db_time(moment) == db_time(moment.astimezone(timezone(timedelta(hours=-5)))) == "2026-12-01T16:31:24.000005Z"
    assert db_time(datetime(999, 1, 2, tzinfo=timezone.utc)) == "0999-01-02T00:00:00.000000Z"
    assert db_time(None) is None
