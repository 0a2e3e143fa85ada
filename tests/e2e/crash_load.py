"""Crash and restart under load: the driver behind tests/e2e/test_crash_restart.py.

The real `loyalty serve` (gunicorn, in its own session) and `loyalty projections run` run on a
PostgreSQL schema. Client threads, each with its own members, post purchases, returns of their
earlier purchases and redemptions with client-chosen ids; on any failure (refused, reset,
timeout, 5xx) a client repeats the same request (same id, same body) with backoff until it gets a
definite answer (2xx, or a 4xx problem). Some requests whose answer was lost in a crash are
abandoned instead ("in doubt"), the way a till that lost power would. Meanwhile a chaos thread
SIGKILLs the server's whole process group (and the projection runner) several times and restarts
them on the same port, and restarts PostgreSQL while the server is up.

Afterwards, with the load stopped and the projections caught up, `verify` checks:
  (a) every acknowledged posting is in its member's history exactly once, with the acknowledged
      points, and a refused one (4xx) is absent;
  (b) nothing is half-applied: every event of a member belongs to a request a client sent, the
      events of one request sit at consecutive versions and are complete (a purchase that earned
      points has its PointsAccrued, a return that reverses points its AccrualReversed), and an
      in-doubt request is either wholly present or wholly absent; sent again with the same id,
      it is replayed exactly when it was present;
  (c) no transaction or redemption id appears twice;
  (d) per member, the balance and lifetime totals computed from the acknowledged answers equal
      GET /v1/members/{id} (the projection) and GET /v1/members/{id}/balance?as_of=now (a replay
      of the events); GET /v1/reports/reconciliation and `loyalty reconcile` say ok;
  (e) the audit hash chain verifies, against the recorded chain and against every checkpoint
      taken before a crash (over HTTP and with `loyalty audit verify --checkpoint`).

Sizes come from the environment (CrashConfig.from_env), so the larger documented run is the same
test with bigger numbers, e.g.

    LOYALTY_CRASH_SECONDS=300 LOYALTY_CRASH_KILLS=6 LOYALTY_CRASH_PG_RESTARTS=2 \\
        CI=true .venv/bin/python -m pytest tests/e2e/test_crash_restart.py -q -s
"""

from __future__ import annotations

import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parents[2]
PROGRAM_ID = "crash-club"
PARTNER_ID = "crash-shop"
STORES = ["s-1", "s-2", "s-3"]
PROGRAM = {
    "program_id": PROGRAM_ID,
    "name": "Crash club",
    "currency": "EUR",
    "earn_rate": "2",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 12},
    "pending_days": 0,
    "tiers": [
        {"name": "blue", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "gold", "qualifying_spend": "1500", "multiplier": "1.5"},
    ],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 500,
    "effective_at": "2020-01-01T00:00:00Z",
}
# Refusals a client may legitimately get: a redemption beyond the balance it knows of (on
# purpose), or a return beyond what is left after an in-doubt return that did go through.
EXPECTED_REFUSALS = {"insufficient-points", "return-exceeds-purchase"}


def log(message: str) -> None:
    print(f"[crash {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


# ---- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CrashConfig:
    seconds: float = 75.0  # of load
    kills: int = 3  # SIGKILLs of the server's process group (and the projection runner)
    pg_restarts: int = 1  # PostgreSQL restarts while the server is up
    clients: int = 8  # client threads
    members_per_client: int = 3
    workers: int = 2
    threads: int = 4
    abandon: float = 0.5  # chance that a client gives up a request whose answer was lost
    pg_mode: str = "fast"  # pg_ctlcluster restart --mode: fast (clean) or immediate (crash recovery)
    seed: int = 0
    request_timeout: float = 15.0
    give_up_after: float = 120.0  # a request still unanswered this long after it was first sent fails the run

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CrashConfig:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: float, kind: type = int) -> Any:
            raw = env.get(f"LOYALTY_CRASH_{name}")
            return kind(raw) if raw not in (None, "") else default

        seed = number("SEED", 0) or random.SystemRandom().randrange(1, 2**31)
        return cls(
            seconds=number("SECONDS", cls.seconds, float), kills=number("KILLS", cls.kills),
            pg_restarts=number("PG_RESTARTS", cls.pg_restarts), clients=number("CLIENTS", cls.clients),
            members_per_client=number("MEMBERS", cls.members_per_client), workers=number("WORKERS", cls.workers),
            threads=number("THREADS", cls.threads), abandon=number("ABANDON", cls.abandon, float),
            pg_mode=env.get("LOYALTY_CRASH_PG_MODE") or cls.pg_mode, seed=seed,
        )


# ---- HTTP: one fresh connection per request, failures classified -------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed", "").lower() == "true"

    @property
    def problem_type(self) -> str | None:
        return self.body.get("type") if isinstance(self.body, dict) else None


class NoAnswer(Exception):
    """The request got no HTTP answer. `sent` says whether it may have reached the server."""

    def __init__(self, kind: str, sent: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.sent = sent


def call(base_url: str, method: str, path: str, key: str | None, body: Any = None,
         timeout: float = 15.0) -> Answer:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Accept": "application/json, application/problem+json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        try:
            connection.connect()
        except ConnectionRefusedError:
            raise NoAnswer("refused", sent=False) from None
        except (TimeoutError, socket.timeout):
            raise NoAnswer("connect-timeout", sent=False) from None
        except OSError as error:
            raise NoAnswer(f"connect-{type(error).__name__}", sent=False) from None
        try:
            connection.request(method, path, body=data, headers=headers)
            reply = connection.getresponse()
            raw = reply.read()
        except (TimeoutError, socket.timeout):
            raise NoAnswer("timeout", sent=True) from None
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                http.client.IncompleteRead, ConnectionAbortedError):
            raise NoAnswer("reset", sent=True) from None
        except (OSError, http.client.HTTPException) as error:
            raise NoAnswer(type(error).__name__, sent=True) from None
    finally:
        connection.close()
    parsed: Any = None
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
    return Answer(reply.status, {k.lower(): v for k, v in reply.getheaders()}, parsed)


