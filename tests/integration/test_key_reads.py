"""Concurrent requests' API keys read together: each caller gets its own key's principal, a
revocation counts for every read that starts after it, and many reads share one query."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from eventsourcing.persistence import IntegrityError

from application.access import IssueApiKey, Principal, RevokeApiKey
from application.errors import Unauthenticated
from application.ledger import Ledger
from domain.api_key import ApiKey
from infrastructure.key_reads import KeyReads
from test_ledger_story import START, Clock, open_ledger, purchase, set_up


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


# ---- keys confirmed by the batch that commits the command (api/auth.py's confirm_in_commit) --------------

def key_and_id(ledger: Ledger) -> tuple[str, object]:
    issued = ledger.execute(IssueApiKey(actor="admin", role="partner", partner_id="grocer")).body
    return issued["key"], ApiKey.create_id(issued["key_id"])


def balance(ledger: Ledger, member_id: str = "ann") -> int:
    return ledger.member_summary(member_id)["balance"]["available"]


def test_a_batch_confirms_each_commands_key_as_stored_now_and_refuses_a_revoked_ones_alone(
        database_url: str, ledger: Ledger) -> None:
    """This process admitted the caller on its copy of the key; another process revokes the key
    before the batch commits: that command is refused, unrun; the others in the batch commit."""
    other_process = open_ledger(database_url, Clock(START + timedelta(hours=1)))
    try:
        key, key_id = key_and_id(ledger)
        kept, kept_id = key_and_id(ledger)
        assert ledger.authenticate(key, None) is not None and ledger.authenticate(kept, None) is not None
        assert ledger.cached_api_key(key_id) is not None  # what a request is admitted on
        assert ledger.execute_batch([purchase("k-0", "10", at=START)], [key_id])[0].status == 201
        other_process.execute(RevokeApiKey(actor="admin", key_id=key.split("_")[1]))
        assert ledger.cached_api_key(key_id).revoked is False  # the copy has not heard yet

        before = balance(ledger)
        results = ledger.execute_batch(
            [purchase("k-1", "10", at=START), purchase("k-2", "10", at=START), purchase("k-3", "10", at=START)],
            [key_id, kept_id, None])
        assert isinstance(results[0], Unauthenticated) and results[0].slug == "unauthenticated"
        assert [r.status for r in results[1:]] == [201, 201]
        assert balance(ledger) == before + 2 * 20
        assert ledger.posting("grocer", "k-1") is None
        assert ledger.cached_api_key(key_id).revoked is True  # the batch brought the copy up to date
    finally:
        other_process.close()


def test_when_a_batch_falls_back_to_one_command_at_a_time_keys_are_still_confirmed(
        database_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    other_process = open_ledger(database_url, Clock(START + timedelta(hours=1)))
    try:
        key, key_id = key_and_id(ledger)
        ledger.authenticate(key, None)
        other_process.execute(RevokeApiKey(actor="admin", key_id=key.split("_")[1]))

        def always_clashing(*_: object) -> object:  # another writer every time: the batch gives up
            raise IntegrityError("clash")

        monkeypatch.setattr(ledger, "_execute_batch_once", always_clashing)
        before = balance(ledger)
        results = ledger.execute_batch([purchase("f-1", "10", at=START), purchase("f-2", "10", at=START)],
                                       [key_id, None])
        assert isinstance(results[0], Unauthenticated)
        assert results[1].status == 201
        assert balance(ledger) == before + 20
        assert ledger.posting("grocer", "f-1") is None
    finally:
        other_process.close()
