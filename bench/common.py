"""Shared pieces of the benchmark suite: fresh PostgreSQL databases, the real server and
projection runner as subprocesses, a keep-alive HTTP client, the seeded world, statistics,
peak memory (VmHWM) and CPU accounting from /proc."""

from __future__ import annotations

import http.client
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PROGRAM_ID = "bench"
PARTNER_ID = "shop"
STORES = ["s-1", "s-2"]
ENROLLED_AT = datetime(2024, 1, 1, tzinfo=timezone.utc)
PROGRAM = {
    "program_id": PROGRAM_ID,
    "name": "Bench club",
    "currency": "EUR",
    "earn_rate": "1",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 24},
    "pending_days": 0,
    "tiers": [
        {"name": "base", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "gold", "qualifying_spend": "1000", "multiplier": "1.5"},
    ],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 1000,
    "effective_at": "2020-01-01T00:00:00Z",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- statistics ------------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


# ---- the machine and PostgreSQL ----------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def pg_info() -> dict[str, Any]:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        def show(name: str) -> str:
            return conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]

        return {
            "version": conn.execute("SELECT version()").fetchone()[0],  # type: ignore[index]
            "fsync": show("fsync"),
            "synchronous_commit": show("synchronous_commit"),
            "full_page_writes": show("full_page_writes"),
            "wal_sync_method": show("wal_sync_method"),
            "shared_buffers": show("shared_buffers"),
            "max_connections": show("max_connections"),
        }


@dataclass
class Database:
    name: str
    url: str

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def fsync(self) -> str:
        with self.connect() as conn:
            return conn.execute("SHOW fsync").fetchone()[0]

    def size_bytes(self) -> int:
        with self.connect() as conn:
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def create_database(tag: str) -> Database:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = f"loyalty_bench_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(ADMIN_URL)
    user = params.get("user", "postgres")
    password = params.get("password", "")
    auth = f"{user}:{password}" if password else user
    url = f"postgresql://{auth}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"
    database = Database(name, url)
    fsync = database.fsync()
    if fsync != "on":
        drop_database(database)
        raise SystemExit(f"PostgreSQL has fsync={fsync}; these benchmarks need fsync on")
    return database


def drop_database(database: Database) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')


@contextmanager
def fresh_database(tag: str, keep: bool = False) -> Iterator[Database]:
    database = create_database(tag)
    try:
        yield database
    finally:
        if not keep:
            drop_database(database)


