"""The redis store's ``cache`` option against a real redis-server.

The contract suite runs twice with the cache on: once as keyard uses the store
(a service's first lookup reads Redis and caches it, later ones read the cache),
and once with every lookup answered from the cache. Then: changes made through
another store object (another keyard process) reach the cache within a bounded
wait, expiry needs no write, and the cache is never used while it may be
incomplete (Redis stopped, restarted, flushed).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from keyard.errors import ConfigError, StoreUnavailable
from keyard.helpers import config
from keyard.model import DEFAULT_NAMESPACE, Instance
from keyard.stores import create_store, redis_cache
from keyard.stores.redis import RedisStore, parse_record, record_text
from keyard.stores.redis_cache import REMOVED, RedisCache
from keyard.testing.store_contract import (
    KEEP_ALL,
    StoreContract,
    WatchContract,
    locations,
    make,
)
from tests.conftest import wait_until
from tests.redis_server import RedisServer

NS = DEFAULT_NAMESPACE

#: How long a change may take to reach another process's cache in these tests.
PROPAGATION = 2.0


def poll(check: Callable[[], bool], timeout: float = PROPAGATION) -> bool:
    """Whether ``check()`` became true within ``timeout`` seconds (checked every ms or so)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def started_cache(store: RedisStore) -> RedisCache:
    """The store's cache, once current (its thread subscribed)."""
    cache = store._cache_here()
    assert cache is not None
    assert poll(lambda: cache.current, timeout=10), "the cache never became current"
    return cache


def cached(store: RedisStore, service_name: str) -> RedisCache:
    """Look the service up until the cache answers for it; the cache."""
    cache = started_cache(store)
    assert poll(
        lambda: (
            store.lookup(NS, service_name, None, time.time()) is not None
            and cache.lookup(NS, service_name, None, time.time()) is not None
        )
    ), f"{service_name!r} never cached"
    return cache


def cached_store(server: RedisServer, prefix: str, **options: object) -> RedisStore:
    store = create_store("redis", {"url": server.url, "prefix": prefix, "cache": True, **options})
    assert isinstance(store, RedisStore) and store.cache is True
    return store


class TestCachedRedisStore(StoreContract, WatchContract):
    """The contract, with lookups as keyard makes them: read and cache, then from the cache."""

    @pytest.fixture
    def store(self, redis_server: RedisServer, redis_prefix: str) -> Iterator[RedisStore]:
        store = cached_store(redis_server, redis_prefix)
        started_cache(store)
        yield store
        store.close()

    @pytest.fixture
    def store_config(
        self, redis_server: RedisServer, redis_prefix: str
    ) -> tuple[str, dict[str, object]]:
        return "redis", {"url": redis_server.url, "prefix": redis_prefix, "cache": True}


class CacheOnlyLookups(RedisStore):
    """Every lookup answered from the cache: the service is cached first, then read there."""

    def lookup(
        self, namespace: str, service_name: str, version: str | None, now: float
    ) -> list[Instance]:
        cache = started_cache(self)
        super().lookup(namespace, service_name, version, now)  # caches the service if not yet
        found: list[list[Instance]] = []
        assert poll(
            lambda: (
                (answer := cache.lookup(namespace, service_name, version, now)) is not None
                and not found.append(answer)
            )
        ), f"{service_name!r} never cached"
        return found[0]


class TestRedisStoreCacheOnly(StoreContract):
    """The contract, with every lookup answered by the cache."""

    @pytest.fixture
    def store(self, redis_server: RedisServer, redis_prefix: str) -> Iterator[RedisStore]:
        store = CacheOnlyLookups.from_options(
            {"url": redis_server.url, "prefix": redis_prefix, "cache": True}
        )
        yield store
        store.close()


# -- the option ------------------------------------------------------------------


