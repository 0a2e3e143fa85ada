"""P2: bulk ingestion with `loyalty import purchases FILE --partner P` (each batch of 1000 rows is
one durable transaction), its rate, and the importer's peak memory at two file sizes."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.common import (
    PARTNER_ID,
    Database,
    child_env,
    children,
    cpu_cores_used,
    cpu_ticks,
    head,
    log,
    loyalty_command,
    member_id,
    setup_world,
    vmhwm_kib,
)

FIRST_DAY = datetime(2024, 1, 2, tzinfo=timezone.utc)


def write_purchases(path: Path, rows: int, members: int, tag: str, days: int = 540, run_length: int = 1) -> None:
    """A CSV of `rows` distinct purchases over `members` members, dated over `days` days (in
    order, so a member's purchases arrive oldest first). Members take turns; with `run_length`
    > 1 each turn is that many purchases in a row (a basket split into several receipts)."""
    with path.open("w", encoding="utf-8") as out:
        out.write("transaction_id,member_id,store_id,amount,currency,occurred_at\n")
        for i in range(rows):
            moment = FIRST_DAY + timedelta(seconds=int(i * days * 86400 / max(rows, 1)))
            out.write(f"{tag}-{i},{member_id((i // run_length) % members)},s-{1 + i % 2},{5 + i % 60}.{i % 100:02d},EUR,"
                      f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}\n")


def run_import(database: Database, path: Path, batch_size: int = 1000, workers: int | None = None) -> dict[str, Any]:
    """Runs the importer as a child process (with its worker processes, by default one per CPU
    on PostgreSQL); the peak RSS of each, from /proc/<pid>/status (VmHWM, sampled every 50 ms),
    and wait4's rusage (ru_maxrss: see below why it is only kept for reference). The importer's
    memory is the sum of its processes' peaks (an upper bound: they need not peak together)."""
    command = [*loyalty_command(), "import", "purchases", str(path), "--partner", PARTNER_ID,
               "--batch-size", str(batch_size)] + (["--workers", str(workers)] if workers else [])
    out_path = path.with_suffix(".out")
    with out_path.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=child_env(database.url), stdout=out, stderr=subprocess.STDOUT)
        cpu_before = cpu_ticks({})
        peaks: dict[int, int] = {}  # pid -> VmHWM (KiB)
        ticks: dict[int, int] = {}  # pid -> CPU ticks at its last reading
        timeline: list[tuple[float, int]] = []
        done = threading.Event()
        last_cpu: dict[str, Any] = {}

        def sample() -> None:
            pids, listed = [process.pid], 0.0
            while not done.is_set():
                if time.perf_counter() - listed >= 1:  # scanning /proc for the workers costs CPU: once a second
                    pids, listed = [process.pid, *children(process.pid)], time.perf_counter()
                for pid in pids:
                    value = vmhwm_kib(pid)
                    if value is not None:
                        peaks[pid] = max(value, peaks.get(pid, 0))
                moment = time.perf_counter() - started
                if peaks and moment >= 5 and (not timeline or moment - timeline[-1][0] >= 5):
                    timeline.append((round(moment, 1), sum(peaks.values())))
                # Processes (workers, backends) that exit before the importer does keep their last reading.
                reading = cpu_ticks({str(pid): [pid] for pid in pids})
                ticks.update({pid: reading.pop(str(pid)) for pid in pids if reading.get(str(pid))})
                seen = dict(last_cpu.get("postgres_pids", {}))
                last_cpu.update({k: v for k, v in reading.items() if not k.isdigit()})
                last_cpu["postgres_pids"] = {**seen, **last_cpu["postgres_pids"]}
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    output = out_path.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"import failed ({process.returncode}):\n{output[-2000:]}")
    match = re.search(r"rows ([\d,]+): imported ([\d,]+) .*already imported ([\d,]+), rejected ([\d,]+)", output)
    if not match:
        raise RuntimeError(f"unexpected importer output:\n{output[-2000:]}")
    rows, imported, already, rejected = (int(g.replace(",", "")) for g in match.groups())
    workers_used = re.search(r"\((\d+) workers\)", output)
    cpu = cpu_cores_used(cpu_before, last_cpu, elapsed) if last_cpu else {}
    if cpu:
        cpu["importer"] = round(sum(ticks.values()) / os.sysconf("SC_CLK_TCK") / elapsed, 2)
        cpu["other"] = round(cpu["other"] - cpu["importer"], 2)
    worker_peaks = [peak for pid, peak in peaks.items() if pid != process.pid]
    return {
        "rows": rows, "imported": imported, "already_imported": already, "rejected": rejected,
        "workers": int(workers_used.group(1)) if workers_used else 1,
        "elapsed_s": round(elapsed, 3),
        "purchases_per_s": round(imported / elapsed, 1),
        "peak_rss_kib_wait4": usage.ru_maxrss,
        "peak_rss_kib_workers": worker_peaks,
        # The sampled peaks, not wait4's ru_maxrss: that also covers the process's waited-for
        # children (the largest worker), and the benchmark process's own RSS when it was spawned
        # (Linux keeps the high-water mark across exec): 1.1 GiB in P5's imports of runs 5 and 6.
        "peak_rss_kib_total": sum(peaks.values()) if peaks else usage.ru_maxrss,
        "vmhwm_kib_sampled": sum(peaks.values()) if peaks else None,
        "vmhwm_kib_timeline": timeline,
        "cpu_cores_used": cpu,
    }


