"""The registry on its own: typed registrations, defaults, bounds, overrides, filters, balancing."""

from __future__ import annotations

import collections
import time

import pytest

from keyard.errors import InvalidInput, NotFound
from keyard.model import (
    DEFAULT_NAMESPACE,
    InstanceFilter,
    InstanceKey,
    Registration,
    ServiceSummary,
    derived_instance_id,
)
from keyard.registry import Registry, TtlPolicy
from keyard.stores.memory import MemoryStore
from tests.conftest import FakeClock

NS = DEFAULT_NAMESPACE


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(MemoryStore(), clock=clock, ttl=TtlPolicy(30, 1, 3600))


def reg(location: str = "http://a", **given: object) -> Registration:
    fields: dict[str, object] = {
        "namespace": NS, "service_name": "web", "version": "1.0", "location": location}
    fields.update(given)
    return Registration(**fields)  # type: ignore[arg-type]


def key(instance_id: str) -> InstanceKey:
    return InstanceKey(NS, "web", instance_id)


def test_a_new_registration_gets_every_default(registry: Registry, clock: FakeClock) -> None:
    instance, new = registry.register(reg())
    assert new is True
    assert instance.instance_id == derived_instance_id("1.0", "http://a")
    assert (instance.status, instance.status_override, instance.tags, instance.metadata) == (
        "UP", None, (), {})
    assert (instance.weight, instance.ttl) == (100, 30)
    assert instance.registered_at == instance.last_heartbeat_at == clock.now
    assert instance.expires_at == clock.now + 30


def test_the_derived_id_is_the_same_for_the_same_version_and_location() -> None:
    assert derived_instance_id("1.0", "http://a") == derived_instance_id("1.0", "http://a")
    assert derived_instance_id("1.0", "http://a") != derived_instance_id("1.0", "http://b")
    assert derived_instance_id("1.0", "x") != derived_instance_id("1.0x", "")
    assert len(derived_instance_id("1.0", "http://a")) == 16


def test_registering_an_existing_id_with_a_new_location_updates_that_instance(
    registry: Registry,
) -> None:
    registry.register(reg("http://old", instance_id="i-1"))
    moved, new = registry.register(reg("http://new", instance_id="i-1", version="2"))
    assert new is False
    assert (moved.location, moved.version) == ("http://new", "2")
    assert [i.location for i in registry.instances(NS, "web")] == ["http://new"]


def test_a_heartbeat_without_the_new_fields_keeps_them(
    registry: Registry, clock: FakeClock
) -> None:
    registry.register(reg(ttl=600, tags=("canary",), metadata={"rev": "9f"}, weight=7,
                          status="STARTING"))
    clock.advance(10)
    beat, new = registry.heartbeat(reg())
    assert new is False
    assert (beat.ttl, beat.tags, beat.metadata, beat.weight, beat.status) == (
        600, ("canary",), {"rev": "9f"}, 7, "STARTING")
    assert beat.expires_at == clock.now + 600
    assert beat.registered_at == clock.now - 10


def test_a_heartbeat_that_gives_fields_replaces_them(registry: Registry) -> None:
    registry.register(reg(tags=("a",), metadata={"k": "v"}, weight=7))
    beat, _ = registry.heartbeat(reg(tags=(), metadata={}, weight=0, status="DOWN", ttl=60))
    assert (beat.tags, beat.metadata, beat.weight, beat.status, beat.ttl) == (
        (), {}, 0, "DOWN", 60)


def test_a_registration_without_ttl_takes_the_default_even_when_one_is_stored(
    registry: Registry,
) -> None:
    registry.register(reg(ttl=600))
    again, _ = registry.register(reg())
    assert again.ttl == 30


def test_an_override_wins_survives_heartbeats_and_is_removed_explicitly(
    registry: Registry, clock: FakeClock
) -> None:
    instance, _ = registry.register(reg())
    overridden = registry.set_status_override(instance.key, "OUT_OF_SERVICE")
    assert overridden.effective_status == "OUT_OF_SERVICE"
    assert overridden.expires_at == instance.expires_at  # the lease is unchanged
    assert registry.instances(NS, "web") == []  # UP only by default
    clock.advance(5)
    beat, _ = registry.heartbeat(reg(status="UP"))
    assert beat.effective_status == "OUT_OF_SERVICE"
    again, _ = registry.register(reg(status="UP"))
    assert again.effective_status == "OUT_OF_SERVICE"
    cleared = registry.clear_status_override(instance.key)
    assert (cleared.status_override, cleared.effective_status) == (None, "UP")
    assert [i.location for i in registry.instances(NS, "web")] == ["http://a"]


