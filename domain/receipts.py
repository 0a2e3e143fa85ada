"""Uniqueness by creation: aggregates whose id is a uuid5 of a natural key.

Created in the same save as the change they guard, so the event store's primary key
makes a second write with the same key fail, even across processes and restarts.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.identity import card_uuid, receipt_uuid


class Receipt(Aggregate):
    """An idempotent write (posting, redemption, adjustment...) was applied once; holds its outcome.

    scope/key: the id space and the client's id in it, e.g. ("posting", [program, partner, txn]).
    """

    class Event(Aggregate.Event):
        actor: str

    class WriteReceived(Event, Aggregate.Created):
        scope: str
        key: list[str]
        kind: str
        member_id: str
        request_hash: str
        status: int
        outcome: dict[str, Any]

    @staticmethod
    def create_id(scope: str, key: list[str]) -> UUID:
        return receipt_uuid(scope, *key)

    @event(WriteReceived)
    def __init__(
        self, *, scope: str, key: list[str], kind: str, member_id: str,
        request_hash: str, status: int, outcome: dict[str, Any], actor: str,
    ) -> None:
        self.scope = scope
        self.key = key
        self.kind = kind
        self.member_id = member_id
        self.request_hash = request_hash
        self.status = status
        self.outcome = outcome


class CardRegistration(Aggregate):
    """A card number belongs to one member within a program."""

    class Event(Aggregate.Event):
        actor: str

    class CardRegistered(Event, Aggregate.Created):
        program_id: str
        card_number: str
        member_id: str

    @staticmethod
    def create_id(program_id: str, card_number: str) -> UUID:
        return card_uuid(program_id, card_number)

    @event(CardRegistered)
    def __init__(self, *, program_id: str, card_number: str, member_id: str, actor: str) -> None:
        self.program_id = program_id
        self.card_number = card_number
        self.member_id = member_id
