"""End-to-end fixtures: the real `loyalty serve` (gunicorn, 2 workers x 4 threads) in a subprocess,
on the SQLite file or the fresh PostgreSQL schema of the parametrized `database_url` fixture, and a
standard-library HTTP client that never raises on 4xx/5xx."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


@dataclass
class Response:
    status: int
    headers: Any  # an http.client.HTTPMessage: case-insensitive .get()
    body: Any  # parsed JSON, or the raw bytes when the body is not JSON (None when empty)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip()

    def __iter__(self) -> Iterator[Any]:  # status, headers, body = client.get(...)
        return iter((self.status, self.headers, self.body))


class Client:
    """A tiny JSON client over urllib.request: (status, headers, body), whatever the status."""

    def __init__(self, base_url: str, key: str | None = None) -> None:
        self.base_url = base_url
        self.key = key

    def with_key(self, key: str | None) -> Client:
        return Client(self.base_url, key)

    def request(self, method: str, path: str, json_body: Any = None, *, data: bytes | None = None,
                headers: dict[str, str] | None = None, key: Any = ..., timeout: float = 30.0) -> Response:
        all_headers = {"Accept": "application/json, application/problem+json"}
        use_key = self.key if key is ... else key
        if use_key is not None:
            all_headers["Authorization"] = f"Bearer {use_key}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                status, reply_headers, raw = reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as error:
            status, reply_headers, raw = error.code, error.headers, error.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        return Response(status, reply_headers, body)

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", path, json_body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Response:
        return self.request("DELETE", path, **kwargs)


@dataclass
class Server:
    base_url: str
    admin_key: str
    log_path: Path
    database_url: str
    process: subprocess.Popen[bytes]

    def client(self, key: str | None = None) -> Client:
        return Client(self.base_url, key)

    @property
    def admin(self) -> Client:
        return Client(self.base_url, self.admin_key)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The server's JSON log lines, parsed."""
        return [r for r in (_parse(line) for line in self.log_text().splitlines()) if r is not None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_healthy(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"loyalty serve exited with {process.returncode} before answering /healthz; "
                        f"its stderr:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(base_url + "/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
                last = f"status {reply.status}"
        except urllib.error.HTTPError as error:
            last = f"status {error.code}: {error.read()[:500]!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            last = repr(error)
        time.sleep(0.1)
    _stop(process)
    pytest.fail(f"loyalty serve did not answer /healthz within {START_TIMEOUT:.0f}s ({last}); "
                f"its stderr:\n{log_path.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # gunicorn's master stops its workers gracefully
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the master and its workers
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def server_errors(records: list[dict[str, Any]], text: str) -> list[str]:
    """Log lines that show a 5xx answer or an unhandled error."""
    bad = [json.dumps(r) for r in records
           if (isinstance(r.get("status"), int) and r["status"] >= 500) or r.get("event") == "unhandled error"]
    bad += [line for line in text.splitlines() if "Traceback (most recent call last)" in line]
    return bad


@pytest.fixture
def server(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """`loyalty serve` as a real subprocess; after the test, stopped, and its log must show no 5xx.
    A test marked `serve_args(...)` gives the command more options."""
    workdir = tmp_path / "server"
    workdir.mkdir()
    log_path = workdir / "server.log"
    port = free_port()
    admin_key = "adm-" + secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.update({
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_ADMIN_KEY": admin_key,
        "LOYALTY_LOG_FORMAT": "json",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("LOYALTY_DATA_DIR", None)
    command = [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "2", "--threads", "4"]
    marker = request.node.get_closest_marker("serve_args")
    command += list(marker.args) if marker else []
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(base_url, process, log_path)
        yield Server(base_url=base_url, admin_key=admin_key, log_path=log_path, database_url=database_url,
                     process=process)
    finally:
        _stop(process)
    text = log_path.read_text(errors="replace")
    records = [r for r in (_parse(line) for line in text.splitlines()) if r is not None]
    # A test that found a 500 has already failed; this makes any other 5xx the server logged visible too.
    assert any(r.get("event") == "request" for r in records), f"no JSON request log lines:\n{text[-3000:]}"
    bad = server_errors(records, text)
    assert not bad, "the server answered 5xx or logged an unhandled error:\n" + "\n".join(bad[:20])


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@pytest.fixture
def admin(server: Server) -> Client:
    return server.admin


# ---- a seeded world, created over HTTP ----------------------------------------------------------

PROGRAM = {
    "program_id": "club",
    "name": "Club",
    "currency": "EUR",
    "earn_rate": "2",
    "point_value": "0.01",
    "expected_redemption_rate": "0.8",
    "expiry": {"policy": "rolling", "months": 12},
    "pending_days": 0,
    "tiers": [
        {"name": "blue", "qualifying_spend": "0", "multiplier": "1"},
        {"name": "gold", "qualifying_spend": "1000", "multiplier": "1.5"},
    ],
    "tier_window_months": 12,
    "adjustment_approval_threshold": 500,
    "effective_at": "2020-01-01T00:00:00Z",
}
OTHER_PROGRAM = {**PROGRAM, "program_id": "rival-club", "name": "Rival club", "currency": "USD",
                 "expiry": {"policy": "none"}}


@dataclass
class World:
    server: Server
    admin: Client
    partner: Client  # the grocer's key (program "club", stores g-1 and g-2)
    partner_key_id: str
    rival: Client  # a partner in another program
    rival_key_id: str
    support: Client
    support_key_id: str
    auditor: Client
    auditor_key_id: str
    member_id: str = "ann"
    card_number: str = "card-ann"


def expect(response: Response, status: int, problem_type: str | None = None) -> Any:
    """Asserts the status (and, for a problem, its content type and type slug); returns the body."""
    assert response.status == status, (
        f"expected {status}{' ' + problem_type if problem_type else ''}, got {response.status} "
        f"{response.content_type}: {response.body!r}")
    if problem_type is not None:
        assert response.content_type == "application/problem+json", response.content_type
        assert isinstance(response.body, dict), response.body
        assert response.body.get("type") == problem_type, response.body
        assert response.body.get("status") == status, response.body
        assert response.body.get("title"), response.body
        if problem_type == "validation-error":  # API.md: "plus errors: {field: [...]} for validation failures"
            assert isinstance(response.body.get("errors"), dict) and response.body["errors"], response.body
    return response.body


def issue_key(admin: Client, role: str, partner_id: str | None = None) -> tuple[str, str]:
    body: dict[str, Any] = {"role": role, "name": f"e2e {role}"}
    if partner_id is not None:
        body["partner_id"] = partner_id
    issued = expect(admin.post("/v1/api-keys", body), 201)
    assert issued["role"] == role and issued["partner_id"] == partner_id, issued
    assert issued["key_id"] and issued["key"], issued
    return issued["key"], issued["key_id"]


@pytest.fixture
def world(server: Server) -> World:
    """Two programs, the grocer (club) and a rival partner (rival-club) with keys, support and
    auditor keys, and the member ann with her card."""
    admin = server.admin
    expect(admin.post("/v1/programs", PROGRAM), 201)
    expect(admin.post("/v1/programs", OTHER_PROGRAM), 201)
    expect(admin.post("/v1/partners", {"partner_id": "grocer", "name": "Grocer", "program_id": "club",
                                       "stores": ["g-1", "g-2"]}), 201)
    expect(admin.post("/v1/partners", {"partner_id": "rival", "name": "Rival", "program_id": "rival-club",
                                       "stores": ["r-1"]}), 201)
    partner_key, partner_key_id = issue_key(admin, "partner", "grocer")
    rival_key, rival_key_id = issue_key(admin, "partner", "rival")
    support_key, support_key_id = issue_key(admin, "support")
    auditor_key, auditor_key_id = issue_key(admin, "auditor")
    expect(admin.post("/v1/members", {"program_id": "club", "member_id": "ann", "card_number": "card-ann",
                                      "name": "Ann Example", "email": "ann@example.com",
                                      "birthday": "1990-05-01"}), 201)
    return World(server=server, admin=admin,
                 partner=server.client(partner_key), partner_key_id=partner_key_id,
                 rival=server.client(rival_key), rival_key_id=rival_key_id,
                 support=server.client(support_key), support_key_id=support_key_id,
                 auditor=server.client(auditor_key), auditor_key_id=auditor_key_id)
