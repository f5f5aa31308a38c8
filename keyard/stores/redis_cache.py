"""The redis store's cache (option ``cache``): a per-process copy of the services looked up.

Every write script of the redis store publishes the change it made on one
channel, ``<prefix>:changes:db<n>``, in the same script as the write (so the
message is atomic with it and in the order Redis applied the writes):

- ``<id>\\nput\\n<tag>\\n<member>\\n<record>`` after a put or a status override
  (the record as now stored, which holds newlines of its own: it is the rest of the
  message);
- ``<id>\\ndel\\n<tag>\\n<member>`` after a deregistration;
- ``<token>\\nmark\\n<tag>`` from the script that reads a service for the cache.

``<tag>`` is the service's ``<namespace>/<service>`` (as in its keys), ``<member>``
the instance's member name (ASCII, no newline), ``<id>`` the
writer's id for its own writes (empty when it has no cache). A :class:`RedisCache`
subscribes to that channel in a daemon thread (a
:class:`~keyard.stores.background.BackgroundThread`) and keeps, per service, the
instances it has read or been told about. A service is cached the first time
it is looked up: the lookup reads it with a script that also publishes a
``mark``; changes published before the mark are already in what the script
read, changes after it are applied on top, so nothing falls in between.

The cache is used only while it is known to be complete: the subscription is up
(its ``subscribe`` reply received, a ``PING`` on it answered within the timeout)
and ``<prefix>:epoch``, a token the first cache writes, is still the one seen at
subscription time (a FLUSHALL, FLUSHDB or a Redis restarted empty removes it).
Otherwise every cached service is dropped and lookups go to Redis until the thread has
subscribed again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import redis.exceptions

from keyard.stores.background import BackgroundThread, Backoff
from keyard.stores.base import Instance

#: Seconds between two checks of the epoch key and of the subscription (PING).
CHECK_INTERVAL = 0.5
#: The most services one process caches; the one cached longest ago is dropped first.
MAX_SERVICES = 10_000
#: A cached service is read again from Redis after this many seconds (a safety net
#: against changes made to keyard's keys by other means than keyard's scripts).
MAX_AGE = 60.0
#: The first and the longest wait between two attempts to subscribe while Redis cannot
#: be reached (doubling from one to the other).
FIRST_RECONNECT_WAIT, MAX_RECONNECT_WAIT = 0.1, 1.0
#: Service reads in flight at once; beyond it, lookups go to Redis without caching.
MAX_LOADING = 1_000
#: A read whose mark has not arrived after this many seconds is given up (it cannot
#: happen while subscribed: a safety net, so that a service is never left uncached).
MAX_LOAD_WAIT = 10.0

# SET NX then GET: the epoch every cache compares with; created by the first one.
EPOCH_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

logger = logging.getLogger("keyard.stores.redis")

#: (namespace, service_name, record as stored) -> the instance.
ParseRecord = Callable[[str, str, bytes], Instance]


class Removal:
    """The type of :data:`REMOVED`."""


#: What :meth:`RedisCache.finish_write` is given for a deregistration.
REMOVED = Removal()


def _order(instance: Instance) -> tuple[str, str, str]:
    return instance.version, instance.location, instance.instance_id


class _CachedService:
    """The instances of one service known to this process, with the order lookups want."""

    __slots__ = ("name", "tag", "instances", "ordered", "next_expiry", "loaded_at", "changes")

    def __init__(self, name: tuple[str, str], tag: bytes, loaded_at: float) -> None:
        self.name = name  # (namespace, service_name)
        self.tag = tag
        self.instances: dict[bytes, Instance] = {}  # by member
        self.ordered: list[Instance] | None = []
        #: No instance expires before this time (a lower bound: refreshes do not raise it).
        self.next_expiry = math.inf
        self.loaded_at = loaded_at
        #: Counts the changes applied; moved after each one (see RedisCache.stamp).
        self.changes = 0

    def put(self, member: bytes, instance: Instance) -> None:
        self.instances[member] = instance
        self.ordered = None
        if instance.expires_at < self.next_expiry:
            self.next_expiry = instance.expires_at
        self.changes += 1

    def remove(self, member: bytes) -> None:
        if self.instances.pop(member, None) is not None:
            self.ordered = None
        self.changes += 1

    def live(self, version: str | None, now: float) -> list[Instance]:
        if now >= self.next_expiry:
            self._purge(now)
        ordered = self.ordered
        if ordered is None:
            ordered = self.ordered = sorted(self.instances.values(), key=_order)
        if version is None:
            return list(ordered)
        return [instance for instance in ordered if instance.version == version]

    def _purge(self, now: float) -> None:
        """Drop the expired instances: O(instances of this service), only when one may be."""
        expired = [key for key, i in self.instances.items() if i.expires_at <= now]
        for key in expired:
            del self.instances[key]
        if expired:
            self.ordered = None
        self.next_expiry = min((i.expires_at for i in self.instances.values()), default=math.inf)


class _Load:
    """A service being read for the cache: waits for both its ``mark`` and the script's answer."""

    __slots__ = (
        "token",
        "name",
        "tag",
        "generation",
        "started",
        "marked",
        "after_mark",
        "snapshot",
    )

    def __init__(self, token: bytes, name: tuple[str, str], tag: bytes, generation: int) -> None:
        self.token = token
        self.started = time.monotonic()
        self.name = name
        self.tag = tag
        self.generation = generation
        self.marked = False
        self.after_mark: list[list[bytes]] = []
        self.snapshot: dict[bytes, Instance] | None = None


