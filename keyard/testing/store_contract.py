"""The store contract: one suite of tests that every store must pass.

A store's test module only says how to build that store::

    from keyard.testing.store_contract import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self):
            store = MyStore(...)
            yield store
            store.close()

Times are Unix seconds from the real clock, so that stores whose backend
expires keys by itself (etcd, Redis) are held to the same promises. The suite
needs pytest; it ships inside keyard so that a store of another package can run
it without a keyard checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from keyard.model import DEFAULT_NAMESPACE, Instance, InstanceKey, ServiceSummary
from keyard.stores.base import Store

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
    "colon:{brace}",
    "_underscore",
]
KEEP_ALL = frozenset({"ttl", "status", "tags", "metadata", "weight"})


def make(
    service: str = "web",
    version: str = "1.0",
    location: str = "http://127.0.0.1:8001",
    ttl: int = 30,
    now: float | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    instance_id: str | None = None,
    status: str = "UP",
    tags: tuple[str, ...] = (),
    metadata: dict[str, str] | None = None,
    weight: int = 100,
) -> Instance:
    """A record as the registry makes it: registered and heartbeaten at ``now``."""
    now = time.time() if now is None else now
    return Instance(
        namespace=namespace,
        service_name=service,
        instance_id=instance_id if instance_id is not None else f"{version}@{location}",
        version=version,
        location=location,
        status=status,
        status_override=None,
        tags=tags,
        metadata=metadata or {},
        weight=weight,
        ttl=ttl,
        registered_at=now,
        last_heartbeat_at=now,
        expires_at=now + ttl,
    )


def key(instance: Instance) -> InstanceKey:
    return instance.key


def locations(instances: list[Instance]) -> list[str]:
    return [i.location for i in instances]


def same_record(found: Instance | None, expected: Instance) -> None:
    """Every field equal; times to the millisecond (a store may keep them as text)."""
    assert found is not None, f"{expected.key} was not found"
    times = ("registered_at", "last_heartbeat_at", "expires_at")
    for field in Instance._fields:
        if field in times:
            wanted = pytest.approx(getattr(expected, field), abs=0.001)
            assert getattr(found, field) == wanted, field
        else:
            assert getattr(found, field) == getattr(expected, field), field
    assert isinstance(found.tags, tuple)
    assert dict(found.metadata) == dict(expected.metadata)


class StoreContract:
    """Mix into a test class that provides a ``store`` fixture."""

    # -- put and get ------------------------------------------------------------------

    def test_put_reports_new_then_refreshed(self, store: Store) -> None:
        assert store.put(make())[1] is True
        assert store.put(make())[1] is False

    def test_every_field_round_trips(self, store: Store) -> None:
        instance = make(
            ttl=40,
            instance_id="i-1",
            status="STARTING",
            tags=("canary", "az-a", "z"),
            metadata={"revision": "9f1c", "empty": "", "ü": "服务"},
            weight=0,
        )
        stored, new = store.put(instance)
        assert new is True
        same_record(stored, instance)
        same_record(store.get(instance.key, time.time()), instance)
        same_record(store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())[0], instance)

    def test_tags_keep_their_order(self, store: Store) -> None:
        instance = make(tags=("b", "a", "c"))
        store.put(instance)
        found = store.get(instance.key, time.time())
        assert found is not None and found.tags == ("b", "a", "c")

    def test_get_matches_the_key_exactly(self, store: Store) -> None:
        instance = make(instance_id="abc")
        store.put(instance)
        now = time.time()
        assert store.get(InstanceKey(DEFAULT_NAMESPACE, "web", "ab"), now) is None
        assert store.get(InstanceKey(DEFAULT_NAMESPACE, "webapp", "abc"), now) is None
        assert store.get(InstanceKey("other", "web", "abc"), now) is None

    def test_put_replaces_every_given_field_of_a_live_record(self, store: Store) -> None:
        start = time.time()
        store.put(make(ttl=10, tags=("a",), metadata={"k": "v"}, weight=5, now=start))
        later = start + 3
        stored, new = store.put(
            make(ttl=100, location="http://moved", tags=("b",), metadata={}, weight=7, now=later,
                 instance_id="1.0@http://127.0.0.1:8001", status="DOWN")
        )
        assert new is False
        assert (stored.ttl, stored.tags, stored.weight) == (100, ("b",), 7)
        assert dict(stored.metadata) == {}
        assert (stored.location, stored.status) == ("http://moved", "DOWN")
        assert stored.registered_at == pytest.approx(start, abs=0.001)
        assert stored.last_heartbeat_at == pytest.approx(later, abs=0.001)
        assert stored.expires_at == pytest.approx(later + 100, abs=0.001)
        same_record(store.get(stored.key, later), stored)

    def test_put_keeps_the_named_fields_of_a_live_record(self, store: Store) -> None:
        start = time.time()
        first = make(ttl=600, tags=("a", "b"), metadata={"k": "v"}, weight=3, status="DOWN",
                     now=start)
        store.put(first)
        later = start + 5
        stored, new = store.put(make(ttl=30, now=later), KEEP_ALL)
        assert new is False
        assert (stored.ttl, stored.expires_at) == (600, pytest.approx(later + 600, abs=0.001))
        assert (stored.tags, dict(stored.metadata), stored.weight, stored.status) == (
            ("a", "b"), {"k": "v"}, 3, "DOWN")
        assert stored.registered_at == pytest.approx(start, abs=0.001)
        same_record(store.get(first.key, later), stored)

    def test_put_keeping_everything_still_moves_an_instance_to_its_new_location(
        self, store: Store
    ) -> None:
        start = time.time()
        store.put(make(instance_id="i", location="old", version="1", tags=("a",), now=start))
        store.set_override(make(instance_id="i").key, "OUT_OF_SERVICE", start)
        moved, new = store.put(
            make(instance_id="i", location="new", version="2", now=start + 1), KEEP_ALL
        )
        assert new is False
        assert (moved.location, moved.version, moved.tags, moved.status_override) == (
            "new", "2", ("a",), "OUT_OF_SERVICE")
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", None, start + 1)) == ["new"]
        assert store.lookup(DEFAULT_NAMESPACE, "web", "1", start + 1) == []

    def test_put_keeps_only_what_it_is_told_to(self, store: Store) -> None:
        start = time.time()
        store.put(make(ttl=600, tags=("a",), weight=3, now=start))
        stored, _ = store.put(make(ttl=30, tags=("new",), weight=9, now=start + 1),
                              frozenset({"ttl", "tags"}))
        assert (stored.ttl, stored.tags, stored.weight) == (600, ("a",), 9)

    def test_put_with_keep_of_an_unknown_record_stores_it_as_given(self, store: Store) -> None:
        given = make(location="new", ttl=45, tags=("t",))
        stored, new = store.put(given, KEEP_ALL)
        assert new is True
        same_record(stored, given)
        same_record(store.get(given.key, time.time()), given)

    def test_put_over_an_expired_record_stores_it_as_given(self, store: Store) -> None:
        old = make(ttl=2, now=time.time() - 10, tags=("old",))  # expired 8 s ago
        store.put(old)
        store.set_override(old.key, "OUT_OF_SERVICE", old.registered_at + 1)
        given = make(ttl=50)
        stored, new = store.put(given, KEEP_ALL)
        assert new is True
        same_record(stored, given)
        assert stored.status_override is None and stored.tags == ()

    def test_the_same_location_under_two_ids_is_two_instances(self, store: Store) -> None:
        store.put(make(instance_id="one"))
        store.put(make(instance_id="two"))
        found = store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())
        assert [i.instance_id for i in found] == ["one", "two"]

    # -- status overrides ------------------------------------------------------------

    def test_an_override_is_set_and_removed_without_touching_the_lease(self, store: Store) -> None:
        instance = make(ttl=60)
        store.put(instance)
        now = time.time()
        overridden = store.set_override(instance.key, "OUT_OF_SERVICE", now)
        assert overridden is not None
        assert overridden.status_override == "OUT_OF_SERVICE"
        assert overridden.effective_status == "OUT_OF_SERVICE"
        assert overridden.status == "UP"
        assert overridden.expires_at == pytest.approx(instance.expires_at, abs=0.001)
        assert overridden.last_heartbeat_at == pytest.approx(instance.last_heartbeat_at, abs=0.001)
        same_record(store.get(instance.key, now), overridden)
        cleared = store.set_override(instance.key, None, now)
        assert cleared is not None and cleared.status_override is None
        assert cleared.effective_status == "UP"
        same_record(store.get(instance.key, now), cleared)

    def test_an_override_survives_heartbeats_and_registrations(self, store: Store) -> None:
        instance = make()
        store.put(instance)
        store.set_override(instance.key, "OUT_OF_SERVICE", time.time())
        stored, _ = store.put(make(status="UP"), KEEP_ALL)
        assert stored.status_override == "OUT_OF_SERVICE"
        stored, _ = store.put(make(status="DOWN", tags=("x",)))
        assert (stored.status_override, stored.status) == ("OUT_OF_SERVICE", "DOWN")
        found = store.get(instance.key, time.time())
        assert found is not None and found.effective_status == "OUT_OF_SERVICE"

    def test_an_override_of_an_unknown_or_expired_record_is_none(self, store: Store) -> None:
        assert store.set_override(make().key, "DOWN", time.time()) is None
        old = make(ttl=1, now=time.time() - 10)
        store.put(old)
        assert store.set_override(old.key, "DOWN", time.time()) is None
        assert store.get(old.key, time.time()) is None

    # -- lookups ---------------------------------------------------------------------

    def test_lookup_matches_service_name_exactly(self, store: Store) -> None:
        store.put(make("web", location="a"))
        store.put(make("webapp", location="b"))
        store.put(make("we", location="c"))
        now = time.time()
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", None, now)) == ["a"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "webapp", None, now)) == ["b"]
        assert store.lookup(DEFAULT_NAMESPACE, "w", None, now) == []

    def test_lookup_matches_version_exactly(self, store: Store) -> None:
        store.put(make(version="1.0", location="a"))
        store.put(make(version="1.0.1", location="b"))
        store.put(make(version="1", location="c"))
        now = time.time()
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", "1.0", now)) == ["a"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", "1.0.1", now)) == ["b"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", "1", now)) == ["c"]
        assert store.lookup(DEFAULT_NAMESPACE, "web", "2.0", now) == []

    def test_lookup_orders_by_version_then_location_then_id(self, store: Store) -> None:
        store.put(make(version="2.0", location="z"))
        store.put(make(version="1.0", location="y"))
        store.put(make(version="1.0", location="b", instance_id="2"))
        store.put(make(version="1.0", location="b", instance_id="1"))
        store.put(make(version="10", location="a"))
        found = store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())
        assert [(i.version, i.location, i.instance_id) for i in found] == [
            ("1.0", "b", "1"),
            ("1.0", "b", "2"),
            ("1.0", "y", "1.0@y"),
            ("10", "a", "10@a"),
            ("2.0", "z", "2.0@z"),
        ]

    def test_lookup_of_unknown_service_is_empty(self, store: Store) -> None:
        assert store.lookup(DEFAULT_NAMESPACE, "nobody", None, time.time()) == []
        assert store.lookup(DEFAULT_NAMESPACE, "nobody", "1.0", time.time()) == []

    def test_lookup_sees_overrides_and_new_fields_at_once(self, store: Store) -> None:
        instance = make(tags=("a",))
        store.put(instance)
        store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())  # a cache may hold it now
        store.set_override(instance.key, "DOWN", time.time())
        found = store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())
        assert [i.effective_status for i in found] == ["DOWN"]
        store.put(make(tags=("b",)))
        found = store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())
        assert [i.tags for i in found] == [("b",)]

    # -- deregistration ----------------------------------------------------------------

    def test_deregister_removes_only_that_instance(self, store: Store) -> None:
        a = make(location="a")
        store.put(a)
        store.put(make(location="b"))
        store.put(make(version="2.0", location="a"))
        now = time.time()
        removed = store.deregister(a.key, now)
        assert removed is not None
        same_record(removed, a)
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", "1.0", now)) == ["b"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", "2.0", now)) == ["a"]
        assert store.get(a.key, now) is None

    def test_deregister_unknown_instance_reports_none(self, store: Store) -> None:
        now = time.time()
        assert store.deregister(make(location="nowhere").key, now) is None
        store.put(make(location="a"))
        assert store.deregister(make(location="nowhere").key, now) is None
        assert store.deregister(make(version="9.9", location="a").key, now) is None

    def test_lookup_after_everything_is_removed_is_empty_not_null(self, store: Store) -> None:
        a, b = make(location="a"), make(version="2.0", location="b")
        store.put(a)
        store.put(b)
        store.deregister(a.key, time.time())
        store.deregister(b.key, time.time())
        assert store.lookup(DEFAULT_NAMESPACE, "web", None, time.time()) == []
        assert store.services(DEFAULT_NAMESPACE, time.time()) == []
        assert store.put(make(location="a"))[1] is True
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())) == ["a"]

    # -- services ----------------------------------------------------------------------

    def test_services_counts_live_and_up_instances_sorted_by_name(self, store: Store) -> None:
        now = time.time()
        store.put(make("web", location="a", now=now))
        store.put(make("web", location="b", status="DOWN", now=now))
        store.put(make("web", location="c", now=now))
        store.set_override(make("web", location="c").key, "OUT_OF_SERVICE", now)
        store.put(make("api", location="a", now=now))
        store.put(make("gone", location="a", ttl=1, now=now - 10))
        assert store.services(DEFAULT_NAMESPACE, now) == [
            ServiceSummary("api", 1, 1),
            ServiceSummary("web", 3, 1),
        ]

    # -- namespaces --------------------------------------------------------------------

    def test_namespaces_never_see_each_other(self, store: Store) -> None:
        now = time.time()
        mine = make(namespace="team-a", location="shared", instance_id="same")
        theirs = make(namespace="team-b", location="shared", instance_id="same", weight=7)
        assert store.put(mine)[1] is True
        assert store.put(theirs)[1] is True
        assert [i.weight for i in store.lookup("team-a", "web", None, now)] == [100]
        assert [i.weight for i in store.lookup("team-b", "web", None, now)] == [7]
        assert store.lookup(DEFAULT_NAMESPACE, "web", None, now) == []
        assert store.services("team-a", now) == [ServiceSummary("web", 1, 1)]
        assert store.services(DEFAULT_NAMESPACE, now) == []
        store.set_override(mine.key, "DOWN", now)
        found = store.get(theirs.key, now)
        assert found is not None and found.status_override is None
        assert store.deregister(mine.key, now) is not None
        assert store.get(theirs.key, now) is not None

    @pytest.mark.parametrize("odd", ODD_STRINGS)
    def test_odd_strings_round_trip_in_every_field(self, store: Store, odd: str) -> None:
        instance = make(
            service=odd, version=odd, location=odd, namespace=odd, instance_id=odd,
            tags=(odd, "plain"), metadata={odd: odd},
        )
        store.put(instance)
        found = store.lookup(odd, odd, odd, time.time())
        assert len(found) == 1
        same_record(found[0], instance)
        same_record(store.get(instance.key, time.time()), instance)
        assert store.services(odd, time.time()) == [ServiceSummary(odd, 1, 1)]
        assert store.deregister(instance.key, time.time()) is not None
        assert store.lookup(odd, odd, None, time.time()) == []

    def test_path_like_names_do_not_see_each_other(self, store: Store) -> None:
        store.put(make(service="a", location="1"))
        store.put(make(service="a/b", location="2"))
        store.put(make(service="..", location="3"))
        store.put(make(service="a", version="x/y", location="4"))
        store.put(make(service="b", namespace="x/a", location="5"))
        store.put(make(service="a/b", namespace="x", location="6"))
        now = time.time()
        assert locations(store.lookup(DEFAULT_NAMESPACE, "a", None, now)) == ["1", "4"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "a/b", None, now)) == ["2"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "..", None, now)) == ["3"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "a", "x", now)) == []
        assert locations(store.lookup("x/a", "b", None, now)) == ["5"]
        assert locations(store.lookup("x", "a/b", None, now)) == ["6"]
        assert locations(store.lookup("x", "a", None, now)) == []

    # -- expiry ------------------------------------------------------------------------

    def test_instance_past_its_expiry_is_never_returned(self, store: Store) -> None:
        now = time.time()
        short = make(location="short", ttl=5, now=now)
        store.put(short)
        store.put(make(location="long", ttl=60, now=now))
        later = now + 10
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", None, later)) == ["long"]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", "1.0", later)) == ["long"]
        assert store.get(short.key, later) is None
        assert store.deregister(short.key, later) is None
        assert store.services(DEFAULT_NAMESPACE, later) == [ServiceSummary("web", 1, 1)]

    def test_registering_an_expired_key_counts_as_new(self, store: Store) -> None:
        now = time.time()
        store.put(make(ttl=1, now=now - 5))
        assert store.put(make(now=now))[1] is True

    @pytest.mark.slow
    def test_expiry_happens_in_real_time(self, store: Store) -> None:
        store.put(make(location="brief", ttl=1))
        store.put(make(location="lasting", ttl=30))
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())) == [
            "brief", "lasting"]
        time.sleep(2.2)
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", None, time.time())) == ["lasting"]
        assert store.put(make(location="brief", ttl=1))[1] is True

    # -- change stamps (Store.change_stamp) ----------------------------------------------

    @staticmethod
    def stamp(store: Store, service: str = "web") -> object:
        """The service's change stamp, after a lookup (a store may need one read to tell)."""
        store.lookup(DEFAULT_NAMESPACE, service, None, time.time())
        return store.change_stamp(DEFAULT_NAMESPACE, service)

    def test_every_write_to_a_service_changes_its_change_stamp(self, store: Store) -> None:
        now = time.time()
        first = make(location="a", now=now)
        writes = {
            "a registration": lambda: store.put(first),
            "a second instance": lambda: store.put(make(location="b", now=now)),
            "new tags": lambda: store.put(first._replace(tags=("t",))),
            "new metadata": lambda: store.put(first._replace(metadata={"k": "v"})),
            "a new weight": lambda: store.put(first._replace(weight=5)),
            "a new status": lambda: store.put(first._replace(status="DOWN")),
            "a new location": lambda: store.put(first._replace(location="moved")),
            "an override": lambda: store.set_override(first.key, "OUT_OF_SERVICE", now),
            "no override": lambda: store.set_override(first.key, None, now),
            "a deregistration": lambda: store.deregister(first.key, now),
        }
        before = self.stamp(store)
        for what, write in writes.items():
            write()
            after = self.stamp(store)
            assert after is None or after != before, f"{what} left the change stamp as it was"
            before = after

    def settled_stamp(self, store: Store) -> object:
        """The stamp once two looks 50 ms apart agree: a store with a copy of its own may
        apply the echoes of earlier writes after they returned."""
        deadline = time.monotonic() + 5
        last = self.stamp(store)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.stamp(store)
            if now == last:
                break
            last = now
        return last

    def test_reads_leave_the_change_stamp_as_it_is(self, store: Store) -> None:
        store.put(make())
        first = self.settled_stamp(store)
        store.get(make().key, time.time())
        store.services(DEFAULT_NAMESPACE, time.time())
        assert self.stamp(store) == first

    def test_a_stamp_is_never_one_an_earlier_state_had(self, store: Store) -> None:
        """An empty service's stamp may repeat (its answer is the same); a non-empty one's not."""
        store.put(make(location="a"))
        with_a = self.stamp(store)
        store.deregister(make(location="a").key, time.time())
        store.put(make(location="b"))
        assert with_a is None or self.stamp(store) != with_a

    # -- scale and concurrency ---------------------------------------------------------

    def test_many_instances_of_one_service(self, store: Store) -> None:
        for n in range(200):
            store.put(make(location=f"http://127.0.0.1:{10000 + n}"))
        found = store.lookup(DEFAULT_NAMESPACE, "web", "1.0", time.time())
        assert locations(found) == sorted(f"http://127.0.0.1:{10000 + n}" for n in range(200))

    def test_concurrent_writers_lose_no_registration(self, store: Store) -> None:
        threads, per_thread = 8, 25
        errors: list[BaseException] = []

        def write(t: int) -> None:
            try:
                for n in range(per_thread):
                    store.put(make(location=f"{t}-{n}"))
                    store.lookup(DEFAULT_NAMESPACE, "web", "1.0", time.time())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert errors == []
        found = locations(store.lookup(DEFAULT_NAMESPACE, "web", "1.0", time.time()))
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
                results.append(store.put(make(location="contested"), KEEP_ALL)[1])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=write) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert errors == []
        assert sorted(results) == [False] * (threads - 1) + [True]
        assert locations(store.lookup(DEFAULT_NAMESPACE, "web", "1.0", time.time())) == [
            "contested"]


