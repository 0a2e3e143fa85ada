"""Partner: a business whose stores post purchases into one program."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import StoreNotInPartner
from domain.identity import partner_id_to_uuid


class Partner(Aggregate):
    class Event(Aggregate.Event):
        actor: str

    class PartnerRegistered(Event, Aggregate.Created):
        partner_id: str
        name: str
        program_id: str
        stores: list[str]
        request_hash: str

    class StoresAdded(Event):
        stores: list[str]

        def apply(self, partner: Partner) -> None:
            partner.stores.extend(self.stores)

    @staticmethod
    def create_id(partner_id: str) -> UUID:
        return partner_id_to_uuid(partner_id)

    @event(PartnerRegistered)
    def __init__(
        self, *, partner_id: str, name: str, program_id: str, stores: list[str], actor: str, request_hash: str
    ) -> None:
        self.partner_id = partner_id
        self.name = name
        self.program_id = program_id
        self.stores = list(dict.fromkeys(stores))
        self.request_hash = request_hash

    def add_stores(self, stores: list[str], actor: str) -> None:
        new = [s for s in dict.fromkeys(stores) if s not in self.stores]
        if new:
            self.trigger_event(self.StoresAdded, stores=new, actor=actor)

    def check_has_store(self, store_id: str) -> None:
        if store_id not in self.stores:
            raise StoreNotInPartner(f"store {store_id!r} does not belong to partner {self.partner_id!r}")
