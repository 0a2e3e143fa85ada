"""Domain errors: a rule of the ledger said no. Raised before any event is emitted."""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused by a business rule; nothing changed."""

    slug = "domain-error"

    def __init__(self, detail: str, **facts: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.facts = facts


class InvalidRules(DomainError):
    slug = "validation-error"

    def __init__(self, errors: dict[str, list[str]]) -> None:
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(errors.items()))
        super().__init__(f"invalid program rules: {detail}", errors=errors)
        self.errors = errors


class InvalidAmount(DomainError):
    slug = "validation-error"


class CurrencyMismatch(DomainError):
    slug = "validation-error"


class InsufficientPoints(DomainError):
    slug = "insufficient-points"


class UnknownPurchase(DomainError):
    slug = "not-found"


class UnknownRedemption(DomainError):
    slug = "not-found"


class ReturnExceedsPurchase(DomainError):
    slug = "return-exceeds-purchase"


class AlreadyReversed(DomainError):
    """The thing was already cancelled or reversed: each is reversed at most once."""

    slug = "already-reversed"


class DuplicatePosting(DomainError):
    """An id already used on this member for another posting."""

    slug = "idempotency-conflict"


class InvalidTime(DomainError):
    slug = "validation-error"


class StoreNotInPartner(DomainError):
    slug = "unknown-store"


class InvalidIdentifier(DomainError):
    slug = "validation-error"


class UnknownEvent(DomainError):
    slug = "not-found"


class SelfApproval(DomainError):
    """Four eyes: whoever requested an adjustment cannot decide it."""

    slug = "forbidden"


class AlreadyDecided(DomainError):
    slug = "conflict"
