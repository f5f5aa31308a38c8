"""The registry: keyard's domain rules, between the HTTP APIs and the store.

It checks values against their bounds, applies defaults and the TTL policy,
computes times from its clock, and balances lookups. It takes records, keys and
filters (:mod:`keyard.model`), never a request: each API reads its own requests.
It knows nothing about HTTP.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from keyard import model
from keyard.balancing import Strategy, default_strategies
from keyard.errors import CapacityExceeded, IndexTooOld, InvalidInput, NotFound
from keyard.model import (
    DEFAULT_WEIGHT,
    UP,
    Instance,
    InstanceFilter,
    InstanceKey,
    Registration,
    ServiceSummary,
)
from keyard.stores.base import Store
from keyard.stores.changes import Change

Clock = Callable[[], float]
#: No filter but the default one: UP instances of every version.
UP_INSTANCES = InstanceFilter()
#: A blocking query's wait when none is given, and the longest, in seconds.
DEFAULT_WAIT, MAX_WAIT = 60.0, 600.0


@dataclass(frozen=True)
class Watched:
    """An answer of a (blocking) read and the change index it is current at.

    ``index`` is read before the answer: a change made meanwhile moves the index past
    it, so a watcher that waits on ``index`` never misses a change. ``None`` when the
    store keeps no index (:attr:`~keyard.stores.base.Store.watchable` false).
    """

    instances: list[Instance]
    services: list[ServiceSummary]
    index: int | None


class Reading(NamedTuple):
    """A lookup's answer, and what says how long it holds (see :class:`keyard.answers.Answers`).

    ``stamp`` is the store's change stamp taken before the read (``None``: the
    store cannot tell); the answer holds from ``read_at`` until ``fresh_until``, the
    earliest expiry of the instances read, while the stamp stays the same.
    """

    instances: list[Instance]
    namespace: str
    service_name: str
    stamp: Hashable | None
    read_at: float
    fresh_until: float


@dataclass(frozen=True)
class TtlPolicy:
    """How long a registration lives without a health check, in seconds."""

    default: int = 30
    minimum: int = 1
    maximum: int = 86400

    def check(self, seconds: int) -> int:
        if not self.minimum <= seconds <= self.maximum:
            shown = str(seconds) if len(str(seconds)) <= 20 else f"{str(seconds)[:20]}..."
            raise InvalidInput(
                f"ttl must be between {self.minimum} and {self.maximum} seconds, got {shown}"
            )
        return seconds


def _describe(service_name: str, version: str | None) -> str:
    return f"service {service_name!r}" + (f" version {version!r}" if version else "")


class Registry:
    """Registers, refreshes, removes and finds service instances in a store."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = time.time,
        ttl: TtlPolicy | None = None,
        strategies: Mapping[str, Strategy] | None = None,
        capacity: int | None = None,
    ) -> None:
        """``capacity``: the most live instances one namespace may hold (``None``: no limit)."""
        self.store = store
        self.capacity = capacity
        self.clock = clock
        self.ttl = ttl or TtlPolicy()
        self.strategies = strategies if strategies is not None else default_strategies()

    # -- writes ------------------------------------------------------------------------

    def register(self, registration: Registration) -> tuple[Instance, bool]:
        """Register (or re-register) an instance; returns it as stored and whether it is new.

        Without ``ttl`` the default TTL applies. Fields of
        :data:`~keyard.model.KEPT_WHEN_MISSING` left out keep their stored values
        (defaults for a new instance); an operator's status override always stays.
        """
        return self._put(registration, keep_ttl=False)

    def heartbeat(self, registration: Registration) -> tuple[Instance, bool]:
        """Extend an instance's lease; register it if unknown (so a restarted registry heals).

        Without ``ttl`` the instance keeps the TTL it was registered with; other
        fields as for :meth:`register`.
        """
        return self._put(registration, keep_ttl=True)

    def _put(self, registration: Registration, *, keep_ttl: bool) -> tuple[Instance, bool]:
        instance = self._instance(registration)
        keep = {name for name in model.KEPT_WHEN_MISSING if getattr(registration, name) is None}
        if keep_ttl and registration.ttl is None:
            keep.add("ttl")
        if self.capacity is not None:
            self._check_capacity(instance)
        return self.store.put(instance, frozenset(keep))

    def _check_capacity(self, instance: Instance) -> None:
        """CapacityExceeded when ``instance`` is new and its namespace is full.

        An instance that is live already (a re-registration, a heartbeat, a move to
        another location) is never refused. The check and the write are two steps:
        registrations of new instances that run at the same moment (in several
        threads or processes) may each see the last free place, so a namespace can
        exceed its capacity by the number of such registrations in flight, minus one.
        """
        capacity = self.capacity
        assert capacity is not None
        now = instance.last_heartbeat_at
        if self.store.get(instance.key, now) is not None:
            return
        held = sum(summary.instances for summary in self.store.services(instance.namespace, now))
        if held >= capacity:
            raise CapacityExceeded(
                f"the namespace is full: it holds {held} live instance(s) and its capacity "
                f"(namespace_capacity) is {capacity}; deregister an instance or let one "
                "expire to make room"
            )

    def _instance(self, r: Registration) -> Instance:
        """The record ``r`` asks for, each value checked against its bounds."""
        model.check_text("namespace", r.namespace)
        model.check_text("service_name", r.service_name)
        model.check_text("version", r.version)
        model.check_text("location", r.location)
        if r.instance_id is not None:
            instance_id = model.check_text("instance_id", r.instance_id)
        else:
            instance_id = model.derived_instance_id(r.version, r.location)
        ttl = self.ttl.check(r.ttl) if r.ttl is not None else self.ttl.default
        now = self.clock()
        return Instance(
            namespace=r.namespace,
            service_name=r.service_name,
            instance_id=instance_id,
            version=r.version,
            location=r.location,
            status=model.check_status(r.status) if r.status is not None else UP,
            status_override=None,
            tags=model.check_tags(r.tags) if r.tags is not None else (),
            metadata=model.check_metadata(r.metadata) if r.metadata is not None else {},
            weight=model.check_weight(r.weight) if r.weight is not None else DEFAULT_WEIGHT,
            ttl=ttl,
            registered_at=now,
            last_heartbeat_at=now,
            expires_at=now + ttl,
        )

    def deregister(self, key: InstanceKey) -> Instance:
        """Remove an instance; NotFound when no live instance has this key."""
        removed = self.store.deregister(self._checked_key(key), self.clock())
        if removed is None:
            raise NotFound(self._unknown(key))
        return removed

    def deregister_location(
        self, namespace: str, service_name: str, version: str, location: str
    ) -> list[Instance]:
        """Remove every live instance of the service at this version and location.

        The instance registered there without an id is found by its derived id at
        once; instances registered with ids of their own are found by a lookup.
        NotFound when there is none.
        """
        key = InstanceKey(namespace, service_name, model.derived_instance_id(version, location))
        now = self.clock()
        removed = self.store.deregister(self._checked_key(key), now)
        found = [removed] if removed is not None else []
        for instance in self.store.lookup(namespace, service_name, version, now):
            if instance.location == location:
                gone = self.store.deregister(instance.key, now)
                if gone is not None:
                    found.append(gone)
        if not found:
            raise NotFound(
                f"no live instance of {_describe(service_name, version)} "
                f"at location {location!r}"
            )
        return found

    def set_status_override(self, key: InstanceKey, status: str) -> Instance:
        """Impose ``status`` on the instance until :meth:`clear_status_override` (maintenance).

        It wins over what the instance reports and survives its heartbeats; the
        lease is unchanged. NotFound when no live instance has the key.
        """
        model.check_status(status)
        found = self.store.set_override(self._checked_key(key), status, self.clock())
        if found is None:
            raise NotFound(self._unknown(key))
        return found

    def clear_status_override(self, key: InstanceKey) -> Instance:
        """Remove the operator's status override; the instance's own status applies again."""
        found = self.store.set_override(self._checked_key(key), None, self.clock())
        if found is None:
            raise NotFound(self._unknown(key))
        return found

    # -- reads -------------------------------------------------------------------------

    def get(self, key: InstanceKey) -> Instance:
        """The live instance with this key; NotFound when there is none."""
        found = self.store.get(self._checked_key(key), self.clock())
        if found is None:
            raise NotFound(self._unknown(key))
        return found

    def read(
        self, namespace: str, service_name: str, where: InstanceFilter = UP_INSTANCES
    ) -> Reading:
        """The live instances of the service that ``where`` keeps, and how long that holds.

        Ordered by version, then location, then instance id.
        """
        model.check_text("service_name", service_name)
        if where.version is not None:
            model.check_text("version", where.version)
        store = self.store
        stamp = store.change_stamp(namespace, service_name)  # before the read: never newer
        now = self.clock()
        found = store.lookup(namespace, service_name, where.version, now)
        fresh_until = min([i.expires_at for i in found], default=math.inf)
        return Reading(where.apply(found), namespace, service_name, stamp, now, fresh_until)

    def instances(
        self, namespace: str, service_name: str, where: InstanceFilter = UP_INSTANCES
    ) -> list[Instance]:
        """The live instances of the service that ``where`` keeps (see :meth:`read`)."""
        return self.read(namespace, service_name, where).instances

    def strategy(self, name: str) -> Strategy:
        """The load-balancing strategy of that name; InvalidInput for an unknown one."""
        strategy = self.strategies.get(name)
        if strategy is None:
            shown = name if len(name) <= 40 else f"{name[:40]}..."
            raise InvalidInput(
                f"load_balancer_strategy {shown!r} is not known; "
                f"valid: {', '.join(sorted(self.strategies))}"
            )
        return strategy

    def choose(
        self,
        namespace: str,
        service_name: str,
        strategy_name: str,
        where: InstanceFilter = UP_INSTANCES,
    ) -> Instance:
        """One instance that ``where`` keeps, picked by the named strategy.

        InvalidInput for an unknown strategy; NotFound when no instance matches
        (or the strategy may pick none of them).
        """
        strategy = self.strategy(strategy_name)
        found = self.instances(namespace, service_name, where)
        if not found:
            raise NotFound(no_instance_message(service_name, where))
        return strategy.chooser(found, (namespace, service_name, where))()

    def services(self, namespace: str) -> list[ServiceSummary]:
        """Every service of the namespace with a live instance, sorted by name."""
        return self.store.services(namespace, self.clock())

    def everything(self, namespace: str) -> list[Instance]:
        """Every live instance of the namespace, whatever its status, by service then as
        :meth:`read` orders them (what a whole-registry answer such as Eureka's lists)."""
        now = self.clock()
        store = self.store
        found: list[Instance] = []
        for summary in store.services(namespace, now):
            found.extend(store.lookup(namespace, summary.service_name, None, now))
        return found

    # -- blocking reads ----------------------------------------------------------------

    def watch_instances(
        self,
        namespace: str,
        service_name: str,
        where: InstanceFilter,
        index: int | None = None,
        wait: float = DEFAULT_WAIT,
    ) -> Watched:
        """The instances ``where`` keeps and the service's change index.

        With ``index``: first waits until the service's index differs from it, or until
        ``wait`` seconds (at most :data:`MAX_WAIT`) and a random extra of up to
        ``wait / 16`` have passed (which spreads the wake-ups of many watchers).
        """
        model.check_text("service_name", service_name)
        current = self._index(namespace, service_name, index, wait)
        found = self.instances(namespace, service_name, where)
        return Watched(found, [], current)

    def watch_services(
        self, namespace: str, index: int | None = None, wait: float = DEFAULT_WAIT
    ) -> Watched:
        """Every service of the namespace and the catalog's change index (as above)."""
        current = self._index(namespace, None, index, wait)
        return Watched([], self.services(namespace), current)

    def _index(
        self, namespace: str, service_name: str | None, index: int | None, wait: float
    ) -> int | None:
        """The change index, after waiting for it to move from ``index`` (if given)."""
        store = self.store
        if not store.watchable:
            if index is not None:
                raise InvalidInput(
                    f"index is given, but the {store.name or 'configured'} store keeps no "
                    "change index: blocking queries are not available"
                )
            return None
        if index is None:
            return store.change_index(namespace, service_name)
        if index < 0:
            raise InvalidInput(f"index must be a whole number of at least 0, got {index}")
        if not 0 <= wait <= MAX_WAIT:
            raise InvalidInput(f"wait must be between 0 and {MAX_WAIT:g} seconds, got {wait:g}")
        return store.wait_for_change(namespace, service_name, index, spread_wait(wait))

    def change_index(self, namespace: str, service_name: str | None) -> int | None:
        """The change index of the service (None: of the catalog); None when the store
        keeps none."""
        if not self.store.watchable:
            return None
        return self.store.change_index(namespace, service_name)

    def changes_since(self, namespace: str, index: int) -> list[Change]:
        """The namespace's changes numbered above ``index``, oldest first (what a delta
        answer lists; see :meth:`Store.changes_since`).

        :class:`~keyard.errors.IndexTooOld` when the log no longer reaches back to
        ``index``; InvalidInput when the store keeps no change log.
        """
        if not self.store.watchable:
            raise InvalidInput(
                f"the {self.store.name or 'configured'} store keeps no change log"
            )
        if index < 0:
            raise InvalidInput(f"index must be a whole number of at least 0, got {index}")
        return self.store.changes_since(namespace, index)

    def recent_changes(self, namespace: str) -> list[Change]:
        """Every change the namespace's log still holds, oldest first: those of the last
        :data:`~keyard.stores.changes.LOG_SECONDS` at least (what Eureka's delta lists).

        The log's start is found by a binary search with :meth:`changes_since` (about
        log2 of the catalog index store reads); InvalidInput when the store keeps no
        change log.
        """
        try:
            return self.changes_since(namespace, 0)
        except IndexTooOld:
            pass
        latest = self.change_index(namespace, None) or 0
        low, high, found = 0, latest, []  # changes_since(low) fails, (high) answers
        while high - low > 1:
            middle = (low + high) // 2
            try:
                found, high = self.changes_since(namespace, middle), middle
            except IndexTooOld:
                low = middle
        return found

    @property
    def reads_are_local(self) -> bool:
        """Whether the store's reads never wait on the network (see :class:`Store`)."""
        return self.store.reads_are_local

    @property
    def writes_are_local(self) -> bool:
        """Whether an event loop may try the store's writes itself (see :class:`Store`)."""
        return self.store.writes_are_local

    def subscribe_changes(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the store's thread whenever a change may have come
        (see :meth:`Store.subscribe_changes`); nothing for a store that keeps no index."""
        if self.store.watchable:
            self.store.subscribe_changes(callback)

    # -- lookups by key without raising (for APIs that answer an unknown id their own way)

    def find(self, key: InstanceKey) -> Instance | None:
        """The live instance with this key, ``None`` when there is none (as :meth:`get`)."""
        return self.store.get(self._checked_key(key), self.clock())

    def renew(self, key: InstanceKey) -> Instance | None:
        """Extend the lease of the live instance with this key by its own TTL, keeping
        every other field; ``None`` when there is none: unlike :meth:`heartbeat` it never
        registers one (Amalgam8's clients register again on an unknown id).

        The look-up and the write are two steps: an instance that expires between them
        is registered again with the fields it had (and the default TTL).
        """
        found = self.find(key)
        if found is None:
            return None
        renewed, _ = self.heartbeat(
            Registration(
                key.namespace, key.service_name, found.version, found.location,
                instance_id=key.instance_id, status=found.status, tags=found.tags,
                metadata=found.metadata, weight=found.weight,
            )
        )  # fmt: skip
        return renewed

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _checked_key(key: InstanceKey) -> InstanceKey:
        model.check_text("service_name", key.service_name)
        model.check_text("instance_id", key.instance_id)
        return key

    @staticmethod
    def _unknown(key: InstanceKey) -> str:
        return f"no live instance {key.instance_id!r} of service {key.service_name!r}"

    # -- lyft discovery's weight updates ------------------------------------------------

    def set_weight(self, key: InstanceKey, weight: int) -> Instance:
        """Give the live instance ``weight``; its lease is unchanged (not a heartbeat).

        Status, tags, metadata and TTL are kept from the record at the time of the
        write. A read, then a write: a heartbeat between the two is undone (the lease
        goes back to the one read) until the instance's next heartbeat. NotFound when
        no live instance has the key; InvalidInput for a weight out of bounds.
        """
        model.check_weight(weight)
        live = self.store.get(self._checked_key(key), self.clock())
        if live is None:
            raise NotFound(self._unknown(key))
        # The store's "now" is the record's last heartbeat: its expiry stays where it was.
        stored, _ = self.store.put(
            live._replace(weight=weight), frozenset({"status", "tags", "metadata", "ttl"})
        )
        return stored

    # -- Eureka's metadata update ------------------------------------------------------

    def merge_metadata(self, key: InstanceKey, metadata: Mapping[str, str]) -> Instance:
        """Add ``metadata``'s entries to the live instance's (replacing those of the same
        keys) and extend its lease; NotFound when no live instance has the key,
        InvalidInput when the result is over the metadata bounds. A read, then a write:
        of two merges at the same moment, one may be lost (the later write wins).
        """
        live = self.get(key)
        merged = model.check_metadata({**live.metadata, **metadata})
        now = self.clock()
        changed = live._replace(metadata=merged, last_heartbeat_at=now, expires_at=now + live.ttl)
        stored, _ = self.store.put(changed, frozenset({"ttl", "status", "tags", "weight"}))
        return stored


def spread_wait(wait: float) -> float:
    """``wait`` and a random extra of up to ``wait / 16``, which spreads the wake-ups of
    many watchers (as Consul does)."""
    return wait + random.uniform(0, wait / 16)


def no_instance_message(service_name: str, where: InstanceFilter) -> str:
    """The NotFound message of a choice among no instance."""
    return f"no live instance of {_describe(service_name, where.version)}" + _filter_words(where)


def _filter_words(where: InstanceFilter) -> str:
    """What the filter asked for beyond the version, for a NotFound message."""
    words = []
    if where.tags:
        words.append(f"with tag(s) {', '.join(where.tags)}")
    if where.statuses is not None and where.statuses != frozenset({UP}):
        words.append(f"with status {', '.join(sorted(where.statuses))}")
    return (" " + " and ".join(words)) if words else ""
