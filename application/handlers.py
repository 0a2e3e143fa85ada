"""Command handlers: load through the unit of work, check, call one domain method, return the outcome.

A handler raises (a DomainError or ApplicationError) before it changes anything, so a batch can
drop one refused command and commit the rest. Writes with a client id create a Receipt in the
same unit, so the store's primary key makes each one count exactly once.

Handlers load the member before looking for the receipt: a racing writer commits both at once,
so a member that already shows the posting implies its receipt is visible too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, uuid4, uuid5

from application.commands import (
    Adjust,
    CancelRedemption,
    Command,
    CreateProgram,
    DecideAdjustment,
    EnrolMember,
    ExpirePoints,
    Outcome,
    RecordPurchase,
    Redeem,
    RegisterPartner,
    ReturnPurchase,
    ReverseEvent,
    ReviewTier,
    ReviseProgram,
)
from application.errors import ApplicationError, Conflict, IdempotencyConflict, InvalidRequest, NotFound
from application.unit_of_work import UnitOfWork
from application.views import balance_view, json_value, member_view, program_view, rfc3339
from domain.adjustment_request import APPROVED, PENDING, REJECTED, AdjustmentRequest
from domain.calendar import require_aware
from domain.errors import CurrencyMismatch, DomainError, DuplicatePosting, UnknownPurchase
from domain.identity import (
    card_uuid,
    check_identifier,
    check_slug,
    member_id_to_uuid,
    partner_id_to_uuid,
    program_id_to_uuid,
)
from domain.member import Member
from domain.money import check_amount
from domain.partner import Partner
from domain.program import Program
from domain.receipts import CardRegistration, Receipt
from domain.rules import RULE_FIELDS, Rules

# Clocks at stores drift; anything further in the future than this is a data error.
FUTURE_TOLERANCE = timedelta(minutes=5)

Handler = Callable[[UnitOfWork, Any, datetime], Outcome]


# ---- lookups --------------------------------------------------------------------------------

def require_program(uow: UnitOfWork, program_id: str) -> Program:
    program = uow.find(Program, program_id_to_uuid(program_id))
    if program is None:
        raise NotFound(f"program {program_id!r} not found")
    return program


def require_partner(uow: UnitOfWork, partner_id: str) -> Partner:
    partner = uow.find(Partner, partner_id_to_uuid(partner_id))
    if partner is None:
        raise NotFound(f"partner {partner_id!r} not found")
    return partner


def require_member(uow: UnitOfWork, member_id: str) -> Member:
    member = uow.find(Member, member_id_to_uuid(member_id))
    if member is None:
        raise NotFound(f"member {member_id!r} not found")
    return member


def member_for_card(uow: UnitOfWork, program_id: str, card_number: str) -> Member:
    card = uow.find(CardRegistration, card_uuid(program_id, card_number))
    if card is None:
        raise NotFound(f"no member with card {card_number!r} in program {program_id!r}")
    return require_member(uow, card.member_id)


def effective_time(occurred_at: datetime | None, now: datetime, field: str = "occurred_at") -> datetime:
    if occurred_at is None:
        return now
    require_aware(occurred_at, field)
    if occurred_at > now + FUTURE_TOLERANCE:
        raise InvalidRequest(f"{field} is in the future", field=field)
    return occurred_at


# ---- idempotency ----------------------------------------------------------------------------

def replay(uow: UnitOfWork, scope: str, key: list[str], command: Command, *, again: bool = False) -> Outcome | None:
    """The recorded outcome if this id was used before with the same request; a conflict if
    it was used with a different one; None if it is new. `again`: read the receipt from the
    store even if this unit saw it absent earlier."""
    receipt_id = Receipt.create_id(scope, key)
    receipt = uow.reread_absent(Receipt, receipt_id) if again else uow.find(Receipt, receipt_id)
    if receipt is None:
        return None
    if receipt.request_hash != command.request_hash():
        raise IdempotencyConflict(f"{scope} id {key[-1]!r} was already used with a different request")
    return Outcome(body=receipt.outcome, status=receipt.status, replayed=True)


def replay_if_raced(uow: UnitOfWork, scope: str, key: list[str], command: Command, refused: DomainError) -> Outcome:
    """After the member refused a posting or redemption it already holds: the replay, if a racing
    copy of this request committed it (with its receipt) between the receipt look-up and the
    member's read.
    A batch looks receipts up first, all at one moment, and may read a member later (one not
    cached at the version it saw, or found through a card): the receipt is then read again.
    Otherwise the refusal stands."""
    replayed = replay(uow, scope, key, command, again=True)
    if replayed is None:
        raise refused
    return replayed


def issue_receipt(
    uow: UnitOfWork, scope: str, key: list[str], kind: str, member_id: str, command: Command,
    body: dict[str, Any], status: int = 201,
) -> Outcome:
    uow.add(Receipt(scope=scope, key=key, kind=kind, member_id=member_id,
                    request_hash=command.request_hash(), status=status, outcome=body, actor=command.actor))
    return Outcome(body=body, status=status)


def replay_creation(existing: Any, command: Command, what: str, body: dict[str, Any]) -> Outcome:
    if existing.request_hash != command.request_hash():
        raise IdempotencyConflict(f"{what} already exists with different content")
    return Outcome(body=body, replayed=True)


# ---- administration -------------------------------------------------------------------------

def create_program(uow: UnitOfWork, cmd: CreateProgram, now: datetime) -> Outcome:
    check_slug(cmd.program_id, "program_id")
    existing = uow.find(Program, program_id_to_uuid(cmd.program_id))
    if existing is not None:
        return replay_creation(existing, cmd, f"program {cmd.program_id!r}", program_view(existing))
    program = Program.create(
        program_id=cmd.program_id, name=cmd.name, currency=cmd.currency, rules=cmd.rules,
        effective_at=cmd.effective_at or now,
        actor=cmd.actor, request_hash=cmd.request_hash(),
    )
    uow.add(program)
    return Outcome(body=program_view(program))


def revise_program(uow: UnitOfWork, cmd: ReviseProgram, now: datetime) -> Outcome:
    program = require_program(uow, cmd.program_id)
    latest = program.revisions[-1]
    if latest["revision"] > 1 and latest["effective_at"] == cmd.effective_at and set(cmd.changes) <= set(RULE_FIELDS):
        try:
            same = Rules.from_dict({**latest["rules"], **cmd.changes}) == Rules.from_dict(latest["rules"])
        except DomainError:
            same = False
        if same:  # a retried revision: the latest one already says exactly this
            return Outcome(body=program_view(program), replayed=True)
    program.revise(changes=cmd.changes, effective_at=cmd.effective_at, actor=cmd.actor)
    return Outcome(body=program_view(program))


def register_partner(uow: UnitOfWork, cmd: RegisterPartner, now: datetime) -> Outcome:
    check_slug(cmd.partner_id, "partner_id")
    if not cmd.stores:
        raise InvalidRequest("a partner needs at least one store", field="stores")
    for store in cmd.stores:
        check_identifier(store, "stores")
    existing = uow.find(Partner, partner_id_to_uuid(cmd.partner_id))
    if existing is not None:
        return replay_creation(existing, cmd, f"partner {cmd.partner_id!r}", partner_view(existing))
    require_program(uow, cmd.program_id)
    partner = Partner(partner_id=cmd.partner_id, name=cmd.name, program_id=cmd.program_id,
                      stores=list(cmd.stores), actor=cmd.actor, request_hash=cmd.request_hash())
    uow.add(partner)
    return Outcome(body=partner_view(partner))


def partner_view(partner: Partner) -> dict[str, Any]:
    return {"partner_id": partner.partner_id, "name": partner.name, "program_id": partner.program_id,
            "stores": list(partner.stores)}


# ---- members --------------------------------------------------------------------------------

def enrol_member(uow: UnitOfWork, cmd: EnrolMember, now: datetime) -> Outcome:
    program = require_program(uow, cmd.program_id)
    if cmd.card_number is not None:
        check_identifier(cmd.card_number, "card_number")
    member_id = cmd.member_id or generated_member_id(cmd.program_id, cmd.card_number)
    check_identifier(member_id, "member_id")
    existing = uow.find(Member, member_id_to_uuid(member_id))
    if existing is not None:
        return replay_creation(existing, cmd, f"member {member_id!r}", member_view(existing, now))
    if cmd.card_number is not None:
        card = uow.find(CardRegistration, card_uuid(cmd.program_id, cmd.card_number))
        if card is not None:
            raise Conflict(f"card {cmd.card_number!r} already belongs to another member of this program")
        uow.add(CardRegistration(program_id=cmd.program_id, card_number=cmd.card_number,
                                 member_id=member_id, actor=cmd.actor))
    occurred_at = effective_time(cmd.occurred_at, now)
    _, rules = program.rules_at(occurred_at)
    member = Member.enrol(
        member_id=member_id, program_id=cmd.program_id, card_number=cmd.card_number, name=cmd.name,
        email=cmd.email, birthday=cmd.birthday, base_tier=rules.tiers[0].name,
        occurred_at=occurred_at, actor=cmd.actor, request_hash=cmd.request_hash(),
    )
    uow.add(member)
    return Outcome(body=member_view(member, now))


def generated_member_id(program_id: str, card_number: str | None) -> str:
    # Derived from the card when there is one, so a retried enrolment finds the same member.
    if card_number is not None:
        return uuid5(NAMESPACE_URL, f"loyalty:{program_id}:{card_number}").hex
    return uuid4().hex


# ---- partner postings -----------------------------------------------------------------------

def record_purchase(uow: UnitOfWork, cmd: RecordPurchase, now: datetime) -> Outcome:
    check_identifier(cmd.transaction_id, "transaction_id")
    partner = require_partner(uow, cmd.partner_id)
    member = posting_member(uow, partner.program_id, cmd.member_id, cmd.card_number)
    key = [partner.program_id, partner.partner_id, cmd.transaction_id]
    replayed = replay(uow, "posting", key, cmd)
    if replayed is not None:
        return replayed
    partner.check_has_store(cmd.store_id)
    program = require_program(uow, partner.program_id)
    if cmd.currency != program.currency:
        raise CurrencyMismatch(f"currency must be {program.currency}, the program's currency", field="currency")
    check_amount(cmd.amount, cmd.currency)
    occurred_at = effective_time(cmd.occurred_at, now)
    revision, rules = program.rules_at(occurred_at)
    try:
        points = member.record_purchase(
            partner_id=partner.partner_id, store_id=cmd.store_id, transaction_id=cmd.transaction_id,
            amount=cmd.amount, currency=cmd.currency, items=[json_value(i) for i in cmd.items],
            occurred_at=occurred_at, actor=cmd.actor, revision=revision, rules=rules,
        )
    except DuplicatePosting as refused:
        return replay_if_raced(uow, "posting", key, cmd, refused)
    status = "pending" if points and rules.available_at(occurred_at) > now else "available"
    body = {
        "transaction_id": cmd.transaction_id, "member_id": member.member_id, "points_earned": points,
        "status": status, "balance": balance_view(member, now), "tier": member.tier,
        "occurred_at": rfc3339(occurred_at), "revision": revision,
    }
    return issue_receipt(uow, "posting", key, "purchase", member.member_id, cmd, body)


def posting_member(uow: UnitOfWork, program_id: str, member_id: str | None, card_number: str | None) -> Member:
    if member_id is not None:
        member = require_member(uow, member_id)
        if member.program_id != program_id:
            raise NotFound(f"member {member_id!r} not found in program {program_id!r}")
        return member
    if card_number is not None:
        return member_for_card(uow, program_id, card_number)
    raise InvalidRequest("member_id or card_number is required", field="member_id")


def return_purchase(uow: UnitOfWork, cmd: ReturnPurchase, now: datetime) -> Outcome:
    check_identifier(cmd.transaction_id, "transaction_id")
    partner = require_partner(uow, cmd.partner_id)
    original = uow.find(Receipt, Receipt.create_id(
        "posting", [partner.program_id, partner.partner_id, cmd.original_transaction_id]))
    if original is None or original.kind != "purchase":
        raise UnknownPurchase(f"no purchase {cmd.original_transaction_id!r} from partner {partner.partner_id!r}")
    member = require_member(uow, original.member_id)
    key = [partner.program_id, partner.partner_id, cmd.transaction_id]
    replayed = replay(uow, "posting", key, cmd)
    if replayed is not None:
        return replayed
    program = require_program(uow, partner.program_id)
    check_amount(cmd.amount, program.currency)
    occurred_at = effective_time(cmd.occurred_at, now)
    try:
        points = member.return_purchase(
            partner_id=partner.partner_id, transaction_id=cmd.transaction_id,
            original_transaction_id=cmd.original_transaction_id, amount=cmd.amount,
            occurred_at=occurred_at, actor=cmd.actor,
        )
    except DuplicatePosting as refused:
        return replay_if_raced(uow, "posting", key, cmd, refused)
    body = {
        "transaction_id": cmd.transaction_id, "original_transaction_id": cmd.original_transaction_id,
        "member_id": member.member_id, "points_reversed": points, "balance": balance_view(member, now),
        "occurred_at": rfc3339(occurred_at),
    }
    return issue_receipt(uow, "posting", key, "return", member.member_id, cmd, body)


# ---- redemptions and corrections ------------------------------------------------------------

def redeem(uow: UnitOfWork, cmd: Redeem, now: datetime) -> Outcome:
    check_identifier(cmd.redemption_id, "redemption_id")
    member = require_member(uow, cmd.member_id)
    key = [member.member_id, cmd.redemption_id]
    replayed = replay(uow, "redemption", key, cmd)
    if replayed is not None:
        return replayed
    if cmd.partner_id is not None:
        partner = require_partner(uow, cmd.partner_id)
        if partner.program_id != member.program_id:
            raise InvalidRequest("the redeeming partner is not in the member's program", field="partner_id")
    occurred_at = effective_time(cmd.occurred_at, now)
    try:
        member.redeem(redemption_id=cmd.redemption_id, points=cmd.points, reward=cmd.reward,
                      partner_id=cmd.partner_id, occurred_at=occurred_at, actor=cmd.actor)
    except DuplicatePosting as refused:
        return replay_if_raced(uow, "redemption", key, cmd, refused)
    body = {"redemption_id": cmd.redemption_id, "member_id": member.member_id, "points": cmd.points,
            "balance": balance_view(member, now), "occurred_at": rfc3339(occurred_at)}
    return issue_receipt(uow, "redemption", key, "redemption", member.member_id, cmd, body)


def cancel_redemption(uow: UnitOfWork, cmd: CancelRedemption, now: datetime) -> Outcome:
    member = require_member(uow, cmd.member_id)
    key = [member.member_id, cmd.redemption_id]
    replayed = replay(uow, "cancellation", key, cmd)
    if replayed is not None:
        return replayed
    occurred_at = effective_time(cmd.occurred_at, now)
    restored = member.cancel_redemption(redemption_id=cmd.redemption_id, occurred_at=occurred_at, actor=cmd.actor)
    body = {"redemption_id": cmd.redemption_id, "member_id": member.member_id,
            "points_restored": restored["restored"], "points_expired": restored["restored_expired"],
            "balance": balance_view(member, now), "occurred_at": rfc3339(occurred_at)}
    return issue_receipt(uow, "cancellation", key, "cancellation", member.member_id, cmd, body)


def adjust(uow: UnitOfWork, cmd: Adjust, now: datetime) -> Outcome:
    """Applies the adjustment, or, above the program's approval threshold, records it as a
    request for a supervisor (202) without touching the balance."""
    check_identifier(cmd.adjustment_id, "adjustment_id")
    member = require_member(uow, cmd.member_id)
    key = [member.member_id, cmd.adjustment_id]
    replayed = replay(uow, "adjustment", key, cmd)
    if replayed is not None:
        return replayed
    program = require_program(uow, member.program_id)
    occurred_at = effective_time(cmd.occurred_at, now)
    _, rules = program.rules_at(occurred_at)
    member.check_can_adjust(adjustment_id=cmd.adjustment_id, points=cmd.points, reason=cmd.reason)
    body = {"adjustment_id": cmd.adjustment_id, "member_id": member.member_id, "points": cmd.points,
            "reason": cmd.reason, "occurred_at": rfc3339(occurred_at)}
    if abs(cmd.points) > rules.adjustment_approval_threshold:
        if uow.find(AdjustmentRequest, AdjustmentRequest.create_id(cmd.adjustment_id)) is not None:
            raise Conflict(f"adjustment id {cmd.adjustment_id!r} is already awaiting or past approval")
        uow.add(AdjustmentRequest(
            adjustment_id=cmd.adjustment_id, member_id=member.member_id, program_id=member.program_id,
            points=cmd.points, reason=cmd.reason, note=cmd.note, occurred_at=occurred_at,
            threshold=rules.adjustment_approval_threshold, actor=cmd.actor))
        body.update(status="pending_approval", balance=balance_view(member, now))
        return issue_receipt(uow, "adjustment", key, "adjustment", member.member_id, cmd, body, status=202)
    member.adjust(adjustment_id=cmd.adjustment_id, points=cmd.points, reason=cmd.reason, note=cmd.note,
                  occurred_at=occurred_at, actor=cmd.actor, rules=rules)
    body.update(status="applied", balance=balance_view(member, now))
    return issue_receipt(uow, "adjustment", key, "adjustment", member.member_id, cmd, body)


def decide_adjustment(uow: UnitOfWork, cmd: DecideAdjustment, now: datetime) -> Outcome:
    """Four eyes: a supervisor other than the requester approves (the member's PointsAdjusted is
    saved with the approval) or rejects. Repeating one's own decision, note and all, replays it."""
    request = uow.find(AdjustmentRequest, AdjustmentRequest.create_id(cmd.adjustment_id))
    if request is None:
        raise NotFound(f"no adjustment {cmd.adjustment_id!r} awaiting approval")
    member = require_member(uow, request.member_id)
    if request.status == PENDING and request.adjustment_id in member.adjustments and not request.pending_events:
        # A racing approval committed between the two reads: the request as read is stale.
        request = uow.refresh(AdjustmentRequest, request.id)
        assert request is not None
    decision = APPROVED if cmd.approve else REJECTED
    if request.status == decision and request.decided_by == cmd.actor:
        if (request.decision_note or "") != (cmd.note or ""):  # the same decision said differently
            raise IdempotencyConflict(f"adjustment {cmd.adjustment_id!r} was already {decision} with another note")
        return Outcome(body=decision_view(request, member, now), status=200, replayed=True)
    request.check_can_decide(cmd.actor)
    if cmd.approve:
        program = require_program(uow, member.program_id)
        _, rules = program.rules_at(request.occurred_at)
        member.check_can_adjust(adjustment_id=request.adjustment_id, points=request.points, reason=request.reason)
        request.approve(actor=cmd.actor, note=cmd.note)
        member.adjust(adjustment_id=request.adjustment_id, points=request.points, reason=request.reason,
                      note=request.note, occurred_at=request.occurred_at, actor=request.requested_by,
                      rules=rules, approved_by=cmd.actor)
    else:
        request.reject(actor=cmd.actor, note=cmd.note)
    return Outcome(body=decision_view(request, member, now), status=200)


