"""Application errors: what a caller did wrong or what the store could not do. Each has a slug
that the HTTP layer maps to a problem type in one table."""

from __future__ import annotations


class ApplicationError(Exception):
    slug = "error"

    def __init__(self, detail: str, **facts: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.facts = facts


class NotFound(ApplicationError):
    slug = "not-found"


class IdempotencyConflict(ApplicationError):
    """The id was used before with a different request."""

    slug = "idempotency-conflict"


class Conflict(ApplicationError):
    """The request clashes with existing state (a card number taken, a program exists)."""

    slug = "conflict"


class InvalidRequest(ApplicationError):
    slug = "validation-error"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.field = field


class Contention(ApplicationError):
    """Optimistic retries ran out: too many writers on one member at once. Safe to retry."""

    slug = "contention"


class Unauthenticated(ApplicationError):
    """The key presented is not (or no longer) valid: a revocation seen by the batch that would
    have committed the command."""

    slug = "unauthenticated"
