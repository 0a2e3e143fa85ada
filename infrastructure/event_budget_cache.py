"""An aggregate cache bounded by the events its aggregates hold, not by how many there are.

A member's memory grows with its history (its purchases and lots), so a cache of N members
holds ever more as an import goes on. Weighing each aggregate by its version (the events it
has applied) bounds what the cache holds, so an importer's memory levels off however long the
file; the least recently used aggregates go first, and are reloaded (newest snapshot and later
events) if they come back.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Any

from eventsourcing.application import Cache


class EventBudgetCache(Cache[Any, Any]):
    def __init__(self, max_events: int, max_items: int) -> None:
        super().__init__()
        self.max_events = max_events
        self.max_items = max_items
        self.cache: OrderedDict[Any, Any] = OrderedDict()
        self.weights: dict[Any, int] = {}
        self.events = 0
        self.lock = Lock()

    def get(self, key: Any, *, evict: bool = False) -> Any:
        with self.lock:
            if evict:
                value = self.cache.pop(key)  # KeyError when absent, as the library expects
                self.events -= self.weights.pop(key)
                return value
            value = self.cache[key]
            self.cache.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        if value is None:
            return
        weight = max(int(getattr(value, "version", 1) or 1), 1)
        with self.lock:
            self.events += weight - self.weights.get(key, 0)
            self.weights[key] = weight
            self.cache[key] = value
            self.cache.move_to_end(key)
            while len(self.cache) > 1 and (self.events > self.max_events or len(self.cache) > self.max_items):
                oldest, _ = self.cache.popitem(last=False)
                self.events -= self.weights.pop(oldest)
