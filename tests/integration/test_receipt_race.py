"""A copy of a posting or redemption that another process commits between this batch's receipt look-up and its
read of the member is replayed, not refused as a conflict.

A batch looks every receipt up at one moment, with the members' versions; a member not cached at
that version is read afterwards, and may by then hold the racing copy's purchase, whose receipt
the batch saw as absent. (Found by tests/e2e/test_races.py: fifty copies of one purchase over
HTTP, about one run in twelve answered one copy 409 idempotency-conflict.) Here the other
process's commit is made to land exactly in that gap, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from application import unit_of_work
from application.commands import Outcome, Redeem, ReturnPurchase
from domain.member import Member
from test_ledger_story import START, Clock, open_ledger, purchase, set_up


def committed_in_the_gap(monkeypatch: pytest.MonkeyPatch, commit: Callable[[], Any]) -> list[Any]:
    """Runs `commit` right after the next batch's first look-up of versions; its results."""
    real = unit_of_work.latest_versions
    done: list[Any] = []

    def then_commit(recorder: Any, ids: Any) -> Any:
        versions = real(recorder, ids)
        if not done:
            done.append(commit())
        return versions

    monkeypatch.setattr(unit_of_work, "latest_versions", then_commit)
    return done


def test_a_purchase_committed_between_receipt_look_up_and_member_read_is_replayed(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(START + timedelta(hours=1))
    ours, theirs = open_ledger(database_url, clock), open_ledger(database_url, clock, create_schema=False)
    try:
        set_up(ours)
        ours.execute_batch([purchase("warm", "10")])  # the partner and member cached here
        theirs.execute(purchase("other", "10"))  # ... and the member's cached version now stale
        copy = purchase("race-same", "25")
        done = committed_in_the_gap(monkeypatch, lambda: theirs.execute(copy))
        (outcome,) = ours.execute_batch([copy])
        assert done and isinstance(done[0], Outcome) and not done[0].replayed  # theirs applied it first
        assert isinstance(outcome, Outcome), outcome
        assert outcome.replayed and outcome.body == done[0].body

        back = ReturnPurchase(actor="key:pos-1", partner_id="grocer", transaction_id="race-back",
                              original_transaction_id="race-same", amount=copy.amount, occurred_at=None)
        theirs.execute(purchase("other-2", "10"))  # stale again
        done = committed_in_the_gap(monkeypatch, lambda: theirs.execute(back))
        (outcome,) = ours.execute_batch([back])
        assert done and not done[0].replayed
        assert isinstance(outcome, Outcome) and outcome.replayed and outcome.body == done[0].body, outcome
        spend = Redeem(actor="key:pos-1", member_id="ann", redemption_id="race-spend", points=20, reward="mug",
                       partner_id=None, occurred_at=None)
        ours.execute_batch([purchase("warm-2", "1")])  # the member's receipt ids known from the cache
        theirs.execute(purchase("other-3", "10"))
        done = committed_in_the_gap(monkeypatch, lambda: theirs.execute(spend))
        (outcome,) = ours.execute_batch([spend])
        assert done and not done[0].replayed
        assert isinstance(outcome, Outcome) and outcome.replayed and outcome.body == done[0].body, outcome

        member = ours.repository.get(Member.create_id("ann"))  # each posting once
        assert sorted(member.purchases) == ["grocer:" + t for t in ("other", "other-2", "other-3", "race-same",
                                                                    "warm", "warm-2")]
        assert sorted(member.returns) == ["grocer:race-back"]
        assert list(member.redemptions) == ["race-spend"]
    finally:
        ours.close()
        theirs.close()
