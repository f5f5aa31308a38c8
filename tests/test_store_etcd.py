"""The etcd store against real etcd: the contract, its key layout, faults and failover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import webtest

from keyard.app import create_app
from keyard.errors import ConfigError, StoreUnavailable
from keyard.helpers import config as config_module
from keyard.model import DEFAULT_NAMESPACE, InstanceKey, derived_instance_id
from keyard.stores import create_store
from keyard.stores.etcd import MAX_SEGMENT, EtcdStore, encode_part
from keyard.testing.store_contract import (
    ODD_STRINGS,
    StoreContract,
    WatchContract,
    locations,
    make,
)
from tests.conftest import free_port, port_is_open, wait_until
from tests.etcd_server import EtcdCluster, EtcdServer, started, unique_base_path


class TestEtcdStore(StoreContract, WatchContract):
    @pytest.fixture
    def store(self, etcd_server: EtcdServer, base_path: str) -> Iterator[EtcdStore]:
        store = EtcdStore(etcd_server.endpoint, base_path=base_path)
        yield store
        store.close()

    @pytest.fixture
    def store_config(
        self, etcd_server: EtcdServer, base_path: str
    ) -> tuple[str, dict[str, object]]:
        return "etcd", {"host": etcd_server.endpoint, "base_path": base_path}


@pytest.fixture
def base_path() -> str:
    return unique_base_path()


@pytest.fixture
def store(etcd_server: EtcdServer, base_path: str) -> Iterator[EtcdStore]:
    store = EtcdStore(etcd_server.endpoint, base_path=base_path)
    yield store
    store.close()


NS = DEFAULT_NAMESPACE


def raw_key(*parts: str) -> str:
    """The URL path of an etcd key made of already encoded parts."""
    return quote("/".join(parts), safe="/")


def web(location: str = "http://127.0.0.1:8001", version: str = "1.0") -> InstanceKey:
    """The key of ``make(location=..., version=...)``."""
    return make(version=version, location=location).key


def look(store: EtcdStore, service: str = "web", version: str | None = None) -> list[str]:
    """The locations a lookup in the default namespace answers, now."""
    return locations(store.lookup(NS, service, version, time.time()))


def every_call_fails(store: EtcdStore, within: float) -> list[str]:
    """Call every store method; each must raise StoreUnavailable within ``within`` s."""
    calls = {
        "put": lambda: store.put(make()),
        "get": lambda: store.get(web("a"), time.time()),
        "deregister": lambda: store.deregister(web("a"), time.time()),
        "set_override": lambda: store.set_override(web("a"), "DOWN", time.time()),
        "lookup": lambda: store.lookup(NS, "web", None, time.time()),
        "services": lambda: store.services(NS, time.time()),
    }
    messages = []
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < within, f"{name} took {elapsed:.2f} s"
        messages.append(str(caught.value))
    return messages


# -- configuration (no server needed) ----------------------------------------


def test_the_original_config_works_unchanged() -> None:
    config = config_module.from_dict(
        {"store_type": "etcd", "etcd": {"host": "localhost", "base_path": "/services"}}
    )
    store = create_store(config.store_type, config.store_options)
    assert isinstance(store, EtcdStore)
    assert store.members == ["localhost:2379"]
    assert (store.base_path, store.protocol, store.timeout) == ("/services", "http", 2.0)
    assert store.allow_reconnect is False


def test_every_option_has_a_default() -> None:
    store = create_store("etcd")
    assert isinstance(store, EtcdStore)
    assert store.members == ["localhost:2379"]
    assert store.base_path == "/services"
    assert store.timeout <= 2


def test_environment_variables_override_the_store_section() -> None:
    config = config_module.load(
        environ={
            "KEYARD_STORE_TYPE": "etcd",
            "KEYARD_ETCD_HOST": '["10.0.0.1:2379", "10.0.0.2"]',
            "KEYARD_ETCD_PORT": "2381",
            "KEYARD_ETCD_TIMEOUT": "0.5",
            "KEYARD_ETCD_BASE_PATH": "/registry/prod",
        }
    )
    store = create_store(config.store_type, config.store_options)
    assert isinstance(store, EtcdStore)
    assert store.members == ["10.0.0.1:2379", "10.0.0.2:2381"]
    assert (store.timeout, store.base_path, store.allow_reconnect) == (0.5, "/registry/prod", True)


@pytest.mark.parametrize(
    ("host", "members"),
    [
        ("etcd.internal", ["etcd.internal:2379"]),
        ("etcd.internal:4001", ["etcd.internal:4001"]),
        ("[::1]:2379", ["[::1]:2379"]),
        ("a:1,b:2, c", ["a:1", "b:2", "c:2379"]),
        (["a:1", "b"], ["a:1", "b:2379"]),
        ([["a", 1], ["b", 2]], ["a:1", "b:2"]),
        (["a", 1], ["a:1"]),
        (["a:1", "a:1"], ["a:1"]),
    ],
)
def test_host_takes_one_member_or_a_list(host: object, members: list[str]) -> None:
    assert EtcdStore.from_options({"host": host}).members == members


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"hots": "localhost"}, ["hots", "'localhost'"]),
        ({"host": ""}, ["host", "''"]),
        ({"host": []}, ["host", "empty"]),
        ({"host": ["a:1", 5]}, ["host", "5"]),
        ({"host": "http://a:2379"}, ["host", "'http://a:2379'", "protocol"]),
        ({"host": "a:http"}, ["host", "'a:http'"]),
        ({"host": "a:99999"}, ["host", "'a:99999'"]),
        ({"port": "2379"}, ["port", "'2379'"]),
        ({"port": 0}, ["port", "0"]),
        ({"port": True}, ["port", "True"]),
        ({"protocol": "ftp"}, ["protocol", "'ftp'"]),
        ({"base_path": "services"}, ["base_path", "'services'"]),
        ({"base_path": "/"}, ["base_path", "'/'"]),
        ({"base_path": "/a/../b"}, ["base_path", "'/a/../b'"]),
        ({"base_path": "/a//b"}, ["base_path", "'/a//b'"]),
        ({"base_path": "/_hidden"}, ["base_path", "'/_hidden'"]),
        ({"timeout": 0}, ["timeout", "0"]),
        ({"timeout": "2"}, ["timeout", "'2'"]),
        ({"timeout": 600}, ["timeout", "600"]),
        ({"allow_reconnect": "yes"}, ["allow_reconnect", "'yes'"]),
        ({"cache": "yes"}, ["cache", "'yes'"]),
        ({"cache": 1}, ["cache", "1"]),
        ({"host": ["a:1", "b:2"], "allow_reconnect": False}, ["allow_reconnect", "2 members"]),
    ],
)
def test_invalid_options_are_refused_naming_option_and_value(
    options: dict[str, object], named: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        EtcdStore.from_options(options)
    for text in named:
        assert text in str(caught.value)


def test_a_trailing_slash_in_base_path_does_not_matter() -> None:
    assert EtcdStore.from_options({"base_path": "/a/b/"}).base_path == "/a/b"


@pytest.mark.parametrize(
    "part", [*ODD_STRINGS, "", "_x", "%", "%2E", "...", ".x", "_", "🚀" * 13, "x" * 1000]
)
def test_a_key_part_becomes_one_short_safe_segment(part: str) -> None:
    segment = encode_part(part)
    assert "/" not in segment
    assert segment not in (".", "..", "")
    assert not segment.startswith(("_", "."))
    assert segment.isascii()
    assert len(segment) <= MAX_SEGMENT


def test_distinct_parts_never_share_a_segment() -> None:
    parts = {*ODD_STRINGS, "", "%", "%25", "%2E", "_", "%5F", "a b", "a%20b", "a+b"}
    parts |= {"🚀" * 12, "🚀" * 13, "🚀" * 14, "x" * MAX_SEGMENT, "x" * (MAX_SEGMENT + 1)}
    parts.add(encode_part("x" * 1000))  # a digest as a name is not the digest segment
    assert len({encode_part(p) for p in parts}) == len(parts)


# -- key layout in etcd --------------------------------------------------------


def test_an_instance_is_one_key_under_its_namespace_and_service(
    etcd_server: EtcdServer, store: EtcdStore, base_path: str
) -> None:
    instance = make(
        service="a/b", version="..", location="http://h:1/p?q=1#f", ttl=45,
        namespace="team/x", instance_id="_i:{1}", tags=("t",), metadata={"k": "v"},
    )
    store.put(instance)
    tree = etcd_server.raw(raw_key(base_path), recursive="true")
    assert tree is not None
    top = {node["key"]: node for node in tree["nodes"]}  # type: ignore[index, attr-defined]
    assert set(top) == {f"{base_path}/%ns", f"{base_path}/%watch"}, "instances and changes"
    namespaces = top[f"{base_path}/%ns"]
    [namespace_dir] = namespaces["nodes"]
    assert namespace_dir["key"] == f"{base_path}/%ns/team%2Fx"
    [service_dir] = namespace_dir["nodes"]
    assert service_dir["key"] == f"{base_path}/%ns/team%2Fx/a%2Fb"
    [leaf] = service_dir["nodes"]
    assert leaf["key"] == f"{base_path}/%ns/team%2Fx/a%2Fb/%5Fi%3A%7B1%7D"
    value = json.loads(leaf["value"])
    assert set(value) == {*instance._fields, "writer"}
    assert {k: v for k, v in value.items() if k != "writer"} == {
        **instance._asdict(), "tags": ["t"], "metadata": {"k": "v"}
    }
    assert 40 <= leaf["ttl"] <= 47  # etcd expires the key by itself, 2 s after its lease


def test_no_key_of_today_can_be_a_key_of_keyard_0_2_0() -> None:
    # 0.2.0 kept {base_path}/{service}/{version}/{location}, each part encode_part's.
    parts = {*ODD_STRINGS, "", "%", "ns", "%ns", "%25ns", "x" * 1000}
    assert all(encode_part(part) != "%ns" for part in parts)


def test_a_refresh_moves_etcds_own_expiry(
    etcd_server: EtcdServer, store: EtcdStore, base_path: str
) -> None:
    store.put(make(ttl=5))
    store.put(make(ttl=500))
    instance_id = encode_part(make().instance_id)
    node = etcd_server.raw(raw_key(base_path, "%ns", NS, "web", instance_id))
    assert node is not None and 490 <= node["ttl"] <= 502  # type: ignore[operator]


def test_an_override_keeps_etcds_own_expiry_at_the_lease_left(
    etcd_server: EtcdServer, store: EtcdStore, base_path: str
) -> None:
    now = time.time()
    store.put(make(ttl=500, now=now - 200))  # 300 s of the lease left
    store.set_override(web(), "OUT_OF_SERVICE", now)
    instance_id = encode_part(make().instance_id)
    node = etcd_server.raw(raw_key(base_path, "%ns", NS, "web", instance_id))
    assert node is not None and 290 <= node["ttl"] <= 303  # type: ignore[operator]


def test_lookup_ignores_empty_directories_and_values_that_are_not_instances(
    etcd_server: EtcdServer, store: EtcdStore, base_path: str
) -> None:
    service = raw_key(base_path, "%ns", NS, "web")
    etcd_server.raw_put(f"{service}/dir", "dir=true")
    etcd_server.raw_put(f"{service}/junk", "value=not-json")
    etcd_server.raw_put(f"{service}/list", "value=[1,2]")
    etcd_server.raw_put(f"{service}/deep/er", 'value={"ttl":1}')
    nested = "[" * 100_000 + "]" * 100_000  # JSON too deep for Python's json to read
    etcd_server.raw_put(f"{service}/nested", f"value={nested}")
    # A whole record, but under another key than its names give.
    moved = make(location="moved", instance_id="elsewhere")
    record = quote(json.dumps({**moved._asdict(), "tags": [], "writer": "w"}))
    etcd_server.raw_put(f"{service}/moved", f"value={record}")
    store.put(make(version="3.0", location="real"))
    assert [(i.version, i.location) for i in store.lookup(NS, "web", None, time.time())] == [
        ("3.0", "real")
    ]
    assert store.lookup(NS, "web", "1.0", time.time()) == []
    for name in ("dir", "junk", "deep", "nested", "moved", "elsewhere"):
        assert store.get(InstanceKey(NS, "web", name), time.time()) is None
    assert [s.service_name for s in store.services(NS, time.time())] == ["web"]


def test_deregister_removes_the_directories_it_empties(
    etcd_server: EtcdServer, store: EtcdStore, base_path: str
) -> None:
    for service, location in [("web", "a"), ("web", "b"), ("api", "c")]:
        store.put(make(service, location=location))
    store.deregister(web("a"), time.time())
    assert etcd_server.raw(raw_key(base_path, "%ns", NS, "web")) is not None
    store.deregister(web("b"), time.time())
    assert etcd_server.raw(raw_key(base_path, "%ns", NS, "web")) is None
    assert etcd_server.raw(raw_key(base_path, "%ns", NS)) is not None
    store.deregister(make("api", location="c").key, time.time())
    assert etcd_server.raw(raw_key(base_path, "%ns", NS)) is None
    assert store.put(make("api", location="c"))[1] is True


def test_the_longest_names_keyard_accepts_round_trip(store: EtcdStore) -> None:
    # The model's limits: 128 characters of names and ids, 1024 of location.
    service, version, location = "服" * 128, "🚀" * 128, "🚀/?" * 341 + "x"
    namespace, instance_id = "ü" * 128, "/" * 127
    for n in range(2):
        other = location[:-1] + str(n)
        instance_id_n = f"{instance_id}{n}"
        instance = make(service, version, other, namespace=namespace, instance_id=instance_id_n)
        assert store.put(instance)[1] is True
        assert store.get(instance.key, time.time()) is not None
    found = store.lookup(namespace, service, None, time.time())
    assert [(i.service_name, i.version) for i in found] == [(service, version)] * 2
    assert locations(found) == [location[:-1] + "0", location[:-1] + "1"]
    gone = InstanceKey(namespace, service, f"{instance_id}0")
    assert store.deregister(gone, time.time()) is not None
    assert locations(store.lookup(namespace, service, version, time.time())) == [
        location[:-1] + "1"
    ]


# -- upgrade from keyard 0.2.0 ------------------------------------------------------

FIXTURE = Path(__file__).parent / "fixtures" / "keyard_0_2_0" / "etcd.json"
#: The live instances of the fixture: (service, version, location, ttl), expiring in 2100.
LIVE_0_2_0 = [
    ("payments", "1.0", "http://10.0.0.9:9000", 30),
    ("payments", "2", "http://10.0.0.7:9000", 30),
    ("payments", "2", "http://10.0.0.8:9000", 60),
    ("search", "1.0", "http://10.0.1.1:80/a?b=1&c=2#frag", 86400),
    ("ünïcødé/服务", "v/1", "..", 45),
]
LIVE_UNTIL = 4_102_444_800.0


def load_0_2_0_keys(server: EtcdServer, base_path: str) -> list[dict[str, str]]:
    """The fixture's keys, moved from /services to ``base_path``, put with plain v2 requests.

    Live keys get an etcd TTL of an hour, but the one of ``search`` none; expired
    ones none either, so that only the upgrade can drop them.
    """
    keys = json.loads(FIXTURE.read_text())
    for entry in keys:
        key = base_path + entry["key"][len("/services") :]
        live = json.loads(entry["value"])["expires_at"] > time.time()
        ttl = "&ttl=3600" if live and "/search/" not in key else ""
        server.raw_put(quote(key, safe="/"), f"value={quote(entry['value'])}{ttl}")
    return keys


def check_upgraded(server: EtcdServer, store: EtcdStore, base_path: str) -> None:
    now = time.time()
    found = {
        (i.service_name, i.version, i.location): i
        for service in ("payments", "search", "ünïcødé/服务")
        for i in store.lookup(NS, service, None, now)
    }
    assert sorted(found) == sorted(entry[:3] for entry in LIVE_0_2_0)
    for service, version, location, ttl in LIVE_0_2_0:
        instance = found[(service, version, location)]
        assert instance == store.get(instance.key, now)
        assert instance._asdict() == {
            "namespace": "default",
            "service_name": service,
            "instance_id": derived_instance_id(version, location),
            "version": version,
            "location": location,
            "status": "UP",
            "status_override": None,
            "tags": (),
            "metadata": {},
            "weight": 100,
            "ttl": ttl,
            "registered_at": LIVE_UNTIL - ttl,
            "last_heartbeat_at": LIVE_UNTIL - ttl,
            "expires_at": LIVE_UNTIL,
        }
        node = server.raw(raw_key(store._key(instance.key)))
        assert node is not None
        if service == "search":
            assert "ttl" not in node  # none before, none after
        else:
            assert 3500 <= node["ttl"] <= 3600  # type: ignore[operator]
    assert store.lookup(NS, "gone", None, now) == []
    assert locations(store.lookup(NS, "payments", "2", now)) == [
        "http://10.0.0.7:9000", "http://10.0.0.8:9000"
    ]
    assert [(s.service_name, s.instances) for s in store.services(NS, now)] == [
        ("payments", 3), ("search", 1), ("ünïcødé/服务", 1)
    ]
    # Nothing of 0.2.0's layout is left: only today's directory.
    tree = server.raw(raw_key(base_path))
    assert tree is not None
    assert [node["key"] for node in tree.get("nodes", [])] == [f"{base_path}/%ns"]  # type: ignore[union-attr]


def test_keys_of_keyard_0_2_0_are_converted_at_the_first_call(
    etcd_server: EtcdServer, base_path: str
) -> None:
    load_0_2_0_keys(etcd_server, base_path)
    store = EtcdStore(etcd_server.endpoint, base_path=base_path)
    try:
        check_upgraded(etcd_server, store, base_path)
    finally:
        store.close()
    again = EtcdStore(etcd_server.endpoint, base_path=base_path)  # idempotent
    try:
        check_upgraded(etcd_server, again, base_path)
    finally:
        again.close()


def test_several_processes_converting_at_once_convert_each_instance_once(
    etcd_server: EtcdServer, base_path: str
) -> None:
    load_0_2_0_keys(etcd_server, base_path)
    stores = [EtcdStore(etcd_server.endpoint, base_path=base_path) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def first_call(store: EtcdStore) -> None:
        try:
            barrier.wait(timeout=10)
            store.lookup(NS, "payments", None, time.time())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_call, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == []
        for store in stores:
            check_upgraded(etcd_server, store, base_path)
    finally:
        for store in stores:
            store.close()


def test_a_cached_store_sees_converted_keys(etcd_server: EtcdServer, base_path: str) -> None:
    load_0_2_0_keys(etcd_server, base_path)
    store = EtcdStore(etcd_server.endpoint, base_path=base_path, cache=True)
    try:
        check_upgraded(etcd_server, store, base_path)
        wait_until(lambda: bool((store.cache_info() or {}).get("ready")), 10, "the cache loaded")
        assert store.cache_info()["instances"] == len(LIVE_0_2_0)  # type: ignore[index]
        check_upgraded(etcd_server, store, base_path)
    finally:
        store.close()


def test_a_store_opened_while_etcd_is_down_converts_once_it_is_up(own_etcd: EtcdServer) -> None:
    load_0_2_0_keys(own_etcd, "/services")
    own_etcd.stop()
    store = EtcdStore(own_etcd.endpoint, timeout=1)  # building it needs no etcd
    with pytest.raises(StoreUnavailable):
        store.lookup(NS, "payments", None, time.time())
    own_etcd.start()
    check_upgraded(own_etcd, store, "/services")
    store.close()


# -- several stores ------------------------------------------------------------


def test_stores_with_the_same_base_path_share_one_registry(
    etcd_server: EtcdServer, base_path: str
) -> None:
    first = EtcdStore(etcd_server.endpoint, base_path=base_path)
    second = EtcdStore(etcd_server.endpoint, base_path=base_path)
    try:
        assert first.put(make(location="a"))[1] is True
        assert locations(second.lookup(NS, "web", None, time.time())) == ["a"]
        assert second.get(web("a"), time.time()) is not None
        assert second.put(make(location="a", ttl=99))[1] is False
        found = first.get(web("a"), time.time())
        assert found is not None and found.ttl == 99
        assert second.deregister(web("a"), time.time()) is not None
        assert first.lookup(NS, "web", None, time.time()) == []
        assert first.deregister(web("a"), time.time()) is None
    finally:
        first.close()
        second.close()


def test_stores_with_different_base_paths_never_see_each_other(etcd_server: EtcdServer) -> None:
    parent = unique_base_path()
    bases = [parent, unique_base_path(), f"{parent}/web"]
    stores = [EtcdStore(etcd_server.endpoint, base_path=b) for b in bases]
    try:
        for n, store in enumerate(stores):
            store.put(make(service="web", version="1.0", location=f"from-{n}"))
            # In the nested base path this lands inside the parent's web/1.0 directory.
            store.put(make(service="1.0", version="v", location=f"deep-{n}"))
        for n, store in enumerate(stores):
            assert locations(store.lookup(NS, "web", None, time.time())) == [f"from-{n}"]
            assert locations(store.lookup(NS, "1.0", None, time.time())) == [f"deep-{n}"]
            assert locations(store.lookup(NS, "1.0", "v", time.time())) == [f"deep-{n}"]
            others = [f"from-{m}" for m in range(len(stores)) if m != n]
            assert all(store.get(web(o), time.time()) is None for o in others)
    finally:
        for store in stores:
            store.close()


# -- faults ----------------------------------------------------------------------


def test_nothing_listening_raises_store_unavailable_at_once() -> None:
    port = free_port()
    store = EtcdStore(f"127.0.0.1:{port}", timeout=2)
    messages = every_call_fails(store, within=1.0)
    assert all(f"etcd at 127.0.0.1:{port} is unavailable" in m for m in messages)


def test_a_server_that_never_answers_raises_store_unavailable_within_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel accepts connections; nobody ever answers
        port = silent.getsockname()[1]
        store = EtcdStore(f"127.0.0.1:{port}", timeout=0.5)
        started = time.monotonic()
        messages = every_call_fails(store, within=0.5 + 0.5)
        assert time.monotonic() - started >= 4 * 0.45  # each call did wait for an answer
        assert all("no answer" in m for m in messages)
        store.close()


def test_the_store_recovers_by_itself_when_etcd_is_back(own_etcd: EtcdServer) -> None:
    store = EtcdStore(own_etcd.endpoint, timeout=1)
    assert store.put(make(location="before"))[1] is True
    own_etcd.stop()
    messages = every_call_fails(store, within=1 + 1)
    assert all(own_etcd.endpoint in m for m in messages)
    own_etcd.start()
    assert locations(store.lookup(NS, "web", "1.0", time.time())) == ["before"]
    assert store.put(make(location="after"))[1] is True
    assert locations(store.lookup(NS, "web", None, time.time())) == ["after", "before"]
    store.close()


def test_a_store_built_while_etcd_is_down_works_once_it_is_up(own_etcd: EtcdServer) -> None:
    own_etcd.stop()
    store = EtcdStore(own_etcd.endpoint, timeout=1)
    with pytest.raises(StoreUnavailable):
        store.lookup(NS, "web", None, time.time())
    own_etcd.start()
    assert store.put(make())[1] is True
    store.close()


def test_etcd_without_the_v2_api_is_reported_at_once(etcd_program: str, tmp_path: Path) -> None:
    server = started(lambda: EtcdServer(etcd_program, "v3only", tmp_path, enable_v2=False))
    try:
        store = EtcdStore(server.endpoint)
        messages = every_call_fails(store, within=1.0)
        assert all("--enable-v2=true" in m for m in messages)
        store.close()
    finally:
        server.stop()


# -- a cluster -------------------------------------------------------------------


def register_and_look_up_while(
    store: EtcdStore, during: threading.Event, done_after: int, limit: float
) -> tuple[list[str], list[BaseException]]:
    """Register one location after another, looking all of them up after each.

    Sets ``during`` after 20 rounds (something happens to the cluster then), and
    stops ``done_after`` rounds after that, or after ``limit`` seconds.
    """
    registered: list[str] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + limit
    rounds_after = 0
    n = 0
    while rounds_after < done_after and time.monotonic() < deadline:
        location = f"loc-{n:04d}"
        try:
            assert store.put(make(location=location))[1] is True, f"register {location}"
            registered.append(location)
            assert locations(store.lookup(NS, "web", "1.0", time.time())) == registered
        except (AssertionError, StoreUnavailable) as exc:
            errors.append(exc)
        n += 1
        if n == 20:
            during.set()
        if during.is_set() and n > 20:
            rounds_after += 1
    return registered, errors


def kill_when(event: threading.Event, member: EtcdServer) -> threading.Thread:
    def kill() -> None:
        if event.wait(timeout=30):
            time.sleep(0.01)  # let the next requests be in flight
            member.kill()

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_losing_the_leader_fails_no_request(
    etcd_cluster: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    leader = etcd_cluster.leader()
    others = [m for m in etcd_cluster.members if m is not leader]
    # The leader first: the store talks to it until it dies.
    store = EtcdStore([m.endpoint for m in [leader, *others]])
    killed = threading.Event()
    killer = kill_when(killed, leader)
    registered, errors = register_and_look_up_while(store, killed, done_after=60, limit=40)
    killer.join(timeout=10)
    assert not leader.running
    assert errors == []
    assert len(registered) >= 80
    assert f"etcd failover: {leader.endpoint} failed" in caplog.text
    survivor = EtcdStore(others[1].endpoint)
    assert locations(survivor.lookup(NS, "web", "1.0", time.time())) == registered
    store.close()
    survivor.close()


@pytest.mark.slow
def test_allow_reconnect_learns_the_members_from_the_one_given(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    store = EtcdStore(leader.endpoint, allow_reconnect=True)
    assert store.lookup(NS, "web", None, time.time()) == []
    assert sorted(store.members) == sorted(m.endpoint for m in etcd_cluster.members)
    killed = threading.Event()
    killer = kill_when(killed, leader)
    registered, errors = register_and_look_up_while(store, killed, done_after=30, limit=30)
    killer.join(timeout=10)
    assert not leader.running
    assert errors == []
    assert len(registered) >= 50
    store.close()


def test_one_member_store_does_not_learn_other_members(etcd_server: EtcdServer) -> None:
    store = EtcdStore(etcd_server.endpoint, base_path=unique_base_path())
    store.lookup(NS, "web", None, time.time())
    assert store.members == [etcd_server.endpoint]
    assert store.allow_reconnect is False
    store.close()


# -- through the HTTP app ----------------------------------------------------------


def test_the_app_answers_503_while_etcd_is_down_and_recovers_by_itself(
    own_etcd: EtcdServer,
) -> None:
    api = webtest.TestApp(create_app({}, store=EtcdStore(own_etcd.endpoint, timeout=1)))
    fields = {"service_name": "web", "location": "http://a"}
    api.post_json("/keyard", fields, status=201)
    own_etcd.stop()
    requests = {
        "GET": lambda: api.get("/keyard", {"service_name": "web"}, status=503),
        "GET strategy": lambda: api.get(
            "/keyard", {"service_name": "web", "load_balancer_strategy": "random"}, status=503
        ),
        "POST": lambda: api.post_json("/keyard", fields, status=503),
        "PUT": lambda: api.put_json("/keyard", fields, status=503),
        "DELETE": lambda: api.delete_json("/keyard", fields, status=503),
    }
    for name, request in requests.items():
        started = time.monotonic()
        response = request()
        assert time.monotonic() - started < 1 + 1, name
        assert response.content_type == "application/json"
        assert set(response.json) == {"title", "description"}
        assert own_etcd.endpoint in response.json["description"]
    own_etcd.start()
    assert api.get("/keyard", {"service_name": "web"}).json == {"result": ["http://a"]}
    api.post_json("/keyard", {**fields, "location": "http://b"}, status=201)
    api.put_json("/keyard", fields, status=200)
    api.delete_json("/keyard", fields, status=200)
    assert api.get("/keyard", {"service_name": "web"}).json == {"result": ["http://b"]}


def test_keyard_starts_while_etcd_is_down_and_answers_503() -> None:
    port = free_port()
    app = create_app({"store_type": "etcd", "etcd": {"host": f"127.0.0.1:{port}"}})
    response = webtest.TestApp(app).get("/keyard", {"service_name": "web"}, status=503)
    assert response.json["title"] == "Store unavailable"
    assert response.json["description"].startswith(
        f"etcd at 127.0.0.1:{port} is unavailable: cannot connect"
    )
    assert response.headers["Retry-After"] == "1"


def test_two_apps_on_one_base_path_share_the_registry(
    etcd_server: EtcdServer, base_path: str
) -> None:
    apps = [
        webtest.TestApp(create_app({}, store=EtcdStore(etcd_server.endpoint, base_path=base_path)))
        for _ in range(2)
    ]
    fields = {"service_name": "web", "version": "2", "location": "http://10.0.0.1:80"}
    apps[0].post_json("/keyard", fields, status=201)
    assert apps[1].get("/keyard", {"service_name": "web"}).json == {
        "result": ["http://10.0.0.1:80"]
    }
    apps[1].post_json("/keyard", fields, status=200)  # a refresh, not a new registration
    apps[1].delete_json("/keyard", fields, status=200)
    assert apps[0].get("/keyard", {"service_name": "web"}).json == {"result": []}
    apps[0].delete_json("/keyard", fields, status=404)


def call(method: str, url: str, data: dict[str, str] | None = None) -> tuple[int, object]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_two_keyard_processes_configured_by_environment_share_one_etcd(
    etcd_server: EtcdServer, base_path: str, tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYARD_")},
        "PYTHONPATH": str(root),
        "KEYARD_STORE_TYPE": "etcd",
        "KEYARD_ETCD_HOST": json.dumps([etcd_server.endpoint]),
        "KEYARD_ETCD_BASE_PATH": base_path,
        "KEYARD_ETCD_TIMEOUT": "1.5",
    }
    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "keyard.wsgi:app", "-b", f"127.0.0.1:{port}"]
            + ["--workers", "2", "--worker-class", "gthread", "--threads", "4"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_until(lambda p=port: port_is_open(p), timeout=30, what="gunicorn listening")
        first, second = (f"http://127.0.0.1:{port}/keyard" for port in ports)
        registered = {"service_name": "web", "location": "http://10.0.0.7:8080"}
        assert call("POST", first, registered)[0] == 201
        for _ in range(4):  # whichever worker process answers
            status, body = call("GET", f"{second}?service_name=web")
            assert (status, body) == (200, {"result": ["http://10.0.0.7:8080"]})
        assert call("DELETE", second, registered)[0] == 200
        assert call("GET", f"{first}?service_name=web") == (200, {"result": []})
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)
