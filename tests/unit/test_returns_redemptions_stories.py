"""Returns, redemptions, cancellations, expiry and support adjustments, told as member stories."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from application.commands import ReverseEvent
from application.errors import IdempotencyConflict
from domain.errors import (
    AlreadyReversed,
    DuplicatePosting,
    InsufficientPoints,
    InvalidAmount,
    ReturnExceedsPurchase,
    UnknownPurchase,
    UnknownRedemption,
)
from domain.member import ADJUSTMENT_REASONS, Member
from domain.money import points_to_reverse


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


# ---- returns --------------------------------------------------------------------------------


def test_a_member_who_returns_half_a_purchase_loses_half_its_points(story):
    story.purchase("t1", "100.00")

    outcome = story.return_("r1", "t1", "50.00")

    assert outcome.body["points_reversed"] == 50
    assert story.available() == 50
    assert story.lifetime()["reversed"] == 50
    [reversal] = story.events(of_type=Member.AccrualReversed)
    assert (reversal.lot_id, reversal.points, reversal.from_remaining, reversal.clawback) == ("L1", 50, 50, 0)


def test_three_returns_of_a_third_each_reverse_exactly_what_the_purchase_earned(story):
    story.purchase("t1", "100.00")

    reversed_points = [story.return_(f"r{i}", "t1", amount).body["points_reversed"]
                       for i, amount in enumerate(["33.33", "33.33", "33.34"], start=1)]

    assert reversed_points == [33, 33, 34]
    assert sum(reversed_points) == 100
    assert story.balance() == {"available": 0, "pending": 0, "due": 0}


def test_the_return_that_completes_the_amount_takes_the_exact_remainder_even_when_thirds_do_not_divide(make_story):
    story = make_story(earn_rate="10")
    story.purchase("t1", "10.00")  # 100 points

    first = story.return_("r1", "t1", "3.33").body["points_reversed"]
    second = story.return_("r2", "t1", "3.33").body["points_reversed"]
    last = story.return_("r3", "t1", "3.34").body["points_reversed"]

    assert (first, second, last) == (33, 33, 34)
    assert story.member().purchases["shop:t1"]["reversed_points"] == 100
    assert story.available() == 0


def test_small_returns_that_each_round_to_nothing_add_up_on_the_cumulative_amount(story):
    story.purchase("t1", "99.00")  # 99 points

    first = story.return_("r1", "t1", "0.50").body["points_reversed"]
    second = story.return_("r2", "t1", "0.50").body["points_reversed"]

    assert (first, second) == (0, 1)  # floor(99 x 0.5 / 99) = 0, then floor(99 x 1 / 99) = 1
    assert story.available() == 98


def test_proportional_reversal_never_sums_to_more_or_less_than_was_earned():
    for earned, amount, parts in [(100, Decimal("100"), 3), (7, Decimal("9.99"), 4), (1, Decimal("3"), 3)]:
        share = (amount / parts).quantize(Decimal("0.01"))
        returns = [share] * (parts - 1) + [amount - share * (parts - 1)]
        returned, total = Decimal(0), 0
        for part in returns:
            total += points_to_reverse(earned, amount, returned, part)
            returned += part
        assert total == earned


def test_a_return_can_never_exceed_what_is_left_of_the_purchase_and_changes_nothing(story):
    story.purchase("t1", "100.00")
    story.return_("r1", "t1", "60.00")
    version = story.version()

    with pytest.raises(ReturnExceedsPurchase) as refused:
        story.return_("r2", "t1", "40.01")

    assert refused.value.facts["returnable"] == "40.00"
    assert story.version() == version
    assert story.available() == 40
    assert story.return_("r2", "t1", "40.00").body["points_reversed"] == 40


def test_a_single_return_larger_than_the_purchase_is_refused(story):
    story.purchase("t1", "20.00")

    with pytest.raises(ReturnExceedsPurchase):
        story.return_("r1", "t1", "20.01")

    assert story.available() == 20
    assert story.member().purchases["shop:t1"]["returned"] == Decimal(0)


def test_a_return_of_a_purchase_the_ledger_never_saw_is_refused(story):
    story.purchase("t1", "20.00")

    with pytest.raises(UnknownPurchase):
        story.return_("r1", "no-such-purchase", "5.00")

    assert story.available() == 20


@pytest.mark.parametrize("amount", ["0", "-1.00", "1.001"])
def test_a_return_with_a_non_positive_or_over_precise_amount_is_refused(story, amount):
    story.purchase("t1", "20.00")
    version = story.version()

    with pytest.raises(InvalidAmount):
        story.return_("r1", "t1", amount)

    assert story.version() == version


def test_a_return_cannot_be_dated_before_its_purchase(story, start):
    story.purchase("t1", "20.00")

    with pytest.raises(InvalidAmount):
        story.return_("r1", "t1", "5.00", occurred_at=start - timedelta(days=1))

    assert story.available() == 20


def test_returning_a_purchase_whose_points_were_spent_shows_a_clawback_as_a_negative_balance(story):
    story.purchase("t1", "100.00")
    story.redeem("x1", 80)

    outcome = story.return_("r1", "t1", "100.00")

    assert outcome.body["points_reversed"] == 100
    assert outcome.body["balance"]["available"] == -80
    [reversal] = story.events(of_type=Member.AccrualReversed)
    assert (reversal.from_remaining, reversal.from_expired, reversal.clawback) == (20, 0, 80)
    assert story.lots()["L1"].remaining == -80
    assert story.lifetime()["reversed"] == 100


def test_a_clawback_is_paid_back_by_the_next_points_earned(story):
    story.purchase("t1", "100.00")
    story.redeem("x1", 100)
    story.return_("r1", "t1", "100.00")

    story.purchase("t2", "150.00")

    assert story.available() == 50
    with pytest.raises(InsufficientPoints):
        story.redeem("x2", 51)
    assert story.redeem("x2", 50).body["balance"]["available"] == 0


def test_returning_a_purchase_whose_points_already_expired_does_not_take_them_twice(story):
    story.purchase("t1", "100.00", occurred_at=utc(2024, 2, 1))
    assert story.expire().body["points_expired"] == 100

    outcome = story.return_("r1", "t1", "100.00")

    assert outcome.body["points_reversed"] == 100
    [reversal] = story.events(of_type=Member.AccrualReversed)
    assert (reversal.from_remaining, reversal.from_expired, reversal.clawback) == (0, 100, 0)
    assert story.available() == 0
    assert story.lifetime()["reversed"] == 0  # the points already left the balance as expired


def test_returning_a_purchase_that_was_partly_spent_then_expired_claws_back_only_the_spent_part(story):
    story.purchase("t1", "100.00", occurred_at=utc(2024, 2, 1))
    story.redeem("x1", 30, occurred_at=utc(2024, 6, 1))
    story.expire()

    story.return_("r1", "t1", "100.00")

    [reversal] = story.events(of_type=Member.AccrualReversed)
    assert (reversal.from_remaining, reversal.from_expired, reversal.clawback) == (0, 70, 30)
    assert story.available() == -30


def test_a_purchase_returned_within_the_return_window_never_becomes_available(make_story, clock):
    story = make_story(pending_days=14)
    story.purchase("t1", "50.00")

    story.return_("r1", "t1", "50.00")
    clock.advance(days=15)

    assert story.balance() == {"available": 0, "pending": 0, "due": 0}


# ---- redemptions ----------------------------------------------------------------------------


def test_a_redemption_spends_the_oldest_points_first_and_records_which_lots_it_used(story, start):
    story.purchase("newer", "100.00", occurred_at=start - timedelta(days=10))  # L1
    story.purchase("older", "50.00", occurred_at=start - timedelta(days=20))  # L2, posted late

    story.redeem("x1", 70, reward="mug")

    [redeemed] = story.events(of_type=Member.PointsRedeemed)
    assert redeemed.consumed == [["L2", 50], ["L1", 20]]
    assert (redeemed.points, redeemed.reward) == (70, "mug")
    assert story.lots()["L2"].remaining == 0
    assert story.lots()["L1"].remaining == 80
    assert story.lifetime()["redeemed"] == 70


def test_a_member_can_never_redeem_more_than_is_available_and_nothing_changes(story):
    story.purchase("t1", "40.00")
    version = story.version()

    with pytest.raises(InsufficientPoints) as refused:
        story.redeem("x1", 41)

    assert refused.value.facts["available"] == 40
    assert story.version() == version
    assert story.lots()["L1"].remaining == 40
    assert story.redeem("x1", 40).replayed is False  # the refused id was not used up


def test_a_member_with_a_debt_cannot_redeem_anything(story):
    story.adjust("a1", -10, "correction")

    with pytest.raises(InsufficientPoints):
        story.redeem("x1", 1)


@pytest.mark.parametrize("points", [0, -5])
def test_redeeming_zero_or_negative_points_is_refused(story, points):
    story.purchase("t1", "40.00")

    with pytest.raises(InvalidAmount):
        story.redeem("x1", points)

    assert story.available() == 40


def test_pending_points_cannot_be_redeemed_until_the_return_window_closes(make_story, clock):
    story = make_story(pending_days=14)
    story.purchase("t1", "50.00")

    with pytest.raises(InsufficientPoints) as refused:
        story.redeem("x1", 10)
    assert refused.value.facts["available"] == 0

    clock.advance(days=14)
    assert story.redeem("x1", 10).body["balance"] == {"available": 40, "pending": 0, "due_for_expiry": 0}


def test_points_past_their_expiry_cannot_be_redeemed_even_before_the_expiry_job_runs(story):
    story.purchase("t1", "100.00", occurred_at=utc(2024, 2, 1))

    assert story.balance() == {"available": 0, "pending": 0, "due": 100}
    with pytest.raises(InsufficientPoints):
        story.redeem("x1", 1)


# ---- cancelling a redemption ----------------------------------------------------------------


def test_cancelling_a_redemption_puts_the_points_back_into_the_lots_they_came_from(story, start):
    story.purchase("older", "50.00", occurred_at=start - timedelta(days=20))  # L1
    story.purchase("newer", "100.00", occurred_at=start - timedelta(days=10))  # L2
    story.redeem("x1", 70)

    outcome = story.cancel("x1")

    assert (outcome.body["points_restored"], outcome.body["points_expired"]) == (70, 0)
    [cancelled] = story.events(of_type=Member.RedemptionCancelled)
    assert cancelled.restored == [["L1", 50], ["L2", 20]]
    assert (story.lots()["L1"].remaining, story.lots()["L2"].remaining) == (50, 100)
    assert story.available() == 150
    assert story.lifetime()["redeemed"] == 0
    assert story.member().redemptions["x1"]["cancelled"] is True


def test_points_restored_to_a_lot_already_past_its_expiry_come_back_expired(story, clock):
    story.purchase("old", "40.00", occurred_at=utc(2024, 3, 10))  # L1, expires 2025-03-10
    story.purchase("new", "100.00", occurred_at=utc(2025, 2, 1))  # L2, expires 2026-02-01
    story.redeem("x1", 60)  # on 2025-03-01: 40 from L1, 20 from L2
    clock.set(utc(2025, 3, 15))

    outcome = story.cancel("x1")

    assert (outcome.body["points_restored"], outcome.body["points_expired"]) == (20, 40)
    [cancelled] = story.events(of_type=Member.RedemptionCancelled)
    assert (cancelled.restored, cancelled.restored_expired) == ([["L2", 20]], [["L1", 40]])
    assert (story.lots()["L1"].remaining, story.lots()["L1"].expired) == (0, 40)
    assert story.available() == 100
    lifetime = story.lifetime()
    assert (lifetime["earned"], lifetime["redeemed"], lifetime["expired"]) == (140, 0, 40)


def test_a_redemption_is_cancelled_at_most_once_in_the_domain(new_member, domain_rules, start):
    member = new_member()
    member.record_purchase(partner_id="shop", store_id="s1", transaction_id="t1", amount=Decimal("50"),
                           currency="EUR", items=[], occurred_at=start, actor="pos", revision=1,
                           rules=domain_rules())
    member.redeem(redemption_id="x1", points=30, reward=None, partner_id=None, occurred_at=start, actor="s")
    member.cancel_redemption(redemption_id="x1", occurred_at=start, actor="s")
    version = member.version

    with pytest.raises(AlreadyReversed):
        member.cancel_redemption(redemption_id="x1", occurred_at=start + timedelta(days=1), actor="s")

    assert member.version == version
    assert member.balance_at(start)["available"] == 50


def test_repeating_a_cancellation_replays_it_and_restores_nothing_more(story):
    story.purchase("t1", "50.00")
    story.redeem("x1", 30)
    first = story.cancel("x1")
    version = story.version()

    again = story.cancel("x1")

    assert again.replayed is True
    assert again.body == first.body
    assert story.version() == version
    assert story.available() == 50


def test_a_second_cancellation_with_different_details_is_refused(story, clock):
    story.purchase("t1", "50.00")
    story.redeem("x1", 30)
    story.cancel("x1")

    with pytest.raises(IdempotencyConflict):
        story.cancel("x1", occurred_at=clock())

    assert story.available() == 50


def test_cancelling_a_redemption_that_never_happened_is_refused(story):
    with pytest.raises(UnknownRedemption):
        story.cancel("nope")


def test_a_cancellation_cannot_be_dated_before_its_redemption(story, start):
    story.purchase("t1", "50.00")
    story.redeem("x1", 30)

    with pytest.raises(InvalidAmount):
        story.cancel("x1", occurred_at=start - timedelta(seconds=1))

    assert story.available() == 20


# ---- expiry job -----------------------------------------------------------------------------


def test_the_expiry_job_expires_only_the_points_that_are_due(story):
    story.purchase("old", "100.00", occurred_at=utc(2024, 2, 1))  # L1, expired 2025-02-01
    story.purchase("new", "30.00")  # L2

    outcome = story.expire()

    assert outcome.body["points_expired"] == 100
    [expired] = story.events(of_type=Member.PointsExpired)
    assert expired.expired == [["L1", 100]]
    assert story.balance() == {"available": 30, "pending": 0, "due": 0}
    assert story.lifetime()["expired"] == 100


def test_running_the_expiry_job_twice_changes_nothing_the_second_time(story):
    story.purchase("old", "100.00", occurred_at=utc(2024, 2, 1))
    story.expire()
    version = story.version()

    again = story.expire()

    assert again.body["points_expired"] == 0
    assert story.version() == version
    assert story.lifetime()["expired"] == 100


def test_points_expire_at_their_expiry_moment_and_not_a_microsecond_before(story, clock, start):
    story.purchase("t1", "10.00")
    expires_at = start.replace(year=2026)
    clock.set(expires_at)

    assert story.expire(expires_at - timedelta(microseconds=1)).body["points_expired"] == 0
    assert story.expire(expires_at).body["points_expired"] == 10


def test_only_the_unspent_remainder_of_a_lot_expires(story):
    story.purchase("t1", "100.00", occurred_at=utc(2024, 2, 1))
    story.redeem("x1", 30, occurred_at=utc(2024, 6, 1))

    assert story.expire().body["points_expired"] == 70
    assert story.lifetime() == {"earned": 100, "redeemed": 30, "expired": 70, "reversed": 0, "adjusted": 0}


# ---- adjustments ----------------------------------------------------------------------------


def test_a_goodwill_credit_is_a_new_lot_available_at_once_that_expires_like_earned_points(story, start):
    outcome = story.adjust("a1", 25, "goodwill", note="late delivery")

    assert outcome.body["status"] == "applied"
    assert story.available() == 25
    [lot] = story.lots().values()
    assert (lot.source, lot.points, lot.available_at, lot.expires_at) == (
        "adjustment:a1", 25, start, start.replace(year=2026),
    )
    assert story.lifetime()["adjusted"] == 25


def test_a_debit_takes_the_oldest_points_first(story, start):
    story.purchase("older", "50.00", occurred_at=start - timedelta(days=20))  # L1
    story.purchase("newer", "100.00", occurred_at=start - timedelta(days=10))  # L2

    story.adjust("a1", -70, "duplicate_posting")

    [adjusted] = story.events(of_type=Member.PointsAdjusted)
    assert adjusted.consumed == [["L1", 50], ["L2", 20]]
    assert adjusted.lot is None
    assert story.available() == 80
    assert story.lifetime()["adjusted"] == -70


def test_a_debit_beyond_the_balance_leaves_a_visible_debt(story, start):
    story.purchase("t1", "30.00")

    outcome = story.adjust("a1", -50, "fraud")

    assert outcome.body["balance"]["available"] == -20
    [adjusted] = story.events(of_type=Member.PointsAdjusted)
    assert adjusted.consumed == [["L1", 30]]
    debt = story.lots()[adjusted.lot["lot_id"]]
    assert (debt.source, debt.points, debt.remaining, debt.expires_at) == ("adjustment:a1", -20, -20, None)
    assert story.lifetime()["adjusted"] == -50


def test_a_debt_is_paid_back_by_later_points_before_anything_can_be_redeemed(story, clock):
    story.purchase("t1", "30.00")
    story.adjust("a1", -50, "fraud")
    clock.advance(days=1)

    story.purchase("t2", "100.00")

    assert story.available() == 80
    with pytest.raises(InsufficientPoints):
        story.redeem("x1", 81)


def test_points_that_paid_a_debt_back_are_not_lost_again_when_they_expire(story, clock):
    story.purchase("t1", "30.00")
    story.adjust("a1", -50, "fraud")  # 30 taken, 20 owed
    clock.advance(days=1)
    story.purchase("t2", "100.00")  # pays the 20 back: 80 available
    clock.advance(days=400)

    assert story.expire().body["points_expired"] == 80, "the 20 that paid the debt were not the member's to lose"
    assert story.balance() == {"available": 0, "pending": 0, "due": 0}
    [expiry] = story.events(of_type=Member.PointsExpired)
    assert (expiry.expired, expiry.settled) == ([["L3", 80]], [["L3", -20], ["L2", 20]])
    debt, paid = story.lots()["L2"], story.lots()["L3"]
    assert (debt.remaining, debt.settled, paid.remaining, paid.expired, paid.settled) == (0, -20, 0, 80, 20)
    assert story.lifetime()["expired"] == 80
    assert story.expire().body["points_expired"] == 0  # nothing left: the job again changes nothing


def test_a_reversed_debit_nets_to_nothing_even_after_expiry(story, clock):
    story.adjust("a1", -100, "correction")  # on an empty account: a debt of 100
    version = story.events(of_type=Member.PointsAdjusted)[0].originator_version
    story.ledger.execute(ReverseEvent(actor="key:sue-support", member_id="m1", reversal_id="rv-1", version=version,
                                      note="debited the wrong member"))
    clock.advance(days=400)
    assert story.expire().body["points_expired"] == 0
    assert story.balance() == {"available": 0, "pending": 0, "due": 0}
    assert story.lifetime() == {"earned": 0, "redeemed": 0, "expired": 0, "reversed": 0, "adjusted": 0}


def test_a_returned_purchase_whose_points_paid_a_debt_claws_those_points_back(story, clock):
    story.purchase("t1", "30.00")
    story.adjust("a1", -50, "fraud")
    clock.advance(days=1)
    story.purchase("t2", "100.00")
    clock.advance(days=400)
    story.expire()  # 20 of t2's points paid the debt, 80 expired
    # t2 returned: its 80 expired points are not taken twice, but the 20 that paid the debt were
    # spent, so they come back as a debt: the member owes the 20 again, as before t2.
    outcome = story.return_("t2-r", "t2", "100.00")
    assert outcome.body["points_reversed"] == 100
    [reversal] = story.events(of_type=Member.AccrualReversed)
    assert (reversal.from_remaining, reversal.from_expired, reversal.clawback) == (0, 80, 20)
    assert story.available() == -20


def test_a_debt_never_expires(story, clock):
    story.adjust("a1", -10, "correction")
    clock.advance(days=365 * 5)

    assert story.expire().body["points_expired"] == 0
    assert story.balance() == {"available": -10, "pending": 0, "due": 0}


@pytest.mark.parametrize("reason", ADJUSTMENT_REASONS)
def test_every_listed_reason_code_is_accepted(story, reason):
    story.adjust("a1", 5, reason)

    adjustment = story.member().adjustments["a1"]
    assert (adjustment["points"], adjustment["reason"]) == (5, reason)


@pytest.mark.parametrize("reason", ["because", "", "GOODWILL"])
def test_an_adjustment_with_an_unlisted_reason_is_refused_and_changes_nothing(story, reason):
    version = story.version()

    with pytest.raises(InvalidAmount):
        story.adjust("a1", 5, reason)

    assert story.version() == version
    assert story.member().adjustments == {}


def test_a_zero_point_adjustment_is_refused(story):
    with pytest.raises(InvalidAmount):
        story.adjust("a1", 0, "correction")

    assert story.lifetime()["adjusted"] == 0


def test_an_adjustment_id_is_used_once_per_member(new_member, domain_rules, start):
    member = new_member()
    member.adjust(adjustment_id="a1", points=5, reason="goodwill", note="", occurred_at=start, actor="s",
                  rules=domain_rules())

    with pytest.raises(DuplicatePosting):
        member.adjust(adjustment_id="a1", points=7, reason="goodwill", note="", occurred_at=start, actor="s",
                      rules=domain_rules())

    assert member.lifetime["adjusted"] == 5


def test_a_redemption_cancelled_after_expiry_first_pays_back_the_clawback_on_its_lot(story):
    story.purchase("t1", "100.00", occurred_at=utc(2024, 2, 1))  # L1, expires 2025-02-01
    story.redeem("x1", 80, occurred_at=utc(2024, 6, 1))
    story.return_("r1", "t1", "100.00", occurred_at=utc(2024, 7, 1))  # 20 taken back, 80 clawed back
    assert story.available() == -80

    outcome = story.cancel("x1")  # on 2025-03-01, past the lot's expiry

    assert (outcome.body["points_restored"], outcome.body["points_expired"]) == (80, 0)
    assert story.balance() == {"available": 0, "pending": 0, "due": 0}
    assert story.lifetime()["expired"] == 0


def test_cancelling_then_returning_and_returning_then_cancelling_leave_the_same_balance(make_story, clock):
    def play(cancel_first: bool) -> dict[str, int]:
        clock.set(utc(2025, 3, 1))
        story = make_story()
        story.purchase("t1", "100.00", occurred_at=utc(2024, 2, 1))
        story.purchase("t2", "10.00", occurred_at=utc(2025, 1, 1))
        story.redeem("x1", 90, occurred_at=utc(2024, 6, 1))
        steps = [lambda: story.cancel("x1"), lambda: story.return_("r1", "t1", "100.00")]
        for step in steps if cancel_first else reversed(steps):
            step()
        story.expire()
        return story.balance()

    assert play(cancel_first=True) == play(cancel_first=False) == {"available": 10, "pending": 0, "due": 0}