def decision_view(request: AdjustmentRequest, member: Member, now: datetime) -> dict[str, Any]:
    return {"adjustment_id": request.adjustment_id, "member_id": request.member_id, "points": request.points,
            "reason": request.reason, "status": request.status, "requested_by": request.requested_by,
            "decided_by": request.decided_by, "balance": balance_view(member, now)}


def reverse_event(uow: UnitOfWork, cmd: ReverseEvent, now: datetime) -> Outcome:
    check_identifier(cmd.reversal_id, "reversal_id")
    member = require_member(uow, cmd.member_id)
    key = [member.member_id, cmd.reversal_id]
    replayed = replay(uow, "reversal", key, cmd)
    if replayed is not None:
        return replayed
    program = require_program(uow, member.program_id)
    occurred_at = effective_time(cmd.occurred_at, now)
    _, rules = program.rules_at(occurred_at)
    kind = member.reverse_event(version=cmd.version, reversal_id=cmd.reversal_id, note=cmd.note,
                                occurred_at=occurred_at, actor=cmd.actor, rules=rules)
    body = {"reversal_id": cmd.reversal_id, "member_id": member.member_id, "version": cmd.version, "kind": kind,
            "balance": balance_view(member, now), "occurred_at": rfc3339(occurred_at)}
    return issue_receipt(uow, "reversal", key, "reversal", member.member_id, cmd, body)


