"""Finance reports from the projections: liability roll-forward, settlement between partners,
IFRS 15 revenue and breakage, and partner statement reconciliation.

Periods are whole UTC days, both ends included, by effective time (occurred_at). Points are
valued at the point_value in force at the end of the period; money is rounded only here, to the
currency's minor units (half-even).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from typing import Any

from application.errors import InvalidRequest
from application.handlers import require_program
from application.unit_of_work import UnitOfWork
from domain.money import DECIMAL_TEXT, minor_units
from domain.program import Program
from projections.liability import MOVEMENTS
from projections.read_model import ReadModel

ROLL_KEYS = ("opening", *MOVEMENTS, "closing")


@dataclass(frozen=True)
class Period:
    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise InvalidRequest("`to` must not be before `from`", field="to")

    @property
    def end_moment(self) -> datetime:
        return datetime.combine(self.end, time.max, tzinfo=timezone.utc)

    def months(self) -> list[Period]:
        months, cursor = [], self.start
        while cursor <= self.end:
            next_month = date(cursor.year + cursor.month // 12, cursor.month % 12 + 1, 1)
            months.append(Period(cursor, min(self.end, next_month - timedelta(days=1))))
            cursor = next_month
        return months


def net(row: dict[str, int]) -> int:
    return row["earned"] - row["redeemed"] - row["expired"] - row["reversed"] + row["adjusted"]


class FinanceReports:
    def __init__(self, model: ReadModel) -> None:
        self.model = model
        self.store = model.store

    def program(self, program_id: str) -> Program:
        return require_program(UnitOfWork(self.model.ledger), program_id)

    def rounded(self, amount: Decimal, currency: str) -> Decimal:
        return amount.quantize(Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_HALF_EVEN)

    def money(self, amount: Decimal, currency: str) -> str:
        return str(self.rounded(amount, currency))

    # ---- liability roll-forward -----------------------------------------------------------

    def liability(self, program_id: str, period: Period, partner_id: str | None = None,
                  monthly: bool = False) -> dict[str, Any]:
        """opening + earned - redeemed - expired - reversed + adjusted = closing, exactly; closing
        equals the sum of member balances at the period's end."""
        program = self.program(program_id)
        if partner_id and self.model.ledger.partner_program(partner_id) != program_id:  # or NotFound ("": the program itself)
            raise InvalidRequest(f"partner {partner_id!r} is not a partner of program {program_id!r}", field="partner_id")
        point_value = program.rules_at(period.end_moment)[1].point_value
        where, params = "WHERE program_id = %s", [program_id]
        if partner_id is not None:
            where, params = where + " AND issuer = %s", [*params, partner_id]
        days = self.store.query(
            f"""SELECT day, SUM(earned), SUM(redeemed), SUM(expired), SUM(reversed), SUM(adjusted)
                FROM liability_movements {where} AND day <= %s GROUP BY day ORDER BY day""",
            [*params, period.end.isoformat()])
        by_day = [(date.fromisoformat(d), dict(zip(MOVEMENTS, map(int, values)))) for d, *values in days]

        def roll(part: Period) -> dict[str, int]:
            totals = dict.fromkeys(ROLL_KEYS, 0)
            for day, row in by_day:
                if day < part.start:
                    totals["opening"] += net(row)
                elif day <= part.end:
                    for movement in MOVEMENTS:
                        totals[movement] += row[movement]
            totals["closing"] = totals["opening"] + net(totals)
            return totals

        def valued(totals: dict[str, int]) -> dict[str, str]:
            return {k: self.money(v * point_value, program.currency) for k, v in totals.items()}

        points = roll(period)
        report: dict[str, Any] = {
            "program_id": program_id, "partner_id": partner_id, "from": period.start.isoformat(),
            "to": period.end.isoformat(), "currency": program.currency, "point_value": str(point_value),
            "points": points, "value": valued(points),
        }
        later = self.store.query(f"SELECT COUNT(*) FROM liability_movements {where} AND day > %s",
                                 [*params, period.end.isoformat()])[0][0]
        if not later:  # nothing after the period: today's balances are the period-end balances
            lots_where = "WHERE program_id = %s" + (" AND issuer = %s" if partner_id is not None else "")
            balances = int(self.store.query(f"SELECT COALESCE(SUM(remaining), 0) FROM lot_totals {lots_where}",
                                            params)[0][0])
            report["member_balances"] = balances
            report["closing_equals_member_balances"] = balances == points["closing"]
        if monthly:
            report["months"] = [{"month": m.start.strftime("%Y-%m"), "from": m.start.isoformat(),
                                 "to": m.end.isoformat(), "points": roll(m), "value": valued(roll(m))}
                                for m in period.months()]
        return report

    # ---- settlement -----------------------------------------------------------------------

    def settlement(self, program_id: str, period: Period) -> dict[str, Any]:
        """Who owes whom: points issued (funded) by one partner and redeemed at another are owed
        by the issuer to the redeemer, lot by lot as the ledger consumed them ('program' for
        points the program issued by adjustment)."""
        program = self.program(program_id)
        point_value = program.rules_at(period.end_moment)[1].point_value
        rows = self.store.query(
            """SELECT issuer, redeemer, SUM(points) FROM redemption_flows
               WHERE program_id = %s AND day >= %s AND day <= %s AND issuer <> redeemer AND redeemer <> ''
               GROUP BY issuer, redeemer ORDER BY issuer, redeemer""",
            (program_id, period.start.isoformat(), period.end.isoformat()))
        lines = [{"issuer_partner_id": issuer or "program", "redeeming_partner_id": redeemer, "points": int(points),
                  "value": self.money(int(points) * point_value, program.currency)}
                 for issuer, redeemer, points in rows if int(points)]
        return {"program_id": program_id, "from": period.start.isoformat(), "to": period.end.isoformat(),
                "currency": program.currency, "point_value": str(point_value), "lines": lines}

    # ---- IFRS 15 revenue ------------------------------------------------------------------

    def revenue(self, program_id: str, period: Period) -> dict[str, Any]:
        """Points are a separate performance obligation. Cumulative revenue recognised at t:
        min(A, max(A x R / (E x ERR), A x (R + X) / E)), where A is the price allocated to
        points, E the points issued by purchases (earned less reversed), R and X those of them
        redeemed and expired (goodwill points carry no price), all by t,
        and ERR the expected redemption rate in force at t. The first term recognises revenue
        (and expected breakage) as points are redeemed; the second recognises expired points
        when they expire. A changed estimate is caught up in the period it changes: earlier
        periods are never restated."""
        program = self.program(program_id)
        allocations = [(date.fromisoformat(d), Decimal(a)) for d, a in self.store.query(
            "SELECT day, allocated FROM revenue_allocations WHERE program_id = %s AND day <= %s",
            (program_id, period.end.isoformat()))]
        movements = [(date.fromisoformat(d), int(e), int(r), int(x), int(v)) for d, e, r, x, v in self.store.query(
            """SELECT day, SUM(earned), SUM(redeemed), SUM(expired), SUM(reversed) FROM liability_movements
               WHERE program_id = %s AND issuer <> '' AND day <= %s GROUP BY day""", (program_id, period.end.isoformat()))]

        def cumulative(at: date) -> tuple[Decimal, Decimal, Decimal]:
            allocated = sum((a for d, a in allocations if d <= at), Decimal(0))
            issued = sum(e - v for d, e, _, _, v in movements if d <= at)
            redeemed = sum(r for d, _, r, _, _ in movements if d <= at)
            expired = sum(x for d, _, _, x, _ in movements if d <= at)
            err = program.rules_at(datetime.combine(at, time.max, tzinfo=timezone.utc))[1].expected_redemption_rate
            return allocated, recognised(allocated, issued, redeemed, expired, err), err

        def line(part: Period) -> dict[str, Any]:
            # Cumulative figures are rounded first and the period's figures are differences of
            # rounded figures, so months add up to the period and liability + recognised = allocated.
            before = cumulative(part.start - timedelta(days=1))
            before_allocated = self.rounded(before[0], program.currency)
            before_recognised = self.rounded(before[1], program.currency)
            allocated, cumulative_recognised, err = cumulative(part.end)
            allocated = self.rounded(allocated, program.currency)
            cumulative_recognised = self.rounded(cumulative_recognised, program.currency)
            return {
                "from": part.start.isoformat(), "to": part.end.isoformat(),
                "allocated": str(allocated - before_allocated),
                "recognised": str(cumulative_recognised - before_recognised),
                "cumulative_recognised": str(cumulative_recognised),
                "contract_liability": str(allocated - cumulative_recognised),
                "expected_redemption_rate": str(err),
            }

        return {"program_id": program_id, "currency": program.currency, **line(period),
                "periods": [line(month) for month in period.months()]}

    # ---- partner statements ---------------------------------------------------------------

    def partner_statement(self, partner_id: str, period: Period, statement_csv: str) -> dict[str, Any]:
        """Matches a partner's own CSV (transaction_id,amount,occurred_at; returns negative) with
        the ledger's postings from that partner in the period."""
        self.model.ledger.partner_program(partner_id)  # NotFound for an unknown partner
        with localcontext() as exact:
            exact.prec = 100  # sums and differences of many amounts, never rounded at 28 digits
            return self._partner_statement(partner_id, period, parse_statement(statement_csv, period))

    def _partner_statement(self, partner_id: str, period: Period, statement: dict[str, Any]) -> dict[str, Any]:
        ledger_rows = {
            txn: (Decimal(amount) if kind == "purchase" else -Decimal(amount), occurred_at)
            for txn, kind, amount, occurred_at in self.store.query(
                """SELECT transaction_id, kind, amount, occurred_at FROM partner_postings
                   WHERE partner_id = %s AND occurred_at >= %s AND occurred_at <= %s""",
                (partner_id, f"{period.start.isoformat()}T00:00:00.000000Z",
                 f"{period.end.isoformat()}T23:59:59.999999Z"))}
        matched, mismatched, missing_in_ledger = [], [], []
        for txn, amount in statement["rows"].items():
            if txn not in ledger_rows:
                missing_in_ledger.append({"transaction_id": txn, "amount": str(amount)})
            elif ledger_rows[txn][0] == amount:
                matched.append({"transaction_id": txn, "amount": str(amount)})
            else:
                mismatched.append({"transaction_id": txn, "statement_amount": str(amount),
                                   "ledger_amount": str(ledger_rows[txn][0]),
                                   "difference": str(amount - ledger_rows[txn][0])})
        missing_in_statement = [{"transaction_id": txn, "amount": str(amount)}
                                for txn, (amount, _) in sorted(ledger_rows.items()) if txn not in statement["rows"]]

        def total(rows: list[dict[str, Any]], field: str = "amount") -> dict[str, Any]:
            return {"count": len(rows), "amount": str(sum((Decimal(r[field]) for r in rows), Decimal(0)))}

        return {
            "partner_id": partner_id, "from": period.start.isoformat(), "to": period.end.isoformat(),
            "matched": matched, "missing_in_ledger": missing_in_ledger, "missing_in_statement": missing_in_statement,
            "amount_mismatches": mismatched,
            "totals": {"statement": total([{"amount": str(a)} for a in statement["rows"].values()]),
                       "ledger": total([{"amount": str(a)} for a, _ in ledger_rows.values()]),
                       "matched": total(matched), "missing_in_ledger": total(missing_in_ledger),
                       "missing_in_statement": total(missing_in_statement),
                       "amount_mismatches": total(mismatched, "difference"),
                       "outside_period": statement["outside_period"]},
        }


