"""P1: single purchases per second over HTTP with many concurrent keep-alive clients, and pgbench
TPC-B on the same database in the same run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.common import (
    PARTNER_ID,
    Server,
    cpu_cores_used,
    cpu_ticks,
    fresh_database,
    log,
    pg_conninfo_args,
    percentile,
    setup_world,
)
from bench.load_generator import drive, post_request


def post_purchases(server: Server, key: str, members_by_client: list[list[str]], per_client: int,
                   duration: float, run_tag: str, warmup: int = 3) -> dict[str, Any]:
    """Every client has its own keep-alive connection and its own members (a member is never
    posted to by two clients at once) and posts distinct purchases until it has posted
    `per_client` or `duration` seconds have passed; one thread drives them all
    (bench/load_generator.py)."""
    clients = len(members_by_client)

    def request(client: int, n: int, timed: bool) -> bytes:
        members = members_by_client[client]
        body = (f'{{"transaction_id": "{run_tag}-{"c" if timed else "w"}{client}-{n}", '
                f'"member_id": "{members[n % len(members)]}", "store_id": "s-1", '
                f'"amount": "{10 + n % 40}.50", "currency": "EUR"}}').encode()
        return post_request("/v1/purchases", key, body)

    groups = {"server": server.pids()}
    cpu_before: list[dict[str, Any]] = []
    load = drive(server.port, clients, request, warmup=warmup, per_client=per_client, duration=duration,
                 on_timing_start=lambda: cpu_before.append(cpu_ticks(groups)))
    cpu = cpu_cores_used(cpu_before[0], cpu_ticks(groups), load.elapsed_s)
    created = load.statuses.get(201, 0)
    latencies = load.latencies
    return {
        "clients": clients,
        "load_generator": "bench/load_generator.py (one thread, non-blocking sockets)",
        "elapsed_s": round(load.elapsed_s, 3),
        "requests": len(latencies),
        "created_201": created,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "purchases_per_s": round(created / load.elapsed_s, 1),
        "latency_ms": {"p50": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
                       "p99": round(percentile(latencies, 99) * 1000, 2) if latencies else None},
        "errors": load.errors,
        "cpu_cores_used": cpu,
    }


def pgbench(database_name: str, conn_args: list[str], seconds: int, clients: int = 4, jobs: int = 2) -> dict[str, Any]:
    init = subprocess.run(["pgbench", *conn_args, "-i", "-q", database_name], capture_output=True, text=True)
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr[-1000:]}")
    run = subprocess.run(["pgbench", *conn_args, "-c", str(clients), "-j", str(jobs), "-T", str(seconds),
                          database_name], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"pgbench failed: {run.stderr[-1000:]}")
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", run.stdout)
    scale = re.search(r"scaling factor: (\d+)", run.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
    if not match:
        raise RuntimeError(f"no tps in pgbench output:\n{run.stdout}")
    return {"tps": float(match.group(1)), "scale": int(scale.group(1)) if scale else None,
            "transactions": int(processed.group(1)) if processed else None,
            "failed": int(failed.group(1)) if failed else None,
            "command": f"pgbench -c {clients} -j {jobs} -T {seconds} (after pgbench -i)"}


def run_once(index: int, settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    clients, members_per_client = settings["clients"], settings["members_per_client"]
    with fresh_database("p1") as database:
        world = setup_world(database, clients * members_per_client)
        members_by_client = [world.member_ids[c * members_per_client:(c + 1) * members_per_client]
                             for c in range(clients)]
        server = Server(database, workdir, workers=settings["workers"], threads=settings["threads"]).start()
        try:
            load = post_purchases(server, world.partner_key, members_by_client, settings["per_client"],
                                  settings["duration_s"], run_tag=f"r{index}")
            load["server_memory"] = server.memory()
            load["server_workers"] = len(server.worker_pids())
            load["server_problems"] = server.problems()
        finally:
            server.stop()
        bench = pgbench(database.name, pg_conninfo_args(database), settings["pgbench_seconds"])
    ratio = load["purchases_per_s"] / bench["tps"] if bench["tps"] else None
    log(f"P1 run {index}: {load['purchases_per_s']}/s over HTTP ({load['created_201']} in {load['elapsed_s']} s, "
        f"p50 {load['latency_ms']['p50']} ms), pgbench {bench['tps']:.1f} tps, ratio {ratio:.3f}")
    return {"ledger": load, "pgbench": bench, "ratio": round(ratio, 4) if ratio is not None else None,
            "partner": PARTNER_ID}


def sweep(settings: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """One run per client count on one server and database (no pgbench): how the rate and the
    latency move with concurrency."""
    counts, members_per_client = settings["sweep_clients"], settings["members_per_client"]
    results = []
    with fresh_database("p1sweep") as database:
        world = setup_world(database, max(counts) * members_per_client)
        server = Server(database, workdir, workers=settings["workers"], threads=settings["threads"]).start()
        try:
            for clients in counts:
                members_by_client = [world.member_ids[c * members_per_client:(c + 1) * members_per_client]
                                     for c in range(clients)]
                load = post_purchases(server, world.partner_key, members_by_client, settings["per_client"] * 4,
                                      settings["sweep_seconds"], run_tag=f"sweep{clients}")
                results.append({"clients": clients, "purchases_per_s": load["purchases_per_s"],
                                "latency_ms": load["latency_ms"], "statuses": load["statuses"],
                                "cpu_cores_used": load["cpu_cores_used"]})
                log(f"P1 sweep: {clients} clients: {load['purchases_per_s']}/s, p50 {load['latency_ms']['p50']} ms")
        finally:
            server.stop()
    return results


def run(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    runs = [run_once(i, settings, workdir) for i in range(settings["runs"])]
    return {"settings": settings, "runs": runs, "sweep": sweep(settings, workdir) if settings.get("sweep_clients") else []}


if __name__ == "__main__":  # a single run, for trying settings by hand
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run_once(0, {"clients": 16, "members_per_client": 10, "per_client": 50, "duration_s": 20,
                                      "workers": 2, "threads": 8, "pgbench_seconds": 5}, Path(tmp)), indent=2))
