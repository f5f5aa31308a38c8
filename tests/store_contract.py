"""The store contract: one suite of tests that every store must pass.

A store's test module only says how to build that store::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self):
            store = MyStore(...)
            yield store
            store.close()

Times are Unix seconds from the real clock, so that stores whose backend
expires keys by itself (etcd, Redis) are held to the same promises.
"""

from __future__ import annotations

import threading
import time

import pytest

from keyard.stores.base import Instance, Store

ODD_STRINGS = [
    "http://10.0.0.1:8080/path?query=1&b=2#frag",
    "with space",
    "percent%2Fencoded%",
    "ünïcødé/服务/🚀",
    "a/b",
    "..",
    ".",
    "/leading/slash",
    "trailing/",
    "back\\slash",
    "quote\"and'apostrophe",
]


def make(
    service: str = "web",
    version: str = "1.0",
    location: str = "http://127.0.0.1:8001",
    ttl: int = 30,
    now: float | None = None,
) -> Instance:
    now = time.time() if now is None else now
    return Instance(service, version, location, ttl, now + ttl)


def locations(instances: list[Instance]) -> list[str]:
    return [i.location for i in instances]


class StoreContract:
    """Mix into a test class that provides a ``store`` fixture."""

    def test_register_reports_new_then_refreshed(self, store: Store) -> None:
        assert store.register(make()) is True
        assert store.register(make()) is False

    def test_get_returns_the_exact_instance(self, store: Store) -> None:
        instance = make(ttl=40)
        store.register(instance)
        found = store.get("web", "1.0", instance.location, time.time())
        assert found is not None
        assert (found.service_name, found.version, found.location, found.ttl) == (
            "web",
            "1.0",
            instance.location,
            40,
        )
        assert found.expires_at == pytest.approx(instance.expires_at, abs=0.01)
        assert store.get("web", "1.0", "elsewhere", time.time()) is None
        assert store.get("web", "2.0", instance.location, time.time()) is None

    def test_refresh_replaces_ttl_and_expiry(self, store: Store) -> None:
        store.register(make(ttl=10))
        store.register(make(ttl=100))
        found = store.get("web", "1.0", "http://127.0.0.1:8001", time.time())
        assert found is not None and found.ttl == 100
        assert found.expires_at > time.time() + 90

    def test_refresh_keeps_the_live_ttl_and_extends_the_lease_from_now(self, store: Store) -> None:
        start = time.time()
        store.register(make(ttl=600, now=start))
        later = start + 5
        refreshed, new = store.refresh(make(ttl=30, now=later))
        assert new is False
        assert (refreshed.ttl, refreshed.expires_at) == (600, later + 600)
        found = store.get("web", "1.0", "http://127.0.0.1:8001", later)
        assert found is not None and (found.ttl, found.expires_at) == (600, later + 600)

    def test_refresh_of_an_unknown_instance_registers_it_as_given(self, store: Store) -> None:
        given = make(location="new", ttl=45)
        assert store.refresh(given) == (given, True)
        assert store.get("web", "1.0", "new", time.time()) == given
        assert store.refresh(make(location="new", ttl=99))[0].ttl == 45

    def test_refresh_of_an_expired_instance_registers_it_as_given(self, store: Store) -> None:
        store.register(make(ttl=2, now=time.time() - 10))  # expired 8 s ago
        given = make(ttl=50)
        assert store.refresh(given) == (given, True)

    def test_lookup_matches_service_name_exactly(self, store: Store) -> None:
        store.register(make("web", location="a"))
        store.register(make("webapp", location="b"))
        store.register(make("we", location="c"))
        assert locations(store.lookup("web", None, time.time())) == ["a"]
        assert locations(store.lookup("webapp", None, time.time())) == ["b"]
        assert store.lookup("w", None, time.time()) == []

    def test_lookup_matches_version_exactly(self, store: Store) -> None:
        store.register(make(version="1.0", location="a"))
        store.register(make(version="1.0.1", location="b"))
        store.register(make(version="1", location="c"))
        assert locations(store.lookup("web", "1.0", time.time())) == ["a"]
        assert locations(store.lookup("web", "1.0.1", time.time())) == ["b"]
        assert locations(store.lookup("web", "1", time.time())) == ["c"]
        assert store.lookup("web", "2.0", time.time()) == []

    def test_lookup_without_version_returns_all_versions_in_order(self, store: Store) -> None:
        store.register(make(version="2.0", location="z"))
        store.register(make(version="1.0", location="y"))
        store.register(make(version="1.0", location="b"))
        store.register(make(version="10", location="a"))
        found = store.lookup("web", None, time.time())
        assert [(i.version, i.location) for i in found] == [
            ("1.0", "b"),
            ("1.0", "y"),
            ("10", "a"),
            ("2.0", "z"),
        ]

    def test_lookup_of_unknown_service_is_empty(self, store: Store) -> None:
        assert store.lookup("nobody", None, time.time()) == []
        assert store.lookup("nobody", "1.0", time.time()) == []

    def test_deregister_removes_only_that_instance(self, store: Store) -> None:
        store.register(make(location="a"))
        store.register(make(location="b"))
        store.register(make(version="2.0", location="a"))
        assert store.deregister("web", "1.0", "a", time.time()) is True
        assert locations(store.lookup("web", "1.0", time.time())) == ["b"]
        assert locations(store.lookup("web", "2.0", time.time())) == ["a"]
        assert store.get("web", "1.0", "a", time.time()) is None

    def test_deregister_unknown_instance_reports_false(self, store: Store) -> None:
        assert store.deregister("web", "1.0", "nowhere", time.time()) is False
        store.register(make(location="a"))
        assert store.deregister("web", "1.0", "nowhere", time.time()) is False
        assert store.deregister("web", "9.9", "a", time.time()) is False

    def test_lookup_after_everything_is_removed_is_empty_not_null(self, store: Store) -> None:
        store.register(make(location="a"))
        store.register(make(version="2.0", location="b"))
        store.deregister("web", "1.0", "a", time.time())
        store.deregister("web", "2.0", "b", time.time())
        assert store.lookup("web", None, time.time()) == []
        assert store.lookup("web", "1.0", time.time()) == []
        assert store.register(make(location="a")) is True
        assert locations(store.lookup("web", None, time.time())) == ["a"]

    def test_instance_past_its_expiry_is_never_returned(self, store: Store) -> None:
        now = time.time()
        store.register(make(location="short", ttl=5, now=now))
        store.register(make(location="long", ttl=60, now=now))
        later = now + 10
        assert locations(store.lookup("web", None, later)) == ["long"]
        assert locations(store.lookup("web", "1.0", later)) == ["long"]
        assert store.get("web", "1.0", "short", later) is None
        assert store.deregister("web", "1.0", "short", later) is False

    def test_registering_an_expired_key_counts_as_new(self, store: Store) -> None:
        now = time.time()
        store.register(make(ttl=1, now=now - 5))
        assert store.register(make(now=now)) is True

    @pytest.mark.slow
    def test_expiry_happens_in_real_time(self, store: Store) -> None:
        store.register(make(location="brief", ttl=1))
        store.register(make(location="lasting", ttl=30))
        assert locations(store.lookup("web", None, time.time())) == ["brief", "lasting"]
        time.sleep(2.2)
        assert locations(store.lookup("web", None, time.time())) == ["lasting"]
        assert store.register(make(location="brief", ttl=1)) is True

    @pytest.mark.parametrize("odd", ODD_STRINGS)
    def test_odd_strings_round_trip_in_every_field(self, store: Store, odd: str) -> None:
        store.register(make(service=odd, version=odd, location=odd))
        found = store.lookup(odd, odd, time.time())
        assert [(i.service_name, i.version, i.location) for i in found] == [(odd, odd, odd)]
        assert store.get(odd, odd, odd, time.time()) is not None
        assert store.deregister(odd, odd, odd, time.time()) is True
        assert store.lookup(odd, None, time.time()) == []

    def test_path_like_names_do_not_see_each_other(self, store: Store) -> None:
        store.register(make(service="a", location="1"))
        store.register(make(service="a/b", location="2"))
        store.register(make(service="..", location="3"))
        store.register(make(service="a", version="x/y", location="4"))
        assert locations(store.lookup("a", None, time.time())) == ["1", "4"]
        assert locations(store.lookup("a/b", None, time.time())) == ["2"]
        assert locations(store.lookup("..", None, time.time())) == ["3"]
        assert locations(store.lookup("a", "x", time.time())) == []

    def test_many_instances_of_one_service(self, store: Store) -> None:
        for n in range(200):
            store.register(make(location=f"http://127.0.0.1:{10000 + n}"))
        found = store.lookup("web", "1.0", time.time())
        assert locations(found) == sorted(f"http://127.0.0.1:{10000 + n}" for n in range(200))

    def test_concurrent_writers_lose_no_registration(self, store: Store) -> None:
        threads, per_thread = 8, 25
        errors: list[BaseException] = []

        def write(t: int) -> None:
            try:
                for n in range(per_thread):
                    store.register(make(location=f"{t}-{n}"))
                    store.lookup("web", "1.0", time.time())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert errors == []
        found = locations(store.lookup("web", "1.0", time.time()))
        expected = [f"{t}-{n}" for t in range(threads) for n in range(per_thread)]
        assert sorted(found) == sorted(expected)

    def test_concurrent_registrations_of_one_key_report_exactly_one_new(self, store: Store) -> None:
        threads = 8
        results: list[bool] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads)

        def write() -> None:
            try:
                barrier.wait(timeout=10)
                results.append(store.register(make(location="contested")))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=write) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert errors == []
        assert sorted(results) == [False] * (threads - 1) + [True]
        assert locations(store.lookup("web", "1.0", time.time())) == ["contested"]
