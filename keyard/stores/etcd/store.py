"""The etcd store (``store_type: "etcd"``): one registry shared by every keyard process.

It speaks etcd's v2 keys API (etcd 3.4 serves it with ``--enable-v2=true``). An
instance is one key (:mod:`keyard.stores.etcd.keys`)::

    {base_path}/%ns/{namespace}/{service_name}/{instance_id}  ->  the record as JSON

Each name is percent-encoded on its own (see :func:`encode_part`), so ``/``,
``%``, ``..`` or a leading ``_`` in a name never create a directory, climb out
of one, or hide a key; the value holds every field exactly as given. The key
carries etcd's own TTL (what is left of the lease), so etcd purges expired
instances by itself; the value's ``expires_at`` lets every read hide an expired
instance that etcd has not purged yet.

The members of a cluster and the failover between them are
:mod:`keyard.stores.etcd.cluster`; one member's wire connection is
:mod:`keyard.stores.etcd.client`; the cache (option ``cache``), a per-process
copy of the registry, is :mod:`keyard.stores.etcd.cache`; keyard 0.2.0's keys
are converted at a store's first call by :mod:`keyard.stores.etcd.upgrade`.
Every failure to reach etcd comes out as :class:`~keyard.errors.StoreUnavailable`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from functools import wraps
from typing import Any, TypeVar, cast

import etcd

from keyard.errors import ConfigError, StoreUnavailable
from keyard.model import UP, Instance, InstanceKey, ServiceSummary
from keyard.stores import options as opt
from keyard.stores.background import BackgroundThread, PerProcess
from keyard.stores.base import Store, lease_only, merged, ordered
from keyard.stores.changes import EXPIRED, PUT, REMOVED, Change, Sweeper
from keyard.stores.etcd.cache import EtcdCache, leaves
from keyard.stores.etcd.changes import SWEEP_EVERY, EtcdChanges
from keyard.stores.etcd.client import DEFAULT_TIMEOUT, DRIVER_ERRORS, INDEX_HEADER, error_index
from keyard.stores.etcd.cluster import Cluster, parse_hosts
from keyard.stores.etcd.keys import (
    etcd_ttl,
    instance_key,
    lookup_segment,
    namespace_path,
    parse_base_path,
    parse_record,
    record_value,
    record_writer,
    service_path,
    url_path,
)
from keyard.stores.etcd.upgrade import convert_old_keys

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_PORT = 2379
DEFAULT_BASE_PATH = "/services"
MAX_TIMEOUT = 60.0
OPTIONS = ("host", "port", "protocol", "base_path", "timeout", "allow_reconnect", "cache")

_UNPARSED = object()
#: How many (key, value) -> Instance answers a store remembers (see EtcdStore._instance).
_PARSED_VALUES = 4096
#: The writes that fail when the key is not as read: read again and decide again.
_CONFLICTS = (etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound)


def _at_the_edge(method: F) -> F:
    """Convert 0.2.0's keys once, then let no driver exception out: they become StoreUnavailable.

    ``Cluster.call`` already translates failures to reach etcd; what is left are
    etcd answers that the method did not expect (a foreign key in the way).
    """

    @wraps(method)
    def translated(self: EtcdStore, *args: Any, **kwargs: Any) -> Any:
        try:
            if not self._upgraded:
                self._upgrade()
            return method(self, *args, **kwargs)
        except DRIVER_ERRORS as exc:
            raise self._cluster.unavailable(f"{type(exc).__name__}: {exc}") from exc

    return cast(F, translated)


class EtcdStore(Store):
    """Instances as etcd v2 keys under ``base_path``, expired by etcd's own TTLs.

    ``host`` is one host (``"localhost"``, ``"10.0.0.5:2379"``) or the members of
    a cluster (``["10.0.0.5:2379", "10.0.0.6:2379"]``); ``port`` applies to those
    given without one. ``timeout`` bounds every store call, failover included.
    With ``allow_reconnect`` (the default when several members are given) the
    store also learns the other members from the cluster, and fails over to
    them when the member in use stops answering.

    Reads are quorum reads, so every keyard process sees a registration as
    soon as it is made, whichever member it talks to. Stores with the same
    ``base_path`` share one registry; different base paths never see each other.
    Thread-safe; without ``cache`` the store holds no state but connection pools.
    The store may be built while etcd is down: it connects at its first call,
    which also converts keyard 0.2.0's keys (:mod:`keyard.stores.etcd.upgrade`).

    With ``cache`` each process that looks up keeps a cache, a copy of everything
    under ``base_path`` kept current by a watch (:mod:`keyard.stores.etcd.cache`),
    and answers lookups and ``services`` from it while it is current: this
    process's writes at once, other processes' after the watch brings them
    (milliseconds). While the cache is not known to be current, they are quorum
    reads as without it.
    """

    name = "etcd"
    OPTIONS = OPTIONS
    shared_across_processes = True
    watchable = True

    def __init__(
        self,
        host: str | Sequence[str | Sequence[Any]] = "localhost",
        port: int = DEFAULT_PORT,
        *,
        protocol: str = "http",
        base_path: str = DEFAULT_BASE_PATH,
        timeout: float = DEFAULT_TIMEOUT,
        allow_reconnect: bool | None = None,
        cache: bool = False,
    ) -> None:
        port = opt.whole_number("etcd", "port", port, minimum=1, maximum=65535)
        endpoints = parse_hosts(host, port)
        if protocol not in ("http", "https"):
            raise ConfigError(
                f"etcd store: option protocol must be 'http' or 'https', got {protocol!r}"
            )
        timeout = opt.seconds("etcd", "timeout", timeout, zero_ok=False, maximum=MAX_TIMEOUT)
        if allow_reconnect is None:
            allow_reconnect = len(endpoints) > 1
        elif not isinstance(allow_reconnect, bool):
            raise ConfigError(
                f"etcd store: option allow_reconnect must be true or false, got {allow_reconnect!r}"
            )
        elif not allow_reconnect and len(endpoints) > 1:
            raise ConfigError(
                f"etcd store: option allow_reconnect is false but host lists {len(endpoints)} "
                "members; leave allow_reconnect out (or true) to use them all"
            )
        self.base_path = parse_base_path(base_path)
        self.cache = opt.boolean("etcd", "cache", cache)
        self.protocol = protocol
        self.timeout = float(timeout)
        self.allow_reconnect = allow_reconnect
        self._cluster = Cluster(endpoints, protocol, self.timeout, allow_reconnect)
        self._parsed: dict[tuple[str, str], Instance | None] = {}
        #: This process's cache (a forked child makes its own).
        self._cache: PerProcess[EtcdCache] = PerProcess()
        self._upgraded = False  # 0.2.0's keys converted (a forked child inherits that)
        self._upgrade_lock: PerProcess[threading.Lock] = PerProcess()  # one for each process
        #: The change indexes, log and waits (keyard.stores.etcd.changes).
        self.changes = EtcdChanges(self._cluster, self.base_path, self.timeout)
        # Woken by the process's watch of the change keys (keyard.stores.etcd.changes).
        self.waiters = self.changes.waiters
        self._watching: PerProcess[tuple[BackgroundThread, Sweeper]] = PerProcess()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EtcdStore:
        """Build the store from the ``etcd`` config section; every option has a default.

        ``host``, ``port`` (2379), ``protocol`` (``"http"``), ``base_path``
        (``"/services"``), ``timeout`` (2 seconds), ``allow_reconnect``
        (true when ``host`` lists several members) and ``cache`` (false).
        """
        cls.check_options(options)
        return cls(**options)

    @property
    def members(self) -> list[str]:
        """The members the store may use, as ``host:port``: configured, then discovered."""
        return self._cluster.members

    def __repr__(self) -> str:
        return f"EtcdStore({self._cluster.where()}, base_path={self.base_path!r})"

    # -- the Store interface ---------------------------------------------------

    @_at_the_edge
    def put(self, instance: Instance, keep: frozenset[str] = frozenset()) -> tuple[Instance, bool]:
        """One read and one compare-and-swap write: atomic across processes.

        The first read is a local one (no quorum, so it costs etcd no raft
        round), or none at all with ``cache`` when this process's cache is
        current: the write that follows only succeeds if the key is still
        exactly as read (``prevIndex``, or ``prevExist=false`` when absent), so
        a stale read costs one more round, with a quorum read, never a wrong
        answer. etcd's TTL on the key is the stored record's ``ttl``.
        """
        deadline = time.monotonic() + self.timeout
        key = self._key(instance.key)
        path = url_path(key)
        now = instance.last_heartbeat_at
        # The writer token tells this call's own write apart from anyone else's
        # when a request is resent after its answer was lost (a member died).
        token = uuid.uuid4().hex
        quorum = False
        decided: tuple[Instance, bool] | None = None  # the answer of a write this call made
        guess = self._cached_entry(key)
        while True:
            index: int | None
            if guess is not None:
                (index, known), guess = guess, None
            else:
                current = self._read_instance_node(deadline, key, quorum=quorum)
                quorum = True
                mine = current is not None and record_writer(current.get("value")) == token
                if current is not None and decided is not None and mine:
                    self._wrote(key, {"node": current}, decided[0])
                    return decided
                index = None if current is None else current["modifiedIndex"]
                value = None if current is None else current.get("value")
                known = self._instance(key, value)
            live = known if known is not None and known.expires_at > now else None
            stored = merged(live, instance, keep)
            answer = (stored, live is None)
            fields = _write_fields(stored, token, stored.expires_at - now)
            try:
                if index is None:
                    written = self._cluster.call(deadline, "PUT", path, **fields, prevExist="false")
                else:
                    written = self._cluster.call(deadline, "PUT", path, **fields, prevIndex=index)
                self._wrote(key, written, stored)
                if not lease_only(live, stored):
                    self.changes.record(PUT, stored)
                return answer
            except _CONFLICTS:
                decided = answer  # in case the failed compare was our own resent write

    @_at_the_edge
    def get(self, key: InstanceKey, now: float) -> Instance | None:
        deadline = time.monotonic() + self.timeout
        path = self._key(key)
        try:
            node = self._cluster.read(deadline, url_path(path), quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return None
        if node.get("dir"):
            return None
        instance = self._instance(node["key"], node.get("value"))
        if instance is None or instance.expires_at <= now:
            return None
        return instance

    @_at_the_edge
    def deregister(self, key: InstanceKey, now: float) -> Instance | None:
        """Delete the key with ``prevIndex`` of a quorum read; the service and namespace
        directories it leaves empty are deleted too."""
        deadline = time.monotonic() + self.timeout
        etcd_key = self._key(key)
        path = url_path(etcd_key)
        while True:
            try:
                current = self._cluster.read(deadline, path, quorum=True)
            except etcd.EtcdKeyNotFound as exc:
                self._wrote(etcd_key, {"node": {"modifiedIndex": error_index(exc)}}, None)
                return None
            if current.get("dir"):
                return None
            found = self._instance(etcd_key, current.get("value"))
            live = found if found is not None and found.expires_at > now else None
            try:
                answer = self._cluster.call(
                    deadline, "DELETE", path, prevIndex=current["modifiedIndex"]
                )
            except etcd.EtcdKeyNotFound as exc:
                self._wrote(etcd_key, {"node": {"modifiedIndex": error_index(exc)}}, None)
                return None
            except etcd.EtcdCompareFailed:
                continue  # refreshed meanwhile: decide again on the new record
            self._wrote(etcd_key, answer, None)
            if found is not None:
                self.changes.record(REMOVED if live is not None else EXPIRED, found)
            if live is not None:
                self._remove_empty_directories(key, deadline)
            return live

    @_at_the_edge
    def set_override(self, key: InstanceKey, status: str | None, now: float) -> Instance | None:
        """A compare-and-swap of the record read (quorum); etcd's TTL stays what is left of
        the lease (``expires_at - now``)."""
        deadline = time.monotonic() + self.timeout
        etcd_key = self._key(key)
        path = url_path(etcd_key)
        token = uuid.uuid4().hex
        decided: Instance | None = None  # what a write of this call stored
        while True:
            current = self._read_instance_node(deadline, etcd_key, quorum=True)
            if current is None:
                return None
            if decided is not None and record_writer(current.get("value")) == token:
                self._wrote(etcd_key, {"node": current}, decided)
                return decided
            known = self._instance(etcd_key, current.get("value"))
            if known is None or known.expires_at <= now:
                return None
            stored = known._replace(status_override=status)
            fields = _write_fields(stored, token, stored.expires_at - now)
            try:
                written = self._cluster.call(
                    deadline, "PUT", path, **fields, prevIndex=current["modifiedIndex"]
                )
            except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                decided = stored  # in case the failed compare was our own resent write
                continue
            self._wrote(etcd_key, written, stored)
            self.changes.record(PUT, stored)
            return stored

    @_at_the_edge
    def change_index(self, namespace: str, service_name: str | None) -> int:
        """One quorum read: the ``modifiedIndex`` of the service's (or catalog's) change key."""
        self._start_watching()
        return self.changes.index(namespace, service_name)

    @_at_the_edge
    def changes_since(self, namespace: str, index: int) -> list[Change]:
        self._start_watching()
        return self.changes.since(namespace, index)

    def _start_watching(self) -> None:
        if self._watching.here() is None:
            self._watching.get(self._make_watching)

    def _make_watching(self) -> tuple[BackgroundThread, Sweeper]:
        thread = BackgroundThread(lambda: self.changes.run(thread), "keyard-etcd-watch")
        sweeper = Sweeper(self.changes.sweep_and_trim, "keyard-etcd-sweeper", SWEEP_EVERY)
        thread.start()
        sweeper.start()
        return thread, sweeper

    def change_stamp(self, namespace: str, service_name: str) -> Hashable | None:
        """With ``cache``, the cache's (another process's writes show after its lag)."""
        if not self.cache:
            return None
        return self._cache_here().stamp(lookup_segment(namespace), lookup_segment(service_name))

    @_at_the_edge
    def lookup(
        self, namespace: str, service_name: str, version: str | None, now: float
    ) -> list[Instance]:
        """The live instances, from this process's cache when ``cache`` is on and it is current.

        Otherwise (``cache`` off, or the cache not loaded, or its watch failing)
        a quorum read of the service's directory.
        """
        if self.cache:
            segments = (lookup_segment(namespace), lookup_segment(service_name))
            found = self._cache_here().lookup(*segments, version, now)
            if found is not None:
                return found
        deadline = time.monotonic() + self.timeout
        path = url_path(service_path(self.base_path, namespace, service_name))
        return ordered(
            [
                instance
                for instance in self._live_under(deadline, path, now)
                if version is None or instance.version == version
            ]
        )

    @_at_the_edge
    def services(self, namespace: str, now: float) -> list[ServiceSummary]:
        """From this process's cache when ``cache`` is on and it is current, else a quorum
        read of the namespace's directory."""
        if self.cache:
            found = self._cache_here().services(lookup_segment(namespace), now)
            if found is not None:
                return found
        deadline = time.monotonic() + self.timeout
        path = url_path(namespace_path(self.base_path, namespace))
        counts: dict[str, list[int]] = {}
        for instance in self._live_under(deadline, path, now):
            count = counts.setdefault(instance.service_name, [0, 0])
            count[0] += 1
            count[1] += instance.effective_status == UP
        return sorted(ServiceSummary(name, n, up) for name, (n, up) in counts.items())

    def close(self) -> None:
        watching = self._watching.pop()
        if watching is not None:
            watching[1].stop()
            watching[0].stop(wait=0.5)
        cache = self._cache.pop()
        if cache is not None:
            cache.stop()
        self._cluster.close()

    def cache_info(self) -> dict[str, Any] | None:
        """What this process's cache holds (see :meth:`EtcdCache.info`); None when it has none."""
        cache = self._cache.here()
        return None if cache is None else cache.info()

    @_at_the_edge
    def hold_cache(self, held: bool) -> None:
        """Hold this process's cache's watcher between two requests, or let it go on (tests)."""
        cache = self._cache_here()
        if held:
            cache.hold()
        else:
            cache.resume()

    # -- internals ---------------------------------------------------------------

    def _upgrade(self) -> None:
        """Convert keyard 0.2.0's keys under base_path, once per store (see module upgrade).

        Until it has succeeded every call tries again, and raises StoreUnavailable
        while etcd cannot be reached.
        """
        with self._upgrade_lock.get(threading.Lock):
            if not self._upgraded:
                convert_old_keys(self._cluster, self.base_path, self.timeout)
                self._upgraded = True

    def _cache_here(self) -> EtcdCache:
        """This process's cache, made and started on first use.

        A cache and thread made before gunicorn forked belong to the parent;
        the child makes its own.
        """
        cache = self._cache.here()
        return cache if cache is not None else self._cache.get(self._start_cache)

    def _start_cache(self) -> EtcdCache:
        cache = EtcdCache(
            self.base_path,
            load=self._load_everything,
            watch=self._watch,
            parse=self._parse,
            timeout=self.timeout,
        )
        cache.start()
        return cache

    def _cached_entry(self, key: str) -> tuple[int | None, Instance | None] | None:
        """``(modifiedIndex, instance)`` of ``key`` in this process's current cache.

        ``(None, None)`` when the cache holds no instance there; ``None`` when
        there is no current cache to ask.
        """
        cache = self._cache.here() if self.cache else None
        return None if cache is None else cache.entry(key)

    def _wrote(self, key: str, answer: dict[str, Any], instance: Instance | None) -> None:
        """Apply a write of this process to its cache at once, at the write's etcd index."""
        cache = self._cache.here() if self.cache else None
        index = (answer.get("node") or {}).get("modifiedIndex")
        if cache is not None and isinstance(index, int):
            cache.put(key, index, instance)

    def _load_everything(self, deadline: float) -> tuple[dict[str, Any] | None, int]:
        """Everything under base_path (a quorum read), and the etcd index it is current at."""
        try:
            answer = self._cluster.call(
                deadline, "GET", url_path(self.base_path), recursive="true", quorum="true"
            )
        except etcd.EtcdKeyNotFound as exc:
            return None, error_index(exc)
        return answer.get("node"), answer[INDEX_HEADER]

    def _watch(
        self, index: int, wait: float, started: Callable[[], None]
    ) -> Iterator[dict[str, Any]]:
        """Watch base_path on the member that answered last (see :meth:`Cluster.watch`)."""
        return self._cluster.watch(url_path(self.base_path), index, wait, started)

    def _key(self, key: InstanceKey) -> str:
        return instance_key(self.base_path, key.namespace, key.service_name, key.instance_id)

    def _read_instance_node(
        self, deadline: float, key: str, *, quorum: bool
    ) -> dict[str, Any] | None:
        """The node at ``key`` (None when there is none); a directory there is an error."""
        try:
            node = self._cluster.read(deadline, url_path(key), quorum=quorum)
        except etcd.EtcdKeyNotFound:
            return None
        if node.get("dir"):
            raise self._cluster.unavailable(f"{key} is a directory in etcd, not an instance")
        return node

    def _live_under(self, deadline: float, path: str, now: float) -> Iterator[Instance]:
        """The live instances under a directory (``path`` URL-encoded), by a quorum read."""
        try:
            tree = self._cluster.read(deadline, path, recursive=True, quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return
        # Only leaves with a value: directories emptied by deletes or expiry stay
        # in etcd and must not show up.
        for node in leaves(tree):
            instance = self._instance(node["key"], node.get("value"))
            if instance is not None and instance.expires_at > now:
                yield instance

    def _instance(self, key: str, value: str | None) -> Instance | None:
        """The instance a key and value hold, or None when they are not one of ours.

        The answer depends on ``key`` and ``value`` alone, so it is remembered
        for the values read most recently: a lookup of a busy service reads the
        same values again and again until their next refresh.
        """
        if value is None:
            return None
        parsed = self._parsed.get((key, value), _UNPARSED)
        if parsed is not _UNPARSED:
            return cast("Instance | None", parsed)
        instance = self._parse(key, value)
        if len(self._parsed) >= _PARSED_VALUES:
            self._parsed.clear()
        self._parsed[(key, value)] = instance
        return instance

    def _parse(self, key: str, value: str) -> Instance | None:
        return parse_record(self.base_path, key, value)

    def _remove_empty_directories(self, key: InstanceKey, deadline: float) -> None:
        """Delete the service and namespace directories if this left them empty.

        Best effort: etcd refuses to delete a directory that is not empty, so a
        concurrent registration is never lost; a failure here changes nothing.
        """
        service = service_path(self.base_path, key.namespace, key.service_name)
        for directory in (service, namespace_path(self.base_path, key.namespace)):
            try:
                self._cluster.call(deadline, "DELETE", url_path(directory), dir="true")
            except (etcd.EtcdException, StoreUnavailable):
                return


def _write_fields(instance: Instance, token: str, lease: float) -> dict[str, Any]:
    """The form fields of a write of ``instance``: its JSON value, and etcd's own TTL for a
    lease of ``lease`` seconds left."""
    return {"value": record_value(instance, token), "ttl": etcd_ttl(lease)}
