"""P3: projection rebuild speed against the raw read-and-decode speed of the event table, and
live projection lag under a steady posting load (server + `loyalty projections run`)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Database,
    Http,
    ProjectionProcess,
    Server,
    cpu_cores_used,
    cpu_ticks,
    fresh_database,
    log,
    open_ledger,
    open_read_model,
    percentile,
    setup_world,
)


def raw_read(ledger: Any, page: int) -> dict[str, Any]:
    """Every notification, in pages, each decoded to its domain event (what a projection must
    do at least)."""
    started = time.perf_counter()
    start: int | None = None
    count = 0
    while True:
        notifications = ledger.recorder.select_notifications(start=start, limit=page, inclusive_of_start=False)
        if not notifications:
            break
        for notification in notifications:
            ledger.mapper.to_domain_event(notification)
        count += len(notifications)
        start = notifications[-1].id
    elapsed = time.perf_counter() - started
    return {"events": count, "elapsed_s": round(elapsed, 3), "events_per_s": round(count / elapsed, 1)}


def rebuild(database: Database, runs: int, one_process: bool = True, per_projection: bool = True) -> dict[str, Any]:
    """The rebuild of all projections that `loyalty projections rebuild` runs (from run 9: in
    worker processes, by default one per CPU, infrastructure/rebuild_workers.py), alternating
    with the raw read and with the one-process rebuild (ProjectionRunner.rebuild(), what
    `--workers 1` and SQLite run), `runs` times each, in this process, with the collector set
    as the command line sets it (infrastructure/gc_tuning.py). P5 calls it on its larger log
    without the one-process rebuild and the per-projection ones (from run 16)."""
    from infrastructure.config import Config
    from infrastructure.gc_tuning import tune_gc
    from infrastructure.rebuild_workers import rebuild_in_processes
    from infrastructure.worker_processes import default_workers

    tune_gc()
    config = Config(database_url=database.url)
    workers = default_workers(config)
    ledger = open_ledger(database)
    model = open_read_model(database, ledger)
    runner = model.runner
    try:
        runner.catch_up()  # the same starting point for every rebuild
        results: dict[str, Any] = {"workers": workers, "raw": [], "rebuild": [], "rebuild_one_process": [],
                                   "per_projection": []}
        for index in range(runs):
            results["raw"].append(raw_read(ledger, runner.batch_size))
            hows = [("rebuild", lambda: rebuild_in_processes(config, runner, None, workers=workers))]
            if one_process:
                hows.append(("rebuild_one_process", runner.rebuild))
            for key, how in hows:
                groups: dict[str, list[int]] = {}
                cpu_before, children_before = cpu_ticks(groups), os.times()
                started = time.perf_counter()
                applied = how()
                elapsed = time.perf_counter() - started
                cpu = cpu_cores_used(cpu_before, cpu_ticks(groups), elapsed)
                # The workers are this process's children, waited for: os.times() has their CPU.
                children_after = os.times()
                cpu["rebuild_workers"] = round((children_after.children_user + children_after.children_system
                                                - children_before.children_user - children_before.children_system)
                                               / elapsed, 2)
                cpu["other"] = round(cpu["other"] - cpu["rebuild_workers"], 2)
                results[key].append({"events": applied, "elapsed_s": round(elapsed, 3),
                                     "events_per_s": round(applied / elapsed, 1), "cpu_cores_used": cpu})
            one = (f", one process {results['rebuild_one_process'][-1]['events_per_s']:,.0f}/s" if one_process else "")
            log(f"P3 rebuild run {index}: {applied:,} events; {workers} workers "
                f"{results['rebuild'][-1]['events_per_s']:,.0f}/s{one}; "
                f"raw read {results['raw'][-1]['events_per_s']:,.0f}/s")
        # Once, for evidence of where the time goes: each projection rebuilt alone.
        per: dict[str, Any] = {}
        for projection in runner.projections if per_projection else ():
            started = time.perf_counter()
            applied = runner.rebuild([projection.name])
            elapsed = time.perf_counter() - started
            per[projection.name] = {"events": applied, "elapsed_s": round(elapsed, 3),
                                    "events_per_s": round(applied / elapsed, 1)}
        if per:
            results["per_projection"].append(per)
        return results
    finally:
        ledger.close()


def live_lag(index: int, settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Posts purchases at a fixed rate from `clients` concurrent clients (open loop); after each
    201 a client reads the head of the event log (our events are the newest, nobody else writes)
    and a monitor thread polling the projection positions every ~2 ms records when every
    projection has reached it."""
    rate, duration = settings["rate_per_s"], settings["duration_s"]
    # Above what single postings reach, the partner batch route carries the postings: `per_request`
    # purchases a request, each request acknowledged (200, every item 201) after its commit.
    per_request = settings.get("per_request", 1)
    with fresh_database("p3lag") as database:
        world = setup_world(database, settings["members"])
        server = Server(database, workdir).start()
        projections = ProjectionProcess(database, workdir).start()
        try:
            monitor_conn = database.connect()
            head_conn = database.connect()
            ledger = open_ledger(database)
            table = ledger.recorder.events_table_name
            ledger.close()
            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def monitor() -> None:
                while not stop.is_set():
                    position = monitor_conn.execute("SELECT MIN(position) FROM projection_positions").fetchone()[0]
                    samples.append((time.perf_counter(), int(position)))
                    time.sleep(0.002)

            # Wait until the runner has caught up with the setup.
            current_head = head_conn.execute(f"SELECT MAX(notification_id) FROM {table}").fetchone()[0]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                position = monitor_conn.execute("SELECT MIN(position) FROM projection_positions").fetchone()[0]
                if position >= current_head:
                    break
                time.sleep(0.05)
            watcher = threading.Thread(target=monitor, daemon=True)
            watcher.start()
            acks: list[tuple[float, int]] = []
            statuses: dict[int, int] = {}
            total = int(rate * duration / per_request)  # requests
            groups = {"server": server.pids(), "projections": [projections.process.pid]}  # type: ignore[union-attr]
            lock = threading.Lock()
            next_request = [0]
            posted = [0]

            def client() -> None:
                # Open loop: request n is due at started + n / (rate / per_request), whichever client
                # is free takes it, so one slow answer does not slow the offered rate.
                http = Http(server.port, world.partner_key)
                head_reader = database.connect()
                try:
                    while True:
                        with lock:
                            n = next_request[0]
                            next_request[0] += 1
                        if n >= total:
                            return
                        pause = started + n * per_request / rate - time.perf_counter()
                        if pause > 0:
                            time.sleep(pause)
                        items = [{"transaction_id": f"lag{index}-{n}-{k}",
                                  "member_id": world.member_ids[(n * per_request + k) % len(world.member_ids)],
                                  "store_id": "s-1", "amount": "20.00", "currency": "EUR"} for k in range(per_request)]
                        if per_request == 1:
                            status, _ = http.request("POST", "/v1/purchases", items[0])
                            accepted = status == 201
                        else:
                            status, body = http.request("POST", "/v1/purchases/batch", {"purchases": items})
                            accepted = status == 200 and all(r["status"] == 201 for r in json.loads(body)["results"])
                        acked = time.perf_counter()
                        # The head read after the answer is at or past this request's events: the
                        # lag measured to it is an upper bound.
                        event_head = head_reader.execute(f"SELECT MAX(notification_id) FROM {table}").fetchone()[0] \
                            if accepted else None
                        with lock:
                            statuses[status] = statuses.get(status, 0) + 1
                            if accepted:
                                posted[0] += per_request
                                acks.append((acked, int(event_head)))
                finally:
                    http.close()
                    head_reader.close()

            cpu_before = cpu_ticks(groups)
            started = time.perf_counter()
            clients = [threading.Thread(target=client, daemon=True) for _ in range(settings.get("clients", 1))]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            postings = posted[0]
            acks.sort()
            posting_elapsed = time.perf_counter() - started
            cpu = cpu_cores_used(cpu_before, cpu_ticks(groups), posting_elapsed)
            last_head = acks[-1][1] if acks else 0
            tail_deadline = time.monotonic() + 10
            while time.monotonic() < tail_deadline and not (samples and samples[-1][1] >= last_head):
                time.sleep(0.01)
            stop.set()
            watcher.join()
            monitor_conn.close()
            head_conn.close()
        finally:
            projections.stop()
            server.stop()
    lags: list[float] = []
    unseen = 0
    cursor = 0
    for acked, event_head in acks:
        while cursor < len(samples) and samples[cursor][0] < acked:
            cursor += 1
        probe = cursor
        while probe < len(samples) and samples[probe][1] < event_head:
            probe += 1
        if probe < len(samples):
            lags.append(max(samples[probe][0] - acked, 0.0))
        else:
            unseen += 1
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:])]
    result = {
        "rate_target_per_s": rate,
        "purchases_per_request": per_request,
        "clients": settings.get("clients", 1),
        "rate_achieved_per_s": round(postings / posting_elapsed, 1),
        "postings": postings,
        "requests_acknowledged": len(acks),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "lag_ms": {"p50": round(percentile(lags, 50) * 1000, 2) if lags else None,
                   "p99": round(percentile(lags, 99) * 1000, 2) if lags else None,
                   "max": round(max(lags) * 1000, 2) if lags else None},
        "not_seen_within_10s_after_last": unseen,
        "monitor_poll_interval_ms_p50": round(percentile(gaps, 50) * 1000, 3) if gaps else None,
        "cpu_cores_used": cpu,
    }
    log(f"P3 lag run {index}: p50 {result['lag_ms']['p50']} ms, p99 {result['lag_ms']['p99']} ms "
        f"at {result['rate_achieved_per_s']}/s")
    return result


def run(settings: dict[str, Any], database: Database | None, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"settings": settings}
    if database is None:
        result["rebuild"] = {"skipped": "no database from P2"}
    else:
        result["rebuild"] = rebuild(database, settings["rebuild_runs"])
    result["lag"] = [live_lag(i, settings["lag"], workdir) for i in range(settings["lag"]["runs"])]
    if settings.get("lag_batch"):
        result["lag_batch"] = [live_lag(i, settings["lag_batch"], workdir) for i in range(settings["lag_batch"]["runs"])]
    return result
