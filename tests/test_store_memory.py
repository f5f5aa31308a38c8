"""The memory store: the contract, plus its own expiry bookkeeping."""

from __future__ import annotations

import pytest

from keyard.errors import ConfigError
from keyard.stores import create_store
from keyard.stores.base import Instance
from keyard.stores.memory import MemoryStore
from tests.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self):
        return MemoryStore()


def test_simple_is_the_memory_store_and_takes_no_options() -> None:
    assert isinstance(create_store("simple"), MemoryStore)
    with pytest.raises(ConfigError, match="takes no options"):
        create_store("simple", {"path": "x"})


def test_expired_records_are_purged_not_just_hidden() -> None:
    store = MemoryStore()
    for n in range(1000):
        store.register(Instance("web", "1.0", f"loc-{n}", 10, 100.0 + 10))
    assert len(store) == 1000
    store.lookup("other", None, now=200.0)
    assert len(store) == 0


def test_heartbeats_do_not_grow_the_expiry_heap_without_bound() -> None:
    store = MemoryStore()
    for beat in range(10_000):
        store.register(Instance("web", "1.0", "only", 3600, beat + 3600.0))
    assert len(store) == 1
    assert len(store._expiries) <= 2 * len(store) + 1025
