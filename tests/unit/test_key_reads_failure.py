"""When reading the keys fails, every request waiting on that read hears the error; the next
read is made afresh."""

from __future__ import annotations

import threading
from uuid import UUID, uuid4

from infrastructure.key_reads import KeyReads


class FlakyStore:
    """A ledger whose key reads fail while `down` is set (a database that went away)."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.asked: list[list[UUID]] = []
        self.released = threading.Event()

    def api_keys(self, ids: list[UUID]) -> dict[UUID, str]:
        self.asked.append(list(ids))
        self.released.wait(10)
        if self.down.is_set():
            raise ConnectionError("database unavailable")
        return {i: f"key {i}" for i in ids}


def test_a_failed_read_fails_every_waiting_request_and_the_next_read_succeeds() -> None:
    store = FlakyStore()
    store.down.set()
    reads = KeyReads(store)  # type: ignore[arg-type]
    ids = [uuid4() for _ in range(5)]
    errors: list[BaseException] = []

    def call(key_id: UUID) -> None:
        try:
            reads.read(key_id)
        except ConnectionError as error:
            errors.append(error)

    threads = [threading.Thread(target=call, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    store.released.set()
    for thread in threads:
        thread.join()
    try:
        assert len(errors) == 5 and {str(e) for e in errors} == {"database unavailable"}
        store.down.clear()
        key_id = uuid4()
        assert reads.read(key_id) == f"key {key_id}"
        assert sorted(map(str, (i for batch in store.asked[:-1] for i in batch))) == sorted(map(str, ids))
    finally:
        reads.close()
