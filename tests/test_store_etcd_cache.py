"""The etcd store with ``cache: true`` against real etcd: the contract, and the cache's promises.

Another store object on the same base path stands for another keyard process.
Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from keyard.errors import StoreUnavailable
from keyard.helpers import config as config_module
from keyard.model import DEFAULT_NAMESPACE, ServiceSummary
from keyard.stores import create_store
from keyard.stores.etcd import EtcdStore, encode_part
from keyard.stores.etcd.cache import STALE_AFTER, EtcdCache
from keyard.stores.etcd.keys import record_value
from keyard.testing.store_contract import (
    KEEP_ALL,
    StoreContract,
    WatchContract,
    locations,
    make,
)
from tests.conftest import wait_until
from tests.etcd_server import EtcdCluster, EtcdServer, unique_base_path

NS = DEFAULT_NAMESPACE
WEB = make().key
#: How long another process's write may take to reach a cached store, in these tests.
SEEN_WITHIN = 2.0


def cached_store(endpoint: object, base_path: str, **options: object) -> EtcdStore:
    """A store with the cache on, its cache loaded and current (``host`` in options wins)."""
    options.setdefault("host", endpoint)
    store = EtcdStore(base_path=base_path, cache=True, **options)  # type: ignore[arg-type]
    store.lookup(NS, "-", None, time.time())  # starts the cache
    wait_until(lambda: bool((store.cache_info() or {}).get("ready")), 10, "the cache loaded")
    return store


def served_from_the_cache(store: EtcdStore) -> bool:
    info = store.cache_info()
    return info is not None and info["ready"]


def eventually(check: object, within: float = SEEN_WITHIN) -> float:
    """Poll ``check()`` until true; the seconds it took. Fails after ``within`` seconds."""
    assert callable(check)
    started = time.monotonic()
    deadline = started + within
    while time.monotonic() < deadline:
        if check():
            return time.monotonic() - started
        time.sleep(0.002)
    pytest.fail(f"not seen within {within} s")


class TestEtcdStoreCached(StoreContract):
    @pytest.fixture
    def store(self, etcd_server: EtcdServer) -> Iterator[EtcdStore]:
        store = cached_store(etcd_server.endpoint, unique_base_path())
        yield store
        assert served_from_the_cache(store), "the contract ran against the cache"
        store.close()


class TestEtcdStoreCachedWatches(WatchContract):
    """The change API of a store with ``cache``: the same keys, so the same answers."""

    @pytest.fixture
    def store(self, etcd_server: EtcdServer, base_path: str) -> Iterator[EtcdStore]:
        store = cached_store(etcd_server.endpoint, base_path)
        yield store
        store.close()

    @pytest.fixture
    def store_config(
        self, etcd_server: EtcdServer, base_path: str
    ) -> tuple[str, dict[str, object]]:
        return "etcd", {"host": etcd_server.endpoint, "base_path": base_path, "cache": True}


@pytest.fixture
def base_path() -> str:
    return unique_base_path()


@pytest.fixture
def cached(etcd_server: EtcdServer, base_path: str) -> Iterator[EtcdStore]:
    store = cached_store(etcd_server.endpoint, base_path)
    yield store
    store.close()


@pytest.fixture
def other(etcd_server: EtcdServer, base_path: str) -> Iterator[EtcdStore]:
    """Another keyard process on the same registry, without a cache."""
    store = EtcdStore(etcd_server.endpoint, base_path=base_path)
    yield store
    store.close()


def test_the_cache_option_is_off_by_default_and_comes_from_the_environment() -> None:
    assert EtcdStore().cache is False
    config = config_module.load(environ={"KEYARD_STORE_TYPE": "etcd", "KEYARD_ETCD_CACHE": "true"})
    store = create_store(config.store_type, config.store_options)
    assert isinstance(store, EtcdStore) and store.cache is True
    assert store.cache_info() is None  # nothing is loaded before the first lookup


def test_own_writes_are_seen_at_once_without_the_watch(cached: EtcdStore) -> None:
    cached.hold_cache(True)  # no event can bring them
    try:
        assert cached.put(make(location="a"))[1] is True
        assert cached.put(make(location="b", ttl=60))[1] is True
        assert locations(cached.lookup(NS, "web", "1.0", time.time())) == ["a", "b"]
        refreshed, new = cached.put(make(location="b", ttl=5), KEEP_ALL)
        assert (refreshed.ttl, new) == (60, False)
        [_, b] = cached.lookup(NS, "web", None, time.time())
        assert b.expires_at == refreshed.expires_at
        assert cached.deregister(make(location="a").key, time.time()) is not None
        assert locations(cached.lookup(NS, "web", None, time.time())) == ["b"]
        assert served_from_the_cache(cached)
        assert cached.cache_info()["events"] == 0  # type: ignore[index]
    finally:
        cached.hold_cache(False)


def test_another_process_registration_is_seen_within_a_bounded_wait(
    cached: EtcdStore, other: EtcdStore
) -> None:
    other.put(make(location="elsewhere"))
    eventually(lambda: locations(cached.lookup(NS, "web", None, time.time())) == ["elsewhere"])
    assert served_from_the_cache(cached)
    assert cached.cache_info()["events"] >= 1  # type: ignore[index]


def test_another_process_deregistration_is_seen_within_a_bounded_wait(
    cached: EtcdStore, other: EtcdStore
) -> None:
    cached.put(make(location="a"))
    cached.put(make(location="b"))
    assert other.deregister(make(location="a").key, time.time()) is not None
    eventually(lambda: locations(cached.lookup(NS, "web", None, time.time())) == ["b"])
    assert served_from_the_cache(cached)


def test_another_process_refresh_moves_the_expiry_seen(cached: EtcdStore, other: EtcdStore) -> None:
    start = time.time()
    cached.put(make(ttl=20, now=start))
    refreshed, _ = other.put(make(ttl=20, now=start + 10), KEEP_ALL)

    def moved() -> bool:
        [found] = cached.lookup(NS, "web", None, time.time())
        return found.expires_at == refreshed.expires_at

    eventually(moved)
    assert locations(cached.lookup(NS, "web", None, start + 25)) == ["http://127.0.0.1:8001"]


@pytest.mark.slow
def test_expiry_by_etcds_ttl_is_seen_and_never_returned_late(
    cached: EtcdStore, other: EtcdStore
) -> None:
    other.put(make(location="brief", ttl=1))
    other.put(make(location="lasting", ttl=30))
    eventually(
        lambda: locations(cached.lookup(NS, "web", None, time.time())) == ["brief", "lasting"]
    )
    expires_at = cached.lookup(NS, "web", None, time.time())[0].expires_at
    while time.time() < expires_at + 0.01:
        time.sleep(0.01)
    # Past its expiry it is gone from lookups at once, whether etcd's expire event came or not.
    assert locations(cached.lookup(NS, "web", None, time.time())) == ["lasting"]
    # etcd expires the key by itself (within about a second): the cache drops it.
    eventually(lambda: cached.cache_info()["instances"] == 1, within=5)  # type: ignore[index]
    assert served_from_the_cache(cached)


def test_more_changes_than_etcd_keeps_while_the_watcher_is_held_lead_to_a_reload(
    cached: EtcdStore, other: EtcdStore, etcd_server: EtcdServer, base_path: str
) -> None:
    cached.put(make(location="gone"))
    cached.put(make(location="kept"))
    cached.hold_cache(True)
    try:
        wait_until(lambda: not served_from_the_cache(cached), STALE_AFTER + 2, "the cache stale")
        # While it cannot be current, lookups are read from etcd.
        other.deregister(make(location="gone").key, time.time())
        assert locations(cached.lookup(NS, "web", None, time.time())) == ["kept"]
        added = [f"new-{n:04d}" for n in range(1100)]  # etcd keeps the last 1000 events
        # 1,100 writes at once: a loaded machine's etcd may take more than a second.
        patient = EtcdStore(etcd_server.endpoint, base_path=base_path, timeout=10)
        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda loc: patient.put(make(location=loc)), added))
        finally:
            patient.close()
    finally:
        cached.hold_cache(False)
    expected = sorted([*added, "kept"])
    eventually(lambda: served_from_the_cache(cached), within=10)
    assert locations(cached.lookup(NS, "web", None, time.time())) == expected
    info = cached.cache_info()
    assert info is not None and info["loads"] == 2 and info["ready"]


def test_lookups_answer_unavailable_while_etcd_is_down_and_the_cache_recovers_by_itself(
    own_etcd: EtcdServer,
) -> None:
    base_path = unique_base_path()
    cached = cached_store(own_etcd.endpoint, base_path, timeout=1)
    writer = EtcdStore(own_etcd.endpoint, base_path=base_path, timeout=1)
    try:
        cached.put(make(location="before"))
        own_etcd.stop()

        def unavailable() -> bool:
            try:
                cached.lookup(NS, "web", None, time.time())
            except StoreUnavailable:
                return True
            return False

        eventually(unavailable, within=STALE_AFTER + 0.5)
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                cached.lookup(NS, "web", None, time.time())
            assert time.monotonic() - started < 1 + 1
        assert not served_from_the_cache(cached)
        own_etcd.start()
        eventually(
            lambda: locations(cached.lookup(NS, "web", None, time.time())) == ["before"], within=10
        )
        eventually(lambda: served_from_the_cache(cached), within=10)
        writer.put(make(location="after"))
        eventually(
            lambda: locations(cached.lookup(NS, "web", None, time.time())) == ["after", "before"]
        )
        assert cached.cache_info()["loads"] >= 2  # type: ignore[index]
    finally:
        cached.close()
        writer.close()


def test_close_stops_the_watcher_thread(etcd_server: EtcdServer, base_path: str) -> None:
    store = cached_store(etcd_server.endpoint, base_path)
    [thread] = [t for t in threading.enumerate() if t.name.endswith(base_path)]
    assert thread.daemon
    store.close()
    thread.join(timeout=2)
    assert not thread.is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_builds_its_own_cache(cached: EtcdStore, other: EtcdStore) -> None:
    cached.put(make(location="before-fork"))
    pid = os.fork()
    if pid == 0:  # the child: the parent's cache and thread must not be used here
        code = 1
        try:
            assert cached.cache_info() is None  # the parent's cache is not this process's
            assert locations(cached.lookup(NS, "web", None, time.time())) == ["before-fork"]
            deadline = time.monotonic() + 10
            while not served_from_the_cache(cached) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cached.cache_info()["loads"] == 1  # type: ignore[index]
            other.put(make(location="after-fork"))
            deadline = time.monotonic() + SEEN_WITHIN
            while time.monotonic() < deadline:
                if locations(cached.lookup(NS, "web", None, time.time())) == [
                    "after-fork",
                    "before-fork",
                ]:
                    code = 0
                    break
                time.sleep(0.01)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's cache goes on, and sees the child's write.
    eventually(lambda: "after-fork" in locations(cached.lookup(NS, "web", None, time.time())))
    assert served_from_the_cache(cached)


def test_a_health_check_from_a_stale_cache_still_keeps_the_live_ttl(
    cached: EtcdStore, other: EtcdStore
) -> None:
    cached.put(make(ttl=60))
    cached.hold_cache(True)  # the cache keeps ttl 60 while another process changes it
    try:
        other.put(make(ttl=90))
        assert served_from_the_cache(cached)
        refreshed, new = cached.put(make(ttl=5), KEEP_ALL)
        assert (refreshed.ttl, new) == (90, False)
        other.deregister(WEB, time.time())
        refreshed, new = cached.put(make(ttl=5), KEEP_ALL)
        assert (refreshed.ttl, new) == (5, True)
    finally:
        cached.hold_cache(False)
    found = other.get(WEB, time.time())
    assert found is not None and found.ttl == 5


@pytest.mark.slow
def test_losing_the_watched_member_reads_the_cache_again_from_another(
    etcd_cluster: EtcdCluster,
) -> None:
    leader = etcd_cluster.leader()
    others = [m for m in etcd_cluster.members if m is not leader]
    base_path = unique_base_path()
    # The leader first: the store reads and watches through it until it dies.
    cached = cached_store(leader.endpoint, base_path, host=[m.endpoint for m in [leader, *others]])
    writer = EtcdStore(others[0].endpoint, base_path=base_path)
    try:
        writer.put(make(location="before"))
        eventually(lambda: locations(cached.lookup(NS, "web", None, time.time())) == ["before"])
        leader.kill()
        eventually(lambda: not served_from_the_cache(cached), within=STALE_AFTER + 1)
        eventually(lambda: served_from_the_cache(cached), within=15)
        assert cached.cache_info()["loads"] >= 2  # type: ignore[index]
        writer.put(make(location="after"))
        eventually(
            lambda: locations(cached.lookup(NS, "web", None, time.time())) == ["after", "before"],
            within=5,
        )
        assert served_from_the_cache(cached)
    finally:
        cached.close()
        writer.close()


def test_a_stalled_etcd_is_noticed_and_lookups_answer_unavailable(own_etcd: EtcdServer) -> None:
    base_path = unique_base_path()
    # A long timeout: the watch itself would only fail after it; the cache must stop
    # answering sooner, once etcd has not confirmed the watch for STALE_AFTER.
    cached = cached_store(own_etcd.endpoint, base_path, timeout=4)
    try:
        cached.put(make(location="before"))
        assert own_etcd.process is not None
        own_etcd.process.send_signal(signal.SIGSTOP)  # alive, answering nothing
        try:
            eventually(lambda: not served_from_the_cache(cached), within=STALE_AFTER + 0.5)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                cached.lookup(NS, "web", None, time.time())  # a read of etcd, failing in time
            assert time.monotonic() - started < 4 + 1
        finally:
            own_etcd.process.send_signal(signal.SIGCONT)
        eventually(lambda: served_from_the_cache(cached), within=10)
        assert locations(cached.lookup(NS, "web", None, time.time())) == ["before"]
    finally:
        cached.close()


# -- the cache's ordering of changes (no etcd: events given by hand) ------------------


def cache_for_events() -> tuple[EtcdCache, EtcdStore]:
    """A cache that is never loaded from etcd; events and writes are applied by hand."""
    store = EtcdStore("127.0.0.1:1", base_path="/b")
    cache = EtcdCache("/b", load=None, watch=None, parse=store._parse, timeout=1)  # type: ignore[arg-type]
    return cache, store


def event(
    store: EtcdStore, action: str, location: str, index: int, ttl: int = 30
) -> dict[str, object]:
    key = store._key(make(location=location).key)
    node: dict[str, object] = {"key": key, "modifiedIndex": index}
    if action in ("set", "create", "update", "compareAndSwap"):
        node["value"] = record_value(make(location=location, ttl=ttl), "w")
    return {"action": action, "node": node}


def held_ttls(cache: EtcdCache, store: EtcdStore, location: str) -> object:
    instance_id = encode_part(make(location=location).instance_id)
    found = cache._tree.get(NS, {}).get("web", {}).get(instance_id)
    return None if found is None else (found[0], found[1] and found[1].ttl)


def test_a_late_event_never_undoes_a_newer_write_of_this_process() -> None:
    cache, store = cache_for_events()
    key = store._key(make(location="a").key)
    cache.put(key, 12, make(location="a", ttl=60))  # this process's write, at index 12
    cache.apply_event(event(store, "set", "a", 11, ttl=30))  # another's, older, arrives late
    assert held_ttls(cache, store, "a") == (12, 60)
    cache.put(key, 14, None)  # this process removed it at 14
    cache.apply_event(event(store, "compareAndSwap", "a", 13))  # an older refresh arrives
    assert held_ttls(cache, store, "a") == (14, None)  # the tombstone holds
    cache.apply_event(event(store, "create", "a", 15, ttl=45))  # registered again, later
    assert held_ttls(cache, store, "a") == (15, 45)
    cache.apply_event(event(store, "expire", "a", 16))
    assert held_ttls(cache, store, "a") == (16, None)
    store.close()


def test_deleting_a_directory_removes_everything_under_it() -> None:
    cache, store = cache_for_events()
    for n, location in enumerate(["a", "b"]):
        cache.apply_event(event(store, "set", location, 10 + n))
    cache.apply_event(
        {
            "action": "delete",
            "node": {"key": "/b/%ns/default/web", "dir": True, "modifiedIndex": 20},
        }
    )
    assert held_ttls(cache, store, "a") == (20, None)
    assert held_ttls(cache, store, "b") == (20, None)
    cache.apply_event(event(store, "set", "c", 21))
    cache.apply_event(
        {"action": "delete", "node": {"key": "/b/%ns/default", "dir": True, "modifiedIndex": 22}}
    )
    assert held_ttls(cache, store, "c") == (22, None)
    cache.apply_event(event(store, "set", "d", 23))
    cache.apply_event({"action": "delete", "node": {"key": "/", "dir": True, "modifiedIndex": 24}})
    assert held_ttls(cache, store, "d") == (24, None)
    store.close()


def test_keys_of_another_layout_never_enter_the_cache() -> None:
    cache, store = cache_for_events()
    value = record_value(make(location="a"), "w")
    old = {"key": "/b/web/1.0/a", "modifiedIndex": 5, "value": value}  # 0.2.0's layout
    cache.apply_event({"action": "set", "node": old})
    assert cache._tree == {}
    store.close()


def test_services_are_answered_from_the_cache(cached: EtcdStore, other: EtcdStore) -> None:
    cached.put(make("web", location="a"))
    cached.put(make("api", location="b", status="DOWN"))
    other.put(make("web", location="c", namespace="elsewhere"))
    eventually(lambda: served_from_the_cache(cached))  # it has seen the writes
    cached.hold_cache(True)  # the cache answers: no etcd read would see this one
    try:
        other.put(make("zzz", location="d"))
        assert served_from_the_cache(cached)
        assert cached.services(NS, time.time()) == [
            ServiceSummary("api", 1, 0),
            ServiceSummary("web", 1, 1),
        ]
    finally:
        cached.hold_cache(False)
    eventually(
        lambda: [s.service_name for s in cached.services(NS, time.time())] == ["api", "web", "zzz"]
    )
    assert cached.services("elsewhere", time.time()) == [ServiceSummary("web", 1, 1)]