# ---- jobs -----------------------------------------------------------------------------------

def expire_points(uow: UnitOfWork, cmd: ExpirePoints, now: datetime) -> Outcome:
    member = require_member(uow, cmd.member_id)
    as_of = effective_time(cmd.as_of, now, "as_of")
    expired = member.expire_points(as_of=as_of, actor=cmd.actor)
    return Outcome(body={"member_id": member.member_id, "points_expired": expired}, status=200)


def review_tier(uow: UnitOfWork, cmd: ReviewTier, now: datetime) -> Outcome:
    member = require_member(uow, cmd.member_id)
    program = require_program(uow, member.program_id)
    as_of = effective_time(cmd.as_of, now, "as_of")
    revision, rules = program.rules_at(as_of)
    direction = member.review_tier(as_of=as_of, actor=cmd.actor, revision=revision, rules=rules)
    return Outcome(body={"member_id": member.member_id, "tier": member.tier, "changed": direction}, status=200)


LEDGER_HANDLERS: dict[type, Handler] = {
    CreateProgram: create_program,
    ReviseProgram: revise_program,
    RegisterPartner: register_partner,
    EnrolMember: enrol_member,
    RecordPurchase: record_purchase,
    ReturnPurchase: return_purchase,
    Redeem: redeem,
    CancelRedemption: cancel_redemption,
    Adjust: adjust,
    DecideAdjustment: decide_adjustment,
    ReverseEvent: reverse_event,
    ExpirePoints: expire_points,
    ReviewTier: review_tier,
}


