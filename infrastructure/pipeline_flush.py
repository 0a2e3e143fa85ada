"""A fix for a psycopg 3.3 pipeline deadlock that large saves hit.

The library's PostgreSQL recorder sends a save (LOCK TABLE, NOTIFY, one INSERT of every event)
in pipeline mode, then syncs. psycopg's pipeline_communicate flushes libpq's output buffer once
after queueing the last command and stops, even when that flush could not send everything (a
payload larger than the socket's free send buffer: a few MB on loopback, less over a network).
It then waits for results the server cannot send, because the server is still waiting for the
rest of the INSERT: both sides wait forever (psycopg issue 685 describes the symptom; 3.3.9, the
newest release, still breaks out of the loop this way). Measured here: `loyalty import purchases
--batch-size 3000` hung on its first batch.

This module wraps psycopg's own generator (its C implementation where installed): after it
returns, whatever libpq could not yet send is flushed, reading the server's replies into libpq's
buffer meanwhile so that neither side blocks the other; they are parsed later, as after any
pipeline flush. A save that fits the socket's buffer pays for one more flush() call. Installed
once per process by the bootstrap.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from psycopg import _pipeline_base
from psycopg.waiting import Ready, Wait

_original = _pipeline_base.pipeline_communicate


def communicate_until_flushed(pgconn: Any, commands: deque[Any]) -> Any:
    """psycopg's pipeline_communicate, but done only when everything was sent."""
    results = yield from _original(pgconn, commands)
    while pgconn.flush():  # 1: part of the output is still unsent
        ready = yield Wait.RW
        if ready & Ready.R:
            pgconn.consume_input()  # let the server go on writing; results stay buffered in libpq
    return results


communicate_until_flushed.fixed = True  # type: ignore[attr-defined]


def install() -> None:
    if not getattr(_pipeline_base.pipeline_communicate, "fixed", False):
        _pipeline_base.pipeline_communicate = communicate_until_flushed