def pg_conninfo_args(database: Database) -> list[str]:
    """-h/-p/-U for pgbench, from the admin URL."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(ADMIN_URL)
    return ["-h", str(params.get("host", "127.0.0.1")), "-p", str(params.get("port", 5432)),
            "-U", str(params.get("user", "postgres"))]


# ---- /proc: memory and CPU --------------------------------------------------------------------

def vmhwm_kib(pid: int) -> int | None:
    """Peak resident set size of a live process, from /proc/<pid>/status (VmHWM, KiB)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _stat(pid: str) -> tuple[str, int, int] | None:
    """(comm, ppid, utime+stime ticks) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    rest = text[text.rindex(")") + 2:].split()
    return comm, int(rest[1]), int(rest[11]) + int(rest[12])


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(entry)
            if stat is not None and stat[1] == pid:
                found.append(int(entry))
    return found


def cpu_ticks(groups: dict[str, list[int]]) -> dict[str, Any]:
    """CPU ticks (user+system) used so far by each named group of pids, by each `postgres`
    process, by this benchmark process, and by the whole machine (from /proc/stat: busy is
    everything but idle and iowait)."""
    result: dict[str, Any] = {}
    for name, pids in groups.items():
        total = 0
        for pid in pids:
            stat = _stat(str(pid))
            if stat is not None:
                total += stat[2]
        result[name] = total
    postgres: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(entry)
            if stat is not None and stat[0] == "postgres":
                postgres[entry] = stat[2]
    result["postgres_pids"] = postgres
    own = _stat(str(os.getpid()))  # this process: the load generator, monitor or rebuild
    result["bench_process"] = own[2] if own else 0
    with open("/proc/stat") as stat_file:
        fields = stat_file.readline().split()[1:]
    values = [int(v) for v in fields]
    result["machine_busy"] = sum(values) - values[3] - values[4]  # minus idle and iowait
    return result


def cpu_cores_used(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, float]:
    """Average cores used over the window by each group (ticks / CLK_TCK / seconds). For
    `postgres`, each process's own delta (a backend that started in the window counts from zero;
    one that exited before the end is missed, so it is a lower bound, and it includes any other
    client's backends). `other` is the rest of the machine's busy time."""
    hz = os.sysconf("SC_CLK_TCK")

    def cores(ticks: float) -> float:
        return round(ticks / hz / seconds, 2)

    used = {k: cores(after[k] - before.get(k, 0)) for k in after if k != "postgres_pids"}
    old = before.get("postgres_pids", {})
    used["postgres"] = cores(sum(t - old.get(pid, 0) for pid, t in after.get("postgres_pids", {}).items()))
    used["other"] = round(used["machine_busy"] - sum(v for k, v in used.items() if k != "machine_busy"), 2)
    return used


# ---- subprocesses: the server, the projection runner ------------------------------------------

def loyalty_command() -> list[str]:
    script = Path(sys.executable).parent / "loyalty"
    return [str(script)] if script.exists() else [sys.executable, "-m", "api.cli"]


def child_env(database_url: str, admin_key: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_LOG_FORMAT": "json",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    })
    if admin_key:
        env["LOYALTY_ADMIN_KEY"] = admin_key
    env.pop("LOYALTY_DATA_DIR", None)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session, started by us
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


class Server:
    """`loyalty serve` (gunicorn, gthread workers) on a free loopback port; with `--reuse-port`,
    so that the kernel spreads the load generator's connections evenly over the workers."""

    def __init__(self, database: Database, workdir: Path, workers: int | None = None, threads: int | None = None,
                 reuse_port: bool = True) -> None:
        """workers, threads: None for `loyalty serve`'s defaults (from run 9: two workers per CPU
        on PostgreSQL, 16 threads each; 2 x 32 until then)."""
        self.database = database
        self.reuse_port = reuse_port
        self.workdir = workdir
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.admin_key = "adm-" + secrets.token_urlsafe(24)
        self.log_path = workdir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        command = [*loyalty_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   *(["--workers", str(self.workers)] if self.workers else []),
                   *(["--threads", str(self.threads)] if self.threads else []),
                   *(["--reuse-port"] if self.reuse_port else [])]
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=child_env(self.database.url, self.admin_key),
                                            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"loyalty serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as reply:
                    if reply.status == 200 and len(self.worker_pids()) >= (self.workers or self.default_workers()):
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"loyalty serve did not become healthy in {timeout:.0f}s:\n{self.log_tail()}")

    def default_workers(self) -> int:
        from api.serve import default_server_workers
        from infrastructure.config import Config

        return default_server_workers(Config(database_url=self.database.url))

    def worker_pids(self) -> list[int]:
        return children(self.process.pid) if self.process is not None else []

    def pids(self) -> list[int]:
        return [self.process.pid, *self.worker_pids()] if self.process is not None else []

    def memory(self) -> dict[str, Any]:
        """VmHWM of the gunicorn master and of each worker (KiB)."""
        assert self.process is not None
        workers = {pid: vmhwm_kib(pid) for pid in self.worker_pids()}
        return {"master_vmhwm_kib": vmhwm_kib(self.process.pid),
                "worker_vmhwm_kib": sorted(v for v in workers.values() if v is not None)}

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def problems(self) -> dict[str, int]:
        """5xx answers and unhandled errors the server logged."""
        counts = {"5xx": 0, "tracebacks": 0}
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return counts
        for line in text.splitlines():
            if "Traceback (most recent call last)" in line:
                counts["tracebacks"] += 1
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record.get("status"), int) and record["status"] >= 500:
                    counts["5xx"] += 1
        return counts

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ProjectionProcess:
    """`loyalty projections run` beside the server (the PostgreSQL deployment)."""

    def __init__(self, database: Database, workdir: Path) -> None:
        self.database = database
        self.log_path = workdir / f"projections-{uuid.uuid4().hex[:6]}.log"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProjectionProcess:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen([*loyalty_command(), "projections", "run"], cwd=self.workdir,
                                            env=child_env(self.database.url), stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def __enter__(self) -> ProjectionProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---- HTTP ------------------------------------------------------------------------------------

class Http:
    """One keep-alive connection (http.client); reconnects once if the server closed it."""

    def __init__(self, port: int, key: str | None, timeout: float = 60) -> None:
        self.port = port
        self.key = key
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return self.conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                reply = conn.getresponse()
                payload = reply.read()
                if reply.getheader("Connection", "").lower() == "close":
                    self.close()
                return reply.status, payload
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                self.reconnects += 1
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---- the seeded world -------------------------------------------------------------------------

@dataclass
class World:
    partner_key: str
    auditor_key: str
    finance_key: str
    member_ids: list[str] = field(default_factory=list)


def member_id(index: int) -> str:
    return f"m{index:07d}"


def open_ledger(database: Database, create: bool = False) -> Any:
    from infrastructure.bootstrap import build_ledger
    from infrastructure.config import Config

    return build_ledger(Config(database_url=database.url), create_schema=create)


def open_read_model(database: Database, ledger: Any, create: bool = False) -> Any:
    from infrastructure.bootstrap import build_read_model
    from infrastructure.config import Config

    return build_read_model(Config(database_url=database.url), ledger, create_tables=create)


def setup_world(database: Database, members: int, enrolled_at: datetime = ENROLLED_AT) -> World:
    """Schema and projection tables, the program, one partner with two stores, partner, auditor
    and finance keys, and `members` members, all through the application's commands."""
    from api.schemas import ProgramCreateSchema
    from application.access import IssueApiKey
    from application.commands import CreateProgram, EnrolMember, Outcome, RegisterPartner
    from domain.rules import RULE_FIELDS

    ledger = open_ledger(database, create=True)
    try:
        open_read_model(database, ledger, create=True)
        body = ProgramCreateSchema().load(PROGRAM)
        ledger.execute(CreateProgram(actor="bench", program_id=PROGRAM_ID, name=body["name"], currency=body["currency"],
                                     rules={name: body[name] for name in RULE_FIELDS},
                                     effective_at=body.get("effective_at")))
        ledger.execute(RegisterPartner(actor="bench", partner_id=PARTNER_ID, name="Shop", program_id=PROGRAM_ID,
                                       stores=list(STORES)))
        keys = {role: ledger.execute(IssueApiKey(actor="bench", role=role, name=f"bench {role}",
                                                 partner_id=PARTNER_ID if role == "partner" else None)).body["key"]
                for role in ("partner", "auditor", "finance")}
        ids = [member_id(i) for i in range(members)]
        for offset in range(0, members, 1000):
            results = ledger.execute_batch([
                EnrolMember(actor="bench", program_id=PROGRAM_ID, member_id=m, card_number=f"card-{m}",
                            occurred_at=enrolled_at)
                for m in ids[offset:offset + 1000]])
            bad = [r for r in results if not isinstance(r, Outcome)]
            if bad:
                raise RuntimeError(f"enrolment refused: {bad[0]!r}")
        return World(partner_key=keys["partner"], auditor_key=keys["auditor"], finance_key=keys["finance"],
                     member_ids=ids)
    finally:
        ledger.close()


def head(database: Database) -> int:
    ledger = open_ledger(database)
    try:
        return ledger.recorder.max_notification_id() or 0
    finally:
        ledger.close()
