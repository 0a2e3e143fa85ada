"""The batched write path on SQLite and PostgreSQL: aggregates a batch needs are loaded together
(newest snapshots, then later events), snapshots are taken from the saved state, and a
single-writer ledger (the importer) changes cached aggregates in place but never keeps a change
that failed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from application.commands import Outcome
from application.ledger import Ledger, snapshot_interval
from domain.member import Member, replay_member
from domain.receipts import Receipt
from infrastructure.bootstrap import build_ledger
from infrastructure.config import Config
from test_ledger_story import START, Clock, purchase, set_up


def state(member: Member) -> dict[str, Any]:
    """What a member is, for comparing a loaded or cached one with a full replay."""
    return {"version": member.version, "lots": member.lots, "purchases": member.purchases,
            "lifetime": member.lifetime, "tier": member.tier, "lot_sequence": member.lot_sequence,
            "latest_occurred_at": member.latest_occurred_at}


def replayed(ledger: Ledger, member_id: str) -> dict[str, Any]:
    member = replay_member(list(ledger.events.get(Member.create_id(member_id))))
    assert member is not None
    return state(member)


def test_a_cold_ledger_loads_a_batchs_members_from_snapshots_in_bulk(database_url: str) -> None:
    clock = Clock(START + timedelta(days=1))
    writer = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(writer, members=("ann", "bob"))
    # Ann: 130 purchases (261 events, snapshots on the way); Bob: 3, no snapshot.
    writer.execute_batch([purchase(f"a-{i}", "3", at=START + timedelta(minutes=i)) for i in range(130)])
    writer.execute_batch([purchase(f"b-{i}", "4", member_id="bob", at=START) for i in range(3)])
    assert writer.snapshots is not None and list(writer.snapshots.get(Member.create_id("ann")))
    writer.close()

    cold = build_ledger(Config(database_url=database_url), clock=clock)
    one_by_one: list[Any] = []
    select_events = cold.recorder.select_events
    cold.recorder.select_events = lambda *a, **k: one_by_one.append(a) or select_events(*a, **k)  # type: ignore[method-assign]
    results = cold.execute_batch([purchase("a-new", "10"), purchase("b-new", "10", member_id="bob"),
                                  purchase("a-0", "3", at=START)])  # the last one: a replay
    assert [type(r) for r in results] == [Outcome] * 3
    assert [r.replayed for r in results] == [False, False, True]
    assert results[0].body["points_earned"] == 20 and results[1].body["points_earned"] == 20
    assert one_by_one == []  # members, partner, program and receipts came from the bulk queries
    cold.recorder.select_events = select_events  # type: ignore[method-assign]
    for member_id in ("ann", "bob"):
        assert state(cold.get_member(member_id)) == replayed(cold, member_id)
    assert len(cold.get_member("ann").purchases) == 131
    cold.close()


def test_a_cold_batch_loads_its_members_in_groups_each_read_once(database_url: str, monkeypatch: Any) -> None:
    import application.unit_of_work as unit_of_work

    clock = Clock(START + timedelta(days=1))
    members = tuple(f"g-{i}" for i in range(7))
    writer = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(writer, members=members)
    writer.execute_batch([purchase(f"p-{i}", "5", member_id=m, at=START) for i, m in enumerate(members)])
    writer.close()

    monkeypatch.setattr(unit_of_work, "LOAD_GROUP", 3)  # 7 cold members: groups of 3, 3 and 1
    cold = build_ledger(Config(database_url=database_url), clock=clock)
    groups: list[list[Any]] = []
    stored_after = unit_of_work.stored_after
    monkeypatch.setattr(unit_of_work, "stored_after", lambda recorder, after: groups.append(list(after))
                        or stored_after(recorder, after))
    results = cold.execute_batch([purchase(f"q-{i}", "5", member_id=m) for i, m in enumerate(members)])
    assert [type(r) for r in results] == [Outcome] * 7
    # The members (and the partner and program) in groups of at most 3, each member in one.
    assert max(len(group) for group in groups) == 3
    loaded = [i for group in groups for i in group]
    assert sorted(loaded.count(Member.create_id(m)) for m in members) == [1] * 7
    for member_id in members:
        assert state(cold.get_member(member_id)) == replayed(cold, member_id)
        assert len(cold.get_member(member_id).purchases) == 2
    cold.close()


def test_a_warm_batch_reads_nothing_but_versions_and_receipts(database_url: str, monkeypatch: Any) -> None:
    import application.unit_of_work as unit_of_work

    clock = Clock(START + timedelta(days=1))
    setup = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(setup, members=("ann", "bob"))
    setup.close()
    ledger = build_ledger(Config(database_url=database_url), clock=clock)  # a server worker, starting
    ledger.execute_batch([purchase("w-1", "5"), purchase("w-2", "5", member_id="bob")])
    loads: list[Any] = []
    stored_after = unit_of_work.stored_after
    monkeypatch.setattr(unit_of_work, "stored_after", lambda recorder, after: loads.append(list(after))
                        or stored_after(recorder, after))
    # The members were saved by the last batch; the partner and the program were only read by
    # it, and are cached too: nothing is loaded again.
    results = ledger.execute_batch([purchase("w-3", "5"), purchase("w-4", "5", member_id="bob")])
    assert [type(r) for r in results] == [Outcome] * 2 and [r.replayed for r in results] == [False, False]
    assert loads == []
    assert state(ledger.get_member("ann")) == replayed(ledger, "ann")
    ledger.close()


def test_a_batch_from_a_known_partner_checks_members_and_receipts_in_one_query(database_url: str,
                                                                              monkeypatch: Any) -> None:
    import application.unit_of_work as unit_of_work

    clock = Clock(START + timedelta(days=1))
    ledger = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(ledger, members=("ann", "bob"))
    ledger.execute_batch([purchase("k-1", "5"), purchase("k-2", "5", member_id="bob")])
    queries: list[list[Any]] = []
    latest_versions = unit_of_work.latest_versions
    monkeypatch.setattr(unit_of_work, "latest_versions", lambda recorder, ids: queries.append(list(ids))
                        or latest_versions(recorder, ids))
    # k-2 again (a repeat from the till) and a new one: the repeat's receipt is found in the
    # same query as the members, and it is answered as a replay, counted once.
    results = ledger.execute_batch([purchase("k-2", "5", member_id="bob"), purchase("k-3", "5")])
    assert [type(r) for r in results] == [Outcome] * 2 and [r.replayed for r in results] == [True, False]
    assert len(queries) == 1
    assert Receipt.create_id("posting", ["club", "grocer", "k-2"]) in queries[0]
    assert sorted(ledger.get_member("bob").purchases) == ["grocer:k-2"]
    assert sorted(ledger.get_member("ann").purchases) == ["grocer:k-1", "grocer:k-3"]
    ledger.close()


def test_snapshots_taken_from_the_saved_state_equal_replays_at_their_versions(database_url: str) -> None:
    clock = Clock(START + timedelta(days=1))
    ledger = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(ledger)
    # Saves of 30 purchases (60 events) cross multiples of 100 one at a time; the batch of 150
    # crosses several at once.
    for offset in range(0, 120, 30):
        ledger.execute_batch([purchase(f"t-{i}", "2", at=START + timedelta(minutes=i)) for i in range(offset, offset + 30)])
    ledger.execute_batch([purchase(f"u-{i}", "2", at=START + timedelta(hours=3, minutes=i)) for i in range(150)])
    assert ledger.snapshots is not None
    member_id = Member.create_id("ann")
    snapshots = list(ledger.snapshots.get(member_id))
    events = list(ledger.events.get(member_id))
    assert len(snapshots) >= 5
    for snapshot in snapshots:
        from_snapshot = snapshot.mutate(None)
        expected = replay_member([e for e in events if e.originator_version <= snapshot.originator_version])
        assert expected is not None and state(from_snapshot) == state(expected), snapshot.originator_version
    ledger.close()


def test_snapshots_grow_further_apart_as_a_member_grows_and_a_cold_load_equals_the_replay(database_url: str) -> None:
    clock = Clock(START + timedelta(days=1))
    ledger = build_ledger(Config(database_url=database_url), clock=clock)
    ledger.snapshotting_intervals = {Member: 5}  # so that a short history shows the widening: 5, 10, 20
    set_up(ledger)
    for offset in range(0, 360, 3):  # saves of 3 purchases (6 events): each crossing is a save's last
        ledger.execute_batch([purchase(f"g-{i}", "2", at=START + timedelta(minutes=i))
                              for i in range(offset, offset + 3)])
    member_id = Member.create_id("ann")
    events = list(ledger.events.get(member_id))
    assert len(events) == 721
    taken = [s.originator_version for s in ledger.snapshots.get(member_id)]
    # Each save's crossings of a multiple of the interval in force: the last at the save's end,
    # any earlier ones at the multiple itself.
    expected = []
    for end in range(7, 722, 6):  # versions at which the saves ended
        crossed = [v for v in range(end - 5, end + 1) if v % snapshot_interval(5, v) == 0]
        expected += crossed[:-1] + [end] if crossed else []
    assert taken == expected
    # The first 200 versions have more than three times as many snapshots as the last 200.
    assert (sum(v <= 200 for v in taken), sum(v > 521 for v in taken)) == (39, 11)
    ledger.close()
    cold = build_ledger(Config(database_url=database_url), clock=clock)
    assert state(cold.get_member("ann")) == replayed(cold, "ann")
    cold.close()


def test_the_snapshot_interval_widens_with_the_version() -> None:
    assert [snapshot_interval(100, v) for v in (1, 100, 3_999, 4_000, 7_999, 8_000, 100_000)] == [
        100, 100, 100, 200, 200, 400, 3_200]


def test_a_single_writer_forgets_changes_of_a_batch_that_lost_a_race(database_url: str) -> None:
    clock = Clock(START + timedelta(days=1))
    setup = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(setup)
    setup.close()
    importer = build_ledger(Config(database_url=database_url), clock=clock, single_writer=True)
    importer.execute_batch([purchase("t-warm", "1", at=START)])  # Ann is now cached, changed in place
    other = build_ledger(Config(database_url=database_url), clock=clock, create_schema=False)
    original_save = importer.save_aggregates
    interfered: list[Any] = []
    saves: list[int] = []

    def save_after_interference(aggregates: Any) -> None:
        if not interfered:
            interfered.append(other.execute(purchase("t-other", "10", at=START)))
        saves.append(len(aggregates))
        original_save(aggregates)

    importer.save_aggregates = save_after_interference  # type: ignore[method-assign]
    results = importer.execute_batch([purchase(f"t-{i}", "10", at=START) for i in range(4)])
    assert [r.replayed for r in results] == [False] * 4
    assert len(saves) == 2  # the clash, then the whole batch again on fresh state (not four saves)
    cached = importer.get_member("ann")
    assert state(cached) == replayed(importer, "ann")
    assert sorted(cached.purchases) == sorted(["grocer:t-warm", "grocer:t-other"] + [f"grocer:t-{i}" for i in range(4)])
    assert cached.lifetime["earned"] == 2 + 20 * 5
    other.close()
    importer.close()


def test_a_batch_that_keeps_clashing_is_run_command_by_command(database_url: str) -> None:
    from application.ledger import BATCH_ATTEMPTS

    clock = Clock(START + timedelta(days=1))
    ledger = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(ledger, members=("ann", "bob"))
    other = build_ledger(Config(database_url=database_url), clock=clock, create_schema=False)
    original_save = ledger.save_aggregates
    saves: list[int] = []

    def save_after_interference(aggregates: Any) -> None:
        saves.append(len(aggregates))
        if len(saves) <= BATCH_ATTEMPTS:  # every whole-batch try loses its race
            other.execute(purchase(f"o-{len(saves)}", "1", at=START))
        original_save(aggregates)

    ledger.save_aggregates = save_after_interference  # type: ignore[method-assign]
    results = ledger.execute_batch([purchase("k-1", "10", at=START), purchase("k-2", "10", member_id="bob", at=START),
                                    purchase("k-3", "10", at=START)])
    assert [type(r) for r in results] == [Outcome] * 3 and [r.replayed for r in results] == [False] * 3
    assert len(saves) == BATCH_ATTEMPTS + 3  # the whole batch BATCH_ATTEMPTS times, then one save per command
    for member_id, earned in (("ann", 2 * 20 + BATCH_ATTEMPTS * 2), ("bob", 20)):
        member = ledger.get_member(member_id)
        assert state(member) == replayed(ledger, member_id) and member.lifetime["earned"] == earned
    other.close()
    ledger.close()


def test_a_single_writer_forgets_a_batch_that_failed_midway(database_url: str) -> None:
    clock = Clock(START + timedelta(days=1))
    importer = build_ledger(Config(database_url=database_url), clock=clock, single_writer=True)
    set_up(importer)
    importer.execute_batch([purchase("t-warm", "1", at=START)])

    def broken_save(aggregates: Any) -> None:
        raise RuntimeError("the database went away")

    working_save = importer.save_aggregates
    importer.save_aggregates = broken_save  # type: ignore[method-assign]
    try:
        importer.execute_batch([purchase("t-lost", "10", at=START)])
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failed save was not reported")
    importer.save_aggregates = working_save  # type: ignore[method-assign]
    cached = importer.get_member("ann")
    assert "grocer:t-lost" not in cached.purchases and state(cached) == replayed(importer, "ann")
    again = importer.execute_batch([purchase("t-lost", "10", at=START)])
    assert not again[0].replayed and again[0].body["points_earned"] == 20
    importer.close()


def test_an_import_with_a_tiny_event_budget_reloads_evicted_members_correctly(database_url: str) -> None:
    import io

    from api.import_rows import row_to_command
    from application.bulk_import import import_purchases

    clock = Clock(START + timedelta(days=1))
    members = tuple(f"m-{i}" for i in range(6))
    setup = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(setup, members=members)
    setup.close()
    # 30 events of history at most in memory: members are evicted and reloaded (with their
    # snapshots) all through the import.
    importer = build_ledger(Config(database_url=database_url), clock=clock, single_writer=True,
                            cache_size=100, cache_events=30)
    rows = "".join(f"t-{i},m-{(i // 3) % 6},g-1,{i % 9 + 1}.00,EUR,2025-01-06T09:{i % 60:02d}:00Z\n" for i in range(600))
    summary = import_purchases(importer, io.StringIO("transaction_id,member_id,store_id,amount,currency,occurred_at\n"
                                                     + rows), "csv", "grocer", io.StringIO(),
                               to_command=row_to_command, batch_size=40)
    assert (summary.imported, summary.rejected) == (600, 0)
    cache = importer.repository.cache
    assert len(cache.cache) == 1 or cache.events <= 30
    for member_id in members:
        assert state(importer.get_member(member_id)) == replayed(importer, member_id)
    assert sum(len(importer.get_member(m).purchases) for m in members) == 600
    importer.close()


def test_a_batch_of_enrolments_reads_members_and_cards_in_bulk(database_url: str) -> None:
    from application.commands import EnrolMember
    from application.errors import Conflict

    clock = Clock(START + timedelta(days=1))
    writer = build_ledger(Config(database_url=database_url), clock=clock)
    set_up(writer, members=("ann",))
    writer.close()
    cold = build_ledger(Config(database_url=database_url), clock=clock)
    one_by_one: list[Any] = []
    select_events = cold.recorder.select_events
    cold.recorder.select_events = lambda *a, **k: one_by_one.append(a) or select_events(*a, **k)  # type: ignore[method-assign]

    def enrol(member_id: str | None, card: str) -> EnrolMember:
        return EnrolMember(actor="admin", program_id="club", member_id=member_id, card_number=card, occurred_at=START)

    results = cold.execute_batch([enrol(f"new-{i}", f"card-new-{i}") for i in range(5)]
                                 + [enrol("ann", "card-ann"),  # the same enrolment again: a replay
                                    enrol("zed", "card-ann"),  # ann's card: refused
                                    enrol(None, "card-derived")])  # id derived from the card
    assert [getattr(r, "replayed", None) for r in results[:6]] == [False] * 5 + [True]
    assert isinstance(results[6], Conflict)
    assert results[7].body["member_id"] and not results[7].replayed
    assert one_by_one == []
    cold.recorder.select_events = select_events  # type: ignore[method-assign]
    assert cold.get_member("new-3").card_number == "card-new-3"
    assert cold.member_id_for_card("club", "card-derived") == results[7].body["member_id"]
    cold.close()