def call_until_answered(base_url: str, method: str, path: str, key: str | None, body: Any = None,
                        deadline: float = 60.0) -> Answer:
    """For the test's own reads and setup: retried on no answer or 5xx until `deadline` seconds."""
    until = time.monotonic() + deadline
    while True:
        try:
            answer = call(base_url, method, path, key, body)
            if answer.status < 500 or time.monotonic() > until:
                return answer
        except NoAnswer:
            if time.monotonic() > until:
                raise
        time.sleep(0.2)


def expect(answer: Answer, status: int, what: str) -> Any:
    if answer.status != status:
        raise AssertionError(f"{what}: expected {status}, got {answer.status}: {answer.body!r}")
    return answer.body


# ---- the processes -------------------------------------------------------------------------------

def child_env(database_url: str, admin_key: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_ADMIN_KEY": admin_key,
        "LOYALTY_LOG_FORMAT": "json",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("LOYALTY_DATA_DIR", None)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child:
    """A `python -m api.cli ...` subprocess in its own session, logging (appending) to one file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n==== start {self.starts} at {now_iso()} ====\n".encode())
            log_file.flush()
            self.process = subprocess.Popen([sys.executable, "-m", "api.cli", *self.args], cwd=self.workdir,
                                            env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL to the whole process group (gunicorn's master and its workers), no warning."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the group if it does not end."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in the process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields_after = stat.rsplit(")", 1)[-1].split()
        if len(fields_after) > 2 and fields_after[2] == str(pgid) and fields_after[0] != "Z":
            return True
    return False


class Server(Child):
    def __init__(self, database_url: str, admin_key: str, workdir: Path, port: int, workers: int,
                 threads: int) -> None:
        super().__init__("server", ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                    "--threads", str(threads)], child_env(database_url, admin_key), workdir)
        self.base_url = f"http://127.0.0.1:{port}"

    def wait_healthy(self, timeout: float = 90.0) -> float:
        """Seconds until /healthz answered 200; raises if it never does or the server exits."""
        started = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - started < timeout:
            if self.exited() is not None:
                raise RuntimeError(f"loyalty serve exited with {self.exited()}; log tail:\n{self.log_text()[-3000:]}")
            try:
                answer = call(self.base_url, "GET", "/healthz", None, timeout=3)
                if answer.status == 200:
                    return time.monotonic() - started
                last = f"status {answer.status}: {answer.body!r}"
            except NoAnswer as error:
                last = error.kind
            time.sleep(0.05)
        raise RuntimeError(f"loyalty serve did not answer /healthz within {timeout:.0f}s ({last})")


# ---- PostgreSQL ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cluster:
    version: str
    name: str

    def command(self, action: str, *extra: str) -> list[str]:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", *extra, self.version, self.name, action]

    def restart(self, mode: str) -> float:
        """Restarts the cluster (as short a gap as pg_ctlcluster allows); returns its duration."""
        started = time.monotonic()
        result = subprocess.run(self.command("restart", "--mode", mode), capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            self.ensure_up()
            raise RuntimeError(f"pg_ctlcluster restart failed ({result.returncode}): {result.stderr or result.stdout}")
        return time.monotonic() - started

    def is_up(self) -> bool:
        result = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30)
        for line in result.stdout.splitlines():
            columns = line.split()
            if len(columns) >= 4 and columns[0] == self.version and columns[1] == self.name:
                return columns[3].startswith("online")
        return False

    def ensure_up(self) -> None:
        if not self.is_up():
            log(f"PostgreSQL {self.version}/{self.name} is down: starting it")
            subprocess.run(self.command("start"), capture_output=True, text=True, timeout=180)


def local_cluster(port: int) -> Cluster | None:
    """The local pg_ctlcluster cluster serving `port`, when this machine has one and we may restart it."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None or os.geteuid() != 0:
        return None
    result = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30)
    for line in result.stdout.splitlines():
        columns = line.split()
        if len(columns) >= 3 and columns[2] == str(port):
            return Cluster(columns[0], columns[1])
    return None


# ---- the load ----------------------------------------------------------------------------------

@dataclass
class Operation:
    kind: str  # "purchase" | "return" | "redemption" (and "retry-of-in-doubt" copies at the end)
    op_id: str
    member_id: str
    path: str
    body: dict[str, Any]
    client: int
    original: str | None = None  # a return's purchase
    first_sent: float = 0.0
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    status: int | None = None  # of the definite answer
    answer: Any = None
    replayed: bool = False
    acked_at: float | None = None
    answered_sent_at: float | None = None  # when the attempt that got the definite answer was sent
    abandoned: bool = False  # given up after a lost answer: in doubt
    unanswered: bool = False  # retried until give_up_after without a definite answer

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        return self.status is not None and 400 <= self.status < 500


@dataclass
class MemberModel:
    """What one client knows of its member, from definite answers only."""

    member_id: str
    purchases: dict[str, dict[str, Any]] = field(default_factory=dict)  # txn -> amount, points, returned
    earned: int = 0
    reversed: int = 0
    redeemed: int = 0

    @property
    def balance(self) -> int:
        return self.earned - self.reversed - self.redeemed

    def apply(self, op: Operation) -> None:
        if not op.acknowledged:
            return
        body = op.answer
        if op.kind == "purchase":
            self.purchases[op.op_id] = {"amount": Decimal(op.body["amount"]), "points": body["points_earned"],
                                        "returned": Decimal(0)}
            self.earned += body["points_earned"]
        elif op.kind == "return":
            if op.original in self.purchases:
                self.purchases[op.original]["returned"] += Decimal(op.body["amount"])
            self.reversed += body["points_reversed"]
        elif op.kind == "redemption":
            self.redeemed += body["points"]


