"""The registry's find() and renew(), which the Amalgam8 tree calls: a lease extended
only for a live instance, never a registration."""

from __future__ import annotations

import pytest

from keyard.errors import InvalidInput
from keyard.model import DEFAULT_NAMESPACE, InstanceKey, Registration
from keyard.registry import Registry, TtlPolicy
from keyard.stores.memory import MemoryStore
from tests.conftest import FakeClock

KEY = InstanceKey(DEFAULT_NAMESPACE, "web", "i-1")


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(MemoryStore(), clock=clock, ttl=TtlPolicy(30, 1, 3600))


def registered(registry: Registry) -> None:
    registry.register(
        Registration(
            DEFAULT_NAMESPACE, "web", "2", "http://a", instance_id="i-1", ttl=10,
            status="STARTING", tags=("t",), metadata={"k": "v"}, weight=7,
        )
    )  # fmt: skip


def test_find_answers_the_live_instance_or_none(registry: Registry, clock: FakeClock) -> None:
    assert registry.find(KEY) is None
    registered(registry)
    found = registry.find(KEY)
    assert found is not None and found.location == "http://a"
    clock.advance(10)
    assert registry.find(KEY) is None
    with pytest.raises(InvalidInput):
        registry.find(InstanceKey(DEFAULT_NAMESPACE, " ", "i-1"))


def test_renew_extends_the_lease_by_its_own_ttl_and_keeps_every_field(
    registry: Registry, clock: FakeClock
) -> None:
    registered(registry)
    registry.set_status_override(KEY, "OUT_OF_SERVICE")
    clock.advance(8)
    renewed = registry.renew(KEY)
    assert renewed is not None
    assert renewed.expires_at == clock.now + 10 and renewed.ttl == 10
    assert (renewed.version, renewed.status, renewed.status_override) == (
        "2", "STARTING", "OUT_OF_SERVICE")  # fmt: skip
    assert (renewed.tags, dict(renewed.metadata), renewed.weight) == (("t",), {"k": "v"}, 7)


def test_renew_never_registers_an_unknown_or_expired_instance(
    registry: Registry, clock: FakeClock
) -> None:
    assert registry.renew(KEY) is None
    registered(registry)
    clock.advance(10)
    assert registry.renew(KEY) is None
    assert registry.everything(DEFAULT_NAMESPACE) == []
