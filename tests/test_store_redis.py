"""The Redis store against a real redis-server: the contract, options, keys, faults."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from keyard.errors import ConfigError, StoreUnavailable
from keyard.stores import create_store
from keyard.model import DEFAULT_NAMESPACE, InstanceKey
from keyard.stores.redis import KEY_GRACE_MS, RedisStore
from keyard.testing.store_contract import StoreContract, locations, make
from tests.redis_server import RedisServer

NS = DEFAULT_NAMESPACE


class TestRedisStore(StoreContract):
    @pytest.fixture
    def store(self, redis_server: RedisServer, redis_prefix: str):
        store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
        yield store
        store.close()


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
        store.register(make())
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
        store.lookup("web", None, time.time())
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
        assert first.register(make(location="first")) is True
        assert second.register(make(location="second")) is True
        assert third.register(make(service="b}:{web", location="third")) is True
        assert locations(first.lookup("web", None, time.time())) == ["first"]
        assert locations(second.lookup("web", None, time.time())) == ["second"]
        assert third.lookup("web", None, time.time()) == []
        assert first.lookup("b}:{web", None, time.time()) == []
        assert second.deregister("web", "1.0", "first", time.time()) is False
        assert first.register(make(location="first")) is False
        client = raw_client(redis_server)
        keys = client.keys(f"{redis_prefix}*")
        client.close()
        assert all(key.startswith(redis_prefix) for key in keys) and len(keys) == 6
    finally:
        for store in (first, second, third):
            store.close()


def test_keys_are_ascii_and_escape_separators(redis_server: RedisServer, redis_prefix: str) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        store.register(make(service="a:{b}/ü", location="x"))
        client = raw_client(redis_server)
        keys = sorted(client.keys(f"{redis_prefix}:*"))
        client.close()
        assert keys == [
            f"{redis_prefix}:{{a%3A%7Bb%7D%2F%C3%BC}}:{kind}" for kind in ("expiry", "ttl")
        ]
    finally:
        store.close()


def test_members_keyard_did_not_write_are_ignored_by_lookups(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    client = raw_client(redis_server)
    try:
        store.register(make(service="web", version="1.0", location="real"))
        expiry_key, ttl_key = f"{redis_prefix}:{{web}}:expiry", f"{redis_prefix}:{{web}}:ttl"
        nested = "[" * 100_000 + "]" * 100_000
        for foreign in ("not json", '{"a": 1}', '["only one"]', "[1, 2]", nested):
            client.zadd(expiry_key, {foreign: time.time() + 600})
            client.hset(ttl_key, foreign, 600)
        found = store.lookup("web", None, time.time())
        assert [(i.version, i.location) for i in found] == [("1.0", "real")]
    finally:
        client.close()
        store.close()


def test_lone_surrogates_round_trip(redis_server: RedisServer, redis_prefix: str) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    try:
        odd = "\ud800x\udfff"
        assert store.register(make(service=odd, version=odd, location=odd)) is True
        found = store.lookup(odd, odd, time.time())
        assert [(i.service_name, i.version, i.location) for i in found] == [(odd, odd, odd)]
    finally:
        store.close()


def test_expired_members_are_purged_by_writes_and_keys_expire_after_the_last_instance(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": redis_server.url, "prefix": redis_prefix})
    assert isinstance(store, RedisStore)
    client = redis.Redis.from_url(redis_server.url)
    expiry_key, ttl_key = store._keys("web")
    try:
        now = time.time()
        for n in range(20):
            store.register(Instance("web", "1.0", f"old-{n}", 5, now - 100 + 5))
        store.register(Instance("web", "1.0", "live", 100, now + 100))
        assert client.zcard(expiry_key) == 1 and client.hlen(ttl_key) == 1
        assert client.hkeys(ttl_key) == [b'["1.0","live"]']
        key_ttl_ms = client.pttl(expiry_key)
        assert 100_000 + KEY_GRACE_MS - 5000 < key_ttl_ms <= 100_000 + KEY_GRACE_MS
        assert client.pttl(ttl_key) == pytest.approx(key_ttl_ms, abs=1000)
        # A shorter registration never shortens the keys' life below the longest instance.
        store.register(Instance("web", "1.0", "brief", 1, now + 1))
        assert client.pttl(expiry_key) > 99_000 + KEY_GRACE_MS - 5000
        assert store.deregister("web", "1.0", "live", now) is True
        assert store.deregister("web", "1.0", "brief", now) is True
        assert client.exists(expiry_key, ttl_key) == 0, "empty keys vanish"
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
    try:
        assert store.register(make(location="a", ttl=300)) is True

        # Paused: the port accepts connections but nothing answers -> a timeout.
        own_redis_server.pause()
        for call in (
            lambda: store.lookup("web", None, time.time()),
            lambda: store.register(make(location="b")),
            lambda: store.get("web", "1.0", "a", time.time()),
            lambda: store.deregister("web", "1.0", "a", time.time()),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cannot be reached"):
                call()
            assert time.monotonic() - started < timeout + 1
        own_redis_server.resume()
        # What the timed-out calls had sent may or may not have run; new calls work.
        assert store.register(make(location="c")) is True
        assert "c" in locations(store.lookup("web", None, time.time()))

        # Stopped: connections are refused -> at once.
        own_redis_server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot be reached") as caught:
            store.lookup("web", None, time.time())
        assert time.monotonic() - started < timeout + 1
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)

        # Back on the same port (empty: no persistence): the same store object works again,
        # scripts reloaded and all.
        own_redis_server.start()
        assert store.lookup("web", None, time.time()) == []
        assert store.register(make(location="a")) is True
        assert store.register(make(location="a")) is False
        assert store.deregister("web", "1.0", "a", time.time()) is True
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
        assert store.register(make()) is True
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
        try:
            for call in (
                lambda: store.lookup("web", None, time.time()),
                lambda: store.register(make()),
                lambda: store.get("web", "1.0", "x", time.time()),
                lambda: store.deregister("web", "1.0", "x", time.time()),
            ):
                with pytest.raises(StoreUnavailable, match="did not answer as a Redis server"):
                    call()
        finally:
            stop.set()
            store.close()
    thread.join(timeout=5)
