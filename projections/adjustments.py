"""The supervisors' queue: adjustment requests and their decisions."""

from __future__ import annotations

from typing import Any

from domain.adjustment_request import APPROVED, REJECTED, AdjustmentRequest
from projections.base import Projection, Stored
from projections.store import Transaction

COLUMNS = ("adjustment_id", "member_id", "program_id", "points", "reason", "note", "requested_by",
           "occurred_at", "requested_at", "status", "decided_by", "decided_at", "decision_note")


class AdjustmentsProjection(Projection):
    name = "adjustments"
    cost = 2
    tables = ("adjustment_requests",)

    def ddl(self, store: Any) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS adjustment_requests (
                adjustment_id TEXT PRIMARY KEY, originator_id TEXT NOT NULL UNIQUE, member_id TEXT NOT NULL,
                program_id TEXT NOT NULL, points BIGINT NOT NULL, reason TEXT NOT NULL, note TEXT NOT NULL,
                requested_by TEXT NOT NULL, occurred_at TEXT NOT NULL, requested_at TEXT NOT NULL,
                status TEXT NOT NULL, decided_by TEXT, decided_at TEXT, decision_note TEXT)""",
            "CREATE INDEX IF NOT EXISTS adjustment_requests_status ON adjustment_requests (status, requested_at)",
        ]

    def apply(self, tx: Transaction, batch: list[Stored], context: Any) -> None:
        for stored in batch:
            event = stored.event
            if isinstance(event, AdjustmentRequest.AdjustmentRequested):
                tx.execute(
                    """INSERT INTO adjustment_requests (adjustment_id, originator_id, member_id, program_id, points,
                           reason, note, requested_by, occurred_at, requested_at, status)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending')""",
                    (event.adjustment_id, stored.originator, event.member_id, event.program_id, event.points,
                     event.reason, event.note, event.actor, stored.occurred_at, stored.recorded_at))
            elif isinstance(event, (AdjustmentRequest.AdjustmentApproved, AdjustmentRequest.AdjustmentRejected)):
                status = APPROVED if isinstance(event, AdjustmentRequest.AdjustmentApproved) else REJECTED
                tx.execute(
                    """UPDATE adjustment_requests SET status = %s, decided_by = %s, decided_at = %s, decision_note = %s
                       WHERE originator_id = %s""",
                    (status, event.actor, stored.recorded_at, event.note, stored.originator))
