"""The redis store reads what keyard 0.2.0 wrote: the fixture loaded with plain commands."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from keyard.model import DEFAULT_NAMESPACE, Instance, InstanceKey, ServiceSummary
from keyard.model import derived_instance_id as derived
from keyard.stores import create_store
from keyard.stores.redis import RedisStore
from keyard.testing.store_contract import make, same_record
from tests.redis_server import RedisServer

FIXTURE = Path(__file__).parent / "fixtures" / "keyard_0_2_0" / "redis.json"
NS = DEFAULT_NAMESPACE
LIVE_UNTIL = 4102444800.0
UNICODE = "ünïcødé/服务"


def load_fixture(server: RedisServer, prefix: str = "keyard") -> redis.Redis:
    """The fixture's keys in ``server`` (under ``prefix`` instead of ``keyard``), by hand."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    for key, entry in json.loads(FIXTURE.read_text()).items():
        key = prefix + key[len("keyard"):]
        if entry["type"] == "zset":
            client.zadd(key, {member: score for member, score in entry["value"]})
        else:
            client.hset(key, mapping=entry["value"])
    return client


def expected(service: str, version: str, location: str, ttl: int) -> Instance:
    since = LIVE_UNTIL - ttl
    return Instance(
        namespace=NS,
        service_name=service,
        instance_id=derived(version, location),
        version=version,
        location=location,
        status="UP",
        status_override=None,
        tags=(),
        metadata={},
        weight=100,
        ttl=ttl,
        registered_at=since,
        last_heartbeat_at=since,
        expires_at=LIVE_UNTIL,
    )


LIVE = [
    expected("payments", "1.0", "http://10.0.0.9:9000", 30),
    expected("payments", "2", "http://10.0.0.7:9000", 30),
    expected("payments", "2", "http://10.0.0.8:9000", 60),
    expected("search", "1.0", "http://10.0.1.1:80/a?b=1&c=2#frag", 86400),
    expected(UNICODE, "v/1", "..", 45),
]


def open_store(server: RedisServer, prefix: str = "keyard", **options: object) -> RedisStore:
    store = create_store("redis", {"url": server.url, "prefix": prefix, **options})
    assert isinstance(store, RedisStore)
    return store


def check_upgraded(store: RedisStore) -> None:
    now = time.time()
    for service in ("payments", "search", UNICODE):
        found = store.lookup(NS, service, None, now)
        wanted = [i for i in LIVE if i.service_name == service]
        assert len(found) == len(wanted), service
        for got, want in zip(found, wanted):
            same_record(got, want)
            assert got == want, "times exact too"
        for want in wanted:
            same_record(store.get(want.key, now), want)
    assert store.lookup(NS, "gone", None, now) == []
    expired = InstanceKey(NS, "payments", derived("2", "http://10.0.0.66:9000"))
    assert store.get(expired, now) is None
    assert store.services(NS, now) == [
        ServiceSummary("payments", 3, 3),
        ServiceSummary("search", 1, 1),
        ServiceSummary(UNICODE, 1, 1),
    ]


def test_every_live_instance_of_0_2_0_is_read_field_by_field_and_expired_ones_are_gone(
    own_redis_server: RedisServer,
) -> None:
    client = load_fixture(own_redis_server)
    store = open_store(own_redis_server)
    try:
        check_upgraded(store)
        assert not [k for k in client.keys("*") if k.endswith((":expiry", ":ttl"))], (
            "the old keys are removed once converted"
        )
        assert store.upgrade() == 0
    finally:
        client.close()
        store.close()


def test_opening_again_converts_nothing_twice_and_keeps_later_changes(
    own_redis_server: RedisServer,
) -> None:
    client = load_fixture(own_redis_server)
    first = open_store(own_redis_server)
    key = LIVE[0].key
    first.set_override(key, "DOWN", time.time())
    second = open_store(own_redis_server)
    try:
        assert second.upgrade() == 0
        found = second.get(key, time.time())
        assert found is not None and found.status_override == "DOWN"
        assert second.services(NS, time.time())[0] == ServiceSummary("payments", 3, 2)
    finally:
        client.close()
        first.close()
        second.close()


def test_several_processes_opening_at_once_convert_each_instance_once(
    own_redis_server: RedisServer,
) -> None:
    client = load_fixture(own_redis_server)
    stores: list[RedisStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_one() -> None:
        try:
            barrier.wait(timeout=10)
            stores.append(open_store(own_redis_server))  # each converts as it opens
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == [] and len(stores) == 8
        for store in stores:
            check_upgraded(store)
        assert not [k for k in client.keys("*") if k.endswith((":expiry", ":ttl"))]
    finally:
        client.close()
        for store in stores:
            store.close()


def test_a_record_of_the_new_layout_wins_over_the_old_one(own_redis_server: RedisServer) -> None:
    newer = open_store(own_redis_server)  # nothing to convert yet
    fresh = make("search", "1.0", "http://10.0.1.1:80/a?b=1&c=2#frag", ttl=300,
                 instance_id=derived("1.0", "http://10.0.1.1:80/a?b=1&c=2#frag"), tags=("new",))
    newer.put(fresh)
    client = load_fixture(own_redis_server)  # a keyard 0.2.0 still running wrote these
    store = open_store(own_redis_server)
    try:
        found = store.lookup(NS, "search", None, time.time())
        assert len(found) == 1
        same_record(found[0], fresh)
    finally:
        client.close()
        newer.close()
        store.close()


def test_only_the_stores_own_prefix_is_converted(own_redis_server: RedisServer) -> None:
    client = load_fixture(own_redis_server, prefix="other")
    load_fixture(own_redis_server, prefix="keyard:b").close()
    store = open_store(own_redis_server)
    try:
        assert store.lookup(NS, "payments", None, time.time()) == []
        assert len(client.keys("other:{*}:expiry")) == 4
        assert len(client.keys("keyard:b:{*}:expiry")) == 4
    finally:
        client.close()
        store.close()
    converted = open_store(own_redis_server, prefix="keyard:b")
    try:
        assert len(converted.lookup(NS, "payments", None, time.time())) == 3
    finally:
        converted.close()


def test_a_cached_lookup_elsewhere_sees_the_converted_instances(
    own_redis_server: RedisServer,
) -> None:
    reader = open_store(own_redis_server, cache=True)
    try:
        mirror = reader._cache_here()
        assert mirror is not None
        deadline = time.monotonic() + 10
        while not mirror.current and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.lookup(NS, "payments", None, time.time()) == []  # copied, empty
        client = load_fixture(own_redis_server)
        open_store(own_redis_server).close()  # another process opens and converts
        client.close()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if len(reader.lookup(NS, "payments", None, time.time())) == 3:
                break
            time.sleep(0.001)
        assert len(mirror.lookup(NS, "payments", None, time.time()) or []) == 3
    finally:
        reader.close()


@pytest.mark.parametrize("prefix", ["keyard*", "key[a]rd", "k\\ey"])
def test_a_prefix_with_glob_characters_converts_only_its_own_keys(
    own_redis_server: RedisServer, prefix: str
) -> None:
    load_fixture(own_redis_server, prefix="keyard").close()
    load_fixture(own_redis_server, prefix=prefix).close()
    store = open_store(own_redis_server, prefix=prefix)
    other = open_store(own_redis_server)
    try:
        assert len(store.lookup(NS, "payments", None, time.time())) == 3
        assert len(other.lookup(NS, "payments", None, time.time())) == 3
    finally:
        store.close()
        other.close()
