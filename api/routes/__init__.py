"""HTTP routes, one blueprint per area of ../shared/API.md."""

from __future__ import annotations

from typing import Any

from flask import current_app

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
    """Executes a write: through the process's group-commit queue when the server has one."""
    committer = current_app.extensions.get("committer")
    return respond(committer.execute(command) if committer is not None else ledger().execute(command))
