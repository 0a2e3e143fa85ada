"""Tiers, exactly-once writes, enrolment, batches, and looking back in time."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from application.commands import CreateProgram, EnrolMember, Outcome, RecordPurchase, Redeem, RegisterPartner
from application.errors import Conflict, IdempotencyConflict, InvalidRequest, NotFound
from domain.errors import CurrencyMismatch, DomainError, InsufficientPoints, InvalidAmount
from domain.member import Member


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def months_later(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    return moment.replace(year=moment.year + index // 12, month=index % 12 + 1)


def purchase_command(transaction_id: str, amount: str, member_id: str = "m1", **fields) -> RecordPurchase:
    return RecordPurchase(actor="pos:shop", partner_id="shop", transaction_id=transaction_id, store_id="s1",
                          amount=Decimal(amount), currency=fields.pop("currency", "EUR"), member_id=member_id,
                          **fields)


# ---- tier upgrades --------------------------------------------------------------------------


def test_the_purchase_that_reaches_silver_earns_at_base_and_the_next_one_earns_at_silver(story, start):
    qualifying = story.purchase("t1", "600.00")

    assert qualifying.body["points_earned"] == 600
    assert qualifying.body["tier"] == "silver"
    [change] = story.events(of_type=Member.TierChanged)
    assert (change.from_tier, change.to_tier, change.direction) == ("base", "silver", "up")
    assert change.qualifying_spend == Decimal("600.00")
    assert change.revision == 1
    assert "purchase t1" in change.reason and "600.00" in change.reason
    assert story.member().tier_since == start

    assert story.purchase("t2", "100.00").body["points_earned"] == 150
    recorded = {e.transaction_id: e for e in story.events(of_type=Member.PurchaseRecorded)}
    assert (recorded["t1"].tier, recorded["t1"].multiplier) == ("base", Decimal("1"))
    assert (recorded["t2"].tier, recorded["t2"].multiplier) == ("silver", Decimal("1.5"))


def test_spend_adds_up_across_purchases_in_the_window_until_it_earns_the_upgrade(story, start):
    story.purchase("t1", "300.00", occurred_at=start - timedelta(days=30))
    assert story.member().tier == "base"

    second = story.purchase("t2", "250.00")

    assert second.body["points_earned"] == 250
    assert second.body["tier"] == "silver"
    [change] = story.events(of_type=Member.TierChanged)
    assert change.qualifying_spend == Decimal("550.00")


def test_spend_older_than_the_window_does_not_count_towards_an_upgrade(story, start):
    story.purchase("t1", "400.00", occurred_at=months_later(start, -13))

    story.purchase("t2", "200.00")

    assert story.member().tier == "base"
    assert story.events(of_type=Member.TierChanged) == []


def test_a_single_big_purchase_jumps_straight_to_gold(story):
    outcome = story.purchase("t1", "1200.00")

    assert outcome.body["points_earned"] == 1200
    [change] = story.events(of_type=Member.TierChanged)
    assert (change.from_tier, change.to_tier) == ("base", "gold")
    assert story.purchase("t2", "10.00").body["points_earned"] == 20


# ---- tier downgrades happen only at review --------------------------------------------------


def test_a_return_does_not_lower_the_tier_until_the_next_review(story):
    story.purchase("t1", "600.00")

    story.return_("r1", "t1", "300.00")

    assert story.member().tier == "silver"
    outcome = story.review_tier()
    assert outcome.body == {"member_id": "m1", "tier": "base", "changed": "down"}
    [_, down] = story.events(of_type=Member.TierChanged)
    assert down.qualifying_spend == Decimal("300.00")


def test_a_silver_member_whose_spend_lapsed_keeps_silver_and_its_multiplier_until_reviewed(story, clock, start):
    story.purchase("t1", "600.00")
    clock.set(months_later(start, 13))

    late = story.purchase("t2", "10.00")

    assert late.body["tier"] == "silver"
    assert late.body["points_earned"] == 15
    assert len(story.events(of_type=Member.TierChanged)) == 1


def test_a_tier_review_downgrades_when_the_rolling_window_spend_falls(story, clock, start):
    story.purchase("t1", "600.00")
    review_at = months_later(start, 12) + timedelta(days=1)
    clock.set(review_at)

    outcome = story.review_tier(review_at)

    assert outcome.body["changed"] == "down"
    assert story.member().tier == "base"
    assert story.member().tier_since == review_at
    down = story.events(of_type=Member.TierChanged)[-1]
    assert (down.from_tier, down.to_tier, down.direction) == ("silver", "base", "down")
    assert down.reason == "tier review: qualifying spend 0 over 12 months"
    assert down.occurred_at == review_at


def test_a_late_posting_earns_at_the_tier_held_when_it_was_made(story, start):
    # Gold from today's 1,000; a till that was offline posts a purchase made ten days ago.
    story.purchase("t1", "1000.00")
    late = story.purchase("t0", "100.00", occurred_at=start - timedelta(days=10))
    assert late.body["points_earned"] == 100, "base then: x1, not today's gold x2"
    recorded = {e.transaction_id: e for e in story.events(of_type=Member.PurchaseRecorded)}
    assert (recorded["t0"].tier, recorded["t0"].multiplier) == ("base", Decimal("1"))
    assert story.member().tier == "gold" and late.body["tier"] == "gold"
    assert story.purchase("t2", "100.00").body["points_earned"] == 200  # today: gold


def test_a_late_posting_dated_before_a_review_does_not_undo_it(story, clock, start):
    story.purchase("t1", "1000.00")  # gold
    review_at = months_later(start, 13)
    clock.set(review_at)
    assert story.review_tier(review_at).body["changed"] == "down"
    # Dated inside the gold year, posted after the review: earns at gold, and today stays base.
    late = story.purchase("t-late", "1.00", occurred_at=months_later(start, 10))
    assert late.body["points_earned"] == 2 and late.body["tier"] == "base"
    assert story.member().tier == "base" and story.member().tier_since == review_at
    assert story.purchase("t2", "100.00").body["points_earned"] == 100


def test_a_review_run_late_for_an_earlier_date_does_not_undo_a_later_upgrade(story, clock, start):
    story.purchase("t1", "1000.00", occurred_at=start)  # gold from `start`
    assert story.review_tier(start - timedelta(days=10)).body["changed"] is None  # base then, base it stays
    assert story.member().tier == "gold"
    assert [e.to_tier for e in story.events(of_type=Member.TierChanged)] == ["gold"]
    assert story.purchase("t2", "100.00").body["points_earned"] == 200


def test_a_tier_review_keeps_a_member_who_still_qualifies(story, clock, start):
    story.purchase("t1", "600.00")
    clock.set(months_later(start, 11))
    version = story.version()

    outcome = story.review_tier()

    assert outcome.body == {"member_id": "m1", "tier": "silver", "changed": None}
    assert story.version() == version


def test_a_gold_member_with_only_silver_spend_left_in_the_window_is_reviewed_down_to_silver(story, clock, start):
    story.purchase("t1", "1200.00", occurred_at=months_later(start, -6))
    story.purchase("t2", "600.00")
    clock.set(months_later(start, 7))

    story.review_tier()

    assert story.member().tier == "silver"
    down = story.events(of_type=Member.TierChanged)[-1]
    assert (down.from_tier, down.to_tier, down.qualifying_spend) == ("gold", "silver", Decimal("600.00"))


def test_a_tier_review_uses_the_thresholds_in_force_at_its_date(story, clock, start):
    story.purchase("t1", "600.00")
    story.revise(start + timedelta(days=1), tiers=[
        {"name": "base", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "silver", "qualifying_spend": "800", "multiplier": "1.5"},
    ])
    clock.advance(days=2)

    story.review_tier()

    down = story.events(of_type=Member.TierChanged)[-1]
    assert (down.to_tier, down.revision) == ("base", 2)


# ---- exactly-once postings ------------------------------------------------------------------


def test_a_repeated_purchase_returns_the_original_outcome_and_changes_nothing(story, clock):
    first = story.purchase("t1", "40.00")
    version = story.version()
    clock.advance(hours=3)

    again = story.purchase("t1", "40.00")

    assert again.replayed is True
    assert (again.status, again.body) == (first.status, first.body)
    assert story.version() == version
    assert story.available() == 40
    assert len(story.events(of_type=Member.PurchaseRecorded)) == 1


def test_the_same_amount_written_with_more_zeros_is_the_same_request(story):
    story.purchase("t1", "25.00")

    again = story.purchase("t1", "25.0")

    assert again.replayed is True
    assert story.available() == 25


def test_a_transaction_id_reused_for_a_different_purchase_is_an_idempotency_conflict(story):
    story.purchase("t1", "40.00")
    version = story.version()

    with pytest.raises(IdempotencyConflict):
        story.purchase("t1", "41.00")

    assert story.version() == version
    assert story.available() == 40


def test_the_same_transaction_id_at_two_partners_is_two_purchases(story):
    story.ledger.execute(RegisterPartner(actor="admin", partner_id="other", name="Other", program_id="p1",
                                         stores=["s2"]))

    story.purchase("t1", "40.00")
    other = story.purchase("t1", "40.00", partner_id="other", store_id="s2")

    assert other.replayed is False
    assert story.available() == 80


def test_a_repeated_return_replays_and_reverses_nothing_more(story):
    story.purchase("t1", "100.00")
    first = story.return_("r1", "t1", "30.00")
    version = story.version()

    again = story.return_("r1", "t1", "30.00")

    assert again.replayed is True and again.body == first.body
    assert story.version() == version
    assert story.available() == 70
    with pytest.raises(IdempotencyConflict):
        story.return_("r1", "t1", "31.00")


def test_a_repeated_redemption_replays_and_spends_nothing_more(story):
    story.purchase("t1", "100.00")
    first = story.redeem("x1", 30)
    version = story.version()

    again = story.redeem("x1", 30)

    assert again.replayed is True and again.body == first.body
    assert story.version() == version
    assert story.available() == 70
    with pytest.raises(IdempotencyConflict):
        story.redeem("x1", 31)


def test_a_repeated_adjustment_replays_and_credits_nothing_more(story):
    first = story.adjust("a1", 25, "goodwill")
    version = story.version()

    again = story.adjust("a1", 25, "goodwill")

    assert again.replayed is True and again.body == first.body
    assert story.version() == version
    assert story.available() == 25
    with pytest.raises(IdempotencyConflict):
        story.adjust("a1", -25, "correction")


# ---- enrolment ------------------------------------------------------------------------------


def test_enrolling_the_same_member_twice_returns_the_member_once(story):
    first = story.enrol("m2", card_number="C-2", name="Bea")

    again = story.enrol("m2", card_number="C-2", name="Bea")

    assert again.replayed is True
    assert again.body["member_id"] == first.body["member_id"] == "m2"
    assert story.version("m2") == 1


def test_enrolling_an_existing_member_id_with_different_details_is_an_idempotency_conflict(story):
    story.enrol("m2", name="Bea")

    with pytest.raises(IdempotencyConflict):
        story.enrol("m2", name="Someone Else")

    assert story.member("m2").name == "Bea"


def test_a_card_number_belongs_to_one_member_per_program(story):
    story.enrol("m2", card_number="C-1")

    with pytest.raises(Conflict):
        story.enrol("m3", card_number="C-1")

    with pytest.raises(NotFound):
        story.member("m3")
    assert story.ledger.member_id_for_card("p1", "C-1") == "m2"


def test_the_same_card_number_may_belong_to_a_member_of_another_program(story, rules):
    story.ledger.execute(CreateProgram(actor="admin", program_id="p2", name="Two", currency="EUR", rules=rules))
    story.enrol("m2", card_number="C-1")

    story.ledger.execute(EnrolMember(actor="admin", program_id="p2", member_id="m3", card_number="C-1"))

    assert story.ledger.member_id_for_card("p1", "C-1") == "m2"
    assert story.ledger.member_id_for_card("p2", "C-1") == "m3"


def test_a_member_enrolled_by_card_alone_gets_an_id_derived_from_the_card(story, rules):
    story.ledger.execute(CreateProgram(actor="admin", program_id="p2", name="Two", currency="EUR", rules=rules))

    first = story.enrol(card_number="C-9")
    retry = story.enrol(card_number="C-9")
    elsewhere = story.ledger.execute(EnrolMember(actor="admin", program_id="p2", card_number="C-9"))

    member_id = first.body["member_id"]
    assert retry.replayed is True and retry.body["member_id"] == member_id
    assert elsewhere.body["member_id"] != member_id
    assert story.ledger.member_id_for_card("p1", "C-9") == member_id
    assert story.member(member_id).card_number == "C-9"


def test_members_enrolled_without_an_id_or_a_card_each_get_a_new_id(story):
    first = story.enrol(name="Anon")
    second = story.enrol(name="Anon")

    assert second.replayed is False
    assert first.body["member_id"] != second.body["member_id"]


def test_an_enrolment_dated_in_the_future_is_refused_and_leaves_its_card_free(story, clock):
    with pytest.raises(InvalidRequest):
        story.enrol("m2", card_number="C-5", occurred_at=clock() + timedelta(hours=1))

    with pytest.raises(NotFound):
        story.member("m2")
    assert story.enrol("m3", card_number="C-5").body["member_id"] == "m3"


# ---- batches --------------------------------------------------------------------------------


def test_a_batch_judges_each_command_alone(story):
    results = story.ledger.execute_batch([
        purchase_command("t1", "10.00"),
        purchase_command("t2", "10.00", currency="USD"),
        purchase_command("t3", "-1.00"),
        purchase_command("t4", "20.00"),
    ])

    assert isinstance(results[0], Outcome) and results[0].body["points_earned"] == 10
    assert isinstance(results[1], CurrencyMismatch)
    assert isinstance(results[2], InvalidAmount)
    assert isinstance(results[3], Outcome) and results[3].body["points_earned"] == 20
    assert story.available() == 30
    assert set(story.member().purchases) == {"shop:t1", "shop:t4"}


def test_a_purchase_repeated_within_one_batch_counts_once(story):
    first, duplicate = story.ledger.execute_batch([purchase_command("t1", "10.00"), purchase_command("t1", "10.00")])

    assert first.replayed is False
    assert duplicate.replayed is True and duplicate.body == first.body
    assert story.available() == 10
    assert len(story.events(of_type=Member.PurchaseRecorded)) == 1


def test_a_batch_replays_a_purchase_that_was_posted_before(story):
    story.purchase("t1", "10.00")
    version = story.version()

    [again] = story.ledger.execute_batch([purchase_command("t1", "10.00")])

    assert again.replayed is True
    assert story.version() == version


def test_commands_for_one_member_in_one_batch_apply_in_order(story):
    bought, redeemed, overdrawn = story.ledger.execute_batch([
        purchase_command("t1", "50.00"),
        Redeem(actor="support", member_id="m1", redemption_id="x1", points=50),
        Redeem(actor="support", member_id="m1", redemption_id="x2", points=1),
    ])

    assert bought.body["points_earned"] == 50
    assert redeemed.body["balance"]["available"] == 0
    assert isinstance(overdrawn, InsufficientPoints)
    assert story.lifetime()["redeemed"] == 50


def test_a_command_refused_after_touching_state_does_not_take_the_batch_down(story, clock):
    results = story.ledger.execute_batch([
        purchase_command("t1", "10.00"),
        EnrolMember(actor="admin", program_id="p1", member_id="m2", card_number="C-5",
                    occurred_at=clock() + timedelta(hours=1)),
        purchase_command("t2", "15.00"),
    ])

    assert [type(r) for r in results] == [Outcome, InvalidRequest, Outcome]
    assert story.available() == 25
    with pytest.raises(NotFound):
        story.member("m2")
    assert story.enrol("m3", card_number="C-5").replayed is False


def test_an_empty_batch_does_nothing(story):
    version = story.version()

    assert story.ledger.execute_batch([]) == []
    assert story.version() == version


# ---- looking back: as_of, known_at, history -------------------------------------------------


def test_the_balance_as_of_an_earlier_time_counts_only_what_had_happened_by_then(story, start):
    story.purchase("t1", "100.00", occurred_at=start - timedelta(days=10))
    story.purchase("t2", "50.00", occurred_at=start - timedelta(days=5))
    story.redeem("x1", 30)

    at = story.ledger.balance_as_of

    assert at("m1", as_of=start - timedelta(days=7))["available"] == 100
    assert at("m1", as_of=start - timedelta(days=1))["available"] == 150
    assert at("m1")["available"] == 120
    assert at("m1", as_of=start - timedelta(days=11))["available"] == 0


def test_the_balance_as_of_a_past_time_shows_points_that_were_pending_then(make_story, clock, start):
    story = make_story(pending_days=14)
    story.purchase("t1", "50.00")
    clock.advance(days=30)

    then = story.ledger.balance_as_of("m1", as_of=start + timedelta(days=1))
    now = story.ledger.balance_as_of("m1")

    assert (then["available"], then["pending"]) == (0, 50)
    assert (now["available"], now["pending"]) == (50, 0)


def test_the_balance_as_of_a_past_time_shows_the_tier_held_then(story, clock, start):
    story.purchase("t1", "600.00")
    clock.advance(days=1)

    assert story.ledger.balance_as_of("m1", as_of=start - timedelta(seconds=1))["tier"] == "base"
    assert story.ledger.balance_as_of("m1")["tier"] == "silver"


def test_known_at_shows_what_the_ledger_had_recorded_by_then(story, start):
    story.purchase("t1", "100.00")
    time.sleep(0.01)
    known_at = datetime.now(timezone.utc)  # recorded times are the store's, not the story's clock
    time.sleep(0.01)
    story.purchase("late", "40.00", occurred_at=start - timedelta(days=3))  # posted late, back-dated

    then = story.ledger.balance_as_of("m1", known_at=known_at)
    now = story.ledger.balance_as_of("m1")
    earlier_then = story.ledger.balance_as_of("m1", as_of=start - timedelta(days=1), known_at=known_at)
    earlier_now = story.ledger.balance_as_of("m1", as_of=start - timedelta(days=1))

    assert then["available"] == 100 and now["available"] == 140
    assert earlier_then["available"] == 0 and earlier_now["available"] == 40


def test_a_member_not_yet_recorded_at_known_at_is_not_found(story):
    with pytest.raises(NotFound):
        story.ledger.balance_as_of("m1", known_at=datetime(2000, 1, 1, tzinfo=timezone.utc))


def test_history_lists_every_event_oldest_first_with_who_caused_it(story, clock, start):
    story.purchase("t1", "600.00")
    clock.advance(days=1)
    story.redeem("x1", 100)

    history = story.ledger.history("m1")

    assert [h["type"] for h in history] == [
        "MemberEnrolled", "PurchaseRecorded", "PointsAccrued", "TierChanged", "PointsRedeemed",
    ]
    assert [h["version"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["actor"] for h in history] == ["admin@example.com", "pos:shop", "pos:shop", "pos:shop", "support"]
    assert history[-1]["occurred_at"] == "2025-03-02T12:00:00Z"
    assert history[-1]["data"]["consumed"] == [["L1", 100]]
    assert "request_hash" not in history[0]["data"]

    assert [h["type"] for h in story.ledger.history("m1", as_of=start)][-1] == "TierChanged"


def test_a_refusal_leaves_no_trace_in_history(story):
    before = story.ledger.history("m1")

    for attempt in (lambda: story.redeem("x1", 5), lambda: story.purchase("t1", "1.001")):
        with pytest.raises(DomainError):
            attempt()

    assert story.ledger.history("m1") == before



def test_a_review_as_of_a_date_ignores_returns_made_after_it(story, clock, start):
    # 600 EUR on day 0 makes silver; half of it comes back on day 20. A review as of day 10
    # (run late, on day 30) still sees 600 of spend; one as of day 25 sees 300.
    story.purchase("t-1", "600", occurred_at=start)
    clock.set(start + timedelta(days=20))
    story.return_("t-1-r", "t-1", "300", occurred_at=start + timedelta(days=20))
    clock.set(start + timedelta(days=30))
    assert story.review_tier(as_of=start + timedelta(days=10)).body["changed"] is None
    assert story.member().tier == "silver"
    assert story.review_tier(as_of=start + timedelta(days=25)).body["changed"] == "down"
    assert story.member().tier == "base"
