"""Runs the benchmark suite: `.venv/bin/python -m bench.run [--quick] [--only P1,P2,...] [--out FILE]`.

Creates its own PostgreSQL databases (fsync must be on) and drops them, starts the real server
(`loyalty serve`) and `loyalty projections run` as subprocesses on loopback, and prints a JSON
document with every measurement and a summary table of the goals."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import p1_http, p2_import, p3_projections, p4_as_of, p5_liability  # noqa: E402
from bench.common import drop_database, log, machine_info, median, pg_info  # noqa: E402

FULL: dict[str, Any] = {
    "P1": {"runs": 3, "clients": 32, "members_per_client": 10, "per_client": 1000, "duration_s": 20,
           "workers": None, "threads": None, "pgbench_seconds": 15, "sweep_clients": [1, 4, 16], "sweep_seconds": 10},
    "P2": {"runs": 3, "rows": 20_000, "smaller_rows": [5_000, 10_000], "members": 2_000, "big_rows": 1_000_000,
           "big_members": 100_000},
    "P3": {"rebuild_runs": 3, "lag": {"runs": 3, "rate_per_s": 100, "duration_s": 20, "members": 200},
           "lag_batch": {"runs": 3, "rate_per_s": 1000, "per_request": 50, "clients": 4, "duration_s": 20,
                         "members": 1000}},
    "P4": {"runs": 3, "requests": 50, "member_events": 10_000},
    "P5": {"runs": 3, "requests": 20, "grow_seconds": 90, "grow_chunk_rows": 20_000, "members": 2_000,
           "rebuild": True},
}
# `--p5-events N`: P5 on a database of its own grown to N events (the goal's size is 10,000,000):
# many members with short histories, each turn of a member five purchases in a row.
P5_AT_SIZE: dict[str, Any] = {"runs": 3, "requests": 20, "grow_seconds": 0, "grow_chunk_rows": 500_000,
                              "members": 100_000, "run_length": 5, "batch_size": 5000}
QUICK: dict[str, Any] = {
    "P1": {"runs": 1, "clients": 8, "members_per_client": 2, "per_client": 20, "duration_s": 10,
           "workers": None, "threads": None, "pgbench_seconds": 3, "sweep_clients": [1, 4], "sweep_seconds": 2},
    "P2": {"runs": 1, "rows": 1_000, "smaller_rows": [250, 500], "members": 100, "big_rows": 3_000, "big_members": 500},
    "P3": {"rebuild_runs": 1, "lag": {"runs": 1, "rate_per_s": 10, "duration_s": 3, "members": 20},
           "lag_batch": {"runs": 1, "rate_per_s": 100, "per_request": 10, "clients": 2, "duration_s": 3,
                         "members": 20}},
    "P4": {"runs": 1, "requests": 5, "member_events": 400},
    "P5": {"runs": 1, "requests": 3, "grow_seconds": 0, "grow_chunk_rows": 500, "members": 100, "rebuild": True},
}
PARTS = ("P1", "P2", "P3", "P4", "P5")


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Medians over the runs, and each goal: met or not, with the measured figure."""
    summary: dict[str, Any] = {}
    goals: list[dict[str, Any]] = []

    def goal(name: str, target: str, measured: str, met: bool | str | None, note: str = "") -> None:
        verdict = met if isinstance(met, str) else ("yes" if met else ("no" if met is not None else "not measured"))
        goals.append({"goal": name, "target": target, "measured": measured, "met": verdict, "note": note})

    if "P1" in results:
        runs = results["P1"]["runs"]
        rate = median([r["ledger"]["purchases_per_s"] for r in runs])
        tps = median([r["pgbench"]["tps"] for r in runs])
        ratio = median([r["ratio"] for r in runs])
        summary["P1"] = {"runs": len(runs), "purchases_per_s_median": rate, "pgbench_tps_median": tps,
                         "ratio_median_of_runs": ratio,
                         "latency_p50_ms_median": median([r["ledger"]["latency_ms"]["p50"] for r in runs]),
                         "latency_p99_ms_median": median([r["ledger"]["latency_ms"]["p99"] for r in runs]),
                         "sweep_single_run": {f"{s['clients']} clients": f"{s['purchases_per_s']}/s, p50 "
                                              f"{s['latency_ms']['p50']} ms" for s in results["P1"].get("sweep", [])}}
        goal("P1 HTTP purchases/s ÷ pgbench tps", ">= 1.0", f"{ratio:.3f} ({rate:.1f}/s ÷ {tps:.1f} tps)",
             ratio is not None and ratio >= 1.0, f"median of {len(runs)} runs")
    if "P2" in results:
        runs = results["P2"]["runs"]
        rate = median([r["purchases_per_s"] for r in runs])
        elapsed = median([r["elapsed_s"] for r in runs])
        rows = runs[0]["rows"]
        smaller = results["P2"]["smaller"]
        big_rss = max(r["peak_rss_kib_total"] for r in runs)
        half = smaller[-1]
        growth = big_rss / half["peak_rss_kib_total"] - 1
        million = 1_000_000 / rate if rate else None
        sizes = {f"{s['rows']} rows": round(s["peak_rss_kib_total"] / 1024, 1) for s in smaller}
        sizes[f"{rows} rows (max of {len(runs)} runs)"] = round(big_rss / 1024, 1)
        summary["P2"] = {"runs": len(runs), "rows": rows, "purchases_per_s_median": rate,
                         "elapsed_s_median": elapsed, "extrapolated_1m_s": round(million, 1) if million else None,
                         "peak_rss_mib": sizes, "rss_growth_last_doubling": round(growth, 3)}
        goal("P2 bulk import purchases/s", ">= 50,000/s", f"{rate:,.1f}/s", rate is not None and rate >= 50_000,
             f"median of {len(runs)} imports of {rows:,} rows")
        big = results["P2"].get("big")
        if big is not None:
            summary["P2"]["big"] = {"rows": big["rows"], "elapsed_s": big["elapsed_s"],
                                    "purchases_per_s": big["purchases_per_s"],
                                    "peak_rss_mib_by_elapsed_share": big["peak_rss_mib_by_elapsed_share"]}
            goal(f"P2 {big['rows']:,} purchases", "< 30 s for 1,000,000", f"{big['elapsed_s']:,} s (measured, "
                 f"{big['purchases_per_s']:,}/s)", big["rows"] >= 1_000_000 and big["elapsed_s"] < 30,
                 "one import of the whole file" if big["rows"] >= 1_000_000 else "smaller than the goal's file")
            shares = big["peak_rss_mib_by_elapsed_share"]
            second_half = shares["100%"] / shares["50%"] - 1 if shares.get("50%") else None
            goal("P2 importer memory flat", "peak RSS grows < 10% over the second half of the big import",
                 " -> ".join(f"{v} MiB ({k})" for k, v in shares.items())
                 + (f"; second half {second_half:+.1%}" if second_half is not None else ""),
                 second_half is not None and second_half < 0.10,
                 f"VmHWM of the importer at each share of its run time; at {rows:,} rows: "
                 + ", ".join(f"{v} MiB ({k})" for k, v in sizes.items()))
        else:
            goal("P2 1,000,000 purchases", "< 30 s", f"~{million:,.0f} s (extrapolated from {rows:,} rows, not measured)",
                 million is not None and million < 30, "extrapolated")
            goal("P2 importer memory flat",
                 f"peak RSS grows < 10% from {half['rows']:,} to {rows:,} rows",
                 " -> ".join(f"{v} MiB ({k})" for k, v in sizes.items()) + f"; last step {growth:+.1%}",
                 growth < 0.10, "ru_maxrss of the importer process; same member count at every size")
    if "P3" in results:
        rebuild = results["P3"]["rebuild"]
        lag = results["P3"]["lag"]
        if "rebuild" in rebuild:
            rate = median([r["events_per_s"] for r in rebuild["rebuild"]])
            raw = median([r["events_per_s"] for r in rebuild["raw"]])
            one = median([r["events_per_s"] for r in rebuild.get("rebuild_one_process", [])])
            events = rebuild["rebuild"][0]["events"]
            workers = rebuild.get("workers", 1)
            summary["P3_rebuild"] = {"runs": len(rebuild["rebuild"]), "events": events, "workers": workers,
                                     "rebuild_events_per_s_median": rate, "raw_decode_events_per_s_median": raw,
                                     "one_process_events_per_s_median": one,
                                     "rebuild_over_raw": round(rate / raw, 3) if raw else None}
            goal("P3 projection rebuild events/s", ">= 100,000/s",
                 f"{rate:,.0f}/s with {workers} workers (one process {one or 0:,.0f}/s; raw read+decode {raw:,.0f}/s)",
                 rate >= 100_000, f"median of {len(rebuild['rebuild'])} rebuilds of {events:,} events")
        else:
            goal("P3 projection rebuild events/s", ">= 100,000/s", "-", None, rebuild.get("skipped", ""))
        p50 = median([r["lag_ms"]["p50"] for r in lag])
        p99 = median([r["lag_ms"]["p99"] for r in lag])
        summary["P3_lag"] = {"runs": len(lag), "rate_per_s": lag[0]["rate_target_per_s"] if lag else None,
                             "lag_p50_ms_median": p50, "lag_p99_ms_median": p99,
                             "postings_per_run": [r["postings"] for r in lag]}
        goal("P3 live projection lag p99", "< 100 ms", f"{p99} ms (p50 {p50} ms)", p99 is not None and p99 < 100,
             f"median of {len(lag)} runs at {lag[0]['rate_target_per_s'] if lag else '?'} single postings/s")
        batch_lag = results["P3"].get("lag_batch")
        if batch_lag:
            p50 = median([r["lag_ms"]["p50"] for r in batch_lag])
            p99 = median([r["lag_ms"]["p99"] for r in batch_lag])
            achieved = median([r["rate_achieved_per_s"] for r in batch_lag])
            summary["P3_lag_batch"] = {"runs": len(batch_lag), "rate_per_s": batch_lag[0]["rate_target_per_s"],
                                       "rate_achieved_per_s_median": achieved, "lag_p50_ms_median": p50,
                                       "lag_p99_ms_median": p99}
            goal("P3 live projection lag p99 at the goal's load", "< 100 ms under 1,000 postings/s",
                 f"{p99} ms (p50 {p50} ms) at {achieved}/s", p99 is not None and p99 < 100
                 and achieved >= 0.95 * batch_lag[0]["rate_target_per_s"] and batch_lag[0]["rate_target_per_s"] >= 1000,
                 f"median of {len(batch_lag)} runs; {batch_lag[0]['purchases_per_request']} purchases per batch request "
                 f"from {batch_lag[0].get('clients', 1)} concurrent clients, "
                 "lag from each request's answer")
    if "P4" in results:
        p4 = results["P4"]
        summary["P4"] = {"member_events": p4["history"]["member_events"],
                         "baseline_get_program_p50_ms": p4["baseline"]["p50_ms"],
                         **{label: v["median_p50_ms"] for label, v in p4["as_of"].items()}}
        for label, v in p4["as_of"].items():
            goal(f"P4 as-of balance p50, {label}", "< 20 ms", f"{v['median_p50_ms']} ms",
                 v["median_p50_ms"] < 20, f"{p4['history']['member_events']:,} member events, "
                 f"median of {len(v['runs'])} runs x {v['runs'][0]['requests']} requests")
    if "P5" in results:
        p5 = results["P5"]
        summary["P5"] = {"events_stored": p5["events_stored"], "rows": p5["rows"],
                         **{label: v["median_p50_ms"] for label, v in p5["reports"].items()}}
        larger = p5.get("rebuild")
        if larger:
            rate = larger["rebuild"][0]["events_per_s"]
            raw = larger["raw"][0]["events_per_s"]
            summary["P3_rebuild_on_P5_log"] = {"events": larger["rebuild"][0]["events"], "workers": larger["workers"],
                                               "rebuild_events_per_s": rate, "raw_decode_events_per_s": raw}
            goal("P3 projection rebuild events/s, on P5's larger log", ">= 100,000/s",
                 f"{rate:,.0f}/s with {larger['workers']} workers (raw read+decode {raw:,.0f}/s)", rate >= 100_000,
                 f"one rebuild of {larger['rebuild'][0]['events']:,} events")
        at_size = p5["events_stored"] >= 10_000_000
        for label, v in p5["reports"].items():
            goal(f"P5 liability report p50, {label}", "< 200 ms at 10,000,000 events",
                 f"{v['median_p50_ms']} ms at {p5['events_stored']:,} events",
                 v["median_p50_ms"] < 200 if at_size else "not judged (size not reached)",
                 f"median of {len(v['runs'])} runs x {v['runs'][0]['requests']} requests" if at_size else
                 "the goal's size was not reached, so the goal is not judged; "
                 + ("under 200 ms at this size" if v["median_p50_ms"] < 200 else "already over 200 ms at this size"))
    memory: dict[str, Any] = {}
    for part in ("P1", "P4", "P5"):
        if part in results:
            sources = ([r["ledger"]["server_memory"] for r in results["P1"]["runs"]] if part == "P1"
                       else [results[part]["server_memory"]])
            workers = [kib for m in sources for kib in m["worker_vmhwm_kib"]]
            memory[f"server_worker_vmhwm_mib_max_{part}"] = round(max(workers) / 1024, 1) if workers else None
    if "P2" in results:
        memory["importer_peak_rss_mib_max"] = round(max(r["peak_rss_kib_total"] for r in results["P2"]["runs"]) / 1024, 1)
    summary["peak_memory"] = memory
    summary["goals"] = goals
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print("\n| goal | target | measured | met |", file=sys.stderr)
    print("| --- | --- | --- | --- |", file=sys.stderr)
    for g in summary["goals"]:
        print(f"| {g['goal']} | {g['target']} | {g['measured']} | {g['met']} |", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smoke run: tiny sizes, one run each.")
    parser.add_argument("--only", default=",".join(PARTS), help="Comma-separated parts (default: all).")
    parser.add_argument("--out", type=Path, help="Also write the JSON results to this file.")
    parser.add_argument("--p5-events", type=int, help="P5 on its own database grown to this many events.")
    args = parser.parse_args(argv)
    parts = [p.strip().upper() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    settings = QUICK if args.quick else FULL
    if shutil.which("pgbench") is None and "P1" in parts:
        parser.error("pgbench is not on PATH")

    started = time.monotonic()
    document: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "postgresql": pg_info(),
        "results": {},
    }
    if document["postgresql"]["fsync"] != "on":
        log(f"fsync is {document['postgresql']['fsync']}: refusing to run")
        return 2
    log(f"benchmarks ({document['mode']}): {', '.join(parts)}; load average {os.getloadavg()}")
    results = document["results"]
    kept = None
    with tempfile.TemporaryDirectory(prefix="loyalty-bench-") as tmp:
        workdir = Path(tmp)
        try:
            if "P1" in parts:
                results["P1"] = p1_http.run(settings["P1"], workdir)
            if "P2" in parts:
                results["P2"], kept = p2_import.run(settings["P2"], workdir)
            if kept is None and ("P3" in parts or ("P5" in parts and not args.p5_events)):
                # P2 not run: one import, untimed for P2, gives P3's rebuild and P5 their events.
                seed, kept = p2_import.run_once("seed", settings["P2"]["rows"], settings["P2"]["members"], workdir,
                                                keep=True)
                document["seed_import"] = seed
            if "P3" in parts:
                results["P3"] = p3_projections.run(settings["P3"], kept, workdir)
            if "P4" in parts:
                results["P4"] = p4_as_of.run(settings["P4"], workdir)
            if "P5" in parts:
                p5_settings = dict(settings["P5"])
                if args.p5_events:
                    p5_settings = {**P5_AT_SIZE, "target_events": args.p5_events}
                    if args.quick:
                        p5_settings.update(runs=1, requests=3, members=200, grow_chunk_rows=2_000, batch_size=500)
                elif kept is not None:
                    p5_settings["members"] = settings["P2"]["members"]
                results["P5"] = p5_liability.run(p5_settings, None if args.p5_events else kept, workdir)
        finally:
            if kept is not None:
                drop_database(kept)
    document["machine"]["loadavg_end"] = list(os.getloadavg())
    document["elapsed_s"] = round(time.monotonic() - started, 1)
    document["summary"] = summarise(results)
    text = json.dumps(document, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print_table(document["summary"])
    log(f"done in {document['elapsed_s']} s; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