class LoadClient(threading.Thread):
    def __init__(self, index: int, base_url: str, partner_key: str, member_ids: list[str], config: CrashConfig,
                 stop: threading.Event, run_tag: str) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.base_url = base_url
        self.key = partner_key
        self.models = {m: MemberModel(m) for m in member_ids}
        self.config = config
        self.stop_event = stop
        self.rng = random.Random(config.seed * 1000 + index)
        self.run_tag = run_tag
        self.operations: list[Operation] = []
        self.sequence = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                op = self.next_operation()
                self.operations.append(op)
                self.perform(op)
                self.models[op.member_id].apply(op)
        except BaseException as error:  # noqa: BLE001 - reported by the driver
            self.error = error

    def new_id(self, prefix: str) -> str:
        self.sequence += 1
        return f"{self.run_tag}-c{self.index}-{prefix}{self.sequence}"

    def next_operation(self) -> Operation:
        model = self.models[self.rng.choice(sorted(self.models))]
        roll = self.rng.random()
        returnable = [t for t, p in model.purchases.items() if p["returned"] < p["amount"]]
        if roll < 0.25 and returnable:
            original = self.rng.choice(returnable)
            purchase = model.purchases[original]
            left = purchase["amount"] - purchase["returned"]
            amount = left if self.rng.random() < 0.4 or left <= Decimal("0.02") else \
                (left * Decimal(self.rng.uniform(0.1, 0.9))).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)
            amount = max(amount, Decimal("0.01"))
            op_id = self.new_id("r")
            body = {"transaction_id": op_id, "original_transaction_id": original, "amount": str(amount),
                    "occurred_at": now_iso()}
            return Operation("return", op_id, model.member_id, "/v1/returns", body, self.index, original=original)
        if roll < 0.5 and model.balance > 0:
            points = self.rng.randint(1, min(model.balance, 300))
            if self.rng.random() < 0.1:
                points = model.balance + self.rng.randint(1, 50)  # beyond what it has: refused, nothing changes
            op_id = self.new_id("d")
            body = {"redemption_id": op_id, "points": points, "reward": "voucher", "occurred_at": now_iso()}
            return Operation("redemption", op_id, model.member_id,
                             f"/v1/members/{quote(model.member_id)}/redemptions", body, self.index)
        op_id = self.new_id("p")
        amount = Decimal(self.rng.randint(100, 8000)) / 100
        body = {"transaction_id": op_id, "member_id": model.member_id, "store_id": self.rng.choice(STORES),
                "amount": str(amount), "currency": "EUR", "occurred_at": now_iso(),
                "items": [{"sku": f"sku-{self.rng.randint(1, 50)}", "category": "grocery", "quantity": 1,
                           "amount": str(amount)}]}
        return Operation("purchase", op_id, model.member_id, "/v1/purchases", body, self.index)

    def perform(self, op: Operation) -> None:
        """Sends the request until a definite answer, repeating it unchanged; or abandons it once
        its answer was lost (in doubt), by chance."""
        op.first_sent = time.monotonic()
        backoff = 0.05
        while True:
            op.attempts += 1
            ambiguous = True
            sent_at = time.monotonic()
            try:
                answer = call(self.base_url, "POST", op.path, self.key, op.body, timeout=self.config.request_timeout)
            except NoAnswer as error:
                failure, ambiguous = error.kind, error.sent
            else:
                if answer.status < 500:
                    op.status, op.answer, op.replayed = answer.status, answer.body, answer.replayed
                    op.acked_at, op.answered_sent_at = time.monotonic(), sent_at
                    return
                failure = f"{answer.status} {answer.problem_type or ''}".strip()
            op.failures.append(failure)
            if len(op.failures) == 1 and ambiguous and self.rng.random() < self.config.abandon:
                op.abandoned = True
                return
            if time.monotonic() - op.first_sent > self.config.give_up_after:
                op.unanswered = True
                return
            time.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, 1.0)


# ---- chaos -------------------------------------------------------------------------------------

def schedule(config: CrashConfig, rng: random.Random) -> list[tuple[float, str]]:
    """Kills and PostgreSQL restarts spread evenly over the load (the restarts in between the
    kills), each moved by a little jitter so that they strike at different moments of a request."""
    total = config.kills + config.pg_restarts
    pg_slots = {int((i + 0.5) * total / config.pg_restarts) for i in range(config.pg_restarts)} \
        if config.pg_restarts else set()
    kinds = ["pg" if slot in pg_slots else "kill" for slot in range(total)]
    gap = config.seconds / (total + 1)
    return [(gap * (i + 1) + rng.uniform(-gap / 5, gap / 5), kind) for i, kind in enumerate(kinds)]


@dataclass
class ChaosEvent:
    kind: str
    at: float  # seconds after the load started
    mono: float  # time.monotonic() when it struck
    checkpoint: dict[str, Any] | None = None  # the audit checkpoint taken just before
    down_seconds: float | None = None  # kill to restarted process; PostgreSQL's restart duration
    healthy_after: float | None = None  # from the event to /healthz 200 again
    first_ack_after: float | None = None  # from the event to the first acknowledgement of a request sent after it
    longest_ack_gap: float | None = None  # the longest time without any acknowledgement, in the minute after
    error: str | None = None