# ---- batch reads ----------------------------------------------------------------------------

def prefetch(uow: UnitOfWork, commands: list[Command], also: Sequence[Any] = ()) -> None:
    """Loads what a batch of postings or enrolments will look at in two queries instead of
    several per command: first partners and members (and an enrolment's program and card), then
    (knowing the partners' programs) the programs, cards and receipts. Only an optimisation: handlers still find (and validate) everything
    themselves, so a command whose ids are invalid is simply left out here.

    A partner's program and a member's id never change once created, so where this process
    has the partner or member cached, the second query's ids are known at once and asked for
    in the first: a batch from known partners costs one query. In a busy server every round
    trip also costs the committer a wait for the GIL, on every caller's critical path. `also`:
    more aggregate ids to read in the first query."""
    first: list[Any] = list(also)  # other aggregates the batch reads (the callers' API keys)
    for cmd in commands:
        first += _quietly(_first_ids, cmd)
    if not first:
        return
    later = []
    for cmd in commands:
        early = _quietly(_second_ids, cmd, uow.cached)
        first += early
        if not early:
            later.append(cmd)
    uow.prefetch(first)
    second: list[Any] = []
    for cmd in later:
        second += _quietly(_second_ids, cmd, uow.find)
    uow.prefetch(second)


def _quietly(ids: Callable[..., list[Any]], *args: Any) -> list[Any]:
    try:
        return ids(*args)
    except (DomainError, ApplicationError, ValueError):  # UnicodeError is a ValueError
        return []


