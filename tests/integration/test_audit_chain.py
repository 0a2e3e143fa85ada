"""Tamper evidence on SQLite and PostgreSQL: an adversary with SQL access edits, deletes, swaps
or truncates stored events (and rewrites the chain table to match); verification recomputes the
chain from the event table and names the first position that does not hold."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from api.app import create_app
from application.commands import (
    CreateProgram,
    EnrolMember,
    RecordPurchase,
    Redeem,
    RegisterPartner,
    ReturnPurchase,
)
from application.ledger import Ledger
from domain.member import Member
from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config
from projections.audit import GENESIS, link, stored_events
from projections.read_model import ReadModel
from projections.store import postgres_conninfo

START = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
RULES = {
    "earn_rate": "2",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 3},
    "pending_days": 0,
    "tiers": [
        {"name": "blue", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "gold", "qualifying_spend": "1000", "multiplier": "2"},
    ],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 500,
}
ADMIN_KEY = "adm"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def purchase(txn: str, amount: str, member_id: str) -> RecordPurchase:
    return RecordPurchase(actor="key:pos-1", partner_id="grocer", transaction_id=txn, store_id="g-1",
                          amount=Decimal(amount), currency="EUR", member_id=member_id, occurred_at=START)


def set_up(ledger: Ledger) -> None:
    ledger.execute(CreateProgram(actor="admin", program_id="club", name="Club", currency="EUR",
                                 rules=RULES, effective_at=START - timedelta(days=30)))
    ledger.execute(RegisterPartner(actor="admin", partner_id="grocer", name="Grocer", program_id="club",
                                   stores=["g-1"]))
    for member_id in ("ann", "bob"):
        ledger.execute(EnrolMember(actor="admin", program_id="club", member_id=member_id,
                                   card_number=f"card-{member_id}", occurred_at=START))
    ledger.execute_batch([purchase("t-1", "300", "ann"), purchase("t-2", "40", "bob"), purchase("t-3", "10", "ann")])
    ledger.execute(Redeem(actor="key:pos-1", member_id="ann", redemption_id="r-1", points=100))
    ledger.execute(ReturnPurchase(actor="key:pos-1", partner_id="grocer", transaction_id="t-2-r",
                                  original_transaction_id="t-2", amount=Decimal("10")))


def more_events(ledger: Ledger, tag: str) -> None:
    ledger.execute_batch([purchase(f"{tag}-1", "7", "bob"), purchase(f"{tag}-2", "9", "ann")])


# ---- raw access to the event table, as an adversary has it -----------------------------------------

@dataclass
class Row:
    originator_id: Any
    originator_version: int
    topic: str
    state: bytes


class RawEvents:
    """The stored events table, reached with plain SQL behind the library's back."""

    def __init__(self, database_url: str) -> None:
        database = Config(database_url=database_url).database
        self.kind = database.kind
        if self.kind == "sqlite":
            self.connection: Any = sqlite3.connect(str(database.path), isolation_level=None, timeout=30)
            tables = [name for (name,) in self.connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%topic%' AND sql LIKE '%state%'"
                " AND sql NOT LIKE '%WITHOUT ROWID%'")]
            self.position = "rowid"
            self.mark = "?"
        else:
            import psycopg

            self.connection = psycopg.connect(postgres_conninfo(database), autocommit=True)
            tables = [name for (name,) in self.connection.execute(
                """SELECT table_name FROM information_schema.columns
                   WHERE table_schema = current_schema() AND column_name = 'notification_id'""")]
            self.position = "notification_id"
            self.mark = "%s"
        assert len(tables) == 1, tables
        self.table = tables[0]
        columns = self.columns()
        assert {"originator_id", "originator_version", "topic", "state"} <= set(columns), columns

    def columns(self) -> list[str]:
        if self.kind == "sqlite":
            return [r[1] for r in self.connection.execute(f"PRAGMA table_info({self.table})")]
        return [r[0] for r in self.connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = %s", (self.table,))]

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.connection.execute(statement.replace("%s", self.mark), params)
        return list(cursor.fetchall()) if cursor.description else []

    def positions(self) -> list[int]:
        return [int(p) for (p,) in self.sql(f"SELECT {self.position} FROM {self.table} ORDER BY {self.position}")]

    def row(self, position: int) -> Row:
        (found,) = self.sql(f"SELECT originator_id, originator_version, topic, state FROM {self.table}"
                            f" WHERE {self.position} = %s", (position,))
        return Row(found[0], int(found[1]), found[2], bytes(found[3]))

    def write(self, position: int, row: Row) -> None:
        self.sql(f"UPDATE {self.table} SET originator_id = %s, originator_version = %s, topic = %s, state = %s"
                 f" WHERE {self.position} = %s",
                 (row.originator_id, row.originator_version, row.topic, row.state, position))

    def set_state(self, position: int, state: bytes) -> None:
        self.sql(f"UPDATE {self.table} SET state = %s WHERE {self.position} = %s", (state, position))

    def delete(self, position: int) -> None:
        self.sql(f"DELETE FROM {self.table} WHERE {self.position} = %s", (position,))

    def insert(self, position: int, row: Row) -> None:
        self.sql(f"INSERT INTO {self.table} ({self.position}, originator_id, originator_version, topic, state)"
                 " VALUES (%s, %s, %s, %s, %s)",
                 (position, row.originator_id, row.originator_version, row.topic, row.state))

    def swap(self, p: int, q: int) -> None:
        """Swaps everything but the positions; (originator, version) is unique, hence the detour."""
        first, second = self.row(p), self.row(q)
        self.sql(f"UPDATE {self.table} SET originator_version = -1 WHERE {self.position} = %s", (p,))
        self.write(q, first)
        self.write(p, second)

    def close(self) -> None:
        self.connection.close()


def forged(state: bytes) -> bytes:
    """A plausible forgery: one digit changed, the JSON still well formed."""
    for index, byte in enumerate(state):
        if chr(byte).isdigit():
            return state[:index] + (b"9" if byte != ord("9") else b"8") + state[index + 1:]
    raise AssertionError("no digit to change")


# ---- fixtures ------------------------------------------------------------------------------------

@dataclass
class World:
    config: Config
    ledger: Ledger
    read_model: ReadModel
    raw: RawEvents
    clock: Clock

    def catch_up(self) -> None:
        self.read_model.runner.catch_up()

    def head(self) -> tuple[int, str]:
        checkpoint = self.read_model.checkpoint()
        return checkpoint["position"], checkpoint["hash"]

    def audit_hashes(self) -> dict[int, str]:
        return {int(p): h for p, h in self.read_model.store.query("SELECT position, hash FROM audit_trail")}


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    clock = Clock(START + timedelta(hours=1))
    config = Config(database_url=database_url, admin_key=ADMIN_KEY)
    ledger = build_ledger(config, clock=clock)
    set_up(ledger)
    read_model = build_read_model(config, ledger)
    assert read_model is not None
    read_model.runner.catch_up()
    raw = RawEvents(database_url)
    assert raw.table == ledger.recorder.events_table_name.rsplit(".", 1)[-1]
    assert raw.positions() == [n.id for n in stored_events(ledger.recorder)]
    yield World(config, ledger, read_model, raw, clock)
    raw.close()
    read_model.store.close()
    ledger.close()


def assert_fails_at(world: World, position: int, checkpoint: tuple[int, str] | None = None) -> None:
    result = world.read_model.verify(checkpoint)
    assert not result.ok, result
    assert result.first_bad_position == position, result
    assert result.reason
    assert result.verified_through < position, result


def assert_intact(world: World, checkpoint: tuple[int, str] | None = None) -> None:
    result = world.read_model.verify(checkpoint)
    assert result.ok and result.first_bad_position is None, result


def member_event_position(world: World, event_class: type) -> int:
    for notification in stored_events(world.ledger.recorder):
        if isinstance(world.ledger.mapper.to_domain_event(notification), event_class):
            return notification.id
    raise AssertionError(f"no {event_class.__name__}")


# ---- the tamper tests -------------------------------------------------------------------------------

def test_untampered_chain_verifies_with_and_without_checkpoint(world: World) -> None:
    positions = world.raw.positions()
    early = world.head()
    assert early[0] == positions[-1] and len(early[1]) == 64
    result = world.read_model.verify()
    assert result.ok and result.verified_through == positions[-1] and result.first_bad_position is None
    assert_intact(world, early)

    # New events, not yet projected: still intact, the old checkpoint still holds.
    more_events(world.ledger, "late")
    assert_intact(world)
    assert_intact(world, early)
    world.catch_up()
    late = world.head()
    assert late[0] > early[0]
    result = world.read_model.verify(early)  # a checkpoint in the middle of the chain
    assert result.ok and result.verified_through == late[0]
    assert_intact(world, late)

    # A checkpoint that does not match, or names a position that is not there, fails.
    assert_fails_at(world, early[0], (early[0], "f" * 64))
    result = world.read_model.verify((late[0] + 1000, late[1]))
    assert not result.ok and result.first_bad_position == late[0] + 1000


def test_an_edited_event_is_named(world: World) -> None:
    positions = world.raw.positions()
    checkpoint = world.head()
    for p in (positions[0], member_event_position(world, Member.PointsAccrued), positions[-1]):
        original = world.raw.row(p)
        world.raw.set_state(p, forged(original.state))
        assert world.raw.row(p).state != original.state

        assert_fails_at(world, p)
        assert_fails_at(world, p, checkpoint)
        before = positions[positions.index(p) - 1] if p != positions[0] else 0
        assert world.read_model.verify().verified_through == before

        world.raw.set_state(p, original.state)  # put back: intact again
        assert_intact(world)
        assert_intact(world, checkpoint)


def test_a_forged_amount_decodes_and_is_still_caught(world: World) -> None:
    p = member_event_position(world, Member.PointsAccrued)
    original = world.raw.row(p)
    assert b"600" in original.state
    world.raw.set_state(p, original.state.replace(b"600", b"900"))
    (notification,) = world.ledger.recorder.select_notifications(start=p, limit=1)
    event = world.ledger.mapper.to_domain_event(notification)
    assert isinstance(event, Member.PointsAccrued) and event.points == 900  # a believable forgery
    assert_fails_at(world, p)


def test_a_deleted_event_is_named(world: World) -> None:
    positions = world.raw.positions()
    checkpoint = world.head()
    for p in (positions[0], positions[len(positions) // 2]):
        original = world.raw.row(p)
        world.raw.delete(p)

        assert_fails_at(world, p)
        assert_fails_at(world, p, checkpoint)

        world.raw.insert(p, original)  # put back: intact again
        assert world.raw.positions() == positions
        assert_intact(world, checkpoint)


def test_deleting_the_last_event_is_detected(world: World) -> None:
    positions = world.raw.positions()
    checkpoint = world.head()
    last = positions[-1]
    original = world.raw.row(last)
    world.raw.delete(last)
    assert_fails_at(world, last)
    assert_fails_at(world, last, checkpoint)

    # Truncating the chain table too hides it from the chain, not from the checkpoint.
    saved = world.read_model.store.query("SELECT * FROM audit_trail WHERE position = %s", (last,))
    world.read_model.store.query("DELETE FROM audit_trail WHERE position = %s", (last,))
    assert_intact(world)
    assert_fails_at(world, last, checkpoint)

    world.raw.insert(last, original)
    marks = ", ".join(["%s"] * len(saved[0]))
    world.read_model.store.query(f"INSERT INTO audit_trail VALUES ({marks})", saved[0])
    assert_intact(world, checkpoint)


def test_swapped_events_are_named_at_the_earlier_position(world: World) -> None:
    positions = world.raw.positions()
    checkpoint = world.head()
    p, q = positions[len(positions) // 3], positions[2 * len(positions) // 3]
    first, second = world.raw.row(p), world.raw.row(q)
    assert first.state != second.state

    world.raw.set_state(p, second.state)  # states only
    world.raw.set_state(q, first.state)
    assert_fails_at(world, p)
    assert_fails_at(world, p, checkpoint)
    world.raw.set_state(p, first.state)
    world.raw.set_state(q, second.state)
    assert_intact(world, checkpoint)

    world.raw.swap(p, q)  # whole events: originator, version, topic and state
    assert world.raw.row(p) == second and world.raw.row(q) == first
    assert_fails_at(world, p)
    assert_fails_at(world, p, checkpoint)
    world.raw.swap(p, q)
    assert_intact(world, checkpoint)


def test_a_rewritten_chain_is_caught_by_the_checkpoint_taken_before(world: World) -> None:
    early = world.head()  # kept by the auditor, outside the database
    more_events(world.ledger, "after-early")
    world.catch_up()
    late = world.head()
    positions = world.raw.positions()
    assert early[0] < late[0] == positions[-1]

    # The adversary edits an event before the early checkpoint and recomputes every link from there.
    p = positions[len(positions) // 4]
    assert p < early[0]
    world.raw.set_state(p, forged(world.raw.row(p).state))
    hashes = world.audit_hashes()
    previous = hashes[positions[positions.index(p) - 1]] if p != positions[0] else GENESIS
    for notification in stored_events(world.ledger.recorder):
        if notification.id >= p:
            previous = link(previous, notification)
            world.read_model.store.query("UPDATE audit_trail SET hash = %s WHERE position = %s",
                                         (previous, notification.id))
    assert world.audit_hashes()[p] != hashes[p]

    assert_intact(world)  # the chain table alone now agrees with the events
    assert_fails_at(world, early[0], early)  # the checkpoints do not
    assert_fails_at(world, late[0], late)


def test_a_rewritten_link_alone_shows_at_the_next_link(world: World) -> None:
    """Rewriting only the tampered event's own link moves the disagreement to the next link: the
    chain cannot say which of the two was edited, only where it stops holding."""
    positions = world.raw.positions()
    checkpoint = world.head()
    index = len(positions) // 2
    p = positions[index]
    world.raw.set_state(p, forged(world.raw.row(p).state))
    hashes = world.audit_hashes()
    previous = hashes[positions[index - 1]]
    (notification,) = world.ledger.recorder.select_notifications(start=p, limit=1)
    world.read_model.store.query("UPDATE audit_trail SET hash = %s WHERE position = %s",
                                 (link(previous, notification), p))
    assert_fails_at(world, positions[index + 1])
    assert_fails_at(world, positions[index + 1], checkpoint)


def test_an_edited_chain_row_is_named(world: World) -> None:
    positions = world.raw.positions()
    p = positions[len(positions) // 2]
    world.read_model.store.query("UPDATE audit_trail SET hash = %s WHERE position = %s", ("0" * 64, p))
    assert_fails_at(world, p)
    world.read_model.store.query("DELETE FROM audit_trail WHERE position = %s", (p,))
    assert_fails_at(world, p)


def test_the_checkpoint_alone_suffices_while_the_chain_table_is_empty(world: World) -> None:
    """During an audit rebuild the chain table is empty; a kept checkpoint still proves the log."""
    checkpoint = world.head()
    with world.read_model.store.transaction() as tx:
        tx.execute("DELETE FROM audit_trail")
    result = world.read_model.verify(checkpoint)
    assert result.ok and result.verified_through == checkpoint[0], result
    p = member_event_position(world, Member.PurchaseRecorded)
    world.raw.set_state(p, forged(world.raw.row(p).state))
    assert_fails_at(world, checkpoint[0], checkpoint)


def test_a_rebuilt_chain_equals_the_live_one(world: World) -> None:
    live = world.audit_hashes()
    world.read_model.runner.rebuild(["audit"])
    assert world.audit_hashes() == live
    assert_intact(world, world.head())


# ---- the HTTP API ----------------------------------------------------------------------------------

def test_audit_api(world: World) -> None:
    app = create_app(world.config, world.ledger, world.read_model)
    client = app.test_client()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    response = client.post("/v1/api-keys", json={"role": "auditor", "name": "external auditor"}, headers=admin)
    assert response.status_code == 201, response.get_json()
    auditor = {"Authorization": f"Bearer {response.get_json()['key']}"}
    response = client.post("/v1/api-keys", json={"role": "support"}, headers=admin)
    support = {"Authorization": f"Bearer {response.get_json()['key']}"}

    # The new keys are events too: until the runner catches up, readiness shows the lag.
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["lag"] == 2
    world.catch_up()
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200 and body["ready"] and body["lag"] == 0
    assert body["head"] == world.raw.positions()[-1]
    assert {"members", "postings", "audit", "liability"} <= {p["name"] for p in body["projections"]}

    assert client.get("/v1/audit/checkpoint").status_code == 401
    assert client.get("/v1/audit/checkpoint", headers=support).status_code == 403
    response = client.get("/v1/audit/checkpoint", headers=auditor)
    assert response.status_code == 200
    checkpoint = response.get_json()
    assert checkpoint["position"] == world.raw.positions()[-1]
    assert (checkpoint["position"], checkpoint["hash"]) == world.head()
    assert checkpoint["created_at"].endswith("Z")

    response = client.post("/v1/audit/verify", json={}, headers=auditor)
    assert response.status_code == 200
    assert response.get_json() == {"ok": True, "verified_through": checkpoint["position"],
                                   "first_bad_position": None, "reason": None}
    response = client.post("/v1/audit/verify", json={"position": checkpoint["position"], "hash": checkpoint["hash"]},
                           headers=auditor)
    assert response.status_code == 200 and response.get_json()["ok"] is True
    response = client.post("/v1/audit/verify", json={"position": checkpoint["position"], "hash": "a" * 64},
                           headers=auditor)
    assert response.get_json()["ok"] is False
    assert response.get_json()["first_bad_position"] == checkpoint["position"]
    assert client.post("/v1/audit/verify", json={"position": 3}, headers=auditor).status_code == 422

    response = client.get("/v1/reports/reconciliation", headers=auditor)
    assert response.status_code == 200
    report = response.get_json()
    assert report["ok"] and report["differences"] == [] and report["members"] == 2
    assert report["event_log_total"] == report["projection_total"] == report["members_total"] \
        == report["liability_total"] == world.ledger.get_member("ann").total_points \
        + world.ledger.get_member("bob").total_points
    response = client.get("/v1/reports/reconciliation?program_id=club", headers=auditor)
    assert response.status_code == 200 and response.get_json()["program_id"] == "club"

    # History carries each event's link; events the runner has not reached yet have none.
    response = client.get("/v1/members/ann/history", headers=auditor)
    assert response.status_code == 200
    events = response.get_json()["events"]
    assert events and all(e["hash"] and len(e["hash"]) == 64 for e in events)
    hashes = world.audit_hashes()
    ann_positions = [n.id for n in stored_events(world.ledger.recorder)
                     if n.originator_id == world.ledger.get_member("ann").id]
    assert [e["hash"] for e in events] == [hashes[p] for p in ann_positions]
    projected = len(events)
    more_events(world.ledger, "unprojected")  # a purchase and its accrual for ann
    events = client.get("/v1/members/ann/history", headers=auditor).get_json()["events"]
    assert [e["hash"] is None for e in events] == [False] * projected + [True, True]
    world.catch_up()
    assert all(e["hash"] for e in client.get("/v1/members/ann/history", headers=auditor).get_json()["events"])

    # The adversary edits one stored event; the API names it.
    kept = world.head()
    p = member_event_position(world, Member.PointsRedeemed)
    world.raw.set_state(p, forged(world.raw.row(p).state))
    for body in ({}, {"position": kept[0], "hash": kept[1]}):
        response = client.post("/v1/audit/verify", json=body, headers=auditor)
        assert response.status_code == 200
        result = response.get_json()
        assert result["ok"] is False and result["first_bad_position"] == p, result
        assert result["verified_through"] < p
