"""The tier window's spend, read from the member's running totals (domain/spend_index.py), is
exactly what summing every purchase in the window less its returns by then gives, written with
the same decimal places: for purchases
recorded in any time order, after returns, on copies of the member and on a member loaded from a
snapshot (which does not hold the index)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.member import SPEND_INDEX, Member
from domain.rules import Rules

START = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
RULES = Rules.from_dict({
    "earn_rate": "1", "point_value": "0.01", "expected_redemption_rate": "0.8",
    "expiry": {"policy": "none"}, "pending_days": 0,
    "tiers": [{"name": "base", "qualifying_spend": "0", "multiplier": "1"},
              {"name": "silver", "qualifying_spend": "400", "multiplier": "1.5"}],
    "tier_window_months": 2, "adjustment_approval_threshold": 1000,
})

# (day of the purchase, cents, cents returned later or 0, days after the purchase of the return)
PURCHASES = st.lists(st.tuples(st.integers(0, 200), st.integers(1, 50_000), st.integers(0, 50_000),
                               st.integers(0, 90)), min_size=1, max_size=30)
AS_OF = st.lists(st.integers(0, 320), min_size=1, max_size=6)


def summed(member: Member, as_of: datetime) -> Decimal:
    """The definition: every purchase in (window start, as_of], less its returns made by as_of."""
    start = RULES.window_start(as_of)
    return sum((p["amount"] - sum((a for when, a in p["returns"] if when <= as_of), Decimal(0))
                for p in member.purchases.values() if start < p["occurred_at"] <= as_of), Decimal(0))


def enrolled() -> Member:
    return Member.enrol(member_id="m1", program_id="club", card_number=None, name=None, email=None, birthday=None,
                        base_tier="base", occurred_at=START - timedelta(days=1), actor="t", request_hash="h")


@settings(max_examples=150, deadline=None)
@given(PURCHASES, AS_OF)
def test_the_window_spend_equals_the_sum_of_its_purchases_less_their_returns(purchases, days) -> None:
    member = enrolled()
    for number, (day, cents, returned, later) in enumerate(purchases):
        amount = Decimal(cents) / 100
        member.record_purchase(partner_id="shop", store_id="s1", transaction_id=f"t{number}", amount=amount,
                               currency="EUR", items=[], occurred_at=START + timedelta(days=day), actor="pos",
                               revision=1, rules=RULES)
        if returned:
            member.return_purchase(partner_id="shop", transaction_id=f"r{number}", original_transaction_id=f"t{number}",
                                   amount=min(Decimal(returned) / 100, amount),
                                   occurred_at=START + timedelta(days=day + later), actor="pos")
        for as_of in (START + timedelta(days=d, hours=h) for d in days for h in (0, 12)):
            # The same figure written the same way ("300", not "300.00"): it goes into the reason
            # a tier change records.
            assert str(member.qualifying_spend(as_of, RULES)) == str(summed(member, as_of))
    clone = copy.deepcopy(member)
    loaded = type(member).Snapshot.take(member).mutate(None)
    assert SPEND_INDEX in vars(member) and SPEND_INDEX not in vars(loaded)
    for as_of in (START + timedelta(days=d) for d in days):
        expected = summed(member, as_of)
        assert str(clone.qualifying_spend(as_of, RULES)) == str(loaded.qualifying_spend(as_of, RULES)) == str(expected)


def test_a_copy_extends_its_own_index_and_leaves_the_original_as_it_was() -> None:
    member = enrolled()
    for number in range(3):
        member.record_purchase(partner_id="shop", store_id="s1", transaction_id=f"t{number}", amount=Decimal("100"),
                               currency="EUR", items=[], occurred_at=START + timedelta(days=number), actor="pos",
                               revision=1, rules=RULES)
    moment = START + timedelta(days=10)
    clone = copy.deepcopy(member)
    clone.record_purchase(partner_id="shop", store_id="s1", transaction_id="t9", amount=Decimal("250"), currency="EUR",
                          items=[], occurred_at=START + timedelta(days=5), actor="pos", revision=1, rules=RULES)
    assert clone.qualifying_spend(moment, RULES) == Decimal("550")
    assert member.qualifying_spend(moment, RULES) == Decimal("300")
