"""`loyalty serve --reuse-port`: each worker listens on a socket of its own (the kernel spreads
connections over them), and the server behaves as with one shared socket."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import World, expect


def listening_sockets(port: int) -> int:
    """LISTEN entries for the port in the kernel's TCP table (IPv4 loopback)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.split(":")[1], 16) == port and state == "0A":
            count += 1
    return count


@pytest.mark.serve_args("--reuse-port")
def test_with_reuse_port_each_worker_listens_and_every_posting_counts_once(world: World) -> None:
    port = urlparse(world.server.base_url).port
    assert port is not None
    assert listening_sockets(port) == 2  # two workers, a socket each (one shared socket without the option)
    statuses: list[int] = []

    def post(client_index: int) -> None:
        for n in range(10):
            body = {"transaction_id": f"rp-{client_index}-{n}", "member_id": "ann", "store_id": "g-1",
                    "amount": "10.00", "currency": "EUR"}
            statuses.append(world.partner.post("/v1/purchases", body).status)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 60
    # Replayed from the member's events: 10.00 EUR x 2 points for each posting, each once.
    balance = expect(world.auditor.get("/v1/members/ann/balance"), 200)
    assert balance["available"] == 60 * 20, balance
