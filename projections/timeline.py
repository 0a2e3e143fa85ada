"""Member timelines: every lot movement with its effective and recorded times, so a balance as
of any (effective, known-at) pair is one indexed aggregate instead of a replay.

Summing the movements of the events that pass the filter is the same computation as
`replay_member` (each event's apply() adds exactly these figures to its lots); the integration
tests compare the two at many random times.
"""

from __future__ import annotations

from typing import Any

from domain.member import Member
from projections.base import Projection, Stored
from projections.lot_changes import lot_deltas, new_lot
from projections.store import Transaction, micros, select_in, select_pairs


class TimelineProjection(Projection):
    name = "timeline"
    cost = 7
    # 2: times as integer microseconds (cheaper to compare and aggregate than text); 3: flagged lots
    version = 3
    tables = ("member_timeline", "member_lot_movements", "member_timeline_lots", "member_tier_changes",
              "member_flagged_lots")

    def ddl(self, store: Any) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS member_timeline (
                member_id TEXT PRIMARY KEY, originator_id TEXT NOT NULL UNIQUE, base_tier TEXT NOT NULL,
                recorded_at BIGINT NOT NULL, version BIGINT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS member_lot_movements (
                member_id TEXT NOT NULL, version BIGINT NOT NULL, lot_id TEXT NOT NULL, delta BIGINT NOT NULL,
                occurred_at BIGINT NOT NULL, recorded_at BIGINT NOT NULL, available_at BIGINT NOT NULL, expires_at BIGINT)""",
            "CREATE INDEX IF NOT EXISTS member_lot_movements_time ON member_lot_movements (member_id, occurred_at)",
            """CREATE TABLE IF NOT EXISTS member_timeline_lots (
                member_id TEXT NOT NULL, lot_id TEXT NOT NULL, available_at BIGINT NOT NULL, expires_at BIGINT,
                PRIMARY KEY (member_id, lot_id))""",
            # Lots whose remainder, summed over some events, could be negative: a debt lot, a
            # clawback, or points restored by a cancellation. Any other lot's movements can be
            # classified one by one (see projections/as_of.py); these are summed lot by lot.
            """CREATE TABLE IF NOT EXISTS member_flagged_lots (
                member_id TEXT NOT NULL, lot_id TEXT NOT NULL, PRIMARY KEY (member_id, lot_id))""",
            """CREATE TABLE IF NOT EXISTS member_tier_changes (
                member_id TEXT NOT NULL, version BIGINT NOT NULL, tier TEXT NOT NULL, occurred_at BIGINT NOT NULL,
                recorded_at BIGINT NOT NULL, PRIMARY KEY (member_id, version))""",
        ]

    def apply(self, tx: Transaction, batch: list[Stored], context: Any) -> None:
        members: dict[str, str] = {}  # originator -> member_id
        # Each movement carries its lot's dates, so an as-of balance needs no join.
        dates: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        enrolled, versions, movements, lots, tiers = [], {}, [], [], []
        flagged: set[tuple[str, str]] = set()
        for stored in batch:
            event = stored.event
            if not isinstance(event, Member.Event):
                continue
            originator = stored.originator
            occurred, recorded = micros(event.occurred_at), micros(event.timestamp)
            if isinstance(event, Member.MemberEnrolled):
                members[originator] = event.member_id
                enrolled.append((event.member_id, originator, event.tier, recorded, event.originator_version))
                continue
            versions[originator] = event.originator_version
            created = new_lot(event)
            if created is not None:
                dates[(originator, created.lot_id)] = (micros(created.available_at), micros(created.expires_at))
                lots.append((originator, created.lot_id, *dates[(originator, created.lot_id)]))
                movements.append((originator, event.originator_version, created.lot_id, created.points,
                                  occurred, recorded))
                if created.points < 0:
                    flagged.add((originator, created.lot_id))
            for lot_id, delta in lot_deltas(event):
                movements.append((originator, event.originator_version, lot_id, delta, occurred, recorded))
                if delta > 0 or (isinstance(event, Member.AccrualReversed) and event.clawback):
                    flagged.add((originator, lot_id))
            if isinstance(event, Member.TierChanged):
                tiers.append((originator, event.originator_version, event.to_tier, occurred, recorded))
        tx.insert("member_timeline", ("member_id", "originator_id", "base_tier", "recorded_at", "version"), enrolled)
        members.update(select_in(tx, "SELECT originator_id, member_id FROM member_timeline WHERE originator_id IN ({marks})",
                                 sorted(set(versions) - set(members))))
        tx.executemany("UPDATE member_timeline SET version = %s WHERE originator_id = %s",
                       [(version, originator) for originator, version in versions.items()])
        tx.insert("member_timeline_lots", ("member_id", "lot_id", "available_at", "expires_at"),
                  [(members[o], *rest) for o, *rest in lots])
        self._look_up_dates(tx, members, dates, {(o, lot_id) for o, _, lot_id, *_ in movements} - set(dates))
        tx.insert("member_lot_movements", ("member_id", "version", "lot_id", "delta", "occurred_at", "recorded_at",
                                           "available_at", "expires_at"),
                  [(members[o], version, lot_id, *rest, *dates[(o, lot_id)]) for o, version, lot_id, *rest in movements])
        tx.executemany("INSERT INTO member_flagged_lots (member_id, lot_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                       sorted((members[o], lot_id) for o, lot_id in flagged))
        tx.insert("member_tier_changes", ("member_id", "version", "tier", "occurred_at", "recorded_at"),
                  [(members[o], *rest) for o, *rest in tiers])

    @staticmethod
    def _look_up_dates(tx: Transaction, members: dict[str, str],
                       dates: dict[tuple[str, str], tuple[int | None, int | None]],
                       wanted: set[tuple[str, str]]) -> None:
        """Dates of lots created in earlier batches."""
        by_member = {members[o]: o for o, _ in wanted}
        for member_id, lot_id, available_at, expires_at in select_pairs(
                tx, "SELECT member_id, lot_id, available_at, expires_at FROM member_timeline_lots WHERE {pairs}",
                ("member_id", "lot_id"), sorted((members[o], lot_id) for o, lot_id in wanted)):
            dates[(by_member[member_id], lot_id)] = (available_at, expires_at)
