"""P5: `GET /v1/reports/liability` over the largest event log the bounded run can build: P2's
last import database, grown with further imports for a fixed time budget, its projections
caught up, then the report timed over HTTP (finance key)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import (
    PROGRAM_ID,
    Database,
    Http,
    Server,
    head,
    log,
    median,
    open_ledger,
    open_read_model,
    percentile,
    setup_world,
)
from bench.p2_import import run_import, write_purchases


def grow(database: Database, workdir: Path, seconds: float, chunk_rows: int, members: int,
         target_events: int | None = None, run_length: int = 1, batch_size: int = 1000) -> dict[str, Any]:
    """More imports into the same database, whole chunks only: until `seconds` have passed, or
    (with `target_events`) until the event table holds that many events."""
    started = time.perf_counter()
    chunks = 0
    imported = 0
    while (head(database) < target_events) if target_events else (time.perf_counter() - started < seconds):
        path = workdir / f"grow-{chunks}.csv"
        write_purchases(path, chunk_rows, members, tag=f"g{chunks}", run_length=run_length)
        result = run_import(database, path, batch_size=batch_size)
        path.unlink()
        imported += result["imported"]
        chunks += 1
        log(f"P5 grow: chunk {chunks}, {result['imported']:,} purchases at {result['purchases_per_s']}/s, "
            f"peak RSS {result['peak_rss_kib_total'] / 1024:.1f} MiB; {head(database):,} events stored")
    return {"chunks": chunks, "purchases": imported, "seconds": round(time.perf_counter() - started, 1)}


def catch_up(database: Database) -> dict[str, Any]:
    ledger = open_ledger(database)
    try:
        model = open_read_model(database, ledger)
        started = time.perf_counter()
        applied = model.runner.catch_up(on_progress=_progress())
        elapsed = time.perf_counter() - started
        return {"events_applied": applied, "elapsed_s": round(elapsed, 2)}
    finally:
        ledger.close()


def _progress() -> Any:
    done = [0, time.perf_counter()]

    def report(applied: int) -> None:
        done[0] += applied
        if time.perf_counter() - done[1] > 60:
            done[1] = time.perf_counter()
            log(f"P5 catch-up: {done[0]:,} events applied")

    return report


def table_counts(database: Database) -> dict[str, int]:
    with database.connect() as conn:
        return {table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in ("liability_movements", "member_lots", "member_summaries")}


def run(settings: dict[str, Any], database: Database | None, workdir: Path) -> dict[str, Any]:
    from bench.common import create_database, drop_database

    target = settings.get("target_events")
    own = database is None or bool(target)
    if own:  # P2 was skipped, or the goal's size is wanted: start from an empty database
        database = create_database("p5")
        setup_world(database, settings["members"])
    try:
        grown = grow(database, workdir, settings["grow_seconds"], settings["grow_chunk_rows"], settings["members"],
                     target_events=target, run_length=settings.get("run_length", 1),
                     batch_size=settings.get("batch_size", 1000))
        caught = catch_up(database)
        events = head(database)
        counts = table_counts(database)
        log(f"P5: {events:,} events stored; projections caught up ({caught['events_applied']:,} applied in "
            f"{caught['elapsed_s']} s); {counts}")
        # A finance key for this database (P2's world was made by setup_world with its own keys).
        from application.access import IssueApiKey

        ledger = open_ledger(database)
        try:
            finance_key = ledger.execute(IssueApiKey(actor="bench", role="finance", name="bench p5")).body["key"]
        finally:
            ledger.close()
        server = Server(database, workdir).start()
        try:
            http = Http(server.port, finance_key)
            results = {}
            for label, query in {
                "whole history, 2024-01-01..2025-12-31": "from=2024-01-01&to=2025-12-31",
                "one month, 2024-06-01..2024-06-30": "from=2024-06-01&to=2024-06-30",
            }.items():
                path = f"/v1/reports/liability?program_id={PROGRAM_ID}&{query}"
                status, body = http.request("GET", path)  # warm-up, not counted
                if status != 200:
                    raise RuntimeError(f"liability report answered {status}: {body[:500]!r}")
                per_run = []
                for _ in range(settings["runs"]):
                    times = []
                    for _ in range(settings["requests"]):
                        started = time.perf_counter()
                        status, _ = http.request("GET", path)
                        times.append(time.perf_counter() - started)
                        if status != 200:
                            raise RuntimeError(f"liability report answered {status}")
                    per_run.append({"p50_ms": round(percentile(times, 50) * 1000, 2),
                                    "p99_ms": round(percentile(times, 99) * 1000, 2), "requests": len(times)})
                results[label] = {"runs": per_run, "median_p50_ms": median([r["p50_ms"] for r in per_run])}
                log(f"P5 {label}: p50 {results[label]['median_p50_ms']} ms over {events:,} events")
            http.close()
            memory = server.memory()
        finally:
            server.stop()
        larger_rebuild = None
        if settings.get("rebuild"):
            # P3's rebuild again on this larger log: the workers' fixed start-up (about 0.8 s
            # each, importing and connecting) weighs less than on P3's tens of thousands of events.
            from bench.p3_projections import rebuild

            larger_rebuild = rebuild(database, 1, one_process=False, per_projection=False)
        return {"settings": settings, "grown": grown, "catch_up": caught, "events_stored": events,
                "rows": counts, "database_bytes": database.size_bytes(), "reports": results,
                "server_memory": memory, "rebuild": larger_rebuild}
    finally:
        if own:
            drop_database(database)
