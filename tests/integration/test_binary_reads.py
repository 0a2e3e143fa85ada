"""On PostgreSQL the notification reads ask for binary rows (infrastructure/binary_reads.py): the
notifications are those the library's own reader returns, for every combination of its
arguments, and the batch reads of application/prefetch.py return the stored events as stored."""

from __future__ import annotations

from datetime import timedelta

from eventsourcing.postgres import PostgresApplicationRecorder

from application import prefetch
from domain.member import Member
from test_ledger_story import START, purchase, set_up


def test_binary_reads_return_what_the_library_reads(postgres_ledger) -> None:
    recorder = postgres_ledger.recorder
    set_up(postgres_ledger)
    postgres_ledger.execute_batch([purchase(f"r-{i}", "4", at=START + timedelta(minutes=i)) for i in range(30)])
    assert "select_notifications" in vars(recorder)  # replaced on this recorder, not on the class
    library = PostgresApplicationRecorder.select_notifications.__get__(recorder)
    every = library(start=None, limit=10_000)
    assert len(every) > 60 and all(type(n.state) is bytes for n in recorder.select_notifications(None, 10_000))
    ids = [n.id for n in every]
    topics = sorted({n.topic for n in every})
    for start in (None, ids[0], ids[10], ids[-1], ids[-1] + 1):
        for stop in (None, ids[5], ids[40]):
            for chosen in ((), topics[:1], tuple(topics[1:3])):
                for inclusive in (True, False):
                    for limit in (1, 7, 10_000):
                        arguments = dict(start=start, limit=limit, stop=stop, topics=chosen, inclusive_of_start=inclusive)
                        assert recorder.select_notifications(**arguments) == library(**arguments), arguments

    member_id = Member.create_id("ann")
    stored = prefetch.stored_after(recorder, {member_id: 3})
    expected = [(n.originator_id, n.originator_version, n.topic, n.state) for n in every
                if n.originator_id == member_id and n.originator_version > 3]
    assert [(s.originator_id, s.originator_version, s.topic, s.state) for s in stored] == expected
    assert all(type(s.state) is bytes for s in stored)
    assert prefetch.latest_versions(recorder, [member_id]) == {member_id: expected[-1][1]}
