"""A fix for a psycopg 3.3 pipeline deadlock that large saves hit.

The library's PostgreSQL recorder sends a save (LOCK TABLE, NOTIFY, one INSERT of every event)
in pipeline mode, then syncs. psycopg's pipeline_communicate flushes libpq's output buffer once
after queueing the last command and stops, even when that flush could not send everything (a
payload larger than the socket's free send buffer: a few MB on loopback, less over a network).
It then waits for results the server cannot send, because the server is still waiting for the
rest of the INSERT: both sides wait forever (psycopg issue 685 describes the symptom; 3.3.9, the
newest release, still breaks out of the loop this way). Measured here: `loyalty import purchases
--batch-size 3000` hung on its first batch.

This module swaps in the same generator with one change: it keeps flushing until libpq's output
buffer is empty before it stops. Installed once per process by the bootstrap.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from psycopg import _pipeline_base, errors, pq
from psycopg.waiting import Ready, Wait

_SYNC = pq.ExecStatus.PIPELINE_SYNC
_COPY = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)


def communicate_until_flushed(pgconn: Any, commands: deque[Any]) -> Any:
    """psycopg.generators.pipeline_communicate, but done only when everything was sent."""
    results: list[list[Any]] = []
    while True:
        while not (ready := (yield Wait.RW)):
            continue
        if ready & Ready.R:
            pgconn.consume_input()
            while notify := pgconn.notifies():
                if pgconn.notify_handler:
                    pgconn.notify_handler(notify)
            batch: list[Any] = []
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    if not batch:
                        break
                    results.append(batch)
                    batch = []
                elif result.status == _SYNC:
                    results.append([result])
                elif result.status in _COPY:
                    raise errors.NotSupportedError("COPY cannot be used in pipeline mode")
                else:
                    batch.append(result)
        if ready & Ready.W:
            unsent = pgconn.flush()  # 1: part of the buffer is still to be sent
            if commands:
                commands.popleft()()
            elif not unsent:
                break
    return results


communicate_until_flushed.fixed = True  # type: ignore[attr-defined]


def install() -> None:
    if not getattr(_pipeline_base.pipeline_communicate, "fixed", False):
        _pipeline_base.pipeline_communicate = communicate_until_flushed
