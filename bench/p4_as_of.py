"""P4: `GET /v1/members/{id}/balance?as_of=` for a member with 10,000 events (made fast with
Ledger.execute_batch), at three effective times: near the start of the history, the middle,
and after the last event."""

from __future__ import annotations

import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import (
    PARTNER_ID,
    Http,
    ProjectionProcess,
    Server,
    head,
    fresh_database,
    log,
    median,
    open_ledger,
    percentile,
    setup_world,
)

FIRST = datetime(2024, 1, 2, tzinfo=timezone.utc)


def make_history(database: Any, member: str, target_events: int) -> dict[str, Any]:
    """Purchases for one member (two member events each, plus a tier change) dated an hour
    apart from FIRST, committed 500 per transaction, until the member has `target_events`."""
    from application.commands import Outcome, RecordPurchase

    ledger = open_ledger(database)
    started = time.perf_counter()
    n = 0
    # Seconds per purchase of each 500-purchase batch, by the member's events before it: how a
    # purchase's cost grows with the history the member already holds.
    cost_by_history: list[tuple[int, float]] = []
    try:
        version = ledger.get_member(member).version
        while version < target_events:
            batch_started, version_before = time.perf_counter(), version
            commands = []
            for _ in range(min(500, max((target_events - version) // 2, 1))):
                commands.append(RecordPurchase(
                    actor="bench", partner_id=PARTNER_ID, transaction_id=f"h-{n}", store_id="s-1",
                    amount=Decimal("12.40"), currency="EUR", member_id=member,
                    occurred_at=FIRST + timedelta(hours=n)))
                n += 1
            for result in ledger.execute_batch(commands):
                if not isinstance(result, Outcome):
                    raise RuntimeError(f"purchase refused: {result!r}")
            cost_by_history.append((version_before, round((time.perf_counter() - batch_started) / len(commands) * 1e6)))
            version = ledger.get_member(member).version
        last = FIRST + timedelta(hours=n - 1)
        snapshots = len(list(ledger.snapshots.get(ledger.get_member(member).id))) if ledger.snapshots else 0
    finally:
        ledger.close()
    return {"member_events": version, "purchases": n, "snapshots": snapshots, "first_at": FIRST.isoformat(),
            "last_at": last.isoformat(), "seconds_to_create": round(time.perf_counter() - started, 2),
            "us_per_purchase_by_events_before": cost_by_history}


def timed_gets(http: Http, path: str, requests: int) -> tuple[list[float], dict[int, int]]:
    http.request("GET", path)  # warm-up, not counted
    times, statuses = [], {}
    for _ in range(requests):
        started = time.perf_counter()
        status, _ = http.request("GET", path)
        times.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
    return times, statuses


def run(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    with fresh_database("p4") as database:
        world = setup_world(database, 1)
        member = world.member_ids[0]
        history = make_history(database, member, settings["member_events"])
        log(f"P4: member {member} has {history['member_events']:,} events "
            f"({history['snapshots']} snapshots), made in {history['seconds_to_create']} s; "
            f"µs a purchase by events before: {history['us_per_purchase_by_events_before']}")
        first = datetime.fromisoformat(history["first_at"])
        last = datetime.fromisoformat(history["last_at"])
        span = last - first
        points = {
            "early (10% into the history)": first + span / 10,
            "middle (50%)": first + span / 2,
            "after the last event": last + timedelta(days=1),
        }
        # The PostgreSQL deployment: projections run beside the server (the as-of route reads the
        # member timeline; timed only once it holds the whole history).
        projections = ProjectionProcess(database, workdir).start()
        server = Server(database, workdir).start()
        try:
            caught_up_in = wait_for_projections(database, head(database))
            log(f"P4: projections caught up with {history['member_events']:,} member events in {caught_up_in} s")
            http = Http(server.port, world.auditor_key)
            # A reference: an authenticated read of the program (no member replay).
            times, statuses = timed_gets(http, "/v1/programs/bench", 20)
            baseline = {"path": "GET /v1/programs/bench", "p50_ms": round(percentile(times, 50) * 1000, 2),
                        "requests": len(times), "statuses": statuses}
            results: dict[str, Any] = {}
            for label, moment in points.items():
                query = urllib.parse.urlencode({"as_of": moment.strftime("%Y-%m-%dT%H:%M:%SZ")})
                path = f"/v1/members/{member}/balance?{query}"
                per_run = []
                for _ in range(settings["runs"]):
                    times, statuses = timed_gets(http, path, settings["requests"])
                    if statuses.get(200) != settings["requests"]:
                        raise RuntimeError(f"as-of balance answered {statuses}")
                    per_run.append({"p50_ms": round(percentile(times, 50) * 1000, 2),
                                    "p99_ms": round(percentile(times, 99) * 1000, 2),
                                    "requests": len(times)})
                results[label] = {"as_of": moment.isoformat(), "runs": per_run,
                                  "median_p50_ms": median([r["p50_ms"] for r in per_run])}
                log(f"P4 {label}: p50 {results[label]['median_p50_ms']} ms (median of {len(per_run)} runs)")
            http.close()
            memory = server.memory()
        finally:
            server.stop()
            projections.stop()
    return {"settings": settings, "history": history, "as_of": results, "baseline": baseline,
            "server_memory": memory, "projections_caught_up_s": caught_up_in}


def wait_for_projections(database: Any, target: int, timeout: float = 600) -> float:
    """Seconds until every projection's position reached `target`."""
    started = time.monotonic()
    with database.connect() as conn:
        while time.monotonic() - started < timeout:
            rows = conn.execute("SELECT COUNT(*), MIN(position) FROM projection_positions").fetchone()
            if rows[0] and rows[1] >= target:
                return round(time.monotonic() - started, 2)
            time.sleep(0.2)
    raise RuntimeError(f"projections did not reach position {target} within {timeout} s")
