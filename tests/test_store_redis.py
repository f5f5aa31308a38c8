"""The Redis store against a real redis-server: the contract, options, keys, faults."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from keyard.errors import ConfigError, StoreUnavailable
from keyard.model import DEFAULT_NAMESPACE, InstanceKey, ServiceSummary
from keyard.stores import create_store
from keyard.stores.redis import KEY_GRACE_MS, RedisStore
from keyard.testing.store_contract import StoreContract, WatchContract, locations, make
from tests.redis_server import RedisServer

NS = DEFAULT_NAMESPACE


class TestRedisStore(StoreContract, WatchContract):
    @pytest.fixture
    def store(self, redis_server: RedisServer, redis_prefix: str):
        store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
        yield store
        store.close()

    @pytest.fixture
    def store_config(
        self, redis_server: RedisServer, redis_prefix: str
    ) -> tuple[str, dict[str, object]]:
        return "redis", {"url": redis_server.url, "prefix": redis_prefix}


def test_the_redis_store_says_it_is_shared_across_processes() -> None:
    assert RedisStore.shared_across_processes is True


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


# -- options -------------------------------------------------------------------


def test_host_port_db_password_options(redis_server: RedisServer, redis_prefix: str) -> None:
    store = create_store(
        "redis",
        {"host": "127.0.0.1", "port": redis_server.port, "db": 3, "prefix": redis_prefix},
    )
    try:
        assert isinstance(store, RedisStore)
        kwargs = store.client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", redis_server.port, 3)
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 2.0
        store.put(make())
        client = raw_client(redis_server)
        assert client.execute_command("SELECT", 3) and client.keys(f"{redis_prefix}:*")
        client.close()
        assert raw_client(redis_server).keys(f"{redis_prefix}:*") == [], "nothing in db 0"
    finally:
        store.close()


def test_defaults() -> None:
    store = create_store("redis")
    assert isinstance(store, RedisStore)
    kwargs = store.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "localhost",
        6379,
        0,
        None,
    )
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 2.0
    assert store.prefix == "keyard"
    store.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"hots": "x"},
            "unknown option(s) hots='x'; valid options: cache, db, host, password, port, ",
        ),
        ({"url": "http://x"}, "option url must start with redis://, rediss:// or unix://"),
        ({"url": "redis://h", "port": 1}, "give either option url or port, not both"),
        ({"url": 5}, "option url must start with redis://"),
        ({"url": "redis://[::1"}, "is invalid: Invalid IPv6 URL"),
        ({"url": "redis://h/abc"}, "the path must be a database number"),
        ({"url": "redis://h:0/0"}, "the port must be 1 to 65535"),
        ({"url": "redis://:6379/0"}, "names no host"),
        ({"url": "unix://"}, "names no socket"),
        ({"port": "6379"}, "option port must be a whole number, got '6379'"),
        ({"port": 70000}, "option port must be between 1 and 65535, got 70000"),
        ({"db": -1}, "option db must be between 0 and 2147483647, got -1"),
        ({"prefix": ""}, "option prefix must be a non-empty string, got ''"),
        ({"timeout": 0}, "option timeout must be greater than 0 and at most 60 seconds, got 0"),
        ({"timeout": "2"}, "option timeout must be a number of seconds, got '2'"),
        ({"password": True}, "option password must be a non-empty string, got True"),
    ],
)
def test_invalid_options_name_the_option_and_value(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_store("redis", options)
    assert message in str(caught.value)


def test_a_password_in_the_url_never_appears_in_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        create_store("redis", {"url": "http://user:s3cret@host:1/0"})
    assert "s3cret" not in str(caught.value) and "user:***@host:1" in str(caught.value)
    store = create_store(
        "redis", {"url": "redis://:s3cret@127.0.0.1:1/0", "timeout": 0.5}
    )  # nothing listens on port 1
    with pytest.raises(StoreUnavailable) as unavailable:
        store.lookup(NS, "web", None, time.time())
    assert "s3cret" not in str(unavailable.value) and ":***@127.0.0.1:1" in str(unavailable.value)
    store.close()


def test_numbers_from_environment_variables_are_taken_as_text(redis_server: RedisServer) -> None:
    # KEYARD_REDIS_PREFIX=2024 and KEYARD_REDIS_PASSWORD=1234 arrive parsed as JSON numbers.
    store = create_store("redis", {"port": redis_server.port, "prefix": 2024, "password": 1234})
    assert isinstance(store, RedisStore) and store.prefix == "2024"
    assert store.client.connection_pool.connection_kwargs["password"] == "1234"
    store.close()


# -- keys, prefixes, expiry ----------------------------------------------------


def test_prefixes_isolate_registries_sharing_one_redis(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    first = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    second = create_store("redis", {"url": redis_server.url, "prefix": f"{redis_prefix}:b"})
    third = create_store("redis", {"url": redis_server.url, "prefix": f"{redis_prefix}:{{b"})
    try:
        assert first.put(make(location="first"))[1] is True
        assert second.put(make(location="second"))[1] is True
        assert third.put(make(service="b}:{web", location="third"))[1] is True
        assert locations(first.lookup(NS, "web", None, time.time())) == ["first"]
        assert locations(second.lookup(NS, "web", None, time.time())) == ["second"]
        assert third.lookup(NS, "web", None, time.time()) == []
        assert first.lookup(NS, "b}:{web", None, time.time()) == []
        assert second.deregister(make(location="first").key, time.time()) is None
        assert first.put(make(location="first"))[1] is False
        client = raw_client(redis_server)
        keys = client.keys(f"{redis_prefix}*")
        client.close()
        # Per store: the service's two keys and the namespace's index; the namespace's
        # sequence, services' indexes and change log, and the services by expiry.
        assert all(key.startswith(redis_prefix) for key in keys) and len(keys) == 21
    finally:
        for store in (first, second, third):
            store.close()


def test_keys_are_ascii_and_escape_separators(redis_server: RedisServer, redis_prefix: str) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        store.put(make(service="a:{b}/ü", namespace="n/s", location="x", instance_id="i\nd"))
        client = raw_client(redis_server)
        keys = sorted(client.keys(f"{redis_prefix}:*"))
        members = client.zrange(f"{redis_prefix}:{{n%2Fs/a%3A%7Bb%7D%2F%C3%BC}}:leases", 0, -1)
        client.close()
        assert keys == sorted([
            f"{redis_prefix}:{{n%2Fs/a%3A%7Bb%7D%2F%C3%BC}}:leases",
            f"{redis_prefix}:{{n%2Fs/a%3A%7Bb%7D%2F%C3%BC}}:records",
            f"{redis_prefix}:{{n%2Fs}}:services",
            f"{redis_prefix}:{{n%2Fs}}:sequence",
            f"{redis_prefix}:{{n%2Fs}}:indexes",
            f"{redis_prefix}:{{n%2Fs}}:log",
            f"{redis_prefix}:expiring",
        ])
        assert members == ['"i\\nd"'], "members are ASCII, without a newline"
    finally:
        store.close()


def test_values_keyard_did_not_write_are_ignored_by_lookups_and_gets(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    assert isinstance(store, RedisStore)
    client = raw_client(redis_server)
    try:
        store.put(make(service="web", version="1.0", location="real"))
        leases, records, _ = store._keys(NS, "web")
        nested = "[" * 100_000 + "]" * 100_000
        for n, foreign in enumerate(("not json", '{"a": 1}', '["only one"]', "[1, 2]", nested)):
            client.zadd(leases, {f"foreign-{n}": time.time() + 600})
            client.hset(records, f"foreign-{n}", foreign)
        found = store.lookup(NS, "web", None, time.time())
        assert [(i.version, i.location) for i in found] == [("1.0", "real")]
        assert store.get(InstanceKey(NS, "web", "foreign-1"), time.time()) is None
    finally:
        client.close()
        store.close()


def test_lone_surrogates_round_trip(redis_server: RedisServer, redis_prefix: str) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        odd = "\ud800x\udfff"
        instance = make(service=odd, version=odd, location=odd, namespace=odd, instance_id=odd,
                        tags=(odd,), metadata={odd: odd})
        assert store.put(instance)[1] is True
        found = store.lookup(odd, odd, odd, time.time())
        assert found == [instance]
        assert store.get(instance.key, time.time()) == instance
    finally:
        store.close()


def test_a_heartbeat_keeps_times_to_the_exact_double(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """The merge happens in Lua without rounding: exactly what merged() computes."""
    from keyard.stores.base import merged
    from keyard.testing.store_contract import KEEP_ALL

    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        start = int(time.time()) + 0.123_456_789_1
        first = make(ttl=600, tags=("a",), now=start)
        store.put(first)
        store.set_override(first.key, "DOWN", start)
        beat = make(ttl=30, now=start + 0.1 + 1e-9)
        stored, new = store.put(beat, KEEP_ALL)
        live = first._replace(status_override="DOWN")
        assert new is False and stored == merged(live, beat, KEEP_ALL)
        assert store.get(first.key, start) == stored
        assert store.lookup(NS, "web", None, start) == [stored]
    finally:
        store.close()


def test_expired_members_are_purged_by_writes_and_keys_expire_after_the_last_instance(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    assert isinstance(store, RedisStore)
    client = redis.Redis.from_url(redis_server.url)
    leases, records, index = store._keys(NS, "web")
    try:
        now = time.time()
        for n in range(20):
            store.put(make(location=f"old-{n}", ttl=5, now=now - 100))
        store.put(make(location="live", ttl=100, now=now))
        assert client.zcard(leases) == 1 and client.hlen(records) == 1
        assert client.hkeys(records) == [b'"1.0@live"']
        key_ttl_ms = client.pttl(leases)
        assert 100_000 + KEY_GRACE_MS - 5000 < key_ttl_ms <= 100_000 + KEY_GRACE_MS
        assert client.pttl(records) == pytest.approx(key_ttl_ms, abs=1000)
        assert client.pttl(index) == pytest.approx(key_ttl_ms, abs=1000)
        # A shorter registration never shortens the keys' life below the longest instance.
        store.put(make(location="brief", ttl=1, now=now))
        assert client.pttl(leases) > 99_000 + KEY_GRACE_MS - 5000
        assert client.pttl(index) > 99_000 + KEY_GRACE_MS - 5000
        assert store.deregister(make(location="live").key, now) is not None
        assert store.deregister(make(location="brief").key, now) is not None
        assert client.exists(leases, records) == 0, "empty keys vanish"
        assert client.zcard(index) == 0, "and the service leaves the namespace's index"
    finally:
        client.close()
        store.close()


def test_services_reads_the_namespace_index_without_scanning(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    client = raw_client(redis_server)
    try:
        now = time.time()
        store.put(make("web", location="a", now=now))
        store.put(make("api", location="a", status="DOWN", now=now))
        store.put(make("brief", location="a", ttl=1, now=now - 10))
        client.mset({f"{redis_prefix}:unrelated:{n}": "x" for n in range(100)})
        client.config_resetstat()
        assert store.services(NS, now) == [ServiceSummary("api", 1, 0), ServiceSummary("web", 1, 1)]
        stats = client.info("commandstats")
        assert not any(name in stats for name in ("cmdstat_scan", "cmdstat_keys")), stats
    finally:
        client.close()
        store.close()


# -- faults --------------------------------------------------------------------


@pytest.mark.slow
def test_redis_down_is_store_unavailable_within_the_timeout_and_the_store_recovers(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    timeout = 0.5
    store = create_store(
        "redis", {"url": own_redis_server.url, "prefix": redis_prefix, "timeout": timeout}
    )
    a = make(location="a", ttl=300)
    try:
        assert store.put(a)[1] is True

        # Paused: the port accepts connections but nothing answers -> a timeout.
        own_redis_server.pause()
        for call in (
            lambda: store.lookup(NS, "web", None, time.time()),
            lambda: store.put(make(location="b")),
            lambda: store.get(a.key, time.time()),
            lambda: store.set_override(a.key, "DOWN", time.time()),
            lambda: store.deregister(a.key, time.time()),
            lambda: store.services(NS, time.time()),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cannot be reached"):
                call()
            assert time.monotonic() - started < timeout + 1
        own_redis_server.resume()
        # What the timed-out calls had sent may or may not have run; new calls work.
        assert store.put(make(location="c"))[1] is True
        assert "c" in locations(store.lookup(NS, "web", None, time.time()))

        # Stopped: connections are refused -> at once.
        own_redis_server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot be reached") as caught:
            store.lookup(NS, "web", None, time.time())
        assert time.monotonic() - started < timeout + 1
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)

        # Back on the same port (empty: no persistence): the same store object works again,
        # scripts reloaded and all.
        own_redis_server.start()
        assert store.lookup(NS, "web", None, time.time()) == []
        assert store.put(make(location="a"))[1] is True
        assert store.put(make(location="a"))[1] is False
        assert store.deregister(a.key, time.time()) is not None
    finally:
        store.close()


def test_a_store_opened_while_redis_is_down_upgrades_and_serves_once_it_is_up(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    own_redis_server.stop()
    store = create_store(
        "redis", {"url": own_redis_server.url, "prefix": redis_prefix, "timeout": 0.5}
    )
    try:
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.lookup(NS, "web", None, time.time())
        own_redis_server.start()
        client = raw_client(own_redis_server)
        client.zadd(f"{redis_prefix}:{{web}}:expiry", {'["1.0","old"]': 4102444800.0})
        client.hset(f"{redis_prefix}:{{web}}:ttl", '["1.0","old"]', "30")
        client.close()
        assert locations(store.lookup(NS, "web", None, time.time())) == ["old"]
    finally:
        store.close()


@pytest.mark.parametrize("where", ["option", "url"])
def test_a_redis_that_needs_a_password_says_so(
    own_redis_server: RedisServer, redis_prefix: str, where: str
) -> None:
    client = raw_client(own_redis_server)
    client.config_set("requirepass", "s3cret")
    client.close()
    store = create_store("redis", {"url": own_redis_server.url, "prefix": redis_prefix})
    try:
        for call in (
            lambda: store.lookup(NS, "web", None, time.time()),
            lambda: store.put(make()),
            lambda: store.get(make().key, time.time()),
            lambda: store.services(NS, time.time()),
        ):
            with pytest.raises(StoreUnavailable) as caught:
                call()
            message = str(caught.value)
            assert "needs a password: set the redis store's password option" in message
            assert "HELLO" not in message and "NOAUTH" not in message
    finally:
        store.close()
    good = (
        {"port": own_redis_server.port, "host": "127.0.0.1", "password": "s3cret"}
        if where == "option"
        else {"url": f"redis://:s3cret@127.0.0.1:{own_redis_server.port}/0"}
    )
    store = create_store("redis", {**good, "prefix": redis_prefix})
    try:
        assert store.put(make())[1] is True
    finally:
        store.close()
    wrong = (
        {"port": own_redis_server.port, "host": "127.0.0.1", "password": "wrong-one"}
        if where == "option"
        else {"url": f"redis://:wrong-one@127.0.0.1:{own_redis_server.port}/0"}
    )
    store = create_store("redis", {**wrong, "prefix": redis_prefix})
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.lookup(NS, "web", None, time.time())
        assert "refused the password keyard gave" in str(caught.value)
        assert "wrong-one" not in str(caught.value)
    finally:
        store.close()


def test_configured_from_environment_variables(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    from keyard.helpers import config

    loaded = config.load(
        environ={
            "KEYARD_STORE_TYPE": "redis",
            "KEYARD_REDIS_URL": redis_server.url,
            "KEYARD_REDIS_PREFIX": redis_prefix,
            "KEYARD_REDIS_TIMEOUT": "0.5",
        }
    )
    store = create_store(loaded.store_type, loaded.store_options)
    try:
        assert isinstance(store, RedisStore) and store.prefix == redis_prefix
        assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 0.5
        assert store.put(make())[1] is True
    finally:
        store.close()


def test_a_server_that_does_not_speak_redis_is_store_unavailable(redis_prefix: str) -> None:
    """Pointed at an HTTP server by mistake: StoreUnavailable saying so, never a crash."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        stop = threading.Event()

        def answer_like_http() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                with connection:
                    connection.recv(4096)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_like_http, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        store = create_store(
            "redis", {"url": f"redis://127.0.0.1:{port}/0", "prefix": redis_prefix, "timeout": 1}
        )
        key = make(location="x").key
        try:
            for call in (
                lambda: store.lookup(NS, "web", None, time.time()),
                lambda: store.put(make()),
                lambda: store.get(key, time.time()),
                lambda: store.deregister(key, time.time()),
                lambda: store.set_override(key, "DOWN", time.time()),
            ):
                with pytest.raises(StoreUnavailable, match="did not answer as a Redis server"):
                    call()
        finally:
            stop.set()
            store.close()
    thread.join(timeout=5)


