"""Errors the HTTP layer itself raises (authentication and authorisation)."""

from __future__ import annotations

from application.errors import ApplicationError, Unauthenticated


class Forbidden(ApplicationError):
    slug = "forbidden"


__all__ = ["Forbidden", "Unauthenticated"]
