"""The memory store (``store_type: "simple"``): a registry inside one process.

Right for tests and a single process. Under several gunicorn worker processes
each worker would hold its own registry, so keyard refuses to start that way
(:attr:`MemoryStore.shared_across_processes` is false; see
``keyard.worker_processes``); the default store is ``sqlite``.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from keyard.errors import ConfigError, IndexTooOld
from keyard.model import UP, Instance, InstanceKey, ServiceSummary
from keyard.stores.background import PerProcess
from keyard.stores.base import Store, lease_only, merged, ordered
from keyard.stores.changes import (
    EXPIRED,
    FIRST_INDEX,
    LOG_SECONDS,
    PUT,
    REMOVED,
    Change,
    Sweeper,
    Waiters,
)

# (namespace, service) -> instance_id -> record
_Index = dict[tuple[str, str], dict[str, Instance]]


class MemoryStore(Store):
    """Records indexed by namespace and service, expired lazily through a heap.

    A lookup costs O(instances of the service); expiry costs O(log n) per expired
    record, paid by the call that finds it due, never a scan of the registry.
    """

    waiters: Waiters  # always kept

    name = "simple"
    OPTIONS = ()
    shared_across_processes = False
    reads_are_local = True
    writes_are_local = True  # its lock is held for microseconds, by this process
    watchable = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: _Index = {}
        self._count = 0
        # (expires_at, namespace, service, instance_id); an entry is stale when the
        # record it names has since been refreshed or removed.
        self._expiries: list[tuple[float, str, str, str]] = []
        # (namespace, service) -> its change stamp: the value of _writes at its last
        # change. A service with no records has none (0): its answer is empty.
        self._stamps: dict[tuple[str, str], int] = {}
        self._writes = 0
        # Change indexes (see keyard.stores.changes): namespace -> its latest number;
        # (namespace, service) -> the number of its latest change; namespace -> its log
        # of (time.monotonic(), change), and the highest number dropped from it.
        self._sequences: dict[str, int] = {}
        self._indexes: dict[tuple[str, str], int] = {}
        self._logs: dict[str, deque[tuple[float, Change]]] = {}
        self._dropped: dict[str, int] = {}
        # Woken by this process's writes and by the sweeper's expiries.
        self.waiters = Waiters(recheck=5.0)
        #: Seconds of changes the log keeps (tests shorten it).
        self.log_seconds = LOG_SECONDS
        self._sweeper: PerProcess[Sweeper] = PerProcess()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MemoryStore:
        if options:
            raise ConfigError(f"the simple store takes no options; got {sorted(options)}")
        return cls()

    def put(self, instance: Instance, keep: frozenset[str] = frozenset()) -> tuple[Instance, bool]:
        """Atomic: under the store's lock."""
        now = instance.last_heartbeat_at
        with self._lock:
            self._purge(now)
            records = self._services.setdefault((instance.namespace, instance.service_name), {})
            known = records.get(instance.instance_id)
            if known is None:
                self._count += 1
            live = known if known is not None and known.expires_at > now else None
            stored = merged(live, instance, keep)
            records[instance.instance_id] = stored
            if not lease_only(live, stored):
                self._changed(instance.namespace, instance.service_name)
                self._record(PUT, stored)
            heapq.heappush(
                self._expiries,
                (stored.expires_at, stored.namespace, stored.service_name, stored.instance_id),
            )
            if len(self._expiries) > 2 * self._count + 1024:
                self._compact()
        return stored, live is None

    def get(self, key: InstanceKey, now: float) -> Instance | None:
        with self._lock:
            instance = self._services.get(key[:2], {}).get(key.instance_id)
        if instance is None or instance.expires_at <= now:
            return None
        return instance

    def deregister(self, key: InstanceKey, now: float) -> Instance | None:
        with self._lock:
            self._purge(now)
            removed = self._remove(*key, now=now)
        return removed if removed is not None and removed.expires_at > now else None

    def set_override(self, key: InstanceKey, status: str | None, now: float) -> Instance | None:
        with self._lock:
            records = self._services.get(key[:2], {})
            instance = records.get(key.instance_id)
            if instance is None or instance.expires_at <= now:
                return None
            instance = instance._replace(status_override=status)
            records[key.instance_id] = instance
            self._changed(key.namespace, key.service_name)
            self._record(PUT, instance)
        return instance

    def change_stamp(self, namespace: str, service_name: str) -> int:
        return self._stamps.get((namespace, service_name), 0)

    def lookup(
        self, namespace: str, service_name: str, version: str | None, now: float
    ) -> list[Instance]:
        with self._lock:
            self._purge(now)
            records = self._services.get((namespace, service_name))
            if not records:
                return []
            found = [
                i
                for i in records.values()
                if i.expires_at > now and (version is None or i.version == version)
            ]
        return ordered(found)

    def services(self, namespace: str, now: float) -> list[ServiceSummary]:
        with self._lock:
            self._purge(now)
            summaries = []
            for (space, service_name), records in self._services.items():
                if space != namespace:
                    continue
                live = [i for i in records.values() if i.expires_at > now]
                if live:
                    up = sum(1 for i in live if i.effective_status == UP)
                    summaries.append(ServiceSummary(service_name, len(live), up))
        summaries.sort()
        return summaries

    def change_index(self, namespace: str, service_name: str | None) -> int:
        self._start_sweeper()
        if service_name is None:
            return self._sequences.get(namespace, FIRST_INDEX)
        return self._indexes.get((namespace, service_name), FIRST_INDEX)

    def changes_since(self, namespace: str, index: int) -> list[Change]:
        self._start_sweeper()
        with self._lock:
            latest = self._sequences.get(namespace, FIRST_INDEX)
            if index < self._dropped.get(namespace, 0) or index > latest:
                raise IndexTooOld(
                    f"index {index} is older than the change log of namespace {namespace!r} "
                    f"(or newer than its latest, {latest}): read everything"
                )
            return [c for _, c in self._logs.get(namespace, ()) if c.change_index > index]

    def close(self) -> None:
        sweeper = self._sweeper.pop()
        if sweeper is not None:
            sweeper.stop()

    def __len__(self) -> int:
        """The number of records held, expired ones not yet purged included."""
        return self._count

    # -- internals; the caller holds the lock --------------------------------

    def _changed(self, namespace: str, service_name: str) -> None:
        self._writes += 1
        self._stamps[(namespace, service_name)] = self._writes

    def _record(self, kind: str, instance: Instance) -> None:
        """Number a change of ``instance`` in its namespace, log it, wake the waiters."""
        namespace = instance.namespace
        index = self._sequences.get(namespace, FIRST_INDEX) + 1
        self._sequences[namespace] = index
        self._indexes[(namespace, instance.service_name)] = index
        entries = self._logs.setdefault(namespace, deque())
        clock = time.monotonic()
        entries.append((clock, Change(index, kind, instance)))
        while entries and entries[0][0] < clock - self.log_seconds:
            self._dropped[namespace] = entries.popleft()[1].change_index
        self.waiters.notify()

    def _start_sweeper(self) -> None:
        if self._sweeper.here() is None:
            self._sweeper.get(self._make_sweeper)

    def _make_sweeper(self) -> Sweeper:
        sweeper = Sweeper(self._sweep, "keyard-memory-sweeper")
        sweeper.start()
        return sweeper

    def _sweep(self) -> None:
        with self._lock:
            self._purge(time.time())

    def _remove(
        self, namespace: str, service_name: str, instance_id: str, now: float | None = None
    ) -> Instance | None:
        """Remove a record: a removal at ``now``, or an expiry when ``now`` is None."""
        records = self._services.get((namespace, service_name))
        if records is None:
            return None
        instance = records.pop(instance_id, None)
        if instance is None:
            return None
        self._count -= 1
        self._record(REMOVED if now is not None and instance.expires_at > now else EXPIRED,
                      instance)
        if records:
            self._changed(namespace, service_name)
        else:
            del self._services[(namespace, service_name)]
            self._stamps.pop((namespace, service_name), None)
        return instance

    def _purge(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires_at, namespace, service_name, instance_id = heapq.heappop(expiries)
            current = self._services.get((namespace, service_name), {}).get(instance_id)
            if current is not None and current.expires_at == expires_at:
                self._remove(namespace, service_name, instance_id)

    def _compact(self) -> None:
        self._expiries = [
            (i.expires_at, i.namespace, i.service_name, i.instance_id)
            for records in self._services.values()
            for i in records.values()
        ]
        heapq.heapify(self._expiries)
