"""A body over the 2 MB limit gets its 413 problem every time: the server reads the rest of the
body before answering, so the client is never cut off mid-send (a broken pipe) instead."""

from __future__ import annotations

import json

from tests.e2e.conftest import World, expect


def test_an_oversized_body_is_answered_413_every_time_and_changes_nothing(world: World) -> None:
    def balance() -> dict[str, object]:
        replayed = expect(world.auditor.get("/v1/members/ann/balance"), 200)
        replayed.pop("as_of")  # the moment it was asked
        return replayed

    before = balance()
    body = json.dumps({"transaction_id": "big-1", "member_id": "ann", "store_id": "g-1", "amount": "1.00",
                       "currency": "EUR", "items": [{"sku": "x" * 100, "amount": "0.01"}] * 30_000}).encode()
    assert len(body) > 3 * 1024 * 1024
    for _ in range(10):
        response = world.partner.post("/v1/purchases", data=body, headers={"Content-Type": "application/json"})
        problem = expect(response, 413, "payload-too-large")
        assert f"{len(body):,} bytes" in problem["detail"], problem
    # The server still answers on new connections, and nothing was posted.
    assert balance() == before