def recognised(allocated: Decimal, issued: int, redeemed: int, expired: int, err: Decimal) -> Decimal:
    if allocated <= 0 or issued <= 0:
        return Decimal(0)
    by_redemption = allocated if err <= 0 else allocated * redeemed / (issued * err)
    by_extinction = allocated * (redeemed + expired) / issued
    return min(allocated, max(by_redemption, by_extinction))


def parse_statement(text: str, period: Period) -> dict[str, Any]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"transaction_id", "amount", "occurred_at"} <= set(reader.fieldnames):
        raise InvalidRequest("the statement must be CSV with a header: transaction_id,amount,occurred_at",
                             field="statement")
    rows: dict[str, Decimal] = {}
    seen: set[str] = set()
    outside = 0
    for number, row in enumerate(reader, start=2):
        txn = (row["transaction_id"] or "").strip()
        text = (row["amount"] or "").strip()
        try:
            if not DECIMAL_TEXT.fullmatch(text):  # no exponents: 1e1000000 is not an amount
                raise ValueError(text)
            amount = Decimal(text)
            when = datetime.fromisoformat((row["occurred_at"] or "").strip().replace("Z", "+00:00"))
        except (InvalidOperation, ValueError):
            raise InvalidRequest(f"line {number}: amount must be a decimal such as 25.00 or -4.50 (at most 15 digits "
                                 "before the point and 10 after) and occurred_at an RFC 3339 time",
                                 field="statement") from None
        if not txn or when.tzinfo is None:
            raise InvalidRequest(f"line {number}: needs a transaction_id and a time with an offset", field="statement")
        if txn in seen:
            raise InvalidRequest(f"line {number}: transaction {txn!r} appears twice", field="statement")
        seen.add(txn)
        if not period.start <= when.astimezone(timezone.utc).date() <= period.end:
            outside += 1
            continue
        rows[txn] = amount
    return {"rows": rows, "outside_period": outside}


