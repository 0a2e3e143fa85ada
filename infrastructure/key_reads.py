"""API keys read for concurrent requests together: one thread per server process takes the keys
that every waiting request presented and reads them, each distinct key once, in one query
(infrastructure/batching.py). Every read starts after the requests in it arrived, so a
revocation committed before a request came in is seen by it, as when each request read its own
key; a partner's tills mostly share one key, so a batch of requests is mostly one key's events.

Why: each request reading its own key cost it a pooled connection and a round trip, whose reply
a busy process then waits for the GIL to take in; with those reads it carried 275-295 single
purchases/s, with none at all 356-394/s (4 workers x 16 threads, 16 clients, BENCHMARKS.md).
Purchases and returns whose key this process already holds skip this read: the batch that
commits them checks the key instead (api/auth.py, Ledger.execute_batch's keys)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from application.ledger import Ledger
from domain.api_key import ApiKey
from infrastructure.batching import Batcher


class KeyReads(Batcher[UUID, "ApiKey | None"]):
    def __init__(self, ledger: Ledger, max_batch: int = 200) -> None:
        self.ledger = ledger
        super().__init__("key-reads", max_batch)

    @property
    def reads(self) -> int:
        return self.served

    def read(self, key_id: UUID) -> ApiKey | None:
        """The key as stored now (None if there is none), read together with any others asked for meanwhile."""
        return self.ask(key_id)

    def answer(self, requests: list[UUID]) -> Sequence[ApiKey | None]:
        keys = self.ledger.api_keys(requests)
        return [keys.get(key_id) for key_id in requests]
