"""Two processes (two ledgers, each with its own cache) writing to the same members: a process
whose cached member another has written past brings its copy up to date from the newer events
only, and its batches judge every command on the member as stored, across snapshots too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from application.commands import Outcome, Redeem
from application.ledger import Ledger
from application.unit_of_work import UnitOfWork
from domain.errors import InsufficientPoints
from domain.identity import member_id_to_uuid
from domain.member import Member
from test_ledger_story import START, Clock, open_ledger, purchase, set_up


@pytest.fixture
def two_ledgers(database_url: str) -> Iterator[tuple[Ledger, Ledger]]:
    clock = Clock(START + timedelta(hours=1))
    first = open_ledger(database_url, clock)
    set_up(first, members=("ann", "bob"))
    second = open_ledger(database_url, clock, create_schema=False)
    yield first, second
    first.close()
    second.close()


def test_a_cached_member_another_process_wrote_past_is_brought_up_to_date(two_ledgers: tuple[Ledger, Ledger]) -> None:
    first, second = two_ledgers
    ann = member_id_to_uuid("ann")
    assert all(isinstance(r, Outcome) for r in first.execute_batch([purchase("a-0", "10", at=START)]))
    cached = first.repository.cache.get(ann)
    cached_version = cached.version
    # The other process writes 150 purchases (300 events): past at least one snapshot.
    for offset in range(0, 150, 50):
        results = second.execute_batch([purchase(f"b-{i}", "10", at=START) for i in range(offset, offset + 50)])
        assert all(isinstance(r, Outcome) for r in results)
    stored = second.get_member("ann")
    assert stored.version >= cached_version + 300

    unit = UnitOfWork(first)
    unit.prefetch([ann])
    member = unit.find(Member, ann)
    assert member is not None and member is not cached
    assert member.version == stored.version
    assert member.balance_at(START + timedelta(hours=1)) == stored.balance_at(START + timedelta(hours=1))
    assert member.purchases == stored.purchases
    assert cached.version == cached_version  # the cache's own object was copied, not changed
    assert not member.pending_events


def test_batches_alternating_between_two_processes_count_every_point_once(two_ledgers: tuple[Ledger, Ledger]) -> None:
    first, second = two_ledgers
    ledgers = (first, second)
    for turn in range(8):  # ann: 8 x 12 purchases of 10 EUR at 2 points a euro, half of them in each process
        results = ledgers[turn % 2].execute_batch(
            [purchase(f"t{turn}-{k}", "10", member_id=("ann", "bob")[k % 2], at=START) for k in range(24)])
        assert all(isinstance(r, Outcome) and not r.replayed for r in results)
    # Redemptions judged on each process's view: ann has 8 x 12 x 20 = 1,920 points.
    redeemed = [ledgers[i % 2].execute_batch([Redeem(actor="pos", member_id="ann", redemption_id=f"r-{i}", points=500)])[0]
                for i in range(4)]
    assert [isinstance(r, Outcome) for r in redeemed] == [True, True, True, False]
    assert isinstance(redeemed[3], InsufficientPoints)
    for ledger in ledgers:
        ann = ledger.get_member("ann")
        assert ann.lifetime["earned"] == 1920 and len(ann.purchases) == 96
        assert ann.balance_at(START + timedelta(hours=1))["available"] == 1920 - 1500
        assert sum((p["amount"] for p in ann.purchases.values()), Decimal(0)) == Decimal(960)
