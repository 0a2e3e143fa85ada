"""API keys: a role, optionally bound to a partner; only a hash of the secret is ever stored."""

from __future__ import annotations

import hashlib
import hmac
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import AlreadyReversed
from domain.identity import natural_id

ROLES = ("admin", "partner", "support", "supervisor", "auditor", "finance")


def hash_secret(secret: str) -> str:
    # The secret is 256 random bits, so a plain SHA-256 is not brute-forceable.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(Aggregate):
    class Event(Aggregate.Event):
        actor: str

    class KeyIssued(Event, Aggregate.Created):
        key_id: str
        role: str
        partner_id: str | None
        name: str | None
        secret_hash: str

    class KeyRevoked(Event):
        def apply(self, key: ApiKey) -> None:
            key.revoked = True

    @staticmethod
    def create_id(key_id: str) -> UUID:
        return natural_id("api-key", key_id)

    @event(KeyIssued)
    def __init__(self, *, key_id: str, role: str, partner_id: str | None, name: str | None,
                 secret_hash: str, actor: str) -> None:
        self.key_id = key_id
        self.role = role
        self.partner_id = partner_id
        self.name = name
        self.secret_hash = secret_hash
        self.revoked = False

    def revoke(self, actor: str) -> None:
        if self.revoked:
            raise AlreadyReversed(f"key {self.key_id} is already revoked")
        self.trigger_event(self.KeyRevoked, actor=actor)

    def accepts(self, secret: str) -> bool:
        return not self.revoked and hmac.compare_digest(self.secret_hash, hash_secret(secret))