# -- change indexes ---------------------------------------------------------------


def test_the_change_log_forgets_what_is_older_than_it_keeps(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    from keyard.errors import IndexTooOld

    store = RedisStore(redis.Redis.from_url(redis_server.url), prefix=redis_prefix,
                       log_seconds=0.2)
    try:
        start = store.change_index(NS, None)
        store.put(make(location="a"))
        time.sleep(0.3)
        store.put(make(location="b"))
        with pytest.raises(IndexTooOld, match="read everything"):
            store.changes_since(NS, start)
        assert [c.instance.location for c in store.changes_since(NS, start + 1)] == ["b"]
    finally:
        store.close()


def test_an_outage_during_a_wait_raises_store_unavailable_within_the_timeout(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": own_redis_server.url, "prefix": redis_prefix,
                                   "timeout": 0.5})
    try:
        index = store.change_index(NS, "web")
        failures: list[BaseException] = []
        ended: list[float] = []

        def wait() -> None:
            try:
                store.wait_for_change(NS, "web", index, 30)
            except StoreUnavailable as exc:
                failures.append(exc)
            ended.append(time.monotonic())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        own_redis_server.stop()
        stopped = time.monotonic()
        waiter.join(timeout=15)
        assert failures, "the wait ended with StoreUnavailable"
        assert ended[0] - stopped < 5.0
    finally:
        store.close()
