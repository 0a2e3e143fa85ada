"""A lean HTTP/1.1 load generator: one thread drives every client's keep-alive connection with
non-blocking sockets, and each request is a few bytes formatted in place.

Why not one http.client thread per client (what P1 used up to run 17): on this 2-core machine
that generator took 0.18 cores at 650 requests/s (json.dumps, http.client's header handling and
32 threads taking turns at the GIL), CPU the server under test then did not have, while pgbench,
which P1 is compared with, drives PostgreSQL from a few C threads. Responses are still read whole
and every status counted: nothing is assumed to have succeeded.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Client:
    index: int
    sock: socket.socket
    sent: int = 0  # requests sent so far (warm-up ones included)
    started: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)
    timed: bool = False


@dataclass
class Load:
    elapsed_s: float
    statuses: dict[int, int]
    latencies: list[float]  # seconds, timed requests only
    errors: list[str]


class ResponseError(RuntimeError):
    pass


def _parse(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) for a complete response at the start of `buffer`, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        lowered = name.strip().lower()
        if lowered == "content-length":
            length = int(value.strip())
        elif lowered == "transfer-encoding" and "chunked" in value.lower():
            raise ResponseError("chunked responses are not expected from this server")
        elif lowered == "connection" and value.strip().lower() == "close":
            raise ResponseError("the server closed a keep-alive connection")
    if length is None:
        raise ResponseError(f"a response without Content-Length: {head[0]}")
    total = end + 4 + length
    if len(buffer) < total:
        return None
    return status, bytes(buffer[end + 4:total]), total


def drive(port: int, clients: int, request: Callable[[int, int, bool], bytes], *, warmup: int, per_client: int,
          duration: float, on_timing_start: Callable[[], None] = lambda: None) -> Load:
    """Each client sends `warmup` untimed requests, then (once every client has) timed requests
    until it has sent `per_client` or `duration` seconds have passed. `request(client, n, timed)`
    returns the bytes of the client's n-th request of that phase."""
    selector = selectors.DefaultSelector()
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    states = []
    for index in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        states.append(_Client(index, sock))
        selector.register(sock, selectors.EVENT_READ, states[-1])

    def send(client: _Client) -> None:
        client.started = time.perf_counter()
        client.sock.sendall(request(client.index, client.sent - (warmup if client.timed else 0), client.timed))
        client.sent += 1

    def run_phase(timed: bool, deadline: float | None) -> None:
        active = 0
        for client in states:
            client.timed = timed
            limit = warmup if not timed else warmup + per_client
            if client.sent < limit:
                send(client)
                active += 1
        while active:
            for key, _ in selector.select(timeout=60):
                client: _Client = key.data
                chunk = client.sock.recv(65536)
                if not chunk:
                    raise ResponseError(f"client {client.index}: the server closed the connection")
                client.buffer += chunk
                parsed = _parse(client.buffer)
                if parsed is None:
                    continue
                status, body, used = parsed
                del client.buffer[:used]
                if client.buffer:
                    raise ResponseError(f"client {client.index}: bytes after a response nobody asked for")
                if timed:
                    latencies.append(time.perf_counter() - client.started)
                    statuses[status] = statuses.get(status, 0) + 1
                if status != 201 and len(errors) < 5:
                    errors.append(f"{status}: {body[:300]!r}")
                limit = warmup if not timed else warmup + per_client
                if client.sent < limit and (deadline is None or time.perf_counter() < deadline):
                    send(client)
                else:
                    active -= 1

    try:
        run_phase(False, None)
        on_timing_start()
        started = time.perf_counter()
        run_phase(True, started + duration)
        elapsed = time.perf_counter() - started
    finally:
        for client in states:
            selector.unregister(client.sock)
            client.sock.close()
        selector.close()
    return Load(elapsed, statuses, latencies, errors)


def post_request(path: str, key: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
