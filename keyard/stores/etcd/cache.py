"""The etcd store's cache (option ``cache``): a per-process copy of the registry, for lookups.

An :class:`EtcdCache` holds every instance under the store's ``base_path``
(``{base_path}/%ns/{namespace}/{service}/{instance_id}``, see
:mod:`keyard.stores.etcd.keys`; other keys are ignored). It is
loaded with one recursive quorum read, whose ``X-Etcd-Index`` it remembers, and
kept current by a daemon thread (a :class:`~keyard.stores.background.BackgroundThread`)
that watches ``base_path`` recursively from the
next index (etcd v2 ``?wait=true&recursive=true&waitIndex=N``, with
``stream=true`` so that one request brings every change made while it lasts).
``set``, ``create``, ``update`` and ``compareAndSwap`` events are upserts;
``delete``, ``expire`` and ``compareAndDelete`` are removals. The
store also applies its own writes at once, from each write's answer, so that a
process sees its own writes in its next lookup.

The cache answers lookups only while it is known to be complete and current:
loaded, and the watch confirmed by etcd within :data:`STALE_AFTER` seconds (by
an event, or by the headers of a watch request: etcd sends them at once, and a
watch that brings no event is sent again every :data:`WATCH_WAIT` seconds).
Any failure of the watch (etcd down or restarted, a member lost, the event
history cleared because the watcher fell more than 1000 events behind) drops
that status until the cache has been read again from etcd; meanwhile
:meth:`EtcdCache.lookup` returns ``None`` and the store reads from etcd directly.

Every entry carries the etcd index of the change that made it, and a change
older than the entry is ignored, so that a late event never undoes a newer
write of this process; a removal leaves a tombstone for a few seconds for the
same reason.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

import etcd

from keyard.model import UP, Instance, ServiceSummary
from keyard.stores.background import BackgroundThread, Backoff
from keyard.stores.base import ordered
from keyard.stores.etcd.keys import NAMESPACES

log = logging.getLogger(__name__)

#: Seconds one watch request waits for an event before it is sent again.
WATCH_WAIT = 0.5
#: The cache answers lookups only if etcd confirmed the watch within this many seconds.
STALE_AFTER = 1.0
#: Seconds a removal's tombstone is kept (at least; until the watch has passed it too).
TOMBSTONE_SECONDS = 10.0
#: Pauses between attempts after a failure: from the first, doubling up to the last.
FIRST_PAUSE, LAST_PAUSE = 0.05, 1.0

UPSERTS = frozenset({"set", "create", "update", "compareAndSwap"})
REMOVALS = frozenset({"delete", "expire", "compareAndDelete"})

#: (etcd index of the change, the instance or None for a removal)
Entry = tuple[int, Optional[Instance]]
#: namespace segment -> service segment -> instance id segment -> entry
Tree = dict[str, dict[str, dict[str, Entry]]]


class EtcdCache:
    """The cache: an in-memory copy of one ``base_path``, kept current by a watcher thread.

    ``load(deadline)`` reads the whole tree from etcd (a quorum read, failing
    over) and returns its root node (``None`` when base_path does not exist)
    and the etcd index it is current at. ``watch(index, wait, started)``
    yields the watched events from ``index`` on, in order, and ends when none
    came for ``wait`` seconds (or etcd ended the request); it calls
    ``started()`` once etcd has answered the request's headers. ``parse(key, value)`` is the
    store's reading of one key and value (``None`` when not an instance).

    Thread-safe: lookups and the store's own writes come from any thread, the
    events from the watcher thread; one lock guards the cache, held for one
    change or the copying-out of one service's entries. One per process
    (:attr:`owned`): the store builds a new one in a forked child.
    """

    def __init__(
        self,
        base_path: str,
        *,
        load: Callable[[float], tuple[dict[str, Any] | None, int]],
        watch: Callable[[int, float, Callable[[], None]], Iterator[dict[str, Any]]],
        parse: Callable[[str, str], Instance | None],
        timeout: float,
    ) -> None:
        self.base_path = base_path
        self._prefix = f"{base_path}/{NAMESPACES}/"
        self._load_tree = load
        self._watch = watch
        self._parse = parse
        self._timeout = timeout
        self._lock = threading.Lock()
        self._tree: Tree = {}
        self._tombstones: collections.deque[tuple[float, str, int]] = collections.deque()
        self._loaded = False  # the cache was read completely and the watch has not failed since
        self._loading = False
        self._pending: list[tuple[str, int, Instance | None]] = []  # own writes during a load
        self._confirmed_at = float("-inf")  # when etcd last confirmed the watch (monotonic)
        self._next_index = 0  # the index the next watch starts at
        self._read_at = 0  # the index the cache was read at: it holds every change up to it
        self._purge_at = 0.0  # when tombstones are next purged (monotonic)
        self._background = BackgroundThread(self._run, f"keyard-etcd-cache {base_path}")
        self._running = threading.Event()  # cleared: the watcher holds between requests
        self._running.set()
        self._parked = threading.Event()  # set: the watcher is held, no request in flight
        self.loads = 0
        self.events = 0
        # (namespace, service) segments -> the value of _changes after its last change.
        self._stamps: dict[tuple[str, str], int] = {}
        self._changes = 0

    # -- the watcher thread -------------------------------------------------------

    @property
    def owned(self) -> bool:
        """Whether this process made the cache (false in a child forked after that)."""
        return self._background.owned

    def start(self) -> None:
        """Start the watcher thread (once; later calls do nothing)."""
        self._background.start()

    def stop(self, wait: float = 2.0) -> None:
        """Stop the watcher; it ends within one watch request (``WATCH_WAIT``) or load."""
        self._background.stopping.set()
        self._running.set()
        self._background.stop(wait)

    def hold(self) -> None:
        """Keep the watcher from sending requests until :meth:`resume` (tests).

        Returns once the request in flight, if any, has ended (within one
        ``WATCH_WAIT``, or one load); the cache goes stale ``STALE_AFTER`` seconds
        after etcd last confirmed it.
        """
        self._running.clear()
        if self._background.alive:
            self._parked.wait(timeout=WATCH_WAIT + self._timeout + 1)

    def resume(self) -> None:
        self._running.set()

    def _run(self) -> None:
        backoff = Backoff(FIRST_PAUSE, LAST_PAUSE)
        stopping = self._background.stopping
        while not stopping.is_set():
            if not self._running.is_set():
                self._parked.set()
                self._running.wait()
                self._parked.clear()
            if stopping.is_set():
                break
            try:
                if not self._loaded:
                    self._reload()
                self._follow()
                backoff.reset()
            except etcd.EtcdEventIndexCleared:
                log.info(
                    "etcd cache of %s fell behind etcd's event history; reading it again",
                    self.base_path,
                )
                self._invalidate()
                # more changes than a read takes: don't read on end
                self._background.wait(backoff.next())
            except Exception as exc:  # noqa: BLE001 - any failure: read the cache again later
                if self._loaded:
                    log.warning(
                        "etcd cache of %s: watch failed (%s); lookups read etcd until "
                        "it is read again",
                        self.base_path,
                        exc,
                    )
                else:
                    log.debug("etcd cache of %s: load failed: %s", self.base_path, exc)
                self._invalidate()
                self._background.wait(backoff.next())

    def _invalidate(self) -> None:
        with self._lock:
            self._loaded = False

    def _confirmed(self) -> None:
        self._confirmed_at = time.monotonic()

    def _reload(self) -> None:
        """Read everything under base_path again; the cache is current at the read's index."""
        with self._lock:
            self._loading = True
            self._pending = []
        try:
            root, index = self._load_tree(time.monotonic() + self._timeout)
            tree: Tree = {}
            for node in leaves(root):
                self._set(tree, node.get("key"), node.get("modifiedIndex"), node.get("value"))
        except BaseException:
            with self._lock:
                self._loading = False
                self._pending = []
            raise
        with self._lock:
            self._tombstones.clear()  # those of the old cache
            for key, change_index, instance in self._pending:
                if change_index > index:  # a write of this process the read did not see
                    self._put(tree, key, change_index, instance)
            self._tree = tree
            self._pending = []
            self._loading = False
            self._next_index = index + 1
            self._read_at = index
            self._loaded = True
            self.loads += 1
        self._confirmed()

    def _follow(self) -> None:
        """Apply watched events until a watch fails, the watcher is held, or it stops."""
        stopping = self._background.stopping
        while self._loaded and self._running.is_set() and not stopping.is_set():
            events = self._watch(self._next_index, WATCH_WAIT, self._confirmed)
            try:
                for event in events:
                    self._confirmed()
                    self.apply_event(event)
                    if not self._running.is_set() or stopping.is_set():
                        break
                    if time.monotonic() >= self._purge_at:  # a stream may last for ever
                        self._purge_tombstones()
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()  # ends the request at once
            self._purge_tombstones()

    # -- changes ------------------------------------------------------------------

    def apply_event(self, event: dict[str, Any]) -> None:
        """Apply one watched event and move the watch past it."""
        node = event.get("node") or {}
        key, index = node.get("key"), node.get("modifiedIndex")
        if not isinstance(key, str) or not isinstance(index, int):
            raise etcd.EtcdException(f"a watched event without key or index: {event!r}")
        action = event.get("action")
        with self._lock:
            if action in UPSERTS and not node.get("dir"):
                self._set(self._tree, key, index, node.get("value"))
            elif action in REMOVALS:
                if node.get("dir"):
                    self._remove_directory(key, index)
                else:
                    self._put(self._tree, key, index, None)
            self._next_index = max(self._next_index, index + 1)
            self.events += 1

    def put(self, key: str, index: int, instance: Instance | None) -> None:
        """This process wrote ``instance`` (``None``: removed it) at ``key``, at etcd ``index``."""
        with self._lock:
            if self._loading:
                self._pending.append((key, index, instance))
            if index > self._read_at:  # older changes are in the cache, or undone by newer ones
                self._put(self._tree, key, index, instance)

    def _set(self, tree: Tree, key: Any, index: Any, value: Any) -> None:
        if not isinstance(key, str) or not isinstance(index, int):
            return
        instance = self._parse(key, value) if isinstance(value, str) else None
        # A value that is not an instance (any more) is one no lookup returns: a removal.
        self._put(tree, key, index, instance)

    def _put(self, tree: Tree, key: str, index: int, instance: Instance | None) -> None:
        segments = self._segments(key)
        if segments is None:
            return
        namespace, service, instance_id = segments
        services = tree.get(namespace)
        if services is None:
            if instance is None:
                return
            services = tree[namespace] = {}
        instances = services.get(service)
        if instances is None:
            if instance is None:
                return
            instances = services[service] = {}
        known = instances.get(instance_id)
        if known is not None and known[0] >= index:
            return  # a newer change of this key is in already
        instances[instance_id] = (index, instance)
        self._changes += 1  # after the change: see stamp()
        self._stamps[(namespace, service)] = self._changes
        if instance is None:
            self._tombstones.append((time.monotonic(), key, index))

    def _remove_directory(self, key: str, index: int) -> None:
        """A directory was deleted or expired: every instance under it is removed."""
        if self._prefix.startswith(key.rstrip("/") + "/"):
            namespaces: Iterable[str] = list(self._tree)  # base_path/%ns itself or a parent
            service = None
        else:
            parts = key[len(self._prefix) :].split("/") if key.startswith(self._prefix) else []
            if len(parts) not in (1, 2):
                return
            namespaces = [parts[0]]
            service = parts[1] if len(parts) == 2 else None
        for namespace in namespaces:
            services = self._tree.get(namespace, {})
            for name in [service] if service is not None else list(services):
                for instance_id in list(services.get(name, {})):
                    self._put(
                        self._tree, f"{self._prefix}{namespace}/{name}/{instance_id}", index, None
                    )

    def _segments(self, key: str) -> tuple[str, str, str] | None:
        if not key.startswith(self._prefix):
            return None
        parts = key[len(self._prefix) :].split("/")
        if len(parts) != 3:
            return None
        return parts[0], parts[1], parts[2]

    def _purge_tombstones(self) -> None:
        """Forget removals older than TOMBSTONE_SECONDS that the watch has passed."""
        self._purge_at = time.monotonic() + 1.0
        horizon = time.monotonic() - TOMBSTONE_SECONDS
        with self._lock:
            while self._tombstones and self._tombstones[0][0] < horizon:
                if self._tombstones[0][2] >= self._next_index:
                    break
                _, key, index = self._tombstones.popleft()
                segments = self._segments(key)
                if segments is None:
                    continue
                namespace, service, instance_id = segments
                services = self._tree.get(namespace, {})
                instances = services.get(service, {})
                if instances.get(instance_id) == (index, None):
                    del instances[instance_id]
                    if not instances:
                        services.pop(service, None)
                    if not services:
                        self._tree.pop(namespace, None)

    # -- lookups ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when the cache is complete and etcd confirmed it within STALE_AFTER seconds."""
        return self._loaded and time.monotonic() - self._confirmed_at <= STALE_AFTER

    def stamp(self, namespace: str, service: str) -> tuple[int, int] | None:
        """The service's change stamp (``Store.change_stamp``; encoded segments) while the
        cache is ready: the loads so far, and the count of changes at its last change,
        moved after the change is applied. ``None`` when not ready."""
        if not self.ready:
            return None
        return self.loads, self._stamps.get((namespace, service), 0)

    def lookup(
        self, namespace: str, service: str, version: str | None, now: float
    ) -> list[Instance] | None:
        """The live instances of a service, in lookup order; ``None`` when not ready.

        ``namespace`` and ``service`` are encoded key segments; ``version`` is
        the version itself (None: every version).
        """
        if not self.ready:
            return None
        with self._lock:
            instances = self._tree.get(namespace, {}).get(service)
            if not instances:
                return []
            found = [
                instance
                for _, instance in instances.values()
                if instance is not None
                and instance.expires_at > now
                and (version is None or instance.version == version)
            ]
        return ordered(found)

    def services(self, namespace: str, now: float) -> list[ServiceSummary] | None:
        """The services of a namespace (an encoded segment), as ``Store.services``; ``None``
        when not ready."""
        if not self.ready:
            return None
        summaries = []
        with self._lock:
            for instances in self._tree.get(namespace, {}).values():
                live = [
                    instance
                    for _, instance in instances.values()
                    if instance is not None and instance.expires_at > now
                ]
                if live:
                    up = sum(1 for i in live if i.effective_status == UP)
                    summaries.append(ServiceSummary(live[0].service_name, len(live), up))
        summaries.sort()
        return summaries

    def entry(self, key: str) -> tuple[int | None, Instance | None] | None:
        """The etcd index and instance the cache holds at ``key``; ``None`` when not ready.

        ``(None, None)`` when the cache holds no instance at ``key``.
        """
        segments = self._segments(key)
        if segments is None or not self.ready:
            return None
        namespace, service, instance_id = segments
        with self._lock:
            found = self._tree.get(namespace, {}).get(service, {}).get(instance_id)
        if found is None or found[1] is None:
            return None, None
        return found

    def info(self) -> dict[str, Any]:
        """The cache's state: ``ready``, ``instances``, ``tombstones``, ``index``, ``loads``,
        ``events`` (how many watched events it applied)."""
        with self._lock:
            entries = [
                entry
                for services in self._tree.values()
                for instances in services.values()
                for entry in instances.values()
            ]
            return {
                "ready": self.ready,
                "instances": sum(1 for _, instance in entries if instance is not None),
                "tombstones": sum(1 for _, instance in entries if instance is None),
                "index": self._next_index - 1,
                "loads": self.loads,
                "events": self.events,
            }


def leaves(root: dict[str, Any] | None) -> Iterable[dict[str, Any]]:
    """Every node with a value under etcd's ``root`` node (``root`` itself if it has one)."""
    pending = [root] if root is not None else []
    while pending:
        node = pending.pop()
        if node.get("dir"):
            pending.extend(node.get("nodes") or ())
        else:
            yield node
