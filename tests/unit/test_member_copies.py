"""A member's copy (the repository makes one from its cache before every command) shares its
lots, purchases and redemptions with the original instead of copying each one: every event
replaces what it changes and never changes it in place. Whatever a command does to the copy,
the original stays exactly as it was (a command that fails, or whose save loses a race, must
leave nothing behind in the cache)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from application.commands import CreateProgram, EnrolMember, RecordPurchase, Redeem, RegisterPartner
from domain.errors import DomainError
from domain.member import Member
from domain.rules import Rules
from infrastructure.bootstrap import build_ledger
from infrastructure.config import Config

START = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
NOW = START + timedelta(days=10)
RULES: dict[str, Any] = {
    "earn_rate": "1", "point_value": "0.01", "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 1}, "pending_days": 0,
    "tiers": [{"name": "base", "qualifying_spend": "0", "multiplier": "1"},
              {"name": "silver", "qualifying_spend": "250", "multiplier": "2"}],
    "tier_window_months": 12, "adjustment_approval_threshold": 1000,
}
DOMAIN_RULES = Rules.from_dict(RULES)


@pytest.fixture()
def member() -> Member:
    """Three purchases (three lots), one redemption spending from two of them."""
    ledger = build_ledger(Config(database_url="memory://"), clock=lambda: NOW)
    ledger.execute(CreateProgram(actor="admin", program_id="club", name="Club", currency="EUR", rules=RULES,
                                 effective_at=START - timedelta(days=30)))
    ledger.execute(RegisterPartner(actor="admin", partner_id="shop", name="Shop", program_id="club", stores=["s1"]))
    ledger.execute(EnrolMember(actor="admin", program_id="club", member_id="ann", name="Ann"))
    for number in range(3):
        ledger.execute(RecordPurchase(actor="pos", partner_id="shop", transaction_id=f"t{number}", store_id="s1",
                                      amount=Decimal("60"), currency="EUR", member_id="ann",
                                      occurred_at=START + timedelta(days=number)))
    ledger.execute(Redeem(actor="pos", member_id="ann", redemption_id="r1", points=90, occurred_at=NOW))
    return ledger.get_member("ann")


def frozen(member: Member, skip: tuple[str, ...] = ("_pending_events",)) -> dict[str, Any]:
    """Everything the member holds, deep-copied generically (not with Member.__deepcopy__)."""
    return copy.deepcopy({name: value for name, value in vars(member).items() if name not in skip})


def version_of(member: Member, kind: str, key: str) -> int:
    return {"purchase": member.purchases, "redemption": member.redemptions}[kind][key]["version"]


COMMANDS: dict[str, Callable[[Member], Any]] = {
    "purchase (new lot, tier up)": lambda m: m.record_purchase(
        partner_id="shop", store_id="s1", transaction_id="t9", amount=Decimal("200"), currency="EUR", items=[],
        occurred_at=NOW, actor="pos", revision=1, rules=DOMAIN_RULES),
    "return (purchase entry, lot, clawback)": lambda m: m.return_purchase(
        partner_id="shop", transaction_id="ret1", original_transaction_id="t0", amount=Decimal("60"),
        occurred_at=NOW, actor="pos"),
    "redemption (lots)": lambda m: m.redeem(redemption_id="r2", points=50, reward=None, partner_id=None,
                                            occurred_at=NOW, actor="pos"),
    "cancellation (lots, redemption entry)": lambda m: m.cancel_redemption(redemption_id="r1", occurred_at=NOW,
                                                                          actor="support"),
    "expiry (lots)": lambda m: m.expire_points(as_of=NOW + timedelta(days=400), actor="job"),
    "debit adjustment (lots)": lambda m: m.adjust(adjustment_id="a1", points=-20, reason="correction", note="n",
                                                  occurred_at=NOW, actor="support", rules=DOMAIN_RULES),
    "credit adjustment (new lot)": lambda m: m.adjust(adjustment_id="a2", points=20, reason="goodwill", note="n",
                                                      occurred_at=NOW, actor="support", rules=DOMAIN_RULES),
    "reversal of a purchase": lambda m: m.reverse_event(version=version_of(m, "purchase", "shop:t1"),
                                                        reversal_id="v1", note="n", occurred_at=NOW, actor="support",
                                                        rules=DOMAIN_RULES),
    "reversal of a redemption": lambda m: m.reverse_event(version=version_of(m, "redemption", "r1"),
                                                          reversal_id="v2", note="n", occurred_at=NOW,
                                                          actor="support", rules=DOMAIN_RULES),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_on_a_copy_leaves_the_original_exactly_as_it_was(member: Member, name: str) -> None:
    before = frozen(member)
    clone = copy.deepcopy(member)
    COMMANDS[name](clone)
    assert clone.pending_events, "the command did something"
    assert frozen(clone) != before
    assert frozen(member) == before


def test_commands_one_after_another_on_copies_equal_the_same_commands_on_one_member(member: Member) -> None:
    """A chain of copies, as the cache makes them command after command, ends where applying
    every command to one member does."""
    alone = copy.deepcopy(member)
    chained = member
    refused = []
    for name, command in COMMANDS.items():
        outcomes = []
        for target in (alone, chained := copy.deepcopy(chained)):
            try:
                command(target)
                outcomes.append("done")
            except DomainError as error:  # the redemption reversed after its cancellation
                outcomes.append(type(error).__name__)
        assert outcomes[0] == outcomes[1], name
        if outcomes[0] != "done":
            refused.append(name)
    assert refused == ["reversal of a redemption"]
    clock_free = ("_pending_events", "_modified_on")  # the library's own time of each event
    assert frozen(chained, clock_free) == frozen(alone, clock_free)
