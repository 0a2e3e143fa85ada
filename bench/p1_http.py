"""P1: single purchases per second over HTTP with many concurrent keep-alive clients, and pgbench
TPC-B on the same database in the same run."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PARTNER_ID,
    Http,
    Server,
    cpu_cores_used,
    cpu_ticks,
    fresh_database,
    log,
    pg_conninfo_args,
    percentile,
    setup_world,
)


def post_purchases(server: Server, key: str, members_by_client: list[list[str]], per_client: int,
                   duration: float, run_tag: str, warmup: int = 3) -> dict[str, Any]:
    """Each client thread has its own keep-alive connection and its own members (a member is
    never posted to by two clients at once) and posts distinct purchases until it has posted
    `per_client` or `duration` seconds have passed."""
    clients = len(members_by_client)
    statuses: list[dict[int, int]] = [{} for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    reconnects = [0] * clients
    errors: list[str] = []
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    deadline = [0.0]

    def body(client: int, n: int, members: list[str], prefix: str) -> dict[str, Any]:
        return {"transaction_id": f"{run_tag}-{prefix}{client}-{n}", "member_id": members[n % len(members)],
                "store_id": "s-1", "amount": f"{10 + n % 40}.50", "currency": "EUR"}

    def work(client: int) -> None:
        http = Http(server.port, key)
        members = members_by_client[client]
        try:
            for n in range(warmup):  # not counted: opens the connection, loads the members
                http.request("POST", "/v1/purchases", body(client, n, members, "w"))
            ready.wait()
            go.wait()
            for n in range(per_client):
                if time.perf_counter() >= deadline[0]:
                    break
                started = time.perf_counter()
                status, payload = http.request("POST", "/v1/purchases", body(client, n, members, "c"))
                latencies[client].append(time.perf_counter() - started)
                statuses[client][status] = statuses[client].get(status, 0) + 1
                if status != 201 and len(errors) < 5:
                    errors.append(f"{status}: {payload[:300]!r}")
        except Exception as error:  # noqa: BLE001 - reported, never hidden
            errors.append(repr(error))
            try:
                ready.abort()
            except threading.BrokenBarrierError:
                pass
        finally:
            reconnects[client] = http.reconnects
            http.close()

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=300)
    groups = {"server": server.pids()}
    cpu_before = cpu_ticks(groups)
    started = time.perf_counter()
    deadline[0] = started + duration
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = cpu_cores_used(cpu_before, cpu_ticks(groups), elapsed)
    merged: dict[int, int] = {}
    for per in statuses:
        for status, count in per.items():
            merged[status] = merged.get(status, 0) + count
    all_latencies = [x for per in latencies for x in per]
    created = merged.get(201, 0)
    return {
        "clients": clients,
        "elapsed_s": round(elapsed, 3),
        "requests": len(all_latencies),
        "created_201": created,
        "statuses": {str(k): v for k, v in sorted(merged.items())},
        "purchases_per_s": round(created / elapsed, 1),
        "latency_ms": {"p50": round(percentile(all_latencies, 50) * 1000, 2) if all_latencies else None,
                       "p99": round(percentile(all_latencies, 99) * 1000, 2) if all_latencies else None},
        "reconnects": sum(reconnects),
        "errors": errors,
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
