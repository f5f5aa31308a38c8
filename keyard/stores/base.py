"""The store interface: how keyard keeps and expires registered instances.

A store knows nothing about HTTP, TTL policy or load balancing. The registry
hands it fully validated :class:`~keyard.model.Instance` records whose times are
already computed, and asks it for the live ones. The contract every store keeps
is tested by :mod:`keyard.testing.store_contract`.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, ClassVar

from keyard.model import Instance, InstanceKey, ServiceSummary
from keyard.stores.changes import Change, Waiters

#: The fields :meth:`Store.put` may be asked to keep from the live record.
KEEPABLE = frozenset({"ttl", "status", "tags", "metadata", "weight"})


def merged(live: Instance | None, instance: Instance, keep: frozenset[str]) -> Instance:
    """What :meth:`Store.put` stores for ``instance`` when ``live`` is the live record (or None).

    For stores that merge in Python; others do the same in their own language.
    """
    if live is None:
        return instance
    ttl = live.ttl if "ttl" in keep else instance.ttl
    return instance._replace(
        status=live.status if "status" in keep else instance.status,
        tags=live.tags if "tags" in keep else instance.tags,
        metadata=live.metadata if "metadata" in keep else instance.metadata,
        weight=live.weight if "weight" in keep else instance.weight,
        ttl=ttl,
        status_override=live.status_override,
        registered_at=live.registered_at,
        expires_at=instance.last_heartbeat_at + ttl,
    )


def lease_only(before: Instance | None, after: Instance) -> bool:
    """Whether a write of ``after`` over the live ``before`` (same key) only extended its
    lease: then no lookup's answer changed (a change stamp or index need not move)."""
    return (
        before is not None
        and before.location == after.location
        and before.version == after.version
        and before.status == after.status
        and before.status_override == after.status_override
        and before.weight == after.weight
        and before.tags == after.tags
        and before.metadata == after.metadata
        and before.registered_at == after.registered_at
    )


def ordered(instances: list[Instance]) -> list[Instance]:
    """Sorted as lookups answer: by version, then location, then instance id (code points)."""
    instances.sort(key=lambda i: (i.version, i.location, i.instance_id))
    return instances


class WouldWait(Exception):
    """A store call made under :func:`without_waiting` would have waited (for a lock
    that another thread or process holds, or to open a connection). Nothing of the
    call, nor of the calls before it under the same :func:`without_waiting`, was
    written: the caller makes them all again where waiting is allowed."""


class _Attempt:
    __slots__ = ("wrote",)

    def __init__(self) -> None:
        self.wrote = False


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "keyard_store_attempt", default=None
)


@contextlib.contextmanager
def without_waiting() -> Iterator[None]:
    """Within, a call of a store whose :attr:`~Store.writes_are_local` raises
    :class:`WouldWait` where it would wait, having written nothing, until one of its
    calls has written (:func:`wrote`): from then on they wait as usual, so that a
    request is never answered again after it was partly made."""
    token = _ATTEMPT.set(_Attempt())
    try:
        yield
    finally:
        _ATTEMPT.reset(token)


def may_wait() -> bool:
    """Whether a store call may wait here (False: raise :class:`WouldWait` instead)."""
    attempt = _ATTEMPT.get()
    return attempt is None or attempt.wrote


def wrote() -> None:
    """Note, from a store, that one of its calls has written (under
    :func:`without_waiting`: from now on its calls wait as usual)."""
    attempt = _ATTEMPT.get()
    if attempt is not None:
        attempt.wrote = True


