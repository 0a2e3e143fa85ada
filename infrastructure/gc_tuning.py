"""The cycle collector, set for how this ledger allocates.

CPython frees almost everything by reference counting; the cycle collector is only for
reference cycles, which the write path and the projections rarely make. By default it runs
its youngest generation every 700 net new containers and an older one every 10 of those. A
batch of decoded events or a batch of commands keeps tens of thousands of containers alive
until it ends, so the collector ran over and over, walking live objects and finding nothing:
17-19% of the in-process importer's and of a projection rebuild's time (measured with
gc.callbacks). Every 50,000 it runs a few times per batch instead of a thousand.
"""

from __future__ import annotations

import gc

YOUNGEST = 50_000
OLDER = 20


def tune_gc() -> None:
    """For this process: set once at the command line's entry (server workers inherit it)."""
    gc.set_threshold(YOUNGEST, OLDER, OLDER)


__all__ = ["tune_gc"]
