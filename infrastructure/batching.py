"""A thread that takes whatever requests are waiting, up to a batch, and serves them together;
each caller waits for its own answer. Under light load a request is served alone with no added
wait; under heavy load batches grow by themselves while the previous one is being served."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

import structlog

R = TypeVar("R")  # what a caller asks for
A = TypeVar("A")  # what it is answered

log = structlog.get_logger("loyalty.batching")


class Batcher(Generic[R, A]):
    def __init__(self, name: str, max_batch: int) -> None:
        self.name = name
        self.max_batch = max_batch
        self.batches = 0  # served, and how many requests they held
        self.served = 0
        self._queue: queue.Queue[tuple[R, Future[A]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def ask(self, request: R, timeout: float = 60.0) -> A:
        """Queues the request and waits for its own answer (or its own error)."""
        future: Future[A] = Future()
        self._queue.put((request, future))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def answer(self, requests: list[R]) -> Sequence[A | BaseException]:
        """One answer for each request, in order: a result, or the exception its caller raises."""
        raise NotImplementedError

    def _serve(self, batch: list[tuple[R, Future[A]]]) -> None:
        try:
            answers = self.answer([request for request, _ in batch])
        except Exception as error:  # noqa: BLE001 - the database failed: every caller hears it
            log.error("batch failed", batcher=self.name, size=len(batch), exc_info=error)
            for _, future in batch:
                future.set_exception(error)
            return
        self.batches += 1
        self.served += len(batch)
        for (_, future), answer in zip(batch, answers):
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            self._serve(batch)