class Chaos(threading.Thread):
    def __init__(self, config: CrashConfig, server: Server, runner: Child, cluster: Cluster | None,
                 auditor_key: str, started: float, stop: threading.Event) -> None:
        super().__init__(name="chaos", daemon=True)
        self.config = config
        self.server = server
        self.runner = runner
        self.cluster = cluster
        self.auditor_key = auditor_key
        self.started = started
        self.stop_event = stop
        self.rng = random.Random(config.seed + 7)
        self.events: list[ChaosEvent] = []
        self.runner_exits: list[dict[str, Any]] = []  # the projection runner ending on its own
        self.error: BaseException | None = None
        self.schedule_done = threading.Event()

    def run(self) -> None:
        try:
            for at, kind in schedule(self.config, self.rng):
                while time.monotonic() - self.started < at:
                    if self.stop_event.wait(0.2):
                        return
                    self.supervise_runner()
                self.strike(kind)
            self.schedule_done.set()
            while not self.stop_event.wait(0.2):
                self.supervise_runner()
        except BaseException as error:  # noqa: BLE001 - reported by the driver
            self.error = error
        finally:
            self.schedule_done.set()

    def supervise_runner(self) -> None:
        """Like systemd's Restart=always: a projection runner that ended by itself is noted and started again."""
        code = self.runner.exited()
        if code is not None:
            tail = self.runner.log_text()[-1500:]
            log(f"the projection runner exited with {code} by itself; restarting it")
            self.runner_exits.append({"at": round(time.monotonic() - self.started, 1), "code": code,
                                      "log_tail": tail})
            time.sleep(1.0)
            self.runner.start()

    def strike(self, kind: str) -> None:
        checkpoint = None
        deadline = time.monotonic() + 10
        while checkpoint is None and time.monotonic() < deadline:
            try:
                answer = call(self.server.base_url, "GET", "/v1/audit/checkpoint", self.auditor_key, timeout=10)
                if answer.status == 200:
                    checkpoint = answer.body
                    break
            except NoAnswer:
                pass
            time.sleep(0.2)
        event = ChaosEvent(kind, round(time.monotonic() - self.started, 2), time.monotonic(), checkpoint)
        self.events.append(event)
        try:
            if kind == "kill":
                log(f"SIGKILL to the server's process group (and the projection runner) at {event.at:.1f}s")
                self.server.kill()
                self.runner.kill()
                self.server.start()
                event.down_seconds = round(time.monotonic() - event.mono, 3)
                self.server.wait_healthy()
                event.healthy_after = round(time.monotonic() - event.mono, 3)
                self.runner.start()
            else:
                assert self.cluster is not None
                log(f"restarting PostgreSQL ({self.config.pg_mode}) at {event.at:.1f}s")
                event.down_seconds = round(self.cluster.restart(self.config.pg_mode), 3)
                self.server.wait_healthy()
                event.healthy_after = round(time.monotonic() - event.mono, 3)
            log(f"{kind}: healthy again after {event.healthy_after:.2f}s")
        except Exception as error:  # noqa: BLE001 - recorded, and the run fails on it
            event.error = repr(error)
            log(f"{kind} failed: {error!r}")
            if self.cluster is not None:
                self.cluster.ensure_up()


# ---- verification --------------------------------------------------------------------------------

def reversal_points(points: int, amount: Decimal, returned_before: Decimal, returning: Decimal) -> int:
    """The contract's proportional reversal, computed independently of the product's code."""
    def at(returned: Decimal) -> int:
        if returned >= amount:
            return points
        return int((points * returned / amount).to_integral_value(rounding=ROUND_FLOOR))

    return at(returned_before + returning) - at(returned_before)


@dataclass
class Report:
    config: dict[str, Any]
    figures: dict[str, Any]
    failures: list[str]

    def summary(self) -> str:
        f = self.figures
        lines = [
            f"crash/restart run (seed {self.config['seed']}): {f['load_seconds']:.0f}s of load, "
            f"{f['clients']} clients, {f['members']} members",
            f"  postings sent {f['postings_sent']}, acknowledged {f['acknowledged']} "
            f"(2xx {f['acknowledged_2xx']}, refused 4xx {f['refused_4xx']}), retried {f['retried']} "
            f"({f['retries']} repeats, {f['replayed_answers']} answered as replays), in doubt {f['in_doubt']} "
            f"(present {f['in_doubt_present']}, absent {f['in_doubt_absent']}), unanswered {f['unanswered']}",
            f"  lost {f['lost']}, duplicated {f['duplicated']}, half-applied {f['half_applied']}, "
            f"refused-but-applied {f['refused_but_applied']}, foreign events {f['foreign_events']}",
            f"  kills {f['kills']}, PostgreSQL restarts {f['pg_restarts']}; recovery (s): "
            + ", ".join(f"{e['kind']}@{e['at']:.0f}s healthy {e['healthy_after']} first ack {e['first_ack_after']} "
                        f"longest gap {e['longest_ack_gap']}" for e in f["events"]),
            f"  failures seen by clients: {f['failures_by_kind']}",
            f"  server 5xx logged: {f['server_5xx']}; unhandled errors logged: {f['server_unhandled_errors']}; "
            f"projection runner exits by itself: {len(f['projection_runner_exits'])}",
            f"  balances checked {f['balances_checked']}, events {f['events_in_history']}, "
            f"reconciliation ok {f['reconciliation_ok']}, cli reconcile ok {f['cli_reconcile_ok']}, "
            f"audit verify ok {f['audit_verify_ok']}, checkpoints verified {f['checkpoints_verified']}"
            f"/{f['checkpoints_taken']}",
        ]
        if self.failures:
            lines.append(f"  FAILURES ({len(self.failures)}):")
            lines += [f"    - {failure}" for failure in self.failures[:60]]
        return "\n".join(lines)


