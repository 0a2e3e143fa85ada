"""Member: a loyalty account whose points are held as lots.

Commands check, then emit; every state change happens in an event's apply(), so replay and
live execution run the same code. Events carry the actor and the effective time (occurred_at);
the library's timestamp is the recorded time.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.calendar import EARLIEST, require_aware
from domain.errors import (
    AlreadyReversed,
    DuplicatePosting,
    InsufficientPoints,
    InvalidAmount,
    ReturnExceedsPurchase,
    UnknownPurchase,
    UnknownEvent,
    UnknownRedemption,
)
from domain.identity import member_id_to_uuid
from domain.lots import AVAILABLE, DUE, PENDING, Lot, spend_oldest_first
from domain.money import allocate_to_points, points_to_reverse
from domain.rules import Rules
from domain.spend_index import SpendIndex

ADJUSTMENT_REASONS = ("goodwill", "missing_purchase", "duplicate_posting", "fraud", "correction")
MAX_POINTS = 10**12


def purchase_key(partner_id: str, transaction_id: str) -> str:
    return f"{partner_id}:{transaction_id}"


SPEND_INDEX = "_spend_index"  # derived, not part of the member's recorded state


class Member(Aggregate):
    class Event(Aggregate.Event):
        actor: str
        occurred_at: datetime

        def mutate(self, aggregate: Any) -> Any:
            aggregate = super().mutate(aggregate)
            # Snapshots whose facts all happened by an as-of time can seed an as-of replay.
            if self.occurred_at > aggregate.latest_occurred_at:
                aggregate.latest_occurred_at = self.occurred_at
            return aggregate

    class MemberEnrolled(Event, Aggregate.Created):
        member_id: str
        program_id: str
        card_number: str | None
        name: str | None
        email: str | None
        birthday: str | None
        tier: str
        request_hash: str

    class PurchaseRecorded(Event):
        """Also records the IFRS 15 allocation of the price to the points (see money.allocate_to_points)."""

        class_version = 2

        partner_id: str
        store_id: str
        transaction_id: str
        amount: Decimal
        currency: str
        items: list[dict[str, Any]]
        revision: int
        earn_rate: Decimal
        tier: str
        multiplier: Decimal
        points: int
        point_value: Decimal | None
        expected_redemption_rate: Decimal | None
        allocated_to_points: Decimal | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # Recorded before allocations were: unknown, never guessed.
            state.update(point_value=None, expected_redemption_rate=None, allocated_to_points=None)

        def apply(self, member: Member) -> None:
            member.purchases[purchase_key(self.partner_id, self.transaction_id)] = {
                "partner_id": self.partner_id,
                "store_id": self.store_id,
                "transaction_id": self.transaction_id,
                "amount": self.amount,
                "currency": self.currency,
                "occurred_at": self.occurred_at,
                "points": self.points,
                "lot_id": None,
                "version": self.originator_version,
                "returned": Decimal(0),
                "returns": [],  # [[occurred_at, amount], ...]: a review as of a date counts only returns by then
                "reversed_points": 0,
            }
            index = member.__dict__.get(SPEND_INDEX)
            if index is not None and not index.append(self.occurred_at, self.amount):
                del member.__dict__[SPEND_INDEX]  # a purchase dated before others: rebuilt when next needed

    class PointsAccrued(Event):
        purchase: str
        lot_id: str
        points: int
        available_at: datetime
        expires_at: datetime | None

        def apply(self, member: Member) -> None:
            member.lots[self.lot_id] = Lot(
                lot_id=self.lot_id, source=f"purchase:{self.purchase}", points=self.points,
                earned_at=self.occurred_at, available_at=self.available_at,
                expires_at=self.expires_at, remaining=self.points,
            )
            member.purchases[self.purchase] = {**member.purchases[self.purchase], "lot_id": self.lot_id}
            member.lot_sequence += 1
            member.lifetime["earned"] += self.points

    class PurchaseReturned(Event):
        partner_id: str
        transaction_id: str
        original_transaction_id: str
        amount: Decimal

        def apply(self, member: Member) -> None:
            key = purchase_key(self.partner_id, self.original_transaction_id)
            purchase = member.purchases[key]
            member.purchases[key] = {**purchase, "returned": purchase["returned"] + self.amount,
                                     "returns": [*purchase["returns"], [self.occurred_at, self.amount]]}
            member.returns[purchase_key(self.partner_id, self.transaction_id)] = key

    class AccrualReversed(Event):
        """Points taken back for a return: from what remains of the lot, then (if the lot was
        spent) as a clawback below zero; points that had already expired are not taken twice."""

        purchase: str
        return_transaction_id: str
        lot_id: str
        points: int
        from_remaining: int
        from_expired: int
        clawback: int

        def apply(self, member: Member) -> None:
            taken = self.from_remaining + self.clawback
            member.lots[self.lot_id] = member.lots[self.lot_id].changed(remaining=-taken, reversed=taken)
            purchase = member.purchases[self.purchase]
            member.purchases[self.purchase] = {**purchase, "reversed_points": purchase["reversed_points"] + self.points}
            member.lifetime["reversed"] += taken
            member.expired_reversed[self.lot_id] = member.expired_reversed.get(self.lot_id, 0) + self.from_expired

    class PointsRedeemed(Event):
        redemption_id: str
        points: int
        reward: str | None
        partner_id: str | None
        consumed: list[list[Any]]

        def apply(self, member: Member) -> None:
            for lot_id, points in self.consumed:
                member.lots[lot_id] = member.lots[lot_id].changed(remaining=-points)
            member.redemptions[self.redemption_id] = {
                "points": self.points,
                "consumed": self.consumed,
                "partner_id": self.partner_id,
                "occurred_at": self.occurred_at,
                "cancelled": False,
                "version": self.originator_version,
            }
            member.lifetime["redeemed"] += self.points

    class RedemptionCancelled(Event):
        redemption_id: str
        restored: list[list[Any]]
        restored_expired: list[list[Any]]

        def apply(self, member: Member) -> None:
            for lot_id, points in self.restored:
                member.lots[lot_id] = member.lots[lot_id].changed(remaining=points)
            for lot_id, points in self.restored_expired:
                member.lots[lot_id] = member.lots[lot_id].changed(expired=points)
            member.redemptions[self.redemption_id] = {**member.redemptions[self.redemption_id], "cancelled": True}
            member.lifetime["redeemed"] -= member.redemptions[self.redemption_id]["points"]
            member.lifetime["expired"] += sum(points for _, points in self.restored_expired)

    class PointsExpired(Event):
        expired: list[list[Any]]
        # Points owed (lots below zero) paid from the expiring points first: [lot_id, signed
        # points] pairs that sum to zero. Events stored before it was kept read as none.
        settled: list[list[Any]] = ()  # type: ignore[assignment]

        def apply(self, member: Member) -> None:
            for lot_id, points in self.settled:
                member.lots[lot_id] = member.lots[lot_id].changed(remaining=points, settled=-points)
            for lot_id, points in self.expired:
                member.lots[lot_id] = member.lots[lot_id].changed(remaining=-points, expired=points)
            member.lifetime["expired"] += sum(points for _, points in self.expired)

    class PointsAdjusted(Event):
        """A signed correction. Credit: a new lot. Debit: spent oldest first, and whatever the
        balance cannot cover becomes a visible debt lot."""

        adjustment_id: str
        points: int
        reason: str
        note: str
        lot: dict[str, Any] | None
        consumed: list[list[Any]]
        approved_by: str | None = None  # the supervisor, when the adjustment needed approval

        def apply(self, member: Member) -> None:
            if self.lot is not None:
                member.lots[self.lot["lot_id"]] = Lot(**self.lot)
                member.lot_sequence += 1
            for lot_id, points in self.consumed:
                member.lots[lot_id] = member.lots[lot_id].changed(remaining=-points)
            member.adjustments[self.adjustment_id] = {
                "points": self.points, "reason": self.reason, "version": self.originator_version,
                "occurred_at": self.occurred_at}
            member.lifetime["adjusted"] += self.points

    class EventReversed(Event):
        """Support reversed one specific earlier event (by its version) with the compensating
        events just before this one; an event is reversed at most once."""

        version: int
        reversal_id: str
        kind: str
        note: str

        def apply(self, member: Member) -> None:
            member.reversals[str(self.version)] = self.reversal_id

    class TierChanged(Event):
        from_tier: str
        to_tier: str
        direction: str  # "up" | "down"
        reason: str
        qualifying_spend: Decimal
        revision: int

        def apply(self, member: Member) -> None:
            # In effective-time order (recorded order among equal times), never in place: a change
            # dated before a later one (a late posting, a review run late) does not undo it.
            changes = sorted([*member.tier_changes_so_far(), [self.occurred_at, self.to_tier]], key=lambda c: c[0])
            member.tier_changes = changes
            member.tier_since, member.tier = changes[-1]

    @staticmethod
    def create_id(member_id: str) -> UUID:
        return member_id_to_uuid(member_id)

    @classmethod
    def enrol(
        cls, *, member_id: str, program_id: str, card_number: str | None, name: str | None,
        email: str | None, birthday: str | None, base_tier: str, occurred_at: datetime,
        actor: str, request_hash: str,
    ) -> Member:
        require_aware(occurred_at, "occurred_at")
        return cls._create(
            cls.MemberEnrolled, member_id=member_id, program_id=program_id, card_number=card_number,
            name=name, email=email, birthday=birthday, tier=base_tier, occurred_at=occurred_at,
            actor=actor, request_hash=request_hash,
        )

    @event(MemberEnrolled)
    def __init__(
        self, *, member_id: str, program_id: str, card_number: str | None, name: str | None,
        email: str | None, birthday: str | None, tier: str, occurred_at: datetime, actor: str,
        request_hash: str,
    ) -> None:
        self.member_id = member_id
        self.program_id = program_id
        self.card_number = card_number
        self.name = name
        self.email = email
        self.birthday = birthday
        self.enrolled_at = occurred_at
        self.latest_occurred_at = occurred_at
        self.request_hash = request_hash
        self.tier = tier
        self.tier_since = occurred_at
        # [when, tier held from then], by effective time; the enrolment tier holds from the
        # earliest time there is (postings may be dated before the enrolment).
        self.tier_changes: list[list[Any]] = [[EARLIEST, tier]]
        self.lots: dict[str, Lot] = {}
        self.lot_sequence = 0
        self.purchases: dict[str, dict[str, Any]] = {}
        self.returns: dict[str, str] = {}
        self.redemptions: dict[str, dict[str, Any]] = {}
        self.adjustments: dict[str, dict[str, Any]] = {}
        self.expired_reversed: dict[str, int] = {}
        self.reversals: dict[str, str] = {}  # version reversed -> reversal id
        self.lifetime = {"earned": 0, "redeemed": 0, "expired": 0, "reversed": 0, "adjusted": 0}

    class Snapshot(Aggregate.Snapshot):
        @classmethod
        def take(cls, aggregate: Any) -> Any:
            snapshot = super().take(aggregate)
            snapshot.state.pop(SPEND_INDEX, None)  # derived from the purchases
            return snapshot

    def __deepcopy__(self, memo: dict[int, Any]) -> Member:
        """The repository copies cached aggregates before each command. A generic deepcopy
        walks every Decimal and datetime; only the containers events change need copying. Events
        replace a lot, a purchase or a redemption with a changed one and never change it in
        place, so the copy shares them with the original: copying a member no longer costs a
        copy of every lot and purchase it ever had."""
        clone = object.__new__(type(self))
        state = dict(self.__dict__)
        state["_pending_events"] = []
        for name in ("lots", "purchases", "redemptions", "returns", "adjustments", "expired_reversed", "lifetime",
                     "reversals"):
            state[name] = dict(state[name])
        if SPEND_INDEX in state:
            state[SPEND_INDEX] = state[SPEND_INDEX].copy()
        clone.__dict__.update(state)
        return clone

    # ---- commands -------------------------------------------------------------------------

    def record_purchase(
        self, *, partner_id: str, store_id: str, transaction_id: str, amount: Decimal,
        currency: str, items: list[dict[str, Any]], occurred_at: datetime, actor: str,
        revision: int, rules: Rules,
    ) -> int:
        """Records the purchase and accrues floor(amount x earn_rate x tier multiplier) points
        into a new lot, at the tier held when it was made; an upgrade it earns follows it."""
        require_aware(occurred_at, "occurred_at")
        key = purchase_key(partner_id, transaction_id)
        if key in self.purchases or key in self.returns:
            raise DuplicatePosting(f"transaction {transaction_id!r} is already recorded for this member")
        held = self.tier_at(occurred_at)  # a late posting earns at the tier held then, not today's
        tier = rules.tier_named(held)
        points = rules.points_for(amount, held)
        if points > MAX_POINTS:  # no balance could hold it, nor a projection's 64-bit column
            raise InvalidAmount(f"the purchase would earn {points} points; at most {MAX_POINTS} a posting",
                                field="amount")
        self.trigger_event(
            self.PurchaseRecorded, partner_id=partner_id, store_id=store_id,
            transaction_id=transaction_id, amount=amount, currency=currency, items=items,
            revision=revision, earn_rate=rules.earn_rate, tier=tier.name,
            multiplier=tier.multiplier, points=points, point_value=rules.point_value,
            expected_redemption_rate=rules.expected_redemption_rate,
            allocated_to_points=allocate_to_points(amount, points, rules.point_value, rules.expected_redemption_rate),
            occurred_at=occurred_at, actor=actor,
        )
        if points > 0:
            self.trigger_event(
                self.PointsAccrued, purchase=key, lot_id=self._next_lot_id(), points=points,
                available_at=rules.available_at(occurred_at), expires_at=rules.expires_at(occurred_at),
                occurred_at=occurred_at, actor=actor,
            )
        self._move_tier(rules, revision, occurred_at, actor, upgrade_only=True,
                        cause=f"purchase {transaction_id}")
        return points

    def return_purchase(
        self, *, partner_id: str, transaction_id: str, original_transaction_id: str,
        amount: Decimal, occurred_at: datetime, actor: str,
    ) -> int:
        """Reverses the purchase's points in proportion to the amount returned."""
        require_aware(occurred_at, "occurred_at")
        key = purchase_key(partner_id, original_transaction_id)
        purchase = self.purchases.get(key)
        if purchase is None:
            raise UnknownPurchase(f"no purchase {original_transaction_id!r} from partner {partner_id!r}")
        return_key = purchase_key(partner_id, transaction_id)
        if return_key in self.returns or return_key in self.purchases:
            raise DuplicatePosting(f"transaction {transaction_id!r} is already recorded for this member")
        if amount <= 0:
            raise InvalidAmount("amount must be greater than zero", field="amount")
        left = purchase["amount"] - purchase["returned"]
        if amount > left:
            raise ReturnExceedsPurchase(
                f"return of {amount} exceeds what is left of purchase {original_transaction_id!r} ({left})",
                returnable=str(left),
            )
        if occurred_at < purchase["occurred_at"]:
            raise InvalidAmount("a return cannot occur before its purchase", field="occurred_at")
        points = points_to_reverse(purchase["points"], purchase["amount"], purchase["returned"], amount)
        self.trigger_event(
            self.PurchaseReturned, partner_id=partner_id, transaction_id=transaction_id,
            original_transaction_id=original_transaction_id, amount=amount,
            occurred_at=occurred_at, actor=actor,
        )
        if points > 0:
            lot = self.lots[purchase["lot_id"]]
            from_remaining = min(points, max(lot.remaining, 0))
            expired_not_reversed = lot.expired - self.expired_reversed.get(lot.lot_id, 0)
            from_expired = min(points - from_remaining, expired_not_reversed)
            clawback = points - from_remaining - from_expired
            self.trigger_event(
                self.AccrualReversed, purchase=key, return_transaction_id=transaction_id,
                lot_id=lot.lot_id, points=points, from_remaining=from_remaining,
                from_expired=from_expired, clawback=clawback, occurred_at=occurred_at, actor=actor,
            )
        return points

    def redeem(
        self, *, redemption_id: str, points: int, reward: str | None, partner_id: str | None,
        occurred_at: datetime, actor: str,
    ) -> list[list[Any]]:
        """Spends available points, oldest lots first; never overdraws."""
        require_aware(occurred_at, "occurred_at")
        if redemption_id in self.redemptions:
            raise DuplicatePosting(f"redemption {redemption_id!r} already exists for this member")
        self.check_points(points)
        self.check_has_available_points(points, occurred_at)
        consumed = spend_oldest_first(list(self.lots.values()), points, occurred_at)
        self.trigger_event(
            self.PointsRedeemed, redemption_id=redemption_id, points=points, reward=reward,
            partner_id=partner_id, consumed=consumed, occurred_at=occurred_at, actor=actor,
        )
        return consumed

    def cancel_redemption(self, *, redemption_id: str, occurred_at: datetime, actor: str) -> dict[str, int]:
        """Puts the points back into the lots they came from; a lot already past its expiry
        takes them back as expired, once any clawback on it is paid off."""
        require_aware(occurred_at, "occurred_at")
        redemption = self.redemptions.get(redemption_id)
        if redemption is None:
            raise UnknownRedemption(f"no redemption {redemption_id!r} for this member")
        if redemption["cancelled"]:
            raise AlreadyReversed(f"redemption {redemption_id!r} is already cancelled")
        if occurred_at < redemption["occurred_at"]:
            raise InvalidAmount("a cancellation cannot occur before its redemption", field="occurred_at")
        restored, restored_expired = [], []
        for lot_id, points in redemption["consumed"]:
            lot = self.lots[lot_id]
            past_expiry = lot.expires_at is not None and lot.expires_at <= occurred_at
            # Past expiry, points first pay off a clawback on the lot; only the rest comes back expired.
            repaid = min(points, max(-lot.remaining, 0)) if past_expiry else points
            if repaid:
                restored.append([lot_id, repaid])
            if points - repaid:
                restored_expired.append([lot_id, points - repaid])
        self.trigger_event(
            self.RedemptionCancelled, redemption_id=redemption_id, restored=restored,
            restored_expired=restored_expired, occurred_at=occurred_at, actor=actor,
        )
        return {
            "restored": sum(p for _, p in restored),
            "restored_expired": sum(p for _, p in restored_expired),
        }

    def expire_points(self, *, as_of: datetime, actor: str) -> int:
        """Expires every positive remainder whose lot is due by `as_of`. Idempotent.

        Points the member owes (a lot below zero: a clawback, a debit beyond the balance) were
        paid back by the points that came after them (they count against the same balance), so
        the expiring points pay the debt first and only what is left over is lost: otherwise
        the debt would outlive the points that repaid it and be taken a second time."""
        require_aware(as_of, "as_of")
        due = sorted((lot for lot in self.lots.values() if lot.remaining > 0 and lot.state_at(as_of) == DUE),
                     key=lambda lot: lot.earned_at)
        if not due:
            return 0
        debts = [[lot.lot_id, -lot.remaining] for lot in sorted(self.lots.values(), key=lambda lot: lot.earned_at)
                 if lot.remaining < 0]
        settled: list[list[Any]] = []
        expired: list[list[Any]] = []
        for lot in due:
            left = lot.remaining
            while left and debts:
                debt = debts[0]
                paid = min(left, debt[1])
                settled += [[lot.lot_id, -paid], [debt[0], paid]]
                left -= paid
                debt[1] -= paid
                if not debt[1]:
                    debts.pop(0)
            if left:
                expired.append([lot.lot_id, left])
        self.trigger_event(self.PointsExpired, expired=expired, settled=settled, occurred_at=as_of, actor=actor)
        return sum(points for _, points in expired)

    def check_can_adjust(self, *, adjustment_id: str, points: int, reason: str) -> None:
        if adjustment_id in self.adjustments:
            raise DuplicatePosting(f"adjustment {adjustment_id!r} already exists for this member")
        if reason not in ADJUSTMENT_REASONS:
            raise InvalidAmount(f"reason must be one of {', '.join(ADJUSTMENT_REASONS)}", field="reason")
        if isinstance(points, bool) or not isinstance(points, int) or points == 0:
            raise InvalidAmount("points must be a non-zero integer", field="points")
        self.check_points(abs(points))

    def adjust(
        self, *, adjustment_id: str, points: int, reason: str, note: str, occurred_at: datetime,
        actor: str, rules: Rules, approved_by: str | None = None,
    ) -> None:
        require_aware(occurred_at, "occurred_at")
        self.check_can_adjust(adjustment_id=adjustment_id, points=points, reason=reason)
        lot: dict[str, Any] | None = None
        consumed: list[list[Any]] = []
        if points > 0:
            lot = self._new_lot(f"adjustment:{adjustment_id}", points, occurred_at,
                                occurred_at, rules.expires_at(occurred_at))
        else:
            consumed = spend_oldest_first(list(self.lots.values()), -points, occurred_at)
            shortfall = -points - sum(p for _, p in consumed)
            if shortfall:
                lot = self._new_lot(f"adjustment:{adjustment_id}", -shortfall, occurred_at, occurred_at, None)
        self.trigger_event(
            self.PointsAdjusted, adjustment_id=adjustment_id, points=points, reason=reason,
            note=note, lot=lot, consumed=consumed, occurred_at=occurred_at, actor=actor, approved_by=approved_by,
        )

    def reverse_event(
        self, *, version: int, reversal_id: str, note: str, occurred_at: datetime, actor: str, rules: Rules,
    ) -> str:
        """Reverses one specific earlier event, once: a purchase by returning what is left of it,
        a redemption by cancelling it, an adjustment by the opposite adjustment."""
        require_aware(occurred_at, "occurred_at")
        if str(version) in self.reversals:
            raise AlreadyReversed(f"the event at version {version} was already reversed by {self.reversals[str(version)]!r}")
        kind, key = self._reversible_at(version)
        if kind == "purchase":
            purchase = self.purchases[key]
            left = purchase["amount"] - purchase["returned"]
            if left <= 0:
                raise AlreadyReversed(f"purchase {purchase['transaction_id']!r} was already returned in full")
            self.return_purchase(partner_id=purchase["partner_id"], transaction_id=f"reversal:{reversal_id}",
                                 original_transaction_id=purchase["transaction_id"], amount=left,
                                 occurred_at=max(occurred_at, purchase["occurred_at"]), actor=actor)
        elif kind == "redemption":
            self.cancel_redemption(redemption_id=key, occurred_at=max(occurred_at, self.redemptions[key]["occurred_at"]),
                                   actor=actor)
        else:
            adjusted = self.adjustments[key]
            # Never before the adjustment it undoes (a snapshot from before this key was kept lacks it).
            at = max(occurred_at, adjusted["occurred_at"]) if "occurred_at" in adjusted else occurred_at
            self.adjust(adjustment_id=f"reversal:{reversal_id}", points=-adjusted["points"],
                        reason="correction", note=note, occurred_at=at, actor=actor, rules=rules)
        self.trigger_event(self.EventReversed, version=version, reversal_id=reversal_id, kind=kind, note=note,
                           occurred_at=occurred_at, actor=actor)
        return kind

    def _reversible_at(self, version: int) -> tuple[str, str]:
        for kind, index in (("purchase", self.purchases), ("redemption", self.redemptions),
                            ("adjustment", self.adjustments)):
            for key, entry in index.items():
                if entry.get("version") == version:
                    return kind, key
        raise UnknownEvent(f"no purchase, redemption or adjustment at version {version} of this member")

    def review_tier(self, *, as_of: datetime, actor: str, revision: int, rules: Rules) -> str | None:
        """Re-qualifies the tier on the spend in the window ending `as_of`: the only way down."""
        require_aware(as_of, "as_of")
        return self._move_tier(rules, revision, as_of, actor, upgrade_only=False, cause="tier review")

    # ---- checks ---------------------------------------------------------------------------

    @staticmethod
    def check_points(points: int) -> None:
        if isinstance(points, bool) or not isinstance(points, int) or points <= 0:
            raise InvalidAmount("points must be a positive integer", field="points")
        if points > MAX_POINTS:
            raise InvalidAmount(f"points must not exceed {MAX_POINTS}", field="points")

    def check_has_available_points(self, points: int, moment: datetime) -> None:
        available = self.balance_at(moment)[AVAILABLE]
        if points > available:
            raise InsufficientPoints(
                f"{points} points requested but only {available} available", available=available
            )

    # ---- queries --------------------------------------------------------------------------

    def balance_at(self, moment: datetime) -> dict[str, int]:
        """Points by state at `moment`: available (net of any debt), pending, and due to expire."""
        totals = {AVAILABLE: 0, PENDING: 0, DUE: 0}
        for lot in self.lots.values():
            totals[lot.state_at(moment)] += lot.remaining
        return totals

    @property
    def total_points(self) -> int:
        return sum(lot.remaining for lot in self.lots.values())

    def qualifying_spend(self, as_of: datetime, rules: Rules) -> Decimal:
        """What the purchases made in the tier window ending at `as_of` came to, less what was
        returned of them by then."""
        start = rules.window_start(as_of)
        index = self.__dict__.get(SPEND_INDEX)
        if index is None:
            index = SpendIndex([(p["occurred_at"], p["amount"]) for p in self.purchases.values()])
            self.__dict__[SPEND_INDEX] = index
        spend = index.spent(start, as_of)
        for key in set(self.returns.values()):  # the purchases with returns: few
            purchase = self.purchases[key]
            if start < purchase["occurred_at"] <= as_of:
                spend -= sum((amount for when, amount in purchase["returns"] if when <= as_of), Decimal(0))
        return spend

    def next_expiry(self, moment: datetime) -> dict[str, Any] | None:
        upcoming = sorted(
            (lot.expires_at, lot.remaining) for lot in self.lots.values()
            if lot.remaining > 0 and lot.expires_at is not None and lot.expires_at > moment
        )
        if not upcoming:
            return None
        at = upcoming[0][0]
        return {"points": sum(points for when, points in upcoming if when == at), "at": at}

    # ---- internals ------------------------------------------------------------------------

    def _next_lot_id(self) -> str:
        return f"L{self.lot_sequence + 1}"

    def _new_lot(self, source: str, points: int, earned_at: datetime, available_at: datetime,
                 expires_at: datetime | None) -> dict[str, Any]:
        return Lot(lot_id=self._next_lot_id(), source=source, points=points, earned_at=earned_at,
                   available_at=available_at, expires_at=expires_at, remaining=points).as_dict()

    def tier_changes_so_far(self) -> list[list[Any]]:
        # A snapshot taken before tier history was kept knows only the tier it was taken with.
        return self.__dict__.get("tier_changes") or [[self.tier_since, self.tier]]

    def tier_at(self, moment: datetime) -> str:
        """The tier held at an effective time: the latest change by then (the enrolment tier before any)."""
        changes = self.tier_changes_so_far()
        held = changes[0][1]
        for when, tier in changes:
            if when > moment:
                break
            held = tier
        return held

    def _move_tier(self, rules: Rules, revision: int, moment: datetime, actor: str,
                   upgrade_only: bool, cause: str) -> str | None:
        """Judged against the tier held at `moment`, which a later change may since have replaced."""
        held = self.tier_at(moment)
        spend = self.qualifying_spend(moment, rules)
        target = rules.tier_for_spend(spend)
        held_rank, target_rank = rules.tier_rank(held), rules.tier_rank(target.name)
        if target.name == held or (upgrade_only and target_rank <= held_rank):
            return None
        direction = "up" if target_rank > held_rank else "down"
        self.trigger_event(
            self.TierChanged, from_tier=held, to_tier=target.name, direction=direction,
            reason=f"{cause}: qualifying spend {spend} over {rules.tier_window_months} months",
            qualifying_spend=spend, revision=revision, occurred_at=moment, actor=actor,
        )
        return direction


def replay_member(events: Iterable[Member.Event], *, as_of: datetime | None = None,
                  known_at: datetime | None = None, start: Member | None = None) -> Member | None:
    """The member as of an effective time, from what was recorded by `known_at`, optionally
    continuing from `start` (a snapshot whose facts all happened by `as_of`).

    Every reference in an event points at facts with an earlier or equal effective time
    (a redemption spends lots already earned, a return follows its purchase), so applying
    the subset in recorded order gives a consistent state."""
    member = start
    for domain_event in events:
        if known_at is not None and domain_event.timestamp > known_at:
            continue
        if member is None:
            member = domain_event.mutate(None)  # enrolment: identity, whatever its effective time
            continue
        if as_of is None or domain_event.occurred_at <= as_of:
            domain_event.apply(member)
            member.version = domain_event.originator_version
            member.modified_on = domain_event.timestamp
            member.latest_occurred_at = max(member.latest_occurred_at, domain_event.occurred_at)
    return member