def csv_rows(rows: list[dict[str, Any]]) -> str:
    """Flat dicts as CSV (nested dicts become 'parent.child' columns)."""
    flat = [flatten(row) for row in rows]
    columns: list[str] = list(dict.fromkeys(key for row in flat for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


def rollforward_svg(report: dict[str, Any]) -> str:
    """The monthly roll-forward as an SVG chart: points in and out per month, closing as a line."""
    months = report.get("months") or []
    width, height, left, bottom = 720, 360, 70, 40
    values = [abs(m["points"][k]) for m in months for k in ("earned", "redeemed", "closing")] or [1]
    top = max(values) or 1
    step = (width - left - 20) / max(len(months), 1)

    def y(points: float) -> float:
        return height - bottom - (points / top) * (height - bottom - 30)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="18" font-size="13">Points liability roll-forward, {report["program_id"]}, '
             f'{report["from"]} to {report["to"]}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#333"/>']
    closing = []
    for index, month in enumerate(months):
        p = month["points"]
        inflow = p["earned"] + max(p["adjusted"], 0)
        outflow = p["redeemed"] + p["expired"] + p["reversed"] + max(-p["adjusted"], 0)
        x = left + index * step
        parts.append(f'<rect x="{x + 4:.1f}" y="{y(inflow):.1f}" width="{step / 2 - 6:.1f}" '
                     f'height="{y(0) - y(inflow):.1f}" fill="#4c9f70"><title>in {inflow}</title></rect>')
        parts.append(f'<rect x="{x + step / 2:.1f}" y="{y(outflow):.1f}" width="{step / 2 - 6:.1f}" '
                     f'height="{y(0) - y(outflow):.1f}" fill="#d1495b"><title>out {outflow}</title></rect>')
        parts.append(f'<text x="{x + step / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">{month["month"]}</text>')
        closing.append(f"{x + step / 2:.1f},{y(max(p['closing'], 0)):.1f}")
    if closing:
        parts.append(f'<polyline points="{" ".join(closing)}" fill="none" stroke="#2e4057" stroke-width="2"/>')
    parts.append(f'<text x="{left}" y="{height - 8}">green: earned and credited; red: redeemed, expired, reversed, '
                 f'debited; line: closing balance (max {top:,} points)</text>')
    parts.append("</svg>")
    return "\n".join(parts)
