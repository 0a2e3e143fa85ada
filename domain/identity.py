"""Aggregate ids derived from natural keys (uuid5), so the store's primary key enforces uniqueness."""

from __future__ import annotations

import re
from functools import lru_cache
from uuid import UUID, uuid5

from domain.errors import InvalidIdentifier

_NAMESPACE = UUID("6f1d8f44-3c1e-5b7a-9a53-4c6f7a1e2b10")


@lru_cache(maxsize=1 << 16)  # a command derives the same few ids several times (prefetch, checks, creation)
def natural_id(kind: str, *parts: str) -> UUID:
    # The unit separator cannot appear in ids we accept, so keys never collide.
    return uuid5(_NAMESPACE, "\x1f".join((kind, *parts)))


def program_id_to_uuid(program_id: str) -> UUID:
    return natural_id("program", program_id)


def partner_id_to_uuid(partner_id: str) -> UUID:
    return natural_id("partner", partner_id)


def member_id_to_uuid(member_id: str) -> UUID:
    return natural_id("member", member_id)


def card_uuid(program_id: str, card_number: str) -> UUID:
    return natural_id("card", program_id, card_number)


def receipt_uuid(scope: str, *key: str) -> UUID:
    """A receipt for an idempotent write: scope names the id space, key the id within it."""
    return natural_id("receipt", scope, *key)


_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def check_slug(value: str, field: str) -> None:
    """Program and partner ids: lower-case slugs, so they compose into keys unambiguously."""
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise InvalidIdentifier(f"{field} must be a slug: a-z, 0-9, '-' or '_', 1 to 64 characters", field=field)


def check_identifier(value: str, field: str) -> None:
    """Client-chosen ids (members, transactions, redemptions): 1 to 128 printable characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.isprintable() or value.strip() != value:
        raise InvalidIdentifier(
            f"{field} must be 1 to 128 printable characters without surrounding spaces", field=field
        )