def test_overrides_of_unknown_instances_are_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        registry.set_status_override(key("nope"), "DOWN")
    with pytest.raises(NotFound):
        registry.clear_status_override(key("nope"))


def test_an_override_status_outside_the_set_is_invalid(registry: Registry) -> None:
    instance, _ = registry.register(reg())
    with pytest.raises(InvalidInput, match="valid: UP, DOWN, STARTING, OUT_OF_SERVICE"):
        registry.set_status_override(instance.key, "MAINTENANCE")


def test_filters_keep_versions_tags_and_statuses(registry: Registry) -> None:
    registry.register(reg("http://a", tags=("canary", "az-a")))
    registry.register(reg("http://b", tags=("az-a",), status="DOWN"))
    registry.register(reg("http://c", version="2", tags=("canary",)))

    def where(**given: object) -> list[str]:
        return [i.location for i in registry.instances(NS, "web", InstanceFilter(**given))]

    assert where() == ["http://a", "http://c"]
    assert where(statuses=None) == ["http://a", "http://b", "http://c"]
    assert where(statuses=frozenset({"DOWN"})) == ["http://b"]
    assert where(tags=("canary",)) == ["http://a", "http://c"]
    assert where(tags=("canary", "az-a")) == ["http://a"]
    assert where(tags=("az-a",), statuses=None) == ["http://a", "http://b"]
    assert where(version="2") == ["http://c"]
    assert where(version="2", tags=("az-a",)) == []


def test_weighted_picks_in_proportion_and_never_weight_zero(registry: Registry) -> None:
    registry.register(reg("http://heavy", weight=300))
    registry.register(reg("http://light", weight=100))
    registry.register(reg("http://never", weight=0))
    picks = collections.Counter(
        registry.choose(NS, "web", "weighted").location for _ in range(4000)
    )
    assert picks["http://never"] == 0
    assert 2.4 < picks["http://heavy"] / picks["http://light"] < 3.7


def test_weighted_with_only_weight_zero_is_not_found_saying_so(registry: Registry) -> None:
    registry.register(reg("http://a", weight=0))
    with pytest.raises(NotFound, match="weight 0"):
        registry.choose(NS, "web", "weighted")


def test_strategies_pick_among_up_instances_only(registry: Registry) -> None:
    registry.register(reg("http://up"))
    registry.register(reg("http://down", status="DOWN"))
    for strategy in ("random", "round_robin", "weighted"):
        assert {registry.choose(NS, "web", strategy).location for _ in range(30)} == {"http://up"}