def run_once(label: str, rows: int, members: int, workdir: Path, keep: bool = False) -> tuple[dict[str, Any], Database | None]:
    """A fresh database with `members` members; imports `rows` purchases."""
    from bench.common import create_database, drop_database

    database = create_database("p2")
    try:
        setup_world(database, members)
        path = workdir / f"purchases-{label}.csv"
        write_purchases(path, rows, members, tag=label)
        before = head(database)
        result = run_import(database, path)
        result["events_stored"] = head(database) - before
        result["events_per_s"] = round(result["events_stored"] / result["elapsed_s"], 1)
        result["members"] = members
        result["file_bytes"] = path.stat().st_size
        path.unlink()
        log(f"P2 {label}: {result['imported']:,} purchases in {result['elapsed_s']} s = {result['purchases_per_s']}/s; "
            f"peak RSS {result['peak_rss_kib_total'] / 1024:.1f} MiB ({result['workers']} workers)")
        if result["imported"] != rows:
            raise RuntimeError(f"imported {result['imported']} of {rows}")
    except BaseException:
        drop_database(database)
        raise
    if keep:
        return result, database
    drop_database(database)
    return result, None


def run_big(rows: int, members: int, workdir: Path) -> dict[str, Any]:
    """One import of `rows` (the goal's 1,000,000): its time, and its peak memory over the run."""
    result, _ = run_once(f"big{rows}", rows, members, workdir)
    timeline = result["vmhwm_kib_timeline"]
    quarters = {f"{q}%": round(timeline[min(len(timeline) - 1, len(timeline) * q // 100)][1] / 1024, 1)
                for q in (25, 50, 75)} if timeline else {}
    quarters["100%"] = round(result["peak_rss_kib_total"] / 1024, 1)
    result["peak_rss_mib_by_elapsed_share"] = quarters
    log(f"P2 {rows:,} rows: {result['elapsed_s']} s; peak RSS by share of the run {quarters}")
    return result


def run(settings: dict[str, Any], workdir: Path) -> tuple[dict[str, Any], Database | None]:
    """`runs` imports of `rows` (the rate), plus one import at each of `smaller_rows` (memory at
    other sizes). The last large import's database is returned (kept) for P3's rebuild and P5."""
    runs = []
    kept: Database | None = None
    smaller = [run_once(f"size{rows}", rows, settings["members"], workdir)[0] for rows in settings["smaller_rows"]]
    for index in range(settings["runs"]):
        last = index == settings["runs"] - 1
        result, database = run_once(f"r{index}", settings["rows"], settings["members"], workdir, keep=last)
        runs.append(result)
        if database is not None:
            kept = database
    # The big file names many members, each in turn (10 purchases each by its end), as a store's
    # export would: a member's history stays short, and the importer's bounded cache keeps up.
    big = run_big(settings["big_rows"], settings.get("big_members", settings["members"]), workdir) \
        if settings.get("big_rows") else None
    return {"settings": settings, "runs": runs, "smaller": smaller, "big": big}, kept
