"""The importer's cache is bounded by the events its aggregates hold, least recently used first."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from infrastructure.event_budget_cache import EventBudgetCache


@dataclass
class Aggregate:
    version: int


def test_the_least_recently_used_go_first_when_the_events_exceed_the_budget() -> None:
    cache = EventBudgetCache(max_events=100, max_items=10)
    cache.put("a", Aggregate(40))
    cache.put("b", Aggregate(40))
    cache.get("a")  # a is now the most recently used
    cache.put("c", Aggregate(30))  # 110 events: b goes
    assert set(cache.cache) == {"a", "c"} and cache.events == 70
    with pytest.raises(KeyError):
        cache.get("b")


def test_an_aggregate_that_grew_in_place_is_weighed_again_when_put_back() -> None:
    cache = EventBudgetCache(max_events=100, max_items=10)
    a, b = Aggregate(30), Aggregate(30)
    cache.put("a", a)
    cache.put("b", b)
    b.version = 95  # changed in place by the single writer, then put back after its save
    cache.put("b", b)
    assert set(cache.cache) == {"b"} and cache.events == 95


def test_the_item_bound_holds_too_and_the_newest_always_stays() -> None:
    cache = EventBudgetCache(max_events=10, max_items=2)
    for key in "abc":
        cache.put(key, Aggregate(1))
    assert list(cache.cache) == ["b", "c"]
    cache.put("huge", Aggregate(1000))  # over the budget alone: kept (it is being used), others go
    assert list(cache.cache) == ["huge"] and cache.events == 1000


def test_evicting_returns_the_aggregate_and_frees_its_events() -> None:
    cache = EventBudgetCache(max_events=100, max_items=10)
    a = Aggregate(7)
    cache.put("a", a)
    assert cache.get("a", evict=True) is a and cache.events == 0
    with pytest.raises(KeyError):
        cache.get("a", evict=True)
