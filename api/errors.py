"""Errors the HTTP layer itself raises (authentication and authorisation)."""

from __future__ import annotations

from application.errors import ApplicationError


class Unauthenticated(ApplicationError):
    slug = "unauthenticated"


class Forbidden(ApplicationError):
    slug = "forbidden"
