"""The memory store (``store_type: "simple"``): a registry inside one process.

Right for tests and a single process. Under several gunicorn worker processes
each worker would hold its own registry, so keyard refuses to start that way
(``keyard.worker_processes``); the default store is ``sqlite``.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Mapping
from typing import Any

from keyard.errors import ConfigError
from keyard.stores.base import Instance, Store

# service -> version -> location -> instance
_Index = dict[str, dict[str, dict[str, Instance]]]


class MemoryStore(Store):
    """Instances indexed by service and version, expired lazily through a heap.

    A lookup costs O(instances of the service); expiry costs O(log n) per expired
    record, paid by the call that finds it due, never a scan of the registry.
    """

    name = "simple"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: _Index = {}
        self._count = 0
        # (expires_at, service, version, location); an entry is stale when the
        # record it names has since been refreshed or removed.
        self._expiries: list[tuple[float, str, str, str]] = []

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MemoryStore:
        if options:
            raise ConfigError(f"the simple store takes no options; got {sorted(options)}")
        return cls()

    def register(self, instance: Instance) -> bool:
        with self._lock:
            return self._put(instance, keep_ttl=False)[1]

    def refresh(self, instance: Instance) -> tuple[Instance, bool]:
        """Atomic: under the store's lock."""
        with self._lock:
            return self._put(instance, keep_ttl=True)

    def get(self, service_name: str, version: str, location: str, now: float) -> Instance | None:
        with self._lock:
            instance = self._services.get(service_name, {}).get(version, {}).get(location)
        if instance is None or instance.expires_at <= now:
            return None
        return instance

    def deregister(self, service_name: str, version: str, location: str, now: float) -> bool:
        with self._lock:
            self._purge(now)
            return self._remove(service_name, version, location) is not None

    def lookup(self, service_name: str, version: str | None, now: float) -> list[Instance]:
        with self._lock:
            self._purge(now)
            versions = self._services.get(service_name)
            if not versions:
                return []
            if version is not None:
                locations = versions.get(version)
                found = [locations[k] for k in sorted(locations)] if locations else []
            else:
                found = [versions[v][k] for v in sorted(versions) for k in sorted(versions[v])]
        # Purged above, so all are live unless one expires at exactly ``now``.
        return [i for i in found if i.expires_at > now]

    def __len__(self) -> int:
        """The number of records held, expired ones not yet purged included."""
        return self._count

    # -- internals; the caller holds the lock --------------------------------

    def _put(self, instance: Instance, keep_ttl: bool) -> tuple[Instance, bool]:
        """Store ``instance`` (with the live one's ttl if ``keep_ttl``); (stored, new)."""
        now = instance.expires_at - instance.ttl
        self._purge(now)
        locations = self._services.setdefault(instance.service_name, {}).setdefault(
            instance.version, {}
        )
        known = locations.get(instance.location)
        if known is None:
            self._count += 1
        live = known is not None and known.expires_at > now
        if known is not None and live and keep_ttl:
            instance = instance._replace(ttl=known.ttl, expires_at=now + known.ttl)
        locations[instance.location] = instance
        heapq.heappush(
            self._expiries,
            (instance.expires_at, instance.service_name, instance.version, instance.location),
        )
        if len(self._expiries) > 2 * self._count + 1024:
            self._compact()
        return instance, not live

    def _remove(self, service_name: str, version: str, location: str) -> Instance | None:
        versions = self._services.get(service_name)
        if versions is None:
            return None
        locations = versions.get(version)
        if locations is None:
            return None
        instance = locations.pop(location, None)
        if instance is None:
            return None
        self._count -= 1
        if not locations:
            del versions[version]
            if not versions:
                del self._services[service_name]
        return instance

    def _purge(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires_at, service_name, version, location = heapq.heappop(expiries)
            current = self._services.get(service_name, {}).get(version, {}).get(location)
            if current is not None and current.expires_at == expires_at:
                self._remove(service_name, version, location)

    def _compact(self) -> None:
        self._expiries = [
            (i.expires_at, i.service_name, i.version, i.location)
            for versions in self._services.values()
            for locations in versions.values()
            for i in locations.values()
        ]
        heapq.heapify(self._expiries)