# -- change indexes, waits and the change log (watchable stores) -----------------------

#: How late a wake-up may come in these tests (the goal is far less: see bench/).
WAKE_SLACK = 1.0


def _writer_script(store_type: str, options: dict[str, object], instance: Instance) -> str:
    """A Python program that opens the store anew and puts ``instance`` into it."""
    return (
        "import json, sys\n"
        "from keyard.stores import create_store\n"
        "from keyard.model import Instance\n"
        f"store = create_store({store_type!r}, json.loads({json.dumps(options)!r}))\n"
        f"fields = json.loads({json.dumps(instance._asdict())!r})\n"
        "fields['tags'] = tuple(fields['tags'])\n"
        "store.put(Instance(**fields))\n"
        "store.close()\n"
    )


class WatchContract:
    """The change API (:attr:`Store.watchable` stores). Mix into a class with a ``store``
    fixture; a ``store_config`` fixture ``(store_type, options)`` of the same backend
    (``None`` for a store of one process) runs the tests across processes."""

    @pytest.fixture
    def store_config(self) -> tuple[str, dict[str, object]] | None:
        return None

    @staticmethod
    def indexes(store: Store, service: str = "web") -> tuple[int, int]:
        return (store.change_index(DEFAULT_NAMESPACE, service),
                store.change_index(DEFAULT_NAMESPACE, None))

    def test_the_store_says_it_is_watchable(self, store: Store) -> None:
        assert store.watchable is True

    def test_indexes_start_at_one_or_more_never_zero(self, store: Store) -> None:
        service, catalog = self.indexes(store, "never-registered")
        assert service >= 1 and catalog >= 1
        assert isinstance(service, int) and isinstance(catalog, int)

    def test_every_change_moves_the_service_and_catalog_indexes_forward(
        self, store: Store
    ) -> None:
        now = time.time()
        first = make(location="a", now=now)
        writes = {
            "a registration": lambda: store.put(first),
            "a second instance": lambda: store.put(make(location="b", now=now)),
            "new tags": lambda: store.put(first._replace(tags=("t",))),
            "new metadata": lambda: store.put(first._replace(metadata={"k": "v"})),
            "a new weight": lambda: store.put(first._replace(weight=5)),
            "a new status": lambda: store.put(first._replace(status="DOWN")),
            "a new location": lambda: store.put(first._replace(location="moved")),
            "an override": lambda: store.set_override(first.key, "OUT_OF_SERVICE", now),
            "no override": lambda: store.set_override(first.key, None, now),
            "a deregistration": lambda: store.deregister(first.key, now),
        }
        before = self.indexes(store)
        for what, write in writes.items():
            write()
            after = self.indexes(store)
            assert after[0] > before[0], f"{what} did not move the service's index"
            assert after[1] > before[1], f"{what} did not move the catalog index"
            before = after

    def test_a_heartbeat_that_only_extends_the_lease_moves_no_index(self, store: Store) -> None:
        now = time.time()
        store.put(make(location="a", now=now, tags=("t",), metadata={"k": "v"}))
        before = self.indexes(store)
        store.put(make(location="a", now=now + 1), KEEP_ALL)
        store.put(make(location="a", now=now + 2, ttl=30), frozenset({"status", "tags",
                                                                      "metadata", "weight"}))
        assert self.indexes(store) == before

    def test_a_change_to_another_service_leaves_this_ones_index(self, store: Store) -> None:
        store.put(make(service="web"))
        web, catalog = self.indexes(store)
        store.put(make(service="db"))
        assert self.indexes(store, "web")[0] == web
        assert self.indexes(store, "db")[1] > catalog

    def test_an_index_is_the_same_for_a_second_read(self, store: Store) -> None:
        store.put(make())
        assert self.indexes(store) == self.indexes(store)

    def test_a_wait_on_a_moved_index_answers_at_once(self, store: Store) -> None:
        store.put(make())
        current = store.change_index(DEFAULT_NAMESPACE, "web")
        started = time.monotonic()
        assert store.wait_for_change(DEFAULT_NAMESPACE, "web", current - 1, 10) == current
        assert store.wait_for_change(DEFAULT_NAMESPACE, None, 0, 10) >= 1
        assert time.monotonic() - started < 1.0

    def test_a_wait_with_no_change_ends_at_its_timeout(self, store: Store) -> None:
        current = store.change_index(DEFAULT_NAMESPACE, "web")
        started = time.monotonic()
        assert store.wait_for_change(DEFAULT_NAMESPACE, "web", current, 0.5) == current
        took = time.monotonic() - started
        assert 0.45 <= took < 0.5 + WAKE_SLACK

    def test_a_write_wakes_a_waiter_on_that_service_and_one_on_the_catalog(
        self, store: Store
    ) -> None:
        service, catalog = self.indexes(store)
        woken: dict[str, tuple[int, float]] = {}

        def wait(name: str, service_name: str | None, index: int) -> None:
            found = store.wait_for_change(DEFAULT_NAMESPACE, service_name, index, 10)
            woken[name] = (found, time.monotonic())

        waiters = [threading.Thread(target=wait, args=("web", "web", service)),
                   threading.Thread(target=wait, args=("catalog", None, catalog))]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.2)
        assert woken == {}, "nothing changed yet"
        store.put(make())
        wrote = time.monotonic()
        for waiter in waiters:
            waiter.join(timeout=15)
        assert set(woken) == {"web", "catalog"}
        assert woken["web"][0] == store.change_index(DEFAULT_NAMESPACE, "web") > service
        assert woken["catalog"][0] > catalog
        assert max(at for _, at in woken.values()) - wrote < WAKE_SLACK

    @pytest.mark.slow
    def test_an_expiry_moves_the_index_and_wakes_a_waiter_with_no_request(
        self, store: Store
    ) -> None:
        brief = make(location="brief", ttl=1)
        store.put(brief)
        store.put(make(location="lasting", ttl=60))
        index = store.change_index(DEFAULT_NAMESPACE, "web")
        found = store.wait_for_change(DEFAULT_NAMESPACE, "web", index, 5)
        late = time.time() - brief.expires_at
        assert found > index, "the expiry moved the index"
        # The sweeper looks every 0.2 s (the 1 s promise); the slack is a loaded machine's.
        assert -0.05 <= late < 1.0 + WAKE_SLACK, f"woken {late:.3f} s after the expiry"
        kinds = [(c.kind, c.instance.location) for c in
                 store.changes_since(DEFAULT_NAMESPACE, index)]
        assert kinds == [("expired", "brief")]

    def test_the_change_log_says_what_changed_since_an_index(self, store: Store) -> None:
        now = time.time()
        start = store.change_index(DEFAULT_NAMESPACE, None)
        a, b = make(location="a", now=now), make(service="db", location="b", now=now)
        store.put(a)
        store.put(b)
        store.put(a, KEEP_ALL)  # a heartbeat: no change
        store.set_override(a.key, "DOWN", now)
        store.deregister(b.key, now)
        changes = store.changes_since(DEFAULT_NAMESPACE, start)
        assert [(c.kind, c.instance.service_name, c.instance.location) for c in changes] == [
            ("put", "web", "a"), ("put", "db", "b"), ("put", "web", "a"),
            ("removed", "db", "b")]
        assert changes[2].instance.status_override == "DOWN"
        same_record(changes[3].instance, b)
        numbers = [c.change_index for c in changes]
        assert numbers == sorted(numbers) and numbers[0] > start
        catalog = store.change_index(DEFAULT_NAMESPACE, None)
        assert numbers[-1] <= catalog, "a change's number is at most the catalog index after it"
        assert store.changes_since(DEFAULT_NAMESPACE, numbers[1]) == changes[2:]
        assert store.changes_since(DEFAULT_NAMESPACE, numbers[-1]) == []
        assert store.changes_since(DEFAULT_NAMESPACE, catalog) == []

    def test_an_index_newer_than_the_log_is_too_old_read_everything(self, store: Store) -> None:
        from keyard.errors import IndexTooOld

        latest = store.change_index(DEFAULT_NAMESPACE, None)
        with pytest.raises(IndexTooOld, match="read everything"):
            store.changes_since(DEFAULT_NAMESPACE, latest + 1000)

    def test_namespaces_keep_indexes_and_logs_of_their_own(self, store: Store) -> None:
        start = store.change_index("other", None)
        store.put(make(namespace="other"))
        assert store.change_index("other", None) > start
        mine = store.changes_since(DEFAULT_NAMESPACE, store.change_index(DEFAULT_NAMESPACE, None))
        assert mine == []

    def test_a_write_in_another_process_wakes_a_waiter(
        self, store: Store, store_config: tuple[str, dict[str, object]] | None
    ) -> None:
        if store_config is None:
            pytest.skip("the store is not shared across processes")
        index = store.change_index(DEFAULT_NAMESPACE, "web")
        woken: list[tuple[int, float]] = []

        def wait() -> None:
            woken.append((store.wait_for_change(DEFAULT_NAMESPACE, "web", index, 20),
                          time.monotonic()))

        waiter = threading.Thread(target=wait)
        waiter.start()
        instance = make(location="from-another-process")
        subprocess.run([sys.executable, "-c", _writer_script(*store_config, instance)],
                       check=True, timeout=60)
        wrote = time.monotonic()
        waiter.join(timeout=25)
        assert woken, "the waiter was not woken"
        assert woken[0][0] > index
        assert woken[0][1] - wrote < WAKE_SLACK
        assert woken[0][0] == store.change_index(DEFAULT_NAMESPACE, "web")
        assert [c.instance.location for c in store.changes_since(DEFAULT_NAMESPACE, index)] == [
            "from-another-process"]