def test_the_cache_is_off_by_default_and_set_by_the_option_or_the_environment(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    off = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    assert isinstance(off, RedisStore) and off.cache is False
    off.lookup(NS, "web", None, time.time())
    assert off._cache.here() is None, "no cache, no thread without the option"
    off.close()
    loaded = config.load(
        environ={
            "KEYARD_STORE_TYPE": "redis",
            "KEYARD_REDIS_URL": redis_server.url,
            "KEYARD_REDIS_CACHE": "true",
        }
    )
    on = create_store(loaded.store_type, loaded.store_options)
    assert isinstance(on, RedisStore) and on.cache is True
    on.close()


@pytest.mark.parametrize("value", ["yes", 1, "true", None])
def test_a_cache_option_that_is_not_a_boolean_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=f"option cache must be true or false, got {value!r}"):
        create_store("redis", {"cache": value})


# -- changes from elsewhere --------------------------------------------------------


def test_changes_through_another_store_reach_the_cache_within_a_bounded_wait(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    reader = cached_store(redis_server, redis_prefix)
    writer = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        writer.put(make(location="a", ttl=300))
        cache = cached(reader, "web")

        def from_cache() -> list[tuple[str, int]]:
            answer = cache.lookup(NS, "web", None, time.time())
            assert answer is not None, "the cache stopped answering"
            return [(i.location, i.ttl) for i in answer]

        writer.put(make(location="b", ttl=300))
        assert poll(lambda: from_cache() == [("a", 300), ("b", 300)]), from_cache()
        writer.put(make(location="a", ttl=40))
        assert poll(lambda: from_cache() == [("a", 40), ("b", 300)]), from_cache()
        refreshed, new = writer.put(make(location="b", ttl=5), KEEP_ALL)
        assert (refreshed.ttl, new) == (300, False)
        assert poll(lambda: from_cache() == [("a", 40), ("b", 300)]), from_cache()
        assert writer.deregister(make(location="a").key, time.time()) is not None
        assert poll(lambda: from_cache() == [("b", 300)]), from_cache()
        assert locations(reader.lookup(NS, "web", None, time.time())) == ["b"]
    finally:
        reader.close()
        writer.close()


def test_overrides_new_tags_and_removals_elsewhere_reach_the_cache_within_milliseconds(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    reader = cached_store(redis_server, redis_prefix)
    writer = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        instance = make(location="a", ttl=300, tags=("old",))
        writer.put(instance)
        cache = cached(reader, "web")

        def seen(check: Callable[[list[Instance]], bool]) -> float:
            started = time.monotonic()
            assert poll(lambda: check(reader.lookup(NS, "web", None, time.time())))
            return time.monotonic() - started

        writer.set_override(instance.key, "OUT_OF_SERVICE", time.time())
        waited = seen(lambda found: [i.effective_status for i in found] == ["OUT_OF_SERVICE"])
        assert waited < 0.5, f"the override took {waited:.3f} s"
        writer.put(make(location="a", ttl=300, tags=("new",)), frozenset({"ttl"}))
        waited = seen(lambda found: [(i.tags, i.status_override) for i in found] == [
            (("new",), "OUT_OF_SERVICE")])
        assert waited < 0.5, f"the new tags took {waited:.3f} s"
        writer.set_override(instance.key, None, time.time())
        assert seen(lambda found: [i.status_override for i in found] == [None]) < 0.5
        writer.deregister(instance.key, time.time())
        assert seen(lambda found: found == []) < 0.5
        assert cache.lookup(NS, "web", None, time.time()) == [], "answered by the cache"
    finally:
        reader.close()
        writer.close()


def test_own_overrides_are_in_the_cache_at_once(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = cached_store(redis_server, redis_prefix)
    try:
        instance = make(location="a", ttl=300)
        store.put(instance)
        cache = cached(store, "web")
        for status in ("DOWN", None, "OUT_OF_SERVICE", None):
            stored = store.set_override(instance.key, status, time.time())
            assert cache.lookup(NS, "web", None, time.time()) == [stored]
        assert store.set_override(make(location="nowhere").key, "DOWN", time.time()) is None
        # The four overrides' own messages may still be on their way; once they are in,
        # nothing may be left waiting (the override of no instance published nothing).
        wait_until(lambda: cache._own == {}, timeout=5, what="every own write's message arrives")
    finally:
        store.close()


def test_instances_leave_the_cache_at_their_expiry_without_any_write(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    reader = cached_store(redis_server, redis_prefix)
    writer = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        writer.put(make(location="lasting", ttl=300))
        cache = cached(reader, "web")
        brief = make(location="brief", ttl=1)
        writer.put(brief)
        assert poll(lambda: len(reader.lookup(NS, "web", None, time.time())) == 2)
        # At its expiry exactly, and after, never returned; before it, returned.
        assert locations(cache.lookup(NS, "web", None, brief.expires_at - 0.001) or []) == [
            "brief",
            "lasting",
        ]
        assert locations(cache.lookup(NS, "web", None, brief.expires_at) or []) == ["lasting"]
        assert locations(cache.lookup(NS, "web", "1.0", brief.expires_at + 1) or []) == ["lasting"]
        # In real time, nothing written meanwhile.
        time.sleep(max(0.0, brief.expires_at - time.time()))
        assert locations(reader.lookup(NS, "web", None, time.time())) == ["lasting"]
        assert cache.lookup(NS, "web", None, time.time()) is not None, "answered by the cache"
    finally:
        reader.close()
        writer.close()


def test_own_writes_are_in_the_cache_at_once(redis_server: RedisServer, redis_prefix: str) -> None:
    store = cached_store(redis_server, redis_prefix)
    try:
        store.put(make(location="a"))
        cache = cached(store, "web")
        for n in range(50):
            store.put(make(location=f"n{n}", ttl=100 + n))
            answer = cache.lookup(NS, "web", None, time.time())
            assert answer is not None and f"n{n}" in locations(answer)
            refreshed, _ = store.put(make(location=f"n{n}", ttl=5), KEEP_ALL)
            assert refreshed in (cache.lookup(NS, "web", None, time.time()) or [])
            assert store.deregister(make(location=f"n{n}").key, time.time()) is not None
            assert locations(cache.lookup(NS, "web", None, time.time()) or []) == ["a"]
    finally:
        store.close()


def test_concurrent_writes_from_two_processes_leave_the_cache_as_redis(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """This process's writes, applied ahead of the subscription, never undo later ones."""
    mine = cached_store(redis_server, redis_prefix)
    other = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    direct = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        mine.put(make(location="seed"))
        cache = cached(mine, "web")
        stop = time.monotonic() + 1.5

        def churn(store: object, ttl: int) -> None:
            assert isinstance(store, RedisStore)
            n = 0
            while time.monotonic() < stop:
                location = f"k{n % 5}"
                store.put(make(location=location, ttl=ttl))
                if n % 3 == 0:
                    store.deregister(make(location=location).key, time.time())
                n += 1

        threads = [
            threading.Thread(target=churn, args=(mine, 100)),
            threading.Thread(target=churn, args=(mine, 200)),
            threading.Thread(target=churn, args=(other, 300)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        def same_as_redis() -> bool:
            now = time.time()
            truth = [(i.location, i.ttl, i.expires_at) for i in direct.lookup(NS, "web", None, now)]
            cached_now = [
                (i.location, i.ttl, i.expires_at) for i in cache.lookup(NS, "web", None, now) or []
            ]
            return cached_now == truth

        assert poll(same_as_redis)
    finally:
        for store in (mine, other, direct):
            store.close()


# -- when the cache may be incomplete ---------------------------------------------------


@pytest.mark.slow
def test_redis_stopped_and_restarted_lookups_fail_then_recover_without_a_new_store(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    timeout = 0.5
    store = cached_store(own_redis_server, redis_prefix, timeout=timeout)
    try:
        store.put(make(location="before", ttl=300))
        cache = cached(store, "web")

        own_redis_server.stop()

        def unavailable() -> bool:
            try:
                store.lookup(NS, "web", None, time.time())
            except StoreUnavailable:
                return True
            return False

        assert poll(unavailable), "the cache went on answering with Redis down"
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cannot be reached"):
                store.lookup(NS, "web", None, time.time())
            assert time.monotonic() - started < timeout + 1
        assert cache.current is False

        own_redis_server.start()  # empty: no persistence
        assert poll(lambda: not unavailable(), timeout=10)
        assert store.lookup(NS, "web", None, time.time()) == [], "nothing from before the restart"
        other = create_store("redis", {"url": own_redis_server.url, "prefix": redis_prefix})
        try:
            other.put(make(location="after", ttl=300))
            assert poll(
                lambda: (
                    locations(store.lookup(NS, "web", None, time.time())) == ["after"]
                    and locations(cache.lookup(NS, "web", None, time.time()) or []) == ["after"]
                ),
                timeout=10,
            ), "the cache did not come back by itself"
        finally:
            other.close()
    finally:
        store.close()


@pytest.mark.slow
def test_a_paused_redis_is_store_unavailable_once_the_subscription_check_fails(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    timeout = 0.5
    store = cached_store(own_redis_server, redis_prefix, timeout=timeout)
    try:
        store.put(make(location="a", ttl=300))
        cache = cached(store, "web")
        own_redis_server.pause()
        try:
            bound = redis_cache.CHECK_INTERVAL + timeout + 1
            assert poll(lambda: not cache.current, timeout=bound), "never noticed the pause"
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cannot be reached"):
                store.lookup(NS, "web", None, time.time())
            assert time.monotonic() - started < timeout + 1
        finally:
            own_redis_server.resume()
        assert poll(lambda: cache.current, timeout=10)
        assert locations(store.lookup(NS, "web", None, time.time())) == ["a"]
    finally:
        store.close()


def test_a_flushall_leaves_no_stale_instance_in_the_cache(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = cached_store(redis_server, redis_prefix)
    other = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    client = redis.Redis.from_url(redis_server.url)
    try:
        store.put(make(location="old", ttl=300))
        cache = cached(store, "web")
        client.flushall()
        other.put(make(location="new", ttl=300))  # a write after the flush, elsewhere
        bound = redis_cache.CHECK_INTERVAL + PROPAGATION
        assert poll(
            lambda: locations(store.lookup(NS, "web", None, time.time())) == ["new"], timeout=bound
        ), locations(store.lookup(NS, "web", None, time.time()))
        assert poll(lambda: cache.lookup(NS, "web", None, time.time()) is not None)
        assert locations(cache.lookup(NS, "web", None, time.time()) or []) == ["new"]
    finally:
        client.close()
        other.close()
        store.close()


# -- the thread and fork ---------------------------------------------------------------


def test_the_thread_is_a_daemon_and_stops_on_close(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = cached_store(redis_server, redis_prefix)
    cache = started_cache(store)
    thread = cache._background.thread
    assert thread is not None and thread.daemon and thread.is_alive()
    store.close()
    thread.join(timeout=redis_cache.CHECK_INTERVAL + 2)
    assert not thread.is_alive()
    assert cache.current is False


def test_a_cache_that_waits_uses_no_cpu(redis_server: RedisServer, redis_prefix: str) -> None:
    """The thread blocks on the subscription (and checks twice a second): no busy loop."""
    store = cached_store(redis_server, redis_prefix)
    try:
        started_cache(store)
        before = time.process_time()
        time.sleep(1.0)
        assert time.process_time() - before < 0.1
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_builds_its_own_cache(redis_server: RedisServer, redis_prefix: str) -> None:
    store = cached_store(redis_server, redis_prefix)
    writer = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        store.put(make(location="a", ttl=300))
        parent_cache = cached(store, "web")
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if it has a cache of its own that works
            code = 1
            try:
                child_cache = cached(store, "web")
                writer.put(make(location="b", ttl=300))
                ok = poll(
                    lambda: (
                        locations(child_cache.lookup(NS, "web", None, time.time()) or [])
                        == ["a", "b"]
                    )
                )
                if child_cache is not parent_cache and child_cache.owned and ok:
                    code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish")
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's cache saw the child's write too.
        assert poll(
            lambda: locations(parent_cache.lookup(NS, "web", None, time.time()) or [])
            == ["a", "b"]
        )
    finally:
        writer.close()
        store.close()


def test_the_cache_holds_at_most_max_services(
    redis_server: RedisServer, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_cache, "MAX_SERVICES", 3)
    store = cached_store(redis_server, redis_prefix)
    try:
        for n in range(6):
            store.put(make(service=f"s{n}", location="x"))
            cached(store, f"s{n}")
        cache = started_cache(store)
        assert list(cache._by_name) == [(NS, "s3"), (NS, "s4"), (NS, "s5")]
        assert locations(store.lookup(NS, "s0", None, time.time())) == ["x"], "read from Redis"
    finally:
        store.close()


# -- the order of this process's writes and the subscription (no thread, no server) -----


def member(instance: Instance) -> bytes:
    return json.dumps(instance.instance_id).encode("ascii")


def new_cache() -> RedisCache:
    return RedisCache(
        redis.Redis(port=1),  # never connected: the test plays the subscription
        channel="c",
        epoch_key="e",
        timeout=1.0,
        parse_record=parse_record,
    )


def unstarted_cache_with_web(*instances: Instance) -> RedisCache:
    """A cache fed by hand: current, with ``web`` cached from ``instances``."""
    cache = new_cache()
    cache._current = True
    token = cache.begin_load(NS, "web", b"default/web")
    assert token is not None
    cache._receive(token + b"\nmark\ndefault/web")
    cache.finish_load(token, {member(i): i for i in instances})
    assert cache.lookup(NS, "web", None, time.time()) == list(instances)
    return cache


def put(write_id: bytes, instance: Instance) -> bytes:
    return b"\n".join(
        [write_id, b"put", b"default/web", member(instance), record_text(instance).encode()]
    )


def delete(write_id: bytes, location: str) -> bytes:
    return b"\n".join([write_id, b"del", b"default/web", member(make(location=location))])


def test_an_own_write_received_before_its_reply_is_not_applied_again_over_later_changes() -> None:
    cache = unstarted_cache_with_web()
    mine = make(location="k", ttl=100)
    write_id, generation = cache.begin_write(b"default/web", member(mine))
    cache._receive(put(write_id.encode(), mine))  # published, received before the reply
    cache._receive(delete(b"", "k"))  # then another process removes it
    cache.finish_write(write_id, generation, mine)  # the reply, late
    assert cache.lookup(NS, "web", None, time.time()) == []


def test_changes_older_than_an_own_write_applied_ahead_are_skipped() -> None:
    cache = unstarted_cache_with_web()
    older = make(location="k", ttl=7)
    mine = make(location="k", ttl=100)
    write_id, generation = cache.begin_write(b"default/web", member(mine))
    cache.finish_write(write_id, generation, mine)  # the reply first: applied at once
    assert cache.lookup(NS, "web", None, time.time()) == [mine]
    cache._receive(put(b"other-1", older))  # another process's write, before mine in Redis
    assert cache.lookup(NS, "web", None, time.time()) == [mine]
    cache._receive(put(write_id.encode(), mine))
    cache._receive(delete(b"other-2", "k"))  # after mine: applied
    assert cache.lookup(NS, "web", None, time.time()) == []
    assert cache._own == {} and cache._ahead == {}


def test_an_own_deregistration_is_applied_at_once() -> None:
    kept = make(location="k", ttl=100)
    cache = unstarted_cache_with_web(kept)
    write_id, generation = cache.begin_write(b"default/web", member(kept))
    cache.finish_write(write_id, generation, REMOVED)
    assert cache.lookup(NS, "web", None, time.time()) == []


def test_changes_between_a_read_and_its_mark_are_not_applied_twice() -> None:
    cache = new_cache()
    cache._current = True
    token = cache.begin_load(NS, "web", b"default/web")
    assert token is not None
    a, b = make(location="a"), make(location="b")
    cache._receive(delete(b"x", "a"))  # before the read: already in what it read
    cache._receive(token + b"\nmark\ndefault/web")
    cache._receive(put(b"y", b))  # after the read: applied on top of it
    assert cache.lookup(NS, "web", None, time.time()) is None, "not cached before the read"
    cache.finish_load(token, {member(a): a})
    assert cache.lookup(NS, "web", None, time.time()) == [a, b]


def test_a_put_message_that_is_not_a_record_is_ignored() -> None:
    a = make(location="a")
    cache = unstarted_cache_with_web(a)
    cache._receive(b"\n".join([b"x", b"put", b"default/web", member(a), b"not json\n{"]))
    assert cache.lookup(NS, "web", None, time.time()) == [a]
