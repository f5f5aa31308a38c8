"""The memory store: the contract, plus its own expiry bookkeeping."""

from __future__ import annotations

import pytest

from keyard.errors import ConfigError
from keyard.stores import create_store
from keyard.stores.memory import MemoryStore
from keyard.testing.store_contract import StoreContract, WatchContract, make


class TestMemoryStore(StoreContract, WatchContract):
    @pytest.fixture
    def store(self):
        store = MemoryStore()
        yield store
        store.close()


def test_simple_is_the_memory_store_and_takes_no_options() -> None:
    assert isinstance(create_store("simple"), MemoryStore)
    with pytest.raises(ConfigError, match="takes no options"):
        create_store("simple", {"path": "x"})


def test_the_memory_store_says_it_is_not_shared_across_processes() -> None:
    assert MemoryStore.shared_across_processes is False


def test_expired_records_are_purged_not_just_hidden() -> None:
    store = MemoryStore()
    for n in range(1000):
        store.put(make(location=f"loc-{n}", ttl=10, now=100.0))
    assert len(store) == 1000
    store.lookup("default", "other", None, now=200.0)
    assert len(store) == 0


def test_heartbeats_do_not_grow_the_expiry_heap_without_bound() -> None:
    store = MemoryStore()
    for beat in range(10_000):
        store.put(make(location="only", ttl=3600, now=float(beat)))
    assert len(store) == 1
    assert len(store._expiries) <= 2 * len(store) + 1025


def test_the_change_log_forgets_what_is_older_than_it_keeps() -> None:
    from keyard.errors import IndexTooOld

    store = MemoryStore()
    start = store.change_index("default", None)
    store.put(make(location="a"))
    store.log_seconds = 0.0
    store.put(make(location="b"))
    with pytest.raises(IndexTooOld):
        store.changes_since("default", start)
    latest = store.change_index("default", None)
    assert store.changes_since("default", latest) == []
    store.close()
