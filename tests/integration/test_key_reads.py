"""Concurrent requests' API keys read together: each caller gets its own key's principal, a
revocation counts for every read that starts after it, and many reads share one query."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from application.access import IssueApiKey, Principal, RevokeApiKey
from application.ledger import Ledger
from infrastructure.key_reads import KeyReads
from test_ledger_story import START, Clock, open_ledger, set_up


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    ledger = open_ledger(database_url, Clock(START + timedelta(hours=1)))
    set_up(ledger)
    yield ledger
    ledger.close()


def authenticate_concurrently(ledger: Ledger, reads: KeyReads, presented: list[str]) -> list[Principal | None]:
    results: list[Principal | None | Exception] = [None] * len(presented)
    barrier = threading.Barrier(len(presented))

    def call(index: int) -> None:
        barrier.wait()
        try:
            results[index] = ledger.authenticate(presented[index], None, reads.read)
        except Exception as error:  # noqa: BLE001 - asserted below
            results[index] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(presented))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not [r for r in results if isinstance(r, Exception)]
    return results  # type: ignore[return-value]


def test_many_requests_keys_are_read_together_and_each_gets_its_own_principal(ledger: Ledger) -> None:
    issued = [ledger.execute(IssueApiKey(actor="admin", role=role, partner_id="grocer" if role == "partner" else None))
              .body for role in ("partner", "auditor", "finance")]
    revoked = ledger.execute(IssueApiKey(actor="admin", role="support")).body
    ledger.execute(RevokeApiKey(actor="admin", key_id=revoked["key_id"]))
    reads = KeyReads(ledger)
    try:
        presented = [issued[i % 3]["key"] for i in range(45)]
        presented += [revoked["key"]] * 3 + ["llk_nosuchkey_secret"] * 3 + [issued[0]["key"][:-1] + "x"] * 3
        results = authenticate_concurrently(ledger, reads, presented)
    finally:
        reads.close()

    for key, principal in zip(presented[:45], results[:45]):
        expected = next(i for i in issued if i["key"] == key)
        assert principal == Principal(key_id=expected["key_id"], role=expected["role"], partner_id=expected["partner_id"])
    assert results[45:] == [None] * 9  # revoked, unknown, wrong secret
    assert reads.reads == 54  # the wrong secret's key id is well-formed: read, then refused
    assert reads.batches < reads.reads  # some requests shared a query


def test_a_revocation_counts_for_the_next_read_in_the_same_process(ledger: Ledger) -> None:
    key = ledger.execute(IssueApiKey(actor="admin", role="partner", partner_id="grocer")).body
    reads = KeyReads(ledger)
    try:
        assert ledger.authenticate(key["key"], None, reads.read) is not None
        ledger.execute(RevokeApiKey(actor="admin", key_id=key["key_id"]))
        assert ledger.authenticate(key["key"], None, reads.read) is None
        assert ledger.authenticate(key["key"], None) is None  # the same without batching
    finally:
        reads.close()
