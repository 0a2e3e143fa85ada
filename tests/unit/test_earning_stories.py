"""Earning: how a purchase becomes points, under the rules in force when it happened."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from application.errors import InvalidRequest, NotFound
from domain.errors import CurrencyMismatch, InvalidAmount, InvalidTime, StoreNotInPartner
from domain.member import Member


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


# ---- how many points ------------------------------------------------------------------------


def test_a_member_earns_one_point_per_whole_euro_and_the_cents_are_dropped(story):
    outcome = story.purchase("t1", "25.99")

    assert outcome.body["points_earned"] == 25
    assert outcome.body["status"] == "available"
    assert story.available() == 25
    assert story.lifetime()["earned"] == 25


def test_earn_rate_and_tier_multiplier_are_multiplied_before_the_single_floor(make_story):
    story = make_story(
        earn_rate="1.5",
        tiers=[{"name": "base", "qualifying_spend": "0", "multiplier": "1.5"}],
    )

    outcome = story.purchase("t1", "9.99")

    # 9.99 x 1.5 x 1.5 = 22.4775 -> 22; flooring after each factor would give floor(14.985) x 1.5 = 21
    assert outcome.body["points_earned"] == 22
    assert story.available() == 22


def test_the_purchase_event_records_the_revision_rate_tier_and_multiplier_it_was_valued_with(story):
    story.purchase("t1", "40.00")

    [recorded] = story.events(of_type=Member.PurchaseRecorded)
    assert (recorded.revision, recorded.earn_rate, recorded.tier, recorded.multiplier, recorded.points) == (
        1, Decimal("1"), "base", Decimal("1"), 40,
    )
    assert recorded.amount == Decimal("40.00") and recorded.currency == "EUR"
    assert recorded.store_id == "s1" and recorded.actor == "pos:shop"


def test_a_purchase_posted_by_card_number_earns_for_the_cards_member(story):
    story.enrol("m2", card_number="CARD-7")

    outcome = story.purchase("t1", "12.00", member_id=None, card_number="CARD-7")

    assert outcome.body["member_id"] == "m2"
    assert story.available("m2") == 12
    assert story.available("m1") == 0


# ---- program revisions ----------------------------------------------------------------------


def test_a_purchase_is_valued_with_the_rules_in_force_when_it_occurred_not_when_it_was_posted(story, clock, start):
    story.revise(start + timedelta(days=10), earn_rate="2")
    clock.advance(days=20)

    before = story.purchase("before", "10.00", occurred_at=start + timedelta(days=5))
    after = story.purchase("after", "10.00", occurred_at=start + timedelta(days=15))

    assert (before.body["points_earned"], before.body["revision"]) == (10, 1)
    assert (after.body["points_earned"], after.body["revision"]) == (20, 2)
    recorded = {e.transaction_id: e for e in story.events(of_type=Member.PurchaseRecorded)}
    assert (recorded["before"].revision, recorded["before"].earn_rate) == (1, Decimal("1"))
    assert (recorded["after"].revision, recorded["after"].earn_rate) == (2, Decimal("2"))


def test_a_revision_takes_effect_exactly_at_its_effective_time(story, clock, start):
    effective = start + timedelta(days=10)
    story.revise(effective, earn_rate="3")
    clock.set(effective)

    just_before = story.purchase("t1", "10.00", occurred_at=effective - timedelta(microseconds=1))
    exactly_at = story.purchase("t2", "10.00", occurred_at=effective)

    assert just_before.body["points_earned"] == 10
    assert exactly_at.body["points_earned"] == 30


def test_a_revised_tier_multiplier_applies_only_to_purchases_from_its_effective_time(story, clock, start):
    story.revise(start + timedelta(days=1), tiers=[
        {"name": "base", "qualifying_spend": "0", "multiplier": "3"},
        {"name": "silver", "qualifying_spend": "500", "multiplier": "4"},
    ])
    clock.advance(days=2)

    story.purchase("old", "10.00", occurred_at=start)
    story.purchase("new", "10.00")

    recorded = {e.transaction_id: e for e in story.events(of_type=Member.PurchaseRecorded)}
    assert (recorded["old"].multiplier, recorded["old"].points) == (Decimal("1"), 10)
    assert (recorded["new"].multiplier, recorded["new"].points, recorded["new"].revision) == (Decimal("3"), 30, 2)


def test_history_keeps_the_rules_a_purchase_used_after_the_program_changes(story, clock, start):
    story.purchase("t1", "10.00")
    story.revise(start + timedelta(days=1), earn_rate="5")
    clock.advance(days=2)

    [entry] = [h for h in story.ledger.history("m1") if h["type"] == "PurchaseRecorded"]

    assert entry["data"]["revision"] == 1
    assert entry["data"]["earn_rate"] == "1"
    assert entry["data"]["points"] == 10
    assert story.available() == 10


# ---- pending period -------------------------------------------------------------------------


def test_points_from_a_program_with_a_return_window_stay_pending_until_it_closes(make_story, clock):
    story = make_story(pending_days=14)

    outcome = story.purchase("t1", "50.00")

    assert outcome.body["status"] == "pending"
    assert outcome.body["balance"] == {"available": 0, "pending": 50, "due_for_expiry": 0}
    clock.advance(days=14, microseconds=-1)
    assert story.balance() == {"available": 0, "pending": 50, "due": 0}
    clock.advance(microseconds=1)
    assert story.balance() == {"available": 50, "pending": 0, "due": 0}


def test_the_pending_period_counts_from_when_the_purchase_occurred(make_story, clock, start):
    story = make_story(pending_days=14)
    clock.advance(days=20)

    outcome = story.purchase("t1", "50.00", occurred_at=start)

    assert outcome.body["status"] == "available"
    assert story.available() == 50
    [accrued] = story.events(of_type=Member.PointsAccrued)
    assert accrued.available_at == start + timedelta(days=14)


# ---- expiry dates ---------------------------------------------------------------------------


def test_points_expire_the_configured_number_of_calendar_months_after_they_were_earned(story, start):
    story.purchase("t1", "10.00")

    [lot] = story.lots().values()
    assert lot.expires_at == start.replace(year=2026)
    assert story.member().next_expiry(start) == {"points": 10, "at": start.replace(year=2026)}


def test_points_earned_on_the_31st_of_january_expire_on_the_last_day_of_february(make_story):
    story = make_story(expiry={"policy": "rolling", "months": 1})

    story.purchase("t1", "10.00", occurred_at=utc(2025, 1, 31, 10))

    [lot] = story.lots().values()
    assert lot.expires_at == utc(2025, 2, 28, 10)


def test_in_a_leap_year_points_from_the_31st_of_january_expire_on_the_29th_of_february(domain_rules, new_member):
    rules = domain_rules(expiry={"policy": "rolling", "months": 1})
    member = new_member(at=utc(2024, 1, 1))

    member.record_purchase(partner_id="shop", store_id="s1", transaction_id="t1", amount=Decimal("10"),
                           currency="EUR", items=[], occurred_at=utc(2024, 1, 31, 23, 30), actor="pos",
                           revision=1, rules=rules)

    [lot] = member.lots.values()
    assert lot.expires_at == utc(2024, 2, 29, 23, 30)


def test_points_earned_on_the_31st_of_march_with_a_six_month_expiry_expire_on_the_30th_of_september(make_story):
    story = make_story(expiry={"policy": "rolling", "months": 6})

    story.purchase("t1", "10.00", occurred_at=utc(2024, 3, 31, 8))

    [lot] = story.lots().values()
    assert lot.expires_at == utc(2024, 9, 30, 8)


def test_points_never_expire_in_a_program_without_expiry(make_story, clock):
    story = make_story(expiry={"policy": "none"})

    story.purchase("t1", "10.00")
    clock.advance(days=365 * 30)

    [lot] = story.lots().values()
    assert lot.expires_at is None
    assert story.balance() == {"available": 10, "pending": 0, "due": 0}
    assert story.expire().body["points_expired"] == 0


# ---- purchases that earn nothing ------------------------------------------------------------


def test_a_purchase_too_small_to_earn_a_point_is_recorded_without_a_lot(story):
    outcome = story.purchase("t1", "0.99")

    assert outcome.status == 201
    assert outcome.body["points_earned"] == 0
    assert outcome.body["status"] == "available"
    [recorded] = story.events(of_type=Member.PurchaseRecorded)
    assert recorded.points == 0
    assert story.events(of_type=Member.PointsAccrued) == []
    assert story.lots() == {}
    assert story.lifetime()["earned"] == 0
    assert story.member().purchases["shop:t1"]["amount"] == Decimal("0.99")


def test_a_zero_point_purchase_still_counts_towards_the_tier(story):
    story.purchase("t1", "499.50")
    story.purchase("t2", "0.50")

    assert story.member().tier == "silver"


def test_a_zero_point_purchase_can_still_be_returned_and_reverses_nothing(story):
    story.purchase("t1", "0.99")

    outcome = story.return_("r1", "t1", "0.99")

    assert outcome.body["points_reversed"] == 0
    assert story.member().purchases["shop:t1"]["returned"] == Decimal("0.99")
    assert story.balance() == {"available": 0, "pending": 0, "due": 0}


# ---- refusals: each changes nothing ---------------------------------------------------------


def assert_nothing_changed(story, version_before):
    assert story.version() == version_before
    assert story.member().purchases == {}
    assert story.lots() == {}


def test_a_purchase_in_another_currency_is_refused_and_changes_nothing(story):
    version = story.version()

    with pytest.raises(CurrencyMismatch):
        story.purchase("t1", "10.00", currency="USD")

    assert_nothing_changed(story, version)


def test_a_purchase_from_a_store_the_partner_does_not_own_is_refused_and_changes_nothing(story):
    version = story.version()

    with pytest.raises(StoreNotInPartner):
        story.purchase("t1", "10.00", store_id="someone-elses-store")

    assert_nothing_changed(story, version)


def test_a_purchase_from_an_unknown_partner_is_refused(story):
    version = story.version()

    with pytest.raises(NotFound):
        story.purchase("t1", "10.00", partner_id="nobody")

    assert_nothing_changed(story, version)


def test_a_purchase_for_an_unknown_member_is_refused(story):
    with pytest.raises(NotFound):
        story.purchase("t1", "10.00", member_id="ghost")

    assert story.version() == 1


def test_a_euro_amount_with_fractions_of_a_cent_is_refused_and_changes_nothing(story):
    version = story.version()

    with pytest.raises(InvalidAmount):
        story.purchase("t1", "10.001")

    assert_nothing_changed(story, version)


def test_trailing_zeros_beyond_the_cents_are_not_extra_decimals(story):
    outcome = story.purchase("t1", "10.0100")

    assert outcome.body["points_earned"] == 10


def test_a_yen_amount_with_any_decimals_is_refused_but_whole_yen_earn(make_story):
    story = make_story(currency="JPY")

    with pytest.raises(InvalidAmount):
        story.purchase("t1", "100.5")
    outcome = story.purchase("t2", "100")

    assert outcome.body["points_earned"] == 100
    assert list(story.member().purchases) == ["shop:t2"]


@pytest.mark.parametrize("amount", ["0", "0.00", "-5.00"])
def test_a_zero_or_negative_purchase_is_refused_and_changes_nothing(story, amount):
    version = story.version()

    with pytest.raises(InvalidAmount):
        story.purchase("t1", amount)

    assert_nothing_changed(story, version)


def test_a_purchase_dated_more_than_five_minutes_ahead_is_refused_and_changes_nothing(story, clock):
    version = story.version()

    with pytest.raises(InvalidRequest) as refused:
        story.purchase("t1", "10.00", occurred_at=clock() + timedelta(minutes=5, seconds=1))

    assert refused.value.field == "occurred_at"
    assert_nothing_changed(story, version)


def test_a_store_clock_up_to_five_minutes_fast_is_tolerated(story, clock):
    ahead = clock() + timedelta(minutes=5)

    outcome = story.purchase("t1", "10.00", occurred_at=ahead)

    assert outcome.body["points_earned"] == 10
    assert story.member().purchases["shop:t1"]["occurred_at"] == ahead


def test_a_purchase_time_without_a_utc_offset_is_refused(story):
    version = story.version()

    with pytest.raises(InvalidTime):
        story.purchase("t1", "10.00", occurred_at=datetime(2025, 3, 1, 12, 0))

    assert_nothing_changed(story, version)


def test_a_refused_posting_leaves_its_transaction_id_free_for_the_corrected_one(story):
    with pytest.raises(CurrencyMismatch):
        story.purchase("t1", "10.00", currency="USD")

    corrected = story.purchase("t1", "10.00")

    assert corrected.replayed is False
    assert corrected.body["points_earned"] == 10
    assert story.available() == 10


def test_an_amount_more_precise_than_its_currency_is_refused_however_many_digits_it_has(story):
    # 30 decimal places: rounded to the 28 digits of Decimal's default context it would look like 1.
    with pytest.raises(InvalidAmount, match="more decimal places than EUR allows"):
        story.purchase("t1", "0.999999999999999999999999999999")
    assert story.events(of_type=Member.PurchaseRecorded) == [] and story.available() == 0


def test_points_are_floored_exactly_not_after_rounding_to_28_digits():
    from domain.money import earned_points, points_to_reverse

    # Rounded to Decimal's default 28 digits first, each of these came out a whole point higher.
    assert earned_points(Decimal("0.999999999999999999999999999999"), Decimal(1), Decimal(1)) == 0
    assert points_to_reverse(10**12, Decimal("3"), Decimal(0), Decimal("2.999999999999999999999999999")) == \
        999999999999


def test_a_purchase_that_would_earn_more_points_than_a_balance_can_hold_is_refused(make_story):
    # Valid rules, absurd together: 10^6 points a euro at a x10^6 tier. Refused, nothing stored
    # (stored, it would stop every projection: no 64-bit column holds 10^21).
    story = make_story(earn_rate="1000000", tiers=[{"name": "base", "qualifying_spend": "0", "multiplier": "1000000"}])
    with pytest.raises(InvalidAmount, match="would earn 999999999990000000000 points"):
        story.purchase("t1", "999999999.99")
    assert story.events(of_type=Member.PurchaseRecorded) == []
    assert story.purchase("t2", "1.00").body["points_earned"] == 10**12  # at the bound: accepted
