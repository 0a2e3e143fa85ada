"""HTTP routes, one blueprint per area of ../shared/API.md."""

from __future__ import annotations

from typing import Any

from flask import current_app

from api.auth import key_confirmed, unconfirmed_key
from application.commands import Command, Outcome
from application.ledger import Ledger


def ledger() -> Ledger:
    return current_app.extensions["ledger"]


def reads() -> Any:
    """Where member reads come from: the projections when the deployment has them."""
    return current_app.extensions.get("read_model") or ledger()


def respond(outcome: Outcome) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The outcome's body and status; a replay says so in a header."""
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    return outcome.body, outcome.status, headers


def run(command: Command) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Executes a write: through the process's group-commit queue when the server has one,
    which also confirms the caller's key where that is still to be done (api/auth.py)."""
    committer = current_app.extensions.get("committer")
    if committer is None:
        return respond(ledger().execute(command))
    key = unconfirmed_key()
    outcome = committer.execute(command, key)
    key_confirmed()  # the batch found the key as stored valid, or raised Unauthenticated
    return respond(outcome)