def _first_ids(cmd: Command) -> list[Any]:
    ids = []
    if isinstance(cmd, (RecordPurchase, ReturnPurchase)):
        check_identifier(cmd.partner_id, "partner_id")
        ids.append(partner_id_to_uuid(cmd.partner_id))
    if isinstance(cmd, (RecordPurchase, Redeem)) and cmd.member_id is not None:
        check_identifier(cmd.member_id, "member_id")
        ids.append(member_id_to_uuid(cmd.member_id))
    if isinstance(cmd, EnrolMember):
        # Member and card together, in one query: a racing enrolment commits both at once.
        ids.append(program_id_to_uuid(cmd.program_id))
        if cmd.card_number is not None:
            check_identifier(cmd.card_number, "card_number")
            ids.append(card_uuid(cmd.program_id, cmd.card_number))
        member_id = cmd.member_id or (generated_member_id(cmd.program_id, cmd.card_number) if cmd.card_number else None)
        if member_id is not None:
            check_identifier(member_id, "member_id")
            ids.append(member_id_to_uuid(member_id))
    return ids


def _second_ids(cmd: Command, find: Callable[[type[Any], Any], Any]) -> list[Any]:
    ids: list[Any] = []
    if isinstance(cmd, (RecordPurchase, ReturnPurchase)):
        partner = find(Partner, partner_id_to_uuid(cmd.partner_id))
        if partner is None:
            return []
        check_identifier(cmd.transaction_id, "transaction_id")
        ids.append(program_id_to_uuid(partner.program_id))
        ids.append(Receipt.create_id("posting", [partner.program_id, partner.partner_id, cmd.transaction_id]))
        if isinstance(cmd, ReturnPurchase):
            check_identifier(cmd.original_transaction_id, "original_transaction_id")
            ids.append(Receipt.create_id("posting", [partner.program_id, partner.partner_id, cmd.original_transaction_id]))
        elif cmd.member_id is None and cmd.card_number is not None:
            check_identifier(cmd.card_number, "card_number")
            ids.append(card_uuid(partner.program_id, cmd.card_number))
    elif isinstance(cmd, Redeem):
        member = find(Member, member_id_to_uuid(cmd.member_id))
        if member is not None:
            check_identifier(cmd.redemption_id, "redemption_id")
            ids.append(Receipt.create_id("redemption", [member.member_id, cmd.redemption_id]))
    return ids