class RedisCache:
    """The cache: a copy of the services this process looks up, kept current by a subscription.

    Thread-safe; one per process (:attr:`owned`): the store builds a new one in a
    forked child. :meth:`start` starts the daemon thread, :meth:`stop` ends it.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        channel: str,
        epoch_key: str,
        timeout: float,
        parse_record: ParseRecord,
    ) -> None:
        self._client = client
        self._channel = channel
        self._epoch_script = client.register_script(EPOCH_LUA)
        self._epoch_key = epoch_key
        self._timeout = timeout
        self._parse_record = parse_record
        self._lock = threading.Lock()
        self._background = BackgroundThread(self._run, f"keyard-redis-cache-{channel}")
        self._writer = uuid.uuid4().hex[:12]
        self._write_numbers = itertools.count()
        # All below under self._lock.
        self._current = False
        self._generation = 0
        self._epoch: bytes | None = None
        self._by_name: dict[tuple[str, str], _CachedService] = {}  # the oldest cached first
        self._by_tag: dict[bytes, _CachedService] = {}
        self._loading: dict[bytes, _Load] = {}  # by token
        self._loading_tags: dict[bytes, _Load] = {}
        # This process's writes published but not yet received: id -> (tag, member, applied).
        self._own: dict[bytes, tuple[bytes, bytes, bool]] = {}
        # (tag, member) -> how many of this process's writes to it were applied ahead of
        # the subscription; while > 0, changes received for it are older than those.
        self._ahead: dict[tuple[bytes, bytes], int] = {}
        #: Counters for tests and measurements.
        self.received = 0
        self.resets = 0
        self._was_current = False

    # -- the thread --------------------------------------------------------------

    @property
    def owned(self) -> bool:
        """Whether this process made the cache (false in a child forked after that)."""
        return self._background.owned

    def start(self) -> None:
        """Start the subscribing thread (once; later calls do nothing)."""
        self._background.start()

    def stop(self) -> None:
        """End the thread (within CHECK_INTERVAL) and drop what is cached."""
        self._background.stopping.set()
        with self._lock:
            self._current = False
        self._background.stop(wait=CHECK_INTERVAL + self._timeout + 1)
        self._reset()

    @property
    def current(self) -> bool:
        """Whether lookups may be answered from the cache right now."""
        return self._current

    def _run(self) -> None:
        backoff = Backoff(FIRST_RECONNECT_WAIT, MAX_RECONNECT_WAIT)
        stopping = self._background.stopping
        while not stopping.is_set():
            pubsub = self._client.pubsub()
            self._was_current = False
            pause = 0.0
            try:
                pubsub.subscribe(self._channel)
                self._listen(pubsub)
            except Exception as exc:  # noqa: BLE001 - any failure: changes may have been missed
                if self._was_current:
                    backoff.reset()
                pause = backoff.next()
                log = logger.warning if backoff.failures == 1 else logger.debug
                log("redis cache: lookups go to Redis until subscribed again: %s", exc)
            else:
                backoff.reset()
            finally:
                self._reset()
                with contextlib.suppress(Exception):  # a dead connection closes as it can
                    pubsub.close()
            if pause:
                self._background.wait(pause)

    def _listen(self, pubsub: Any) -> None:
        """Apply changes until stopped; raise when the cache can no longer be trusted."""
        subscribed_by = time.monotonic() + self._timeout
        next_check = math.inf
        pong_by = math.inf
        while not self._background.stopping.is_set():
            message = pubsub.get_message(timeout=CHECK_INTERVAL)
            now = time.monotonic()
            if message is not None:
                kind = message["type"]
                if kind == "message":
                    self._receive(message["data"])
                elif kind == "subscribe":
                    self._check_epoch()
                    with self._lock:
                        self._current = True
                    self._was_current = True
                    next_check = now + CHECK_INTERVAL
                elif kind == "pong":
                    pong_by = math.inf
            elif next_check == math.inf and now > subscribed_by:
                raise redis.exceptions.TimeoutError("no answer to SUBSCRIBE")
            if now >= next_check:
                if now > pong_by:
                    raise redis.exceptions.TimeoutError("no answer to PING on the subscription")
                self._check_epoch()
                self._drop_old(now)
                if pong_by == math.inf:
                    pubsub.ping()
                    pong_by = now + self._timeout
                next_check = now + CHECK_INTERVAL

    def _check_epoch(self) -> None:
        """Compare ``<prefix>:epoch`` with the one seen at subscription; a new one drops all."""
        epoch = self._epoch_script(keys=[self._epoch_key], args=[uuid.uuid4().hex])
        with self._lock:
            if self._epoch is None:
                self._epoch = epoch
            elif epoch != self._epoch:  # flushed, or restarted empty: everything cached is stale
                self._drop_all()
                self._epoch = epoch

    def _drop_old(self, now: float) -> None:
        with self._lock:
            while self._by_name:
                oldest = next(iter(self._by_name.values()))
                if now - oldest.loaded_at <= MAX_AGE:
                    break
                self._forget(oldest)
            while self._loading:
                load = next(iter(self._loading.values()))
                if now - load.started <= MAX_LOAD_WAIT:
                    break
                del self._loading[load.token]
                del self._loading_tags[load.tag]

    def _reset(self) -> None:
        with self._lock:
            self._current = False
            self._epoch = None
            self._drop_all()

    def _drop_all(self) -> None:
        """Under the lock: forget every cached service, load and write in flight."""
        self._generation += 1
        self._by_name.clear()
        self._by_tag.clear()
        self._loading.clear()
        self._loading_tags.clear()
        self._own.clear()
        self._ahead.clear()
        self.resets += 1

    def _forget(self, cached: _CachedService) -> None:
        del self._by_name[cached.name]
        del self._by_tag[cached.tag]

    # -- changes received --------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        self.received += 1
        fields = data.split(b"\n", 4)  # a put's record is the rest, newlines and all
        if len(fields) < 3:
            return  # not a message keyard wrote
        write_id, kind, tag = fields[0], fields[1], fields[2]
        with self._lock:
            if kind == b"mark":
                load = self._loading.get(write_id)
                if load is not None:
                    load.marked = True
                    if load.snapshot is not None:
                        self._install(load)
                return
            if len(fields) < 4:
                return
            member = fields[3]
            own = self._own.pop(write_id, None) if write_id else None
            if own is not None and own[2]:
                key = (own[0], own[1])
                left = self._ahead[key] - 1
                if left:
                    self._ahead[key] = left
                else:
                    del self._ahead[key]
            elif self._ahead and (tag, member) in self._ahead:
                return  # older than a write of this process already applied
            cached = self._by_tag.get(tag)
            if cached is not None:
                self._apply(cached, fields)
                return
            load = self._loading_tags.get(tag)
            if load is not None and load.marked:
                load.after_mark.append(fields)
            # else: a service this process has not cached, or a change the read includes

    def _apply(self, cached: _CachedService, fields: list[bytes]) -> None:
        if fields[1] == b"put" and len(fields) == 5:
            try:
                instance = self._parse_record(*cached.name, fields[4])
            except (ValueError, KeyError, TypeError):
                return  # not a record keyard wrote
            cached.put(fields[3], instance)
        elif fields[1] == b"del":
            cached.remove(fields[3])

    def _install(self, load: _Load) -> None:
        """Under the lock: the service's read and the changes after its mark are cached."""
        del self._loading[load.token]
        del self._loading_tags[load.tag]
        old = self._by_name.get(load.name)
        if old is not None:
            self._forget(old)
        cached = _CachedService(load.name, load.tag, time.monotonic())
        for member, instance in (load.snapshot or {}).items():
            cached.put(member, instance)
        for fields in load.after_mark:
            self._apply(cached, fields)
        self._by_name[load.name] = cached
        self._by_tag[load.tag] = cached
        while len(self._by_name) > MAX_SERVICES:
            self._forget(next(iter(self._by_name.values())))

    # -- lookups -----------------------------------------------------------------

    def lookup(
        self, namespace: str, service_name: str, version: str | None, now: float
    ) -> list[Instance] | None:
        """The live instances from the cache, or None when the cache cannot answer."""
        with self._lock:
            if not self._current:
                return None
            cached = self._by_name.get((namespace, service_name))
            if cached is None:
                return None
            if time.monotonic() - cached.loaded_at > MAX_AGE:
                self._forget(cached)
                return None
            return cached.live(version, now)

    def stamp(self, namespace: str, service_name: str) -> tuple[object, int] | None:
        """The service's change stamp (``Store.change_stamp``) while the cache answers for it:
        the cached copy and its count of changes, each counted after it is applied.
        ``None`` while the cache cannot answer (lookups then go to Redis)."""
        cached = self._by_name.get((namespace, service_name))
        if cached is None or not self._current:
            return None
        if time.monotonic() - cached.loaded_at > MAX_AGE:
            return None
        return cached, cached.changes

    def begin_load(self, namespace: str, service_name: str, tag: bytes) -> bytes | None:
        """A token for the script that reads the service and publishes its mark, or None
        when the service should be read without caching (not current, already loading)."""
        with self._lock:
            if not self._current or tag in self._loading_tags:
                return None
            name = (namespace, service_name)
            if len(self._loading) >= MAX_LOADING or name in self._by_name:
                return None
            token = f"{self._writer}L{next(self._write_numbers)}".encode("ascii")
            load = _Load(token, name, tag, self._generation)
            self._loading[token] = load
            self._loading_tags[tag] = load
            return token

    def finish_load(self, token: bytes, instances: dict[bytes, Instance] | None) -> None:
        """Hand over what the script read (by member), or None when it failed."""
        with self._lock:
            load = self._loading.get(token)
            if load is None or load.generation != self._generation:
                return
            if instances is None:
                del self._loading[token]
                del self._loading_tags[load.tag]
                return
            load.snapshot = instances
            if load.marked:
                self._install(load)

    # -- this process's writes -----------------------------------------------------

    def begin_write(self, tag: bytes, member: bytes) -> tuple[str, int]:
        """An id for a write script to publish with, and the generation it was issued in."""
        with self._lock:
            write_id = f"{self._writer}W{next(self._write_numbers)}"
            self._own[write_id.encode("ascii")] = (tag, member, False)
            return write_id, self._generation

    def finish_write(
        self, write_id: str, generation: int, change: Instance | Removal | None
    ) -> None:
        """Apply this process's write to the cache at once: ``change`` is the stored record,
        :data:`REMOVED`, or None when the write failed or changed nothing."""
        key = write_id.encode("ascii")
        with self._lock:
            own = self._own.get(key)
            if own is None or generation != self._generation:
                return  # already received (and applied in order), or the cache was dropped
            tag, member, _ = own
            cached = self._by_tag.get(tag)
            if change is None or cached is None:
                del self._own[key]  # nothing to apply ahead; received later as any change
                return
            self._own[key] = (tag, member, True)
            self._ahead[(tag, member)] = self._ahead.get((tag, member), 0) + 1
            if isinstance(change, Instance):
                cached.put(member, change)
            else:
                cached.remove(member)
