"""An adjustment above the program's approval threshold waits for a supervisor (four eyes).

The member changes only when the approval is saved together with the member's PointsAdjusted.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import AlreadyDecided, SelfApproval
from domain.identity import natural_id

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


class AdjustmentRequest(Aggregate):
    class Event(Aggregate.Event):
        actor: str

    class AdjustmentRequested(Event, Aggregate.Created):
        adjustment_id: str
        member_id: str
        program_id: str
        points: int
        reason: str
        note: str
        occurred_at: datetime
        threshold: int

    class AdjustmentApproved(Event):
        note: str

        def apply(self, request: AdjustmentRequest) -> None:
            request.status, request.decided_by, request.decision_note = APPROVED, self.actor, self.note

    class AdjustmentRejected(Event):
        note: str

        def apply(self, request: AdjustmentRequest) -> None:
            request.status, request.decided_by, request.decision_note = REJECTED, self.actor, self.note

    @staticmethod
    def create_id(adjustment_id: str) -> UUID:
        return natural_id("adjustment-request", adjustment_id)

    @event(AdjustmentRequested)
    def __init__(self, *, adjustment_id: str, member_id: str, program_id: str, points: int, reason: str,
                 note: str, occurred_at: datetime, threshold: int, actor: str) -> None:
        self.adjustment_id = adjustment_id
        self.member_id = member_id
        self.program_id = program_id
        self.points = points
        self.reason = reason
        self.note = note
        self.occurred_at = occurred_at
        self.threshold = threshold
        self.requested_by = actor
        self.status = PENDING
        self.decided_by: str | None = None
        self.decision_note: str | None = None

    def check_can_decide(self, actor: str) -> None:
        if actor == self.requested_by:
            raise SelfApproval("an adjustment cannot be decided by the one who requested it")
        if self.status != PENDING:
            raise AlreadyDecided(f"adjustment {self.adjustment_id!r} was already {self.status} by {self.decided_by}")

    def approve(self, *, actor: str, note: str) -> None:
        self.check_can_decide(actor)
        self.trigger_event(self.AdjustmentApproved, actor=actor, note=note)

    def reject(self, *, actor: str, note: str) -> None:
        self.check_can_decide(actor)
        self.trigger_event(self.AdjustmentRejected, actor=actor, note=note)