def fetch_history(base_url: str, key: str, member_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = expect(call_until_answered(base_url, "GET",
                                          f"/v1/members/{quote(member_id)}/history?limit=1000&after={after}", key),
                      200, f"history of {member_id}")
        events += page["events"]
        if page["next"] is None:
            return events
        after = page["next"]


def wait_caught_up(base_url: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        try:
            answer = call(base_url, "GET", "/readyz", None, timeout=10)
            body = answer.body
            if answer.status == 200 and isinstance(body, dict) and body.get("lag") == 0:
                return body
        except NoAnswer as error:
            body = error.kind
        time.sleep(0.2)
    raise AssertionError(f"the projections did not catch up within {timeout:.0f}s: {body!r}")


def check_history(ops: list[Operation], history: list[dict[str, Any]], failures: list[str],
                  counts: Counter[str]) -> dict[str, bool]:
    """Checks one member's events against what its client sent; returns, per in-doubt operation,
    whether it is present."""
    member_id = ops[0].member_id if ops else "?"
    by_id = {op.op_id: op for op in ops}
    events_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    purchase_key = {f"{PARTNER_ID}:{op.op_id}": op.op_id for op in ops if op.kind == "purchase"}
    purchases: dict[str, dict[str, Any]] = {}  # as recorded: amount, points, returned
    expected_reversals: dict[str, int] = {}
    for event in history:
        kind, data, version = event["type"], event["data"], event["version"]
        owner: str | None = None
        if kind == "MemberEnrolled":
            continue
        if kind == "PurchaseRecorded":
            owner = data.get("transaction_id")
            purchases[owner] = {"amount": Decimal(data["amount"]), "points": data["points"],
                                "returned": Decimal(0)}
        elif kind == "PointsAccrued":
            owner = purchase_key.get(data.get("purchase"))
        elif kind == "TierChanged":
            reason = data.get("reason", "")
            owner = reason.split(":", 1)[0].removeprefix("purchase ").strip() if reason.startswith("purchase ") else None
        elif kind == "PurchaseReturned":
            owner = data.get("transaction_id")
            original = purchases.get(data.get("original_transaction_id"))
            if original is not None:
                amount = Decimal(data["amount"])
                expected_reversals[owner] = reversal_points(original["points"], original["amount"],
                                                            original["returned"], amount)
                original["returned"] += amount
        elif kind == "AccrualReversed":
            owner = data.get("return_transaction_id")
        elif kind == "PointsRedeemed":
            owner = data.get("redemption_id")
        if owner is None or owner not in by_id:
            counts["foreign_events"] += 1
            failures.append(f"{member_id}: event v{version} {kind} belongs to no request a client sent: {data}")
            continue
        events_of[owner].append(event)

    present: dict[str, bool] = {}
    for op in ops:
        events = events_of.get(op.op_id, [])
        types = Counter(e["type"] for e in events)
        main = {"purchase": "PurchaseRecorded", "return": "PurchaseReturned", "redemption": "PointsRedeemed"}[op.kind]
        if types[main] > 1 or types["PointsAccrued"] > 1 or types["AccrualReversed"] > 1 or types["TierChanged"] > 1:
            counts["duplicated"] += 1
            failures.append(f"{member_id}: {op.kind} {op.op_id} is in the history more than once: {dict(types)}")
        versions = sorted(e["version"] for e in events)
        if versions and versions != list(range(versions[0], versions[0] + len(versions))):
            counts["half_applied"] += 1
            failures.append(f"{member_id}: the events of {op.kind} {op.op_id} are not consecutive: {versions}")
        if events and types[main] == 0:
            counts["half_applied"] += 1
            failures.append(f"{member_id}: {op.kind} {op.op_id} has {dict(types)} without its {main}")
        if types[main]:
            head = next(e for e in events if e["type"] == main)["data"]
            if op.kind == "purchase":
                wants_accrual = head["points"] > 0
                if (types["PointsAccrued"] == 1) != wants_accrual:
                    counts["half_applied"] += 1
                    failures.append(f"{member_id}: purchase {op.op_id} earned {head['points']} points "
                                    f"but has {types['PointsAccrued']} PointsAccrued")
            elif op.kind == "return":
                wanted = expected_reversals.get(op.op_id)
                if wanted is not None and (types["AccrualReversed"] == 1) != (wanted > 0):
                    counts["half_applied"] += 1
                    failures.append(f"{member_id}: return {op.op_id} should reverse {wanted} points "
                                    f"but has {types['AccrualReversed']} AccrualReversed")
        is_present = bool(events)
        if op.acknowledged:
            if not is_present:
                counts["lost"] += 1
                failures.append(f"{member_id}: acknowledged {op.kind} {op.op_id} ({op.status}) is not in the history")
                continue
            head = next((e for e in events if e["type"] == main), None)
            if head is not None:
                recorded = head["data"]
                if op.kind == "purchase" and recorded["points"] != op.answer["points_earned"]:
                    failures.append(f"{member_id}: purchase {op.op_id} acknowledged {op.answer['points_earned']} "
                                    f"points, recorded {recorded['points']}")
                if op.kind == "redemption" and recorded["points"] != op.answer["points"]:
                    failures.append(f"{member_id}: redemption {op.op_id} acknowledged {op.answer['points']} "
                                    f"points, recorded {recorded['points']}")
                if op.kind == "return":
                    reversed_points = sum(e["data"]["points"] for e in events if e["type"] == "AccrualReversed")
                    if reversed_points != op.answer["points_reversed"]:
                        failures.append(f"{member_id}: return {op.op_id} acknowledged {op.answer['points_reversed']} "
                                        f"points reversed, recorded {reversed_points}")
        elif op.refused:
            if is_present:
                counts["refused_but_applied"] += 1
                failures.append(f"{member_id}: refused {op.kind} {op.op_id} ({op.status} {op.answer!r}) "
                                f"is in the history anyway")
        else:
            present[op.op_id] = is_present
    return present


def run(config: CrashConfig, database_url: str, workdir: Path) -> Report:
    """Sets up the world, runs load and chaos, stops, verifies. Never leaves PostgreSQL down or a
    child process running."""
    failures: list[str] = []
    rng = random.Random(config.seed)
    run_tag = f"x{uuid.uuid4().hex[:6]}"
    admin_key = "adm-" + secrets.token_urlsafe(24)
    port = free_port()
    pg_port = urlsplit(database_url).port or 5432
    cluster = local_cluster(pg_port) if config.pg_restarts else None
    if config.pg_restarts and cluster is None:
        raise RuntimeError(f"PostgreSQL restarts were asked for, but no local pg_ctlcluster cluster on port "
                           f"{pg_port} can be restarted from here (needs root and postgresql-common)")
    server = Server(database_url, admin_key, workdir, port, config.workers, config.threads)
    runner = Child("projections", ["projections", "run"], child_env(database_url, admin_key), workdir)
    stop = threading.Event()
    chaos: Chaos | None = None
    clients: list[LoadClient] = []
    log(f"seed {config.seed}, {config.seconds:.0f}s, {config.kills} kills, {config.pg_restarts} PostgreSQL restarts, "
        f"{config.clients} clients x {config.members_per_client} members; logs in {workdir}")
    try:
        server.start()
        server.wait_healthy()
        runner.start()
        base = server.base_url

        # ---- the world: a program, a partner with its key, an auditor, members --------------------
        expect(call_until_answered(base, "POST", "/v1/programs", admin_key, PROGRAM), 201, "program")
        expect(call_until_answered(base, "POST", "/v1/partners", admin_key,
                                   {"partner_id": PARTNER_ID, "name": "Crash shop", "program_id": PROGRAM_ID,
                                    "stores": STORES}), 201, "partner")
        partner_key = expect(call_until_answered(base, "POST", "/v1/api-keys", admin_key,
                                                 {"role": "partner", "partner_id": PARTNER_ID, "name": "till"}),
                             201, "partner key")["key"]
        auditor_key = expect(call_until_answered(base, "POST", "/v1/api-keys", admin_key,
                                                 {"role": "auditor", "name": "auditor"}), 201, "auditor key")["key"]
        member_ids: list[list[str]] = []
        for c in range(config.clients):
            ids = []
            for m in range(config.members_per_client):
                member_id = f"{run_tag}-c{c}-m{m}"
                expect(call_until_answered(base, "POST", "/v1/members", admin_key,
                                           {"program_id": PROGRAM_ID, "member_id": member_id,
                                            "card_number": f"card-{member_id}", "name": f"Member {c}/{m}"}),
                       201, f"member {member_id}")
                ids.append(member_id)
            member_ids.append(ids)

        # ---- load and chaos ------------------------------------------------------------------------
        clients = [LoadClient(c, base, partner_key, member_ids[c], config, stop, run_tag)
                   for c in range(config.clients)]
        started = time.monotonic()
        for client in clients:
            client.start()
        chaos = Chaos(config, server, runner, cluster, auditor_key, started, stop)
        chaos.start()
        while (time.monotonic() - started < config.seconds or not chaos.schedule_done.is_set()) \
                and chaos.is_alive():
            time.sleep(0.5)
        stop.set()
        chaos.join(timeout=300)
        load_seconds = time.monotonic() - started
        for client in clients:
            client.join(timeout=config.give_up_after + 60)
        log(f"load stopped after {load_seconds:.0f}s; verifying")
        for client in clients:
            if client.is_alive():
                failures.append(f"{client.name} did not finish its last request")
            if client.error is not None:
                failures.append(f"{client.name} crashed: {client.error!r}")
        if chaos.error is not None:
            failures.append(f"the chaos thread crashed: {chaos.error!r}")
        for event in chaos.events:
            if event.error is not None:
                failures.append(f"{event.kind} at {event.at:.1f}s: the server did not come back: {event.error}")
        if server.exited() is not None:
            server.start()
        server.wait_healthy()
        if runner.exited() is not None:
            chaos.supervise_runner()

        ops = [op for client in clients for op in client.operations]
        models = {m: model for client in clients for m, model in client.models.items()}
        counts: Counter[str] = Counter()
        for op in ops:
            if op.unanswered:
                failures.append(f"{op.kind} {op.op_id} got no definite answer in {config.give_up_after:.0f}s "
                                f"({len(op.failures)} failures: {Counter(op.failures)})")
            elif op.refused and _problem_type(op.answer) not in EXPECTED_REFUSALS:
                failures.append(f"{op.kind} {op.op_id} was refused unexpectedly: {op.status} {op.answer!r} "
                                f"(after {op.attempts} attempts: {op.failures})")

        # ---- (a), (b), (c): the histories against what was sent ----------------------------------
        wait_caught_up(base)
        histories = {m: fetch_history(base, auditor_key, m) for m in models}
        ops_of: dict[str, list[Operation]] = defaultdict(list)
        for op in ops:
            ops_of[op.member_id].append(op)
        in_doubt_present: dict[str, bool] = {}
        for member_id in models:
            in_doubt_present.update(check_history(ops_of[member_id], histories[member_id], failures, counts))

        # In doubt, then resolved the way a client would: the same request again. It must be
        # replayed exactly when it was found in the history.
        resolved: list[Operation] = []
        for op in ops:
            if op.op_id not in in_doubt_present:
                continue
            answer = call_until_answered(base, "POST", op.path, partner_key, op.body)
            again = Operation(op.kind, op.op_id, op.member_id, op.path, op.body, op.client, op.original,
                              status=answer.status, answer=answer.body, replayed=answer.replayed)
            resolved.append(again)
            if answer.status >= 500:
                failures.append(f"in-doubt {op.kind} {op.op_id} sent again: {answer.status} {answer.body!r}")
                continue
            if in_doubt_present[op.op_id] and not (answer.status == 201 and answer.replayed):
                failures.append(f"in-doubt {op.kind} {op.op_id} is in the history but sending it again was not "
                                f"a replay: {answer.status} replayed={answer.replayed} {answer.body!r}")
            if not in_doubt_present[op.op_id] and answer.replayed:
                failures.append(f"in-doubt {op.kind} {op.op_id} is not in the history but sending it again "
                                f"was answered as a replay (a receipt without its events): {answer.body!r}")
            if answer.status >= 400 and answer.problem_type not in EXPECTED_REFUSALS:
                failures.append(f"in-doubt {op.kind} {op.op_id} sent again was refused: {answer.status} {answer.body!r}")
            models[op.member_id].apply(again)

        # The receipts: a partner reading back its acknowledged postings gets the answer it was given.
        sample = [op for op in ops if op.acknowledged and op.kind in ("purchase", "return")]
        sample = list({op.op_id: op for op in [op for op in sample if op.attempts > 1]
                       + rng.sample(sample, min(len(sample), 200))}.values())
        for op in sample:
            read = call_until_answered(base, "GET", f"/v1/postings/{quote(op.op_id)}", partner_key)
            if read.status != 200 or read.body.get("body") != op.answer:
                failures.append(f"{op.kind} {op.op_id}: the stored receipt {read.status} {read.body!r} is not the "
                                f"acknowledged answer {op.answer!r}")

        # ---- (d): balances: the clients' arithmetic, the projection, a fresh replay -----------------
        readiness = wait_caught_up(base)
        balances_checked = 0
        for member_id, model in models.items():
            history = fetch_history(base, auditor_key, member_id)
            summary = expect(call_until_answered(base, "GET", f"/v1/members/{quote(member_id)}", auditor_key),
                             200, f"member {member_id}")
            replayed = expect(call_until_answered(base, "GET", f"/v1/members/{quote(member_id)}/balance?as_of="
                                                  f"{quote(now_iso())}", auditor_key), 200, f"balance of {member_id}")
            expected = {"available": model.balance, "pending": 0}
            projected = {"available": summary["balance"]["available"], "pending": summary["balance"]["pending"]}
            fresh = {"available": replayed["available"], "pending": replayed["pending"]}
            lifetime = {"earned": model.earned, "reversed": model.reversed, "redeemed": model.redeemed}
            shown = {k: summary["lifetime"][k] for k in lifetime}
            if not (expected == projected == fresh) or lifetime != shown:
                failures.append(f"{member_id}: balance from the answers {expected} {lifetime}, projection {projected} "
                                f"{shown} (version {summary['version']}), replay {fresh}")
            if summary["version"] != history[-1]["version"]:
                failures.append(f"{member_id}: the projection is at version {summary['version']}, "
                                f"the event log at {history[-1]['version']}")
            balances_checked += 1
        reconciliation = expect(call_until_answered(base, "GET", f"/v1/reports/reconciliation?program_id={PROGRAM_ID}",
                                                    auditor_key, deadline=120), 200, "reconciliation")
        if not reconciliation["ok"]:
            failures.append(f"GET /v1/reports/reconciliation is not ok: "
                            f"{json.dumps({k: v for k, v in reconciliation.items() if k != 'differences'})} "
                            f"differences {reconciliation['differences'][:5]}")
        cli_env = child_env(database_url, admin_key)
        reconcile = subprocess.run([sys.executable, "-m", "api.cli", "reconcile", "--program", PROGRAM_ID],
                                   cwd=workdir, env=cli_env, capture_output=True, text=True, timeout=600)
        if reconcile.returncode != 0:
            failures.append(f"`loyalty reconcile` exited {reconcile.returncode}: {reconcile.stdout[-1500:]} "
                            f"{reconcile.stderr[-1500:]}")

        # ---- (e): the hash chain, and the checkpoints taken before each crash -----------------------
        verified = expect(call_until_answered(base, "POST", "/v1/audit/verify", auditor_key, {}, deadline=120),
                          200, "audit verify")
        if not verified["ok"]:
            failures.append(f"POST /v1/audit/verify: {verified}")
        checkpoints = [e.checkpoint for e in chaos.events if e.checkpoint and e.checkpoint.get("hash")]
        if len(checkpoints) < len(chaos.events):
            failures.append(f"only {len(checkpoints)} of {len(chaos.events)} checkpoints before a crash were taken")
        checkpoints_verified = 0
        for checkpoint in checkpoints:
            against = expect(call_until_answered(base, "POST", "/v1/audit/verify", auditor_key,
                                                 {"position": checkpoint["position"], "hash": checkpoint["hash"]},
                                                 deadline=120), 200, "audit verify against a checkpoint")
            if against["ok"]:
                checkpoints_verified += 1
            else:
                failures.append(f"the checkpoint {checkpoint} taken before a crash does not verify: {against}")
        cli_verify_ok = None
        if checkpoints:
            checkpoint_file = workdir / "checkpoint.json"
            checkpoint_file.write_text(json.dumps(checkpoints[0]))
            cli_verify = subprocess.run([sys.executable, "-m", "api.cli", "audit", "verify", "--checkpoint",
                                         str(checkpoint_file)], cwd=workdir, env=cli_env, capture_output=True,
                                        text=True, timeout=600)
            cli_verify_ok = cli_verify.returncode == 0
            if not cli_verify_ok:
                failures.append(f"`loyalty audit verify --checkpoint` exited {cli_verify.returncode}: "
                                f"{cli_verify.stdout[-1000:]} {cli_verify.stderr[-1000:]}")

        # ---- figures ---------------------------------------------------------------------------------
        acks = sorted(op.acked_at for op in ops if op.acknowledged and op.acked_at)
        for event in chaos.events:
            # A request sent after the event, acknowledged: the service is back for new work.
            fresh = [op.acked_at for op in ops if op.acknowledged and op.acked_at and op.answered_sent_at
                     and op.answered_sent_at >= event.mono]
            event.first_ack_after = round(min(fresh) - event.mono, 3) if fresh else None
            later = [t for t in acks if t > event.mono]
            # The clients' outage: the longest stretch without any acknowledgement in the minute after.
            window = [event.mono] + [t for t in later if t <= event.mono + 60]
            event.longest_ack_gap = round(max((b - a for a, b in zip(window, window[1:])), default=0.0), 3)
        records = [r for r in (_json_line(line) for line in server.log_text().splitlines()) if r]
        server_5xx = Counter(f"{r.get('status')} {r.get('route')}" for r in records
                             if r.get("event") == "request" and isinstance(r.get("status"), int) and r["status"] >= 500)
        unhandled = [r for r in records if r.get("event") == "unhandled error"]
        kinds = Counter(f.split(" ", 1)[0] if f[0].isdigit() else f for op in ops for f in op.failures)
        in_doubt = [op for op in ops if op.op_id in in_doubt_present]
        figures = {
            "load_seconds": round(load_seconds, 1),
            "clients": config.clients,
            "members": len(models),
            "postings_sent": len(ops),
            "by_kind": dict(Counter(op.kind for op in ops)),
            "acknowledged": sum(1 for op in ops if op.status is not None),
            "acknowledged_2xx": sum(1 for op in ops if op.acknowledged),
            "refused_4xx": sum(1 for op in ops if op.refused),
            "refusals": dict(Counter(_problem_type(op.answer) for op in ops if op.refused)),
            "retried": sum(1 for op in ops if op.attempts > 1),
            "retries": sum(op.attempts - 1 for op in ops),
            "replayed_answers": sum(1 for op in ops if op.replayed),
            "in_doubt": len(in_doubt),
            "in_doubt_present": sum(1 for op in in_doubt if in_doubt_present[op.op_id]),
            "in_doubt_absent": sum(1 for op in in_doubt if not in_doubt_present[op.op_id]),
            "unanswered": sum(1 for op in ops if op.unanswered),
            "lost": counts["lost"],
            "duplicated": counts["duplicated"],
            "half_applied": counts["half_applied"],
            "refused_but_applied": counts["refused_but_applied"],
            "foreign_events": counts["foreign_events"],
            "events_in_history": sum(len(h) for h in histories.values()),
            "event_log_head": readiness.get("head"),
            "acks_per_second": round(sum(1 for op in ops if op.acknowledged) / max(load_seconds, 1e-9), 1),
            "kills": sum(1 for e in chaos.events if e.kind == "kill"),
            "pg_restarts": sum(1 for e in chaos.events if e.kind == "pg"),
            "events": [{k: v for k, v in asdict(e).items() if k not in ("mono", "checkpoint")} for e in chaos.events],
            "recovery_seconds": {
                "kill_to_healthy": [e.healthy_after for e in chaos.events if e.kind == "kill"],
                "kill_to_first_ack": [e.first_ack_after for e in chaos.events if e.kind == "kill"],
                "pg_restart_duration": [e.down_seconds for e in chaos.events if e.kind == "pg"],
                "pg_restart_to_healthy": [e.healthy_after for e in chaos.events if e.kind == "pg"],
                "pg_restart_to_first_ack": [e.first_ack_after for e in chaos.events if e.kind == "pg"],
                "kill_longest_ack_gap": [e.longest_ack_gap for e in chaos.events if e.kind == "kill"],
                "pg_longest_ack_gap": [e.longest_ack_gap for e in chaos.events if e.kind == "pg"],
            },
            "failures_by_kind": dict(kinds),
            "server_starts": server.starts,
            "server_5xx": dict(server_5xx),
            "server_unhandled_errors": len(unhandled),
            "projection_runner_starts": runner.starts,
            "projection_runner_exits": [{k: v for k, v in e.items() if k != "log_tail"} for e in chaos.runner_exits],
            "balances_checked": balances_checked,
            "reconciliation_ok": reconciliation["ok"],
            "cli_reconcile_ok": reconcile.returncode == 0,
            "audit_verify_ok": verified["ok"],
            "checkpoints_taken": len(checkpoints),
            "checkpoints_verified": checkpoints_verified,
            "cli_audit_verify_ok": cli_verify_ok,
            "failed_checks": len(failures),
        }
        if chaos.runner_exits:
            failures.append(f"`loyalty projections run` exited by itself {len(chaos.runner_exits)} time(s) and had "
                            f"to be restarted (exit code {chaos.runner_exits[0]['code']}); its log ends: "
                            f"{_traceback_end(chaos.runner_exits[0]['log_tail'])}")
        if unhandled or any(k.startswith("500") for k in server_5xx):
            ends = Counter(_traceback_end(str(r.get("exception", ""))) for r in unhandled)
            failures.append(f"the server answered 500 (server-error, not 503 unavailable) during the run: "
                            f"{dict(server_5xx)}; unhandled errors logged: {dict(ends)}")
        figures["failed_checks"] = len(failures)
        return Report(asdict(config), figures, failures)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=1)
        if cluster is not None:
            cluster.ensure_up()
        runner.stop()
        server.stop()


def _traceback_end(text: str, lines: int = 4) -> str:
    """The last frames and the exception of a traceback, on one line."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _problem_type(body: Any) -> str | None:
    return body.get("type") if isinstance(body, dict) else None


def _json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def append_figures(report: Report, path: str | None) -> None:
    if not path:
        return
    line = {"test": "crash_restart", "at": now_iso(), "config": report.config, **report.figures,
            "failures": report.failures[:20]}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")
