"""The etcd store's change indexes, change log and waits (see :mod:`keyard.stores.changes`).

etcd's v2 API has no transactions, so each change the store makes is recorded by three
writes after it (under ``{base_path}/%watch/{namespace}``, a segment no name produces):

1. ``POST .../log``: an in-order key (named by etcd's index) holding the change
   (``kind``, the instance's key and record value, the time it was logged);
2. ``PUT .../services/{service}``: its ``modifiedIndex`` is the service's index;
3. ``PUT .../catalog``: its ``modifiedIndex`` is the namespace's catalog index.

etcd's index only grows, so neither index ever goes backwards, and both are the same
for every process. A change whose recording fails (etcd lost between the write and its
record) is logged as a warning and moves no index. Each process that uses the change
API runs one thread that watches ``%watch`` (waking its waiters at every change of any
process), and one sweeper thread that deletes the instances past their expiry (a
compare-and-delete each, recorded as an expiry; etcd's own TTL, a whole second later,
is the backstop: every sweep is a quorum read of every instance) and trims the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import etcd

from keyard.errors import IndexTooOld, StoreUnavailable
from keyard.model import Instance
from keyard.stores.background import BackgroundThread, Backoff
from keyard.stores.changes import EXPIRED, FIRST_INDEX, LOG_SECONDS, Change, Waiters
from keyard.stores.etcd.cache import leaves
from keyard.stores.etcd.client import INDEX_HEADER, describe, error_index
from keyard.stores.etcd.cluster import Cluster
from keyard.stores.etcd.keys import (
    NAMESPACES,
    instance_key,
    lookup_segment,
    parse_record,
    record_value,
    url_path,
)

log = logging.getLogger(__name__)

#: The directory under base_path that holds the change keys of every namespace.
WATCH = "%watch"
#: Seconds between two trims of the change log by a process's watch thread.
TRIM_INTERVAL = 5.0
#: Seconds between two sweeps: each is one quorum read of every instance.
SWEEP_EVERY = 0.5
#: How long one watch request waits for an event before it is made again.
WATCH_WAIT = 10.0


class EtcdChanges:
    """Records, reads and waits for the changes of one store (``base_path``)."""

    def __init__(self, cluster: Cluster, base_path: str, timeout: float) -> None:
        self._cluster = cluster
        self.base_path = base_path
        self.timeout = timeout
        #: Seconds of changes the log keeps at least (tests shorten it).
        self.log_seconds = LOG_SECONDS
        self.waiters = Waiters(recheck=2.0)
        self._next_trim = 0.0

    def _namespace(self, namespace: str) -> str:
        return f"{self.base_path}/{WATCH}/{lookup_segment(namespace)}"

    # -- writes --------------------------------------------------------------------

    def record(self, kind: str, instance: Instance) -> None:
        """Record a change the store has just made (a warning when etcd fails meanwhile)."""
        directory = self._namespace(instance.namespace)
        entry = json.dumps({
            "kind": kind,
            "key": instance_key(self.base_path, *instance.key),
            "value": record_value(instance, ""),
            "logged_at": time.time(),
        })
        deadline = time.monotonic() + self.timeout
        try:
            posted = self._cluster.call(deadline, "POST", url_path(f"{directory}/log"),
                                        value=entry)
            number = str(posted["node"]["createdIndex"])
            service = f"{directory}/services/{lookup_segment(instance.service_name)}"
            self._cluster.call(deadline, "PUT", url_path(service), value=number)
            self._cluster.call(deadline, "PUT", url_path(f"{directory}/catalog"), value=number)
        except (StoreUnavailable, etcd.EtcdException, KeyError, TypeError) as exc:
            # Not the key: its namespace may be a caller's token (auth mode trusted).
            log.warning("etcd store: a change of service %r was made but not recorded: %s",
                        instance.service_name, describe(exc))

    # -- reads ---------------------------------------------------------------------

    def index(self, namespace: str, service_name: str | None) -> int:
        directory = self._namespace(namespace)
        if service_name is None:
            key = f"{directory}/catalog"
        else:
            key = f"{directory}/services/{lookup_segment(service_name)}"
        try:
            node = self._cluster.read(time.monotonic() + self.timeout, url_path(key),
                                      quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return FIRST_INDEX
        return max(FIRST_INDEX, int(node["modifiedIndex"]))

    def since(self, namespace: str, index: int) -> list[Change]:
        directory = self._namespace(namespace)
        deadline = time.monotonic() + self.timeout
        latest = self.index(namespace, None)
        try:
            dropped = int(self._cluster.read(deadline, url_path(f"{directory}/dropped"),
                                             quorum=True)["value"])
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir, KeyError, ValueError, TypeError):
            dropped = 0
        if index < dropped or index > latest:
            raise IndexTooOld(
                f"index {index} is older than the change log of namespace {namespace!r} "
                f"keeps (or newer than its latest, {latest}): read everything"
            )
        try:
            tree = self._cluster.read(deadline, url_path(f"{directory}/log"), sorted=True,
                                      quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return []
        changes = []
        for node in tree.get("nodes") or ():
            number = node.get("createdIndex", 0)
            if number <= index or node.get("dir"):
                continue
            entry = _entry(node.get("value"))
            if entry is None:
                continue
            instance = parse_record(self.base_path, entry["key"], entry["value"])
            if instance is not None:
                changes.append(Change(number, entry["kind"], instance))
        changes.sort()
        return changes

    # -- the process's watch thread ------------------------------------------------------

    def run(self, thread: BackgroundThread) -> None:
        """Wake the waiters at every change of the change keys, by any process."""
        backoff = Backoff(0.1, 2.0)
        next_index: int | None = None
        path = url_path(f"{self.base_path}/{WATCH}")
        while not thread.stopping.is_set():
            try:
                if next_index is None:
                    next_index = self._current_index() + 1
                    self.waiters.notify()
                for event in self._cluster.watch(path, next_index, WATCH_WAIT, lambda: None):
                    node = event.get("node") or {}
                    next_index = max(next_index, int(node.get("modifiedIndex", 0)) + 1)
                    self.waiters.notify()
                    if thread.stopping.is_set():
                        return
                backoff.reset()
            except etcd.EtcdEventIndexCleared:
                next_index = None
            except (StoreUnavailable, etcd.EtcdException) as exc:
                pause = backoff.next()
                if backoff.failures == 3:  # one failure: etcd ended a stream; read again
                    log.warning("etcd store: watching for changes failed: %s", exc)
                next_index = None
                self.waiters.notify()  # the waiters read again, and see the failure
                thread.wait(pause)

    def sweep_and_trim(self) -> None:
        """The sweeper's work: expiries now, the log's trim every TRIM_INTERVAL."""
        self.sweep()
        clock = time.monotonic()
        if clock >= self._next_trim:
            self._next_trim = clock + TRIM_INTERVAL
            self.trim(time.time() - self.log_seconds)

    def _current_index(self) -> int:
        try:
            answer = self._cluster.call(time.monotonic() + self.timeout, "GET",
                                        url_path(f"{self.base_path}/{WATCH}"))
        except etcd.EtcdKeyNotFound as exc:
            return error_index(exc)
        return int(answer[INDEX_HEADER])

    def sweep(self) -> None:
        """Delete each instance past its expiry (compare-and-delete) and record the expiry."""
        deadline = time.monotonic() + self.timeout
        try:
            tree = self._cluster.read(deadline, url_path(f"{self.base_path}/{NAMESPACES}"),
                                      recursive=True, quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return
        now = time.time()
        for node in leaves(tree):
            instance = parse_record(self.base_path, node["key"], node.get("value") or "")
            if instance is None or instance.expires_at > now:
                continue
            try:
                self._cluster.call(deadline, "DELETE", url_path(node["key"]),
                                   prevIndex=node["modifiedIndex"])
            except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                continue  # refreshed, removed or swept by another process meanwhile
            self.record(EXPIRED, instance)

    def trim(self, cutoff: float) -> None:
        """Delete every namespace's log entries logged before ``cutoff``; remember the last."""
        deadline = time.monotonic() + self.timeout
        try:
            top = self._cluster.read(deadline, url_path(f"{self.base_path}/{WATCH}"),
                                     recursive=True, sorted=True, quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return
        for directory in top.get("nodes") or ():
            highest = 0
            for space in directory.get("nodes") or ():
                if not space["key"].endswith("/log"):
                    continue
                for node in space.get("nodes") or ():
                    entry = _entry(node.get("value"))
                    if entry is None or entry["logged_at"] >= cutoff:
                        continue
                    with contextlib.suppress(etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                        self._cluster.call(deadline, "DELETE", url_path(node["key"]),
                                           prevIndex=node["modifiedIndex"])
                    highest = max(highest, int(node["createdIndex"]))
            if highest:
                self._raise_dropped(f"{directory['key']}/dropped", highest, deadline)

    def _raise_dropped(self, key: str, highest: int, deadline: float) -> None:
        """Set the highest number trimmed to ``highest`` unless higher (a compare-and-swap)."""
        for _ in range(5):
            try:
                node = self._cluster.read(deadline, url_path(key), quorum=True)
            except etcd.EtcdKeyNotFound:
                node = None
            try:
                if node is None:
                    self._cluster.call(deadline, "PUT", url_path(key), value=str(highest),
                                       prevExist="false")
                elif int(node.get("value") or 0) < highest:
                    self._cluster.call(deadline, "PUT", url_path(key), value=str(highest),
                                       prevIndex=node["modifiedIndex"])
                return
            except (etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                continue


def _entry(value: Any) -> dict[str, Any] | None:
    """A log entry's fields, or None when the value is not one."""
    try:
        entry = json.loads(value) if isinstance(value, str) else None
    except (ValueError, RecursionError):
        return None
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("kind"), str)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("value"), str)
        and isinstance(entry.get("logged_at"), (int, float))
    ):
        return entry
    return None
