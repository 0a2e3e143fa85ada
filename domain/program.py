"""Program: a loyalty program's rules and their revisions over effective time."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.calendar import require_aware
from domain.errors import InvalidRules
from domain.identity import program_id_to_uuid
from domain.money import is_currency_code
from domain.rules import RULE_FIELDS, Rules


class Program(Aggregate):
    class Event(Aggregate.Event):
        actor: str

    class ProgramCreated(Event, Aggregate.Created):
        program_id: str
        name: str
        currency: str
        rules: dict[str, Any]
        effective_at: datetime
        request_hash: str

    class RulesRevised(Event):
        revision: int
        effective_at: datetime
        changes: dict[str, Any]
        rules: dict[str, Any]

        def apply(self, program: Program) -> None:
            program.revisions.append(
                {"revision": self.revision, "effective_at": self.effective_at, "rules": self.rules}
            )

    @staticmethod
    def create_id(program_id: str) -> UUID:
        return program_id_to_uuid(program_id)

    @classmethod
    def create(
        cls, *, program_id: str, name: str, currency: str, rules: dict[str, Any],
        effective_at: datetime, actor: str, request_hash: str,
    ) -> Program:
        if not is_currency_code(currency):
            raise InvalidRules({"currency": ["must be an ISO 4217 code such as EUR"]})
        require_aware(effective_at, "effective_at")
        checked = Rules.from_dict(rules).to_dict()
        return cls._create(
            cls.ProgramCreated, program_id=program_id, name=name, currency=currency, rules=checked,
            effective_at=effective_at, actor=actor, request_hash=request_hash,
        )

    @event(ProgramCreated)
    def __init__(
        self, *, program_id: str, name: str, currency: str, rules: dict[str, Any],
        effective_at: datetime, actor: str, request_hash: str,
    ) -> None:
        self.program_id = program_id
        self.name = name
        self.currency = currency
        self.request_hash = request_hash
        self.revisions: list[dict[str, Any]] = [{"revision": 1, "effective_at": effective_at, "rules": rules}]

    # Commands
    def revise(self, *, changes: dict[str, Any], effective_at: datetime, actor: str) -> int:
        require_aware(effective_at, "effective_at")
        if not changes:
            raise InvalidRules({"rules": ["a revision must change at least one rule field"]})
        unknown = sorted(set(changes) - set(RULE_FIELDS))
        if unknown:
            raise InvalidRules({field: ["is not a revisable rule field"] for field in unknown})
        latest = self.revisions[-1]
        if effective_at <= latest["effective_at"]:
            raise InvalidRules(
                {"effective_at": [f"must be later than revision {latest['revision']}'s {latest['effective_at'].isoformat()}"]}
            )
        merged = Rules.from_dict({**latest["rules"], **changes}).to_dict()
        revision = latest["revision"] + 1
        self.trigger_event(
            self.RulesRevised, revision=revision, effective_at=effective_at,
            changes=changes, rules=merged, actor=actor,
        )
        return revision

    # Queries
    def revision_at(self, moment: datetime) -> dict[str, Any]:
        """The revision in force at `moment`; the first revision also covers earlier times."""
        in_force = self.revisions[0]
        for revision in self.revisions[1:]:
            if revision["effective_at"] <= moment:
                in_force = revision
        return in_force

    def rules_at(self, moment: datetime) -> tuple[int, Rules]:
        revision = self.revision_at(moment)
        return revision["revision"], parsed_rules(revision["rules"])

    @property
    def current_rules(self) -> Rules:
        return parsed_rules(self.revisions[-1]["rules"])


_PARSED: dict[int, tuple[dict[str, Any], Rules]] = {}


def parsed_rules(rules: dict[str, Any]) -> Rules:
    """Rules.from_dict, remembered for a revision's rules dict (never changed once recorded):
    every posting values itself with them. The entry holds the dict, so its id stays its own."""
    entry = _PARSED.get(id(rules))
    if entry is not None and entry[0] is rules:
        return entry[1]
    parsed = Rules.from_dict(rules)
    if len(_PARSED) >= 1024:
        _PARSED.clear()
    _PARSED[id(rules)] = (rules, parsed)
    return parsed