def test_round_robin_takes_turns_per_filter(registry: Registry) -> None:
    for name in "abc":
        registry.register(reg(f"http://{name}", tags=("t",) if name != "c" else ()))
    turns = [registry.choose(NS, "web", "round_robin").location for _ in range(6)]
    assert turns == ["http://a", "http://b", "http://c"] * 2
    tagged = InstanceFilter(tags=("t",))
    assert [registry.choose(NS, "web", "round_robin", tagged).location for _ in range(4)] == [
        "http://a", "http://b"] * 2


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"weight": 1001}, "weight must be between 0 and 1000"),
        ({"weight": -1}, "weight must be between 0 and 1000"),
        ({"status": "up"}, "status 'up' is not known"),
        ({"tags": ("a", "a")}, "tag 'a' is given more than once"),
        ({"tags": ("a", " ")}, "empty tag"),
        ({"tags": tuple(f"t{n}" for n in range(65))}, "more than 64 tags"),
        ({"tags": ("x" * 129,)}, "the limit is 128"),
        ({"metadata": {"": "v"}}, "metadata keys must not be empty"),
        ({"metadata": {"k": "v" * 1025}}, "the limit is 1024"),
        ({"metadata": {"k" * 129: "v"}}, "the limit is 128"),
        ({"metadata": {f"k{n}": "v" for n in range(65)}}, "the limit is 64"),
        ({"instance_id": "i" * 129}, "instance_id is 129 characters long; the limit is 128"),
        ({"instance_id": " "}, "instance_id must not be empty"),
        ({"ttl": 0}, "ttl must be between 1 and 3600 seconds, got 0"),
        ({"ttl": 3601}, "ttl must be between 1 and 3600 seconds, got 3601"),
        ({"service_name": ""}, "service_name must not be empty"),
    ],
)
def test_every_bad_value_is_invalid_naming_the_field_and_the_bound(
    registry: Registry, given: dict[str, object], words: str
) -> None:
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(")):
        registry.register(reg(**given))


def test_values_at_their_bounds_are_accepted(registry: Registry) -> None:
    instance, _ = registry.register(
        reg(
            weight=1000,
            instance_id="i" * 128,
            tags=tuple(f"{n:03}" + "t" * 125 for n in range(64)),
            metadata={f"{n:03}" + "k" * 125: "v" * 1024 for n in range(64)},
        )
    )
    assert len(instance.tags) == 64 and len(instance.metadata) == 64


def test_services_count_live_and_up_instances(registry: Registry, clock: FakeClock) -> None:
    registry.register(reg("http://a"))
    registry.register(reg("http://b", status="DOWN"))
    registry.register(Registration(NS, "api", "1", "http://x", ttl=5))
    clock.advance(10)
    registry.heartbeat(reg("http://a"))
    registry.heartbeat(reg("http://b"))
    assert registry.services(NS) == [ServiceSummary("web", 2, 1)]


def test_deregister_location_finds_instances_registered_with_their_own_ids(
    registry: Registry,
) -> None:
    registry.register(reg("http://a", instance_id="mine"))
    registry.register(reg("http://b"))
    removed = registry.deregister_location(NS, "web", "1.0", "http://a")
    assert [i.instance_id for i in removed] == ["mine"]
    assert [i.location for i in registry.instances(NS, "web")] == ["http://b"]
    with pytest.raises(NotFound, match="at location 'http://a'"):
        registry.deregister_location(NS, "web", "1.0", "http://a")


def test_everything_lists_every_live_instance_of_the_namespace_whatever_its_status(
    registry: Registry, clock: FakeClock
) -> None:
    registry.register(reg("http://a"))
    registry.register(reg("http://b", status="DOWN"))
    registry.register(reg("http://c", service_name="api", ttl=5))
    registry.register(reg("http://d", namespace="other"))
    assert [(i.service_name, i.location) for i in registry.everything(NS)] == [
        ("api", "http://c"), ("web", "http://a"), ("web", "http://b")]
    clock.advance(6)
    assert [i.location for i in registry.everything(NS)] == ["http://a", "http://b"]


def test_changes_since_lists_the_changes_after_an_index_oldest_first(registry: Registry) -> None:
    start = registry.change_index(NS, None)
    assert start is not None
    registry.register(reg("http://a"))
    registry.deregister(key(derived_instance_id("1.0", "http://a")))
    changes = registry.changes_since(NS, start)
    assert [(c.kind, c.instance.location) for c in changes] == [
        ("put", "http://a"), ("removed", "http://a")]
    assert registry.changes_since(NS, changes[-1].change_index) == []
    with pytest.raises(InvalidInput, match="at least 0"):
        registry.changes_since(NS, -1)


def test_recent_changes_lists_what_the_log_still_holds(registry: Registry) -> None:
    for n in range(5):
        registry.register(reg(f"http://{n}"))
    assert [c.instance.location for c in registry.recent_changes(NS)] == [
        f"http://{n}" for n in range(5)]
    store = registry.store
    assert isinstance(store, MemoryStore)
    store.log_seconds = 0.05  # the log now keeps only the changes of the last 50 ms
    time.sleep(0.1)
    for n in range(5, 40):
        registry.register(reg(f"http://{n}"))
    kept = [c.instance.location for c in registry.recent_changes(NS)]
    assert kept and kept == [f"http://{n}" for n in range(40 - len(kept), 40)]
    assert "http://4" not in kept


def test_round_robin_keeps_the_turns_of_a_bounded_number_of_lookups() -> None:
    from keyard.balancing import RoundRobinStrategy

    strategy = RoundRobinStrategy()
    strategy.MAX_COUNTERS = 3
    a, b = (Registry(MemoryStore()).register(reg(f"http://{n}"))[0] for n in "ab")
    first = strategy.chooser([a, b], "first")
    assert [first().location for _ in range(3)] == ["http://a", "http://b", "http://a"]
    for n in range(3):  # three other lookups begin: the first one's turn is forgotten
        strategy.chooser([a, b], n)()
    assert len(strategy._counters) == 3
    assert first().location == "http://a"