class Store(abc.ABC):
    """Abstract base class of every store.

    Guarantees every implementation gives (checked by the contract suite):

    - Keys are compared exactly: ``"web"`` never matches ``"webapp"``, ``"1.0"``
      never matches ``"1.0.1"``. Any string round-trips exactly in every field,
      including ``/ ? : % #``, spaces, unicode and path-like names such as
      ``a/b`` or ``..``; so do tags and metadata.
    - An instance whose ``expires_at`` has passed is never returned, whether or
      not it has been purged yet, and counts as absent for every method.
      Expired records are purged without scanning the whole store on every call.
    - Every method is safe to call from many threads at once (and, where
      :attr:`shared_across_processes`, from many processes); each write is
      atomic: concurrent writers never lose a registration, and exactly one of
      several concurrent first registrations of a key is told it is new.
    - A backend that cannot be reached raises :class:`keyard.errors.StoreUnavailable`,
      within the store's configured timeout; the store recovers by itself when the
      backend is back.
    """

    #: The ``store_type`` name this store is registered under.
    name: ClassVar[str] = ""
    #: True when keyard processes that open the same store see one registry
    #: (callers check this, never a store's name).
    shared_across_processes: ClassVar[bool] = True
    #: True when a read (:meth:`lookup`, :meth:`services`, :meth:`change_index`) never
    #: waits on the network or on another process: an event loop may call it itself,
    #: without handing it to a thread (keyard.server.waiting does).
    reads_are_local: ClassVar[bool] = False
    #: True when a write never waits on the network, and waits for another process
    #: (or for a thread of its own that waits for one) only where, under
    #: :func:`without_waiting`, it raises :class:`WouldWait` instead: an event loop
    #: may then try it itself, and hand it to a thread only when it would wait.
    writes_are_local: ClassVar[bool] = False
    #: The names of the options the store's config section may hold (``None``: not said).
    OPTIONS: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """ConfigError for an option the store does not know, without connecting or touching
        files: every store section is checked at start-up, used or not."""
        # Only a list the class declares itself: a subclass with options of its own
        # (and its own from_options) must not be held to its parent's list.
        known = vars(cls).get("OPTIONS")
        if known is not None:
            from keyard.stores.options import reject_unknown

            reject_unknown(cls.name, options, known)

    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: Mapping[str, Any]) -> Store:
        """Build the store from its config section (``config[store_type]``, maybe empty).

        Raises :class:`keyard.errors.ConfigError` naming the option and value
        when an option is unknown or invalid.
        """

    @abc.abstractmethod
    def put(self, instance: Instance, keep: frozenset[str] = frozenset()) -> tuple[Instance, bool]:
        """Register or refresh ``instance``; returns the record as stored and whether it is new.

        ``now`` is ``instance.last_heartbeat_at``. When a live record has
        ``instance.key``, the stored record is ``instance`` with that record's
        ``registered_at`` and ``status_override``, and its value of each field
        named in ``keep`` (a subset of :data:`KEEPABLE`), expiring the resulting
        ``ttl`` after now: exactly :func:`merged`. Otherwise ``instance`` is
        stored as given, and it is new. Atomic.
        """

    @abc.abstractmethod
    def get(self, key: InstanceKey, now: float) -> Instance | None:
        """The live record with exactly this key, or ``None``."""

    @abc.abstractmethod
    def deregister(self, key: InstanceKey, now: float) -> Instance | None:
        """Remove the record with this key; returns it if it was live, else ``None``."""

    @abc.abstractmethod
    def set_override(self, key: InstanceKey, status: str | None, now: float) -> Instance | None:
        """Set (a status) or remove (``None``) the live record's status override.

        The lease (``ttl``, ``expires_at``, ``last_heartbeat_at``) is unchanged.
        Returns the record as stored, or ``None`` when no live record has the key.
        """

    @abc.abstractmethod
    def lookup(
        self, namespace: str, service_name: str, version: str | None, now: float
    ) -> list[Instance]:
        """The live records of the service (and ``version``, if not ``None``) in ``namespace``.

        Ordered by ``(version, location, instance_id)``, comparing strings by code
        point (:func:`ordered`). An unknown service gives an empty list.
        """

    @abc.abstractmethod
    def services(self, namespace: str, now: float) -> list[ServiceSummary]:
        """Every service of ``namespace`` with at least one live record, sorted by name.

        ``up`` counts the records whose effective status is ``UP``.
        """

    def change_stamp(self, namespace: str, service_name: str) -> Hashable | None:
        """A value that changes whenever a write may change the service's :meth:`lookup`.

        Taken before a lookup, it lets a caller keep that lookup's answer (and
        what it made of it) for as long as two things hold: the stamp is equal,
        and no record of the answer has reached its ``expires_at`` (expiry moves
        no stamp). Every write of this process and of every other process that
        shares the store must change it, the moment the write has returned.
        It must cost no I/O: it is asked on every lookup. ``None`` (the default)
        says the store cannot tell cheaply, and every lookup reads it afresh.
        """
        return None

    # -- change indexes (optional: where :attr:`watchable`; see keyard.stores.changes) -----

    #: True when the store keeps change indexes and a change log (the methods below).
    watchable: ClassVar[bool] = False

    def change_index(self, namespace: str, service_name: str | None) -> int:
        """The change index of the service (``None``: of the namespace's catalog).

        A whole number >= 1 that never goes backwards while the store keeps its data,
        the same in every process on the store. It moves with every change of the
        service's records (every change in the namespace, for the catalog) but a
        heartbeat that only extends a lease, and with every expiry, within 1 s of the
        instance's ``expires_at`` (see :class:`~keyard.stores.changes.Sweeper`).
        """
        raise NotImplementedError(f"the {self.name or type(self).__name__} store keeps no index")

    #: This process's waiters on the store's change indexes, set by the constructor of a
    #: store that keeps them: :meth:`wait_for_change` and :meth:`subscribe_changes` use it.
    waiters: Waiters | None = None

    def wait_for_change(
        self, namespace: str, service_name: str | None, index: int, timeout: float
    ) -> int:
        """The change index as soon as it differs from ``index``, else after ``timeout`` s.

        Woken by changes made in any process on the store; never returns later than
        ``timeout`` plus one read. A backend that cannot be reached raises
        :class:`~keyard.errors.StoreUnavailable` (within its timeout), even mid-wait.
        """
        if self.waiters is None:
            name = self.name or type(self).__name__
            raise NotImplementedError(f"the {name} store keeps no index")
        return self.waiters.wait(
            lambda: self.change_index(namespace, service_name), index, timeout
        )

    def subscribe_changes(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever this process's :meth:`wait_for_change` waiters are
        woken (a change of any process, an expiry, a lost connection), from the store's
        own thread: so that a waiter that is not a thread (an event loop) reads again.

        ``callback`` must be quick and must not raise. It may be called when nothing
        changed; a change is never missed for longer than the store's recheck (2 s at most).
        """
        if self.waiters is None:
            name = self.name or type(self).__name__
            raise NotImplementedError(f"the {name} store keeps no index")
        self.waiters.subscribe(callback)

    def changes_since(self, namespace: str, index: int) -> list[Change]:
        """The namespace's changes numbered above ``index``, oldest first.

        :class:`~keyard.errors.IndexTooOld` when changes after ``index`` have already
        left the log (it keeps :data:`~keyard.stores.changes.LOG_SECONDS` at least),
        or when ``index`` is above the catalog index (the store was reset since).
        """
        raise NotImplementedError(f"the {self.name or type(self).__name__} store keeps no index")

    def close(self) -> None:  # noqa: B027 - optional hook, most stores need nothing
        """Release connections or files. The store is not used afterwards."""
