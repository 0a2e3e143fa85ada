"""Support staff's stories: four-eyes adjustments and reversing one specific wrong event."""

from __future__ import annotations

from datetime import timedelta

import pytest

from application.commands import Adjust, DecideAdjustment, ReverseEvent
from application.errors import Conflict, IdempotencyConflict, NotFound
from domain.errors import AlreadyDecided, AlreadyReversed, SelfApproval, UnknownEvent
from domain.member import Member, replay_member


def request(story, adjustment_id: str, points: int, actor: str = "key:sue-support", note: str = "disputed"):
    return story.ledger.execute(Adjust(actor=actor, member_id="m1", adjustment_id=adjustment_id, points=points,
                                       reason="correction", note=note))


def decide(story, adjustment_id: str, actor: str, approve: bool = True):
    return story.ledger.execute(DecideAdjustment(actor=actor, adjustment_id=adjustment_id, approve=approve,
                                                 note="checked the receipt"))


def test_an_adjustment_above_the_threshold_waits_and_changes_no_balance(story):
    # The standard program's threshold is 1000 points.
    before = story.version()
    outcome = request(story, "adj-1", 1500)
    assert outcome.status == 202 and outcome.body["status"] == "pending_approval"
    assert story.version() == before
    assert story.available() == 0


def test_an_adjustment_at_the_threshold_applies_at_once(story):
    outcome = request(story, "adj-1", 1000)
    assert outcome.status == 201 and outcome.body["status"] == "applied"
    assert story.available() == 1000


def test_a_supervisor_other_than_the_requester_approves_and_only_then_the_balance_changes(story):
    request(story, "adj-1", 1500)
    approved = decide(story, "adj-1", "key:sam-supervisor")
    assert approved.status == 200 and approved.body["status"] == "approved"
    assert approved.body["balance"]["available"] == 1500
    [event] = story.events(of_type=Member.PointsAdjusted)
    assert (event.actor, event.approved_by, event.points) == ("key:sue-support", "key:sam-supervisor", 1500)


def test_the_requester_can_never_approve_their_own_adjustment(story):
    request(story, "adj-1", -1500, actor="key:sam-supervisor")
    with pytest.raises(SelfApproval):
        decide(story, "adj-1", "key:sam-supervisor")
    assert story.available() == 0 and story.events(of_type=Member.PointsAdjusted) == []


def test_a_rejected_adjustment_never_changes_the_balance_and_cannot_then_be_approved(story):
    request(story, "adj-1", 5000)
    rejected = decide(story, "adj-1", "key:sam-supervisor", approve=False)
    assert rejected.body["status"] == "rejected"
    with pytest.raises(AlreadyDecided):
        decide(story, "adj-1", "key:other-supervisor")
    assert story.available() == 0


def test_approving_twice_by_the_same_supervisor_replays_and_applies_once(story):
    request(story, "adj-1", 1500)
    first = decide(story, "adj-1", "key:sam-supervisor")
    again = decide(story, "adj-1", "key:sam-supervisor")
    assert again.replayed and again.body["status"] == "approved"
    assert first.body["balance"] == again.body["balance"]
    assert len(story.events(of_type=Member.PointsAdjusted)) == 1
    with pytest.raises(AlreadyDecided):
        decide(story, "adj-1", "key:another-supervisor")


def test_the_same_approval_with_another_note_is_an_idempotency_conflict(story):
    request(story, "adj-1", 1500)
    decide(story, "adj-1", "key:sam-supervisor")
    changed = DecideAdjustment(actor="key:sam-supervisor", adjustment_id="adj-1", approve=True, note="on second thought")
    with pytest.raises(IdempotencyConflict):
        story.ledger.execute(changed)
    assert len(story.events(of_type=Member.PointsAdjusted)) == 1


def test_an_adjustment_id_awaiting_approval_cannot_be_reused_for_another_member(story):
    story.enrol("m2")
    request(story, "adj-1", 1500)
    with pytest.raises(Conflict):
        story.ledger.execute(Adjust(actor="key:sue", member_id="m2", adjustment_id="adj-1", points=2000,
                                    reason="goodwill", note=""))


def test_deciding_an_unknown_adjustment_is_not_found(story):
    with pytest.raises(NotFound):
        decide(story, "nope", "key:sam-supervisor")


def reverse(story, reversal_id: str, version: int):
    return story.ledger.execute(ReverseEvent(actor="key:sue-support", member_id="m1", reversal_id=reversal_id,
                                             version=version, note="posted twice by the till"))


def test_a_duplicate_posting_is_reversed_once_by_referencing_it(story):
    story.purchase("t-1", "40.00")
    story.purchase("t-1-dup", "40.00")  # the till sent it twice under two ids
    duplicate = story.events(of_type=Member.PurchaseRecorded)[1].originator_version
    outcome = reverse(story, "rev-1", duplicate)
    assert outcome.body["kind"] == "purchase"
    assert story.available() == 40
    [reversed_event] = story.events(of_type=Member.EventReversed)
    assert reversed_event.version == duplicate
    with pytest.raises(AlreadyReversed):
        reverse(story, "rev-2", duplicate)
    assert reverse(story, "rev-1", duplicate).replayed  # the same request again is a replay
    assert story.available() == 40


def test_a_mistaken_redemption_is_reversed_by_cancelling_it_once(story):
    story.purchase("t-1", "100.00")
    story.redeem("r-1", 60)
    version = story.events(of_type=Member.PointsRedeemed)[0].originator_version
    assert reverse(story, "rev-1", version).body["kind"] == "redemption"
    assert story.available() == 100
    with pytest.raises(AlreadyReversed):
        story.cancel("r-1")


def test_an_adjustment_is_reversed_by_the_opposite_adjustment(story):
    story.adjust("a-1", 300)
    version = story.events(of_type=Member.PointsAdjusted)[0].originator_version
    assert reverse(story, "rev-1", version).body["kind"] == "adjustment"
    assert story.available() == 0
    assert story.lifetime()["adjusted"] == 0


def test_only_purchases_redemptions_and_adjustments_can_be_reversed(story):
    story.purchase("t-1", "10.00")
    with pytest.raises(UnknownEvent):
        reverse(story, "rev-1", 1)  # the enrolment


def test_an_adjustment_is_never_reversed_before_it_happened(story, clock):
    made = clock.now
    story.purchase("t-1", "50.00", occurred_at=made - timedelta(days=10))
    story.adjust("a-1", 100, occurred_at=made)
    version = story.events(of_type=Member.PointsAdjusted)[0].originator_version
    reverse_before = ReverseEvent(actor="key:sue-support", member_id="m1", reversal_id="rev-1", version=version,
                                  note="goodwill given by mistake", occurred_at=made - timedelta(days=5))
    story.ledger.execute(reverse_before)
    opposite = story.events(of_type=Member.PointsAdjusted)[1]
    assert opposite.points == -100 and opposite.occurred_at == made  # moved up to the adjustment's time
    assert opposite.lot is None, "no debt: the member had 150 points then"
    # Between the purchase and the adjustment the member had the purchase's 50, never less.
    then = made - timedelta(days=3)
    assert replay_member(story.events(), as_of=then).balance_at(then)["available"] == 50
    assert story.available() == 50 and story.lifetime()["adjusted"] == 0
