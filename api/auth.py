"""Bearer API keys and roles: who is calling, and may they."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, request

from api.errors import Forbidden, Unauthenticated
from application.access import Principal

ALL_ROLES = ("admin", "partner", "support", "supervisor", "auditor", "finance")
READERS = ("admin", "support", "supervisor", "auditor", "finance", "partner")


def current_principal() -> Principal:
    principal = getattr(g, "principal", None)
    if principal is None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthenticated("send an API key as 'Authorization: Bearer <key>'")
        key_reads = current_app.extensions.get("key_reads")  # a server reads concurrent requests' keys together
        principal = current_app.extensions["ledger"].authenticate(
            presented.strip(), current_app.config["LOYALTY"].admin_key, key_reads.read if key_reads else None)
        if principal is None:
            raise Unauthenticated("the API key is not valid or was revoked")
        g.principal = principal
    return principal


def requires(*roles: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The route needs one of `roles`. Authentication comes first, so a missing key is 401
    whatever the route."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if principal.role not in roles:
                raise Forbidden(f"the {principal.role} role may not do this")
            return view(*args, **kwargs)

        guarded._roles = roles  # type: ignore[attr-defined]  # read by the OpenAPI description
        return guarded

    return decorate


def posting_partner(requested: str | None) -> str:
    """The partner a posting is for: a partner key's own (naming another is forbidden); an
    admin names one in the body."""
    principal = current_principal()
    if principal.role == "partner":
        if requested is not None and requested != principal.partner_id:
            raise Forbidden("a partner key may post only for its own partner")
        assert principal.partner_id is not None
        return principal.partner_id
    if requested is None:
        raise Forbidden("an admin posting must name partner_id")
    return requested
