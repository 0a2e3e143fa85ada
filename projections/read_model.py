"""Queries answered from the projections, plus the proofs: reconciliation and the audit chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from application.handlers import require_program
from application.ledger import Ledger
from application.unit_of_work import UnitOfWork
from application.views import rfc3339
from domain.identity import member_id_to_uuid
from domain.member import Member, replay_member
from projections.as_of import timeline_balance
from projections.audit import Verification, checkpoint, verify_chain
from projections.runner import ProjectionRunner
from projections.store import db_time, from_db_time

SUMMARY_COLUMNS = ("member_id", "program_id", "card_number", "name", "email", "birthday", "enrolled_at",
                   "tier", "tier_since", "version", "earned", "redeemed", "expired", "reversed", "adjusted")
READY_LAG = 10_000  # events behind before /readyz says not ready


class ReadModel:
    def __init__(self, ledger: Ledger, runner: ProjectionRunner) -> None:
        self.ledger = ledger
        self.runner = runner
        self.store = runner.store

    # ---- members ----------------------------------------------------------------------------

    def member_summary(self, member_id: str) -> dict[str, Any]:
        """From the projection; from the event store while the projection is being rebuilt or
        has not reached the member yet, so a just-enrolled member is never 'not found'."""
        if not self._rebuilding("members"):
            rows = self.store.query(f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM member_summaries WHERE member_id = %s",
                                    (member_id,))
            if rows:
                return self._summary(dict(zip(SUMMARY_COLUMNS, rows[0])))
        return self.ledger.member_summary(member_id)

    def member_id_for_card(self, program_id: str, card_number: str) -> str:
        rows = self.store.query("SELECT member_id FROM card_index WHERE program_id = %s AND card_number = %s",
                                (program_id, card_number))
        if rows and not self._rebuilding("members"):
            return rows[0][0]
        return self.ledger.member_id_for_card(program_id, card_number)

    def _summary(self, row: dict[str, Any]) -> dict[str, Any]:
        now = db_time(self.ledger.clock())
        available, pending, due = self.store.query(
            """SELECT COALESCE(SUM(CASE WHEN remaining < 0 THEN remaining
                                        WHEN expires_at IS NOT NULL AND expires_at <= %s THEN 0
                                        WHEN available_at > %s THEN 0 ELSE remaining END), 0),
                      COALESCE(SUM(CASE WHEN remaining > 0 AND (expires_at IS NULL OR expires_at > %s)
                                        AND available_at > %s THEN remaining ELSE 0 END), 0),
                      COALESCE(SUM(CASE WHEN remaining > 0 AND expires_at IS NOT NULL AND expires_at <= %s
                                        THEN remaining ELSE 0 END), 0)
               FROM member_lots WHERE member_id = %s""", (now, now, now, now, now, row["member_id"]))[0]
        upcoming = self.store.query(
            """SELECT expires_at, SUM(remaining) FROM member_lots
               WHERE member_id = %s AND remaining > 0 AND expires_at IS NOT NULL AND expires_at > %s
               GROUP BY expires_at ORDER BY expires_at LIMIT 1""", (row["member_id"], now))
        return {
            "member_id": row["member_id"], "program_id": row["program_id"], "card_number": row["card_number"],
            "name": row["name"], "email": row["email"], "birthday": row["birthday"],
            "enrolled_at": rfc3339(from_db_time(row["enrolled_at"])), "tier": row["tier"],  # type: ignore[arg-type]
            "tier_since": rfc3339(from_db_time(row["tier_since"])),  # type: ignore[arg-type]
            "balance": {"available": int(available), "pending": int(pending), "due_for_expiry": int(due)},
            "lifetime": {k: int(row[k]) for k in ("earned", "redeemed", "expired", "reversed", "adjusted")},
            "next_expiry": {"points": int(upcoming[0][1]), "at": rfc3339(from_db_time(upcoming[0][0]))}  # type: ignore[arg-type]
            if upcoming else None,
            "version": int(row["version"]),
        }

    def balance_as_of(self, member_id: str, as_of: datetime | None = None,
                      known_at: datetime | None = None) -> dict[str, Any]:
        """From the member timeline; replayed from the event store while it does not hold the member."""
        balance = timeline_balance(self.store, self.ledger, member_id, as_of, known_at)
        return balance if balance is not None else self.ledger.balance_as_of(member_id, as_of, known_at)

    def _rebuilding(self, name: str) -> bool:
        rows = self.store.query("SELECT rebuilding FROM projection_positions WHERE name = %s", (name,))
        return bool(rows and rows[0][0])

    def event_hashes(self, member_id: str) -> dict[int, str]:
        rows = self.store.query("SELECT version, hash FROM audit_trail WHERE originator_id = %s",
                                (str(member_id_to_uuid(member_id)),))
        return {int(version): digest for version, digest in rows}

    def adjustment_requests(self, status: str | None) -> list[dict[str, Any]]:
        from projections.adjustments import COLUMNS

        where, params = ("WHERE status = %s", (status,)) if status else ("", ())
        rows = self.store.query(f"SELECT {', '.join(COLUMNS)} FROM adjustment_requests {where} ORDER BY requested_at",
                                params)
        requests = []
        for row in rows:
            request = dict(zip(COLUMNS, row))
            for moment in ("occurred_at", "requested_at", "decided_at"):
                if request[moment] is not None:
                    request[moment] = rfc3339(from_db_time(request[moment]))  # type: ignore[arg-type]
            request["points"] = int(request["points"])
            requests.append(request)
        return requests

    # ---- readiness --------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        statuses = self.runner.status()
        lag = max((s.lag for s in statuses), default=0)
        return {
            "ready": lag < READY_LAG and not any(s.rebuilding for s in statuses),
            "head": statuses[0].head if statuses else 0,
            "lag": lag,
            "projections": [{"name": s.name, "position": s.position, "lag": s.lag, "rebuilding": s.rebuilding}
                            for s in statuses],
        }

    # ---- audit ------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        head = checkpoint(self.store)
        return {"position": head[0] if head else 0, "hash": head[1] if head else None,
                "created_at": rfc3339(self.ledger.clock())}

    def verify(self, against: tuple[int, str] | None = None) -> Verification:
        return verify_chain(self.ledger.recorder, self.store, against)

    def export_member(self, member_id: str) -> Iterator[str]:
        """The member's history as JSON lines, each with its link in the hash chain."""
        hashes = self.event_hashes(member_id)
        for event in self.ledger.history(member_id):
            yield json.dumps({**event, "hash": hashes.get(event["version"])}, sort_keys=True)

    # ---- reconciliation ---------------------------------------------------------------------

    def reconcile(self, program_id: str | None = None) -> dict[str, Any]:
        """Proves the projections against a fresh replay of the event log: per member, lifetime
        totals, tier, version and every lot's remainder; and four totals that must be equal:
        the replayed balances (event_log_total), the projected lot remainders (projection_total),
        the projected members' lifetime roll-forward (members_total) and the liability
        movements' roll-forward (liability_total). Lists every difference."""
        if program_id is not None:  # an unknown program is a 404, not "ok" over no members
            require_program(UnitOfWork(self.ledger), program_id)
        where, params = ("WHERE program_id = %s", (program_id,)) if program_id else ("", ())
        projected = {row[0]: row for row in self.store.query(
            f"SELECT member_id, earned, redeemed, expired, reversed, adjusted, tier, version FROM member_summaries {where}",
            params)}
        lots: dict[str, dict[str, int]] = {}
        for member_id, lot_id, remaining in self.store.query(
                f"SELECT member_id, lot_id, remaining FROM member_lots {where}", params):
            lots.setdefault(member_id, {})[lot_id] = int(remaining)
        differences: list[dict[str, Any]] = []
        event_log_total = 0
        replayed_ids = set()
        for member_id in self.ledger.member_ids(program_id):
            replayed_ids.add(member_id)
            member = replay_member(self.ledger.events.get(member_id_to_uuid(member_id)))
            assert isinstance(member, Member)
            event_log_total += member.total_points
            expected = (*(member.lifetime[k] for k in ("earned", "redeemed", "expired", "reversed", "adjusted")),
                        member.tier, member.version)
            row = projected.get(member_id)
            actual = None if row is None else (*(int(v) for v in row[1:6]), row[6], int(row[7]))
            member_lots = {lot_id: lot.remaining for lot_id, lot in member.lots.items()}
            if actual != expected or lots.get(member_id, {}) != member_lots:
                differences.append({
                    "member_id": member_id,
                    "event_log": {"lifetime": dict(member.lifetime), "tier": member.tier, "version": member.version,
                                  "points": member.total_points},
                    "projection": None if row is None else {
                        "lifetime": dict(zip(("earned", "redeemed", "expired", "reversed", "adjusted"), actual[:5])),
                        "tier": actual[5], "version": actual[6], "points": sum(lots.get(member_id, {}).values())},
                })
        for member_id in sorted(set(projected) - replayed_ids):
            differences.append({"member_id": member_id, "event_log": None, "projection": "present"})
        projection_total = sum(sum(v.values()) for v in lots.values())
        members_total = sum(int(r[1]) - int(r[2]) - int(r[3]) - int(r[4]) + int(r[5]) for r in projected.values())
        liability_total = int(self.store.query(
            f"""SELECT COALESCE(SUM(earned - redeemed - expired - reversed + adjusted), 0)
                FROM liability_movements {where}""", params)[0][0])
        by_issuer = f"SELECT program_id, issuer, SUM(remaining) FROM member_lots {where} GROUP BY program_id, issuer"
        lot_sums = {(p, i): int(t) for p, i, t in self.store.query(by_issuer, params) if int(t)}
        running = {(p, i): int(t) for p, i, t in self.store.query(
            f"SELECT program_id, issuer, remaining FROM lot_totals {where}", params) if int(t)}
        if running != lot_sums:
            differences.append({"lot_totals": {f"{p}/{i}": t for (p, i), t in sorted(running.items())},
                                "member_lots": {f"{p}/{i}": t for (p, i), t in sorted(lot_sums.items())}})
        return {
            "ok": not differences and event_log_total == projection_total == members_total == liability_total,
            "program_id": program_id,
            "members": len(replayed_ids),
            "event_log_total": event_log_total,
            "projection_total": projection_total,
            "members_total": members_total,
            "liability_total": liability_total,
            "differences": differences,
            "checked_at": rfc3339(self.ledger.clock()),
        }


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
