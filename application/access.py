"""API keys: issuing, revoking, and authenticating a presented key to a principal."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from application.commands import Command, Outcome
from application.errors import InvalidRequest, NotFound
from application.handlers import Handler, require_partner
from application.unit_of_work import UnitOfWork
from domain.api_key import ROLES, ApiKey, hash_secret
from domain.errors import InvalidIdentifier

KEY_PREFIX = "llk"
BOOTSTRAP_KEY_ID = "bootstrap-admin"


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    partner_id: str | None = None

    @property
    def actor(self) -> str:
        """What events record as their cause: the key id, never the key."""
        return f"key:{self.key_id}"


@dataclass(frozen=True)
class IssueApiKey(Command):
    role: str
    partner_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class RevokeApiKey(Command):
    key_id: str


def issue_api_key(uow: UnitOfWork, cmd: IssueApiKey, now: datetime) -> Outcome:
    if cmd.role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", field="role")
    if cmd.role == "partner":
        if not cmd.partner_id:
            raise InvalidRequest("a partner key needs partner_id", field="partner_id")
        require_partner(uow, cmd.partner_id)
    elif cmd.partner_id is not None:
        raise InvalidRequest("only partner keys are bound to a partner", field="partner_id")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    uow.add(ApiKey(key_id=key_id, role=cmd.role, partner_id=cmd.partner_id, name=cmd.name,
                   secret_hash=hash_secret(secret), actor=cmd.actor))
    body = {"key": f"{KEY_PREFIX}_{key_id}_{secret}", "key_id": key_id, "role": cmd.role,
            "partner_id": cmd.partner_id, "name": cmd.name}
    return Outcome(body=body)


def revoke_api_key(uow: UnitOfWork, cmd: RevokeApiKey, now: datetime) -> Outcome:
    key = uow.find(ApiKey, ApiKey.create_id(cmd.key_id))
    if key is None:
        raise NotFound(f"api key {cmd.key_id!r} not found")
    if not key.revoked:
        key.revoke(cmd.actor)
    return Outcome(body={"key_id": key.key_id, "revoked": True}, status=204)


def parse_key(presented: str) -> tuple[str, str] | None:
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def authenticate(presented: str, admin_key: str | None, read_key: Callable[[UUID], ApiKey | None]) -> Principal | None:
    """The principal for a presented key, or None. `read_key` must read the key's latest events
    every time, so that a revocation takes effect at once, in every process."""
    if admin_key and hmac.compare_digest(presented.encode(), admin_key.encode()):
        return Principal(key_id=BOOTSTRAP_KEY_ID, role="admin")
    parsed = parse_key(presented)
    if parsed is None:
        return None
    key_id, secret = parsed
    try:
        aggregate_id = ApiKey.create_id(key_id)
    except InvalidIdentifier:
        return None
    key = read_key(aggregate_id)
    if key is None or not key.accepts(secret):
        return None
    return Principal(key_id=key.key_id, role=key.role, partner_id=key.partner_id)


ACCESS_HANDLERS: dict[type, Handler] = {IssueApiKey: issue_api_key, RevokeApiKey: revoke_api_key}
