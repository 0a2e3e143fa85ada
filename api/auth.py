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
        principal = g.principal = _authenticate(_presented(), fresh=True)
    return principal


def _presented() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthenticated("send an API key as 'Authorization: Bearer <key>'")
    return presented.strip()


def _authenticate(presented: str, fresh: bool) -> Principal:
    """The key as stored now (`fresh`), or as this process last read it, if it has a copy that
    admits the caller: then the key still has to be confirmed (g.unconfirmed_key), by the batch
    that commits the caller's command or, if the request ends otherwise, by a fresh read."""
    ledger = current_app.extensions["ledger"]
    admin_key = current_app.config["LOYALTY"].admin_key
    if not fresh:
        copies: list[Any] = []

        def copy(aggregate_id: Any) -> Any:
            key = ledger.cached_api_key(aggregate_id)
            if key is not None:
                copies.append(aggregate_id)
            return key

        principal = ledger.authenticate(presented, admin_key, copy)
        if principal is not None:
            g.unconfirmed_key = copies[0] if copies else None  # none for the admin key, which is configuration
            return principal
    key_reads = current_app.extensions.get("key_reads")  # a server reads concurrent requests' keys together
    principal = ledger.authenticate(presented, admin_key, key_reads.read if key_reads else None)
    if principal is None:
        raise Unauthenticated("the API key is not valid or was revoked")
    g.unconfirmed_key = None
    return principal


def unconfirmed_key() -> Any:
    """The API key (aggregate id) the caller was admitted with from this process's copy, to be
    confirmed by the batch committing its command (infrastructure/group_commit.py); None once
    confirmed or when read as stored."""
    return g.get("unconfirmed_key")


def key_confirmed() -> None:
    g.unconfirmed_key = None


def requires(*roles: str, confirm_in_commit: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The route needs one of `roles`. Authentication comes first, so a missing key is 401
    whatever the route.

    `confirm_in_commit` (routes whose success is a group-committed command): a caller whose key
    this process already holds a copy of is admitted on that copy, and the batch that commits
    its command confirms the key as stored then, with what it reads anyway, instead of a read
    of its own for every request. A request that ends any other way (refused, invalid, an
    error) reads the key as stored first, so that a revoked key is still answered 401 before
    anything else."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            deferred = confirm_in_commit and current_app.extensions.get("committer") is not None
            if getattr(g, "principal", None) is None:
                g.principal = _authenticate(_presented(), fresh=not deferred)
            principal = g.principal
            try:
                if principal.role not in roles:
                    raise Forbidden(f"the {principal.role} role may not do this")
                response = view(*args, **kwargs)
            except BaseException:
                _confirm_now()
                raise
            _confirm_now()  # a success that no batch confirmed (none here commits without one)
            return response

        guarded._roles = roles  # type: ignore[attr-defined]  # read by the OpenAPI description
        return guarded

    return decorate


def _confirm_now() -> None:
    if g.get("unconfirmed_key") is not None:
        g.principal = _authenticate(_presented(), fresh=True)


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
