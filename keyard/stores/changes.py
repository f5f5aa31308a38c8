"""What the stores share to keep change indexes: the change record, the waiting, the sweeper.

A store that is :attr:`~keyard.stores.base.Store.watchable` keeps, per namespace, one
sequence of changes. Every change (a registration, a deregistration, a change of
status, override, tags, metadata, weight or location, an instance expiring; not a
heartbeat that only extends a lease) takes the namespace's next number. So:

- the **catalog index** of a namespace is its latest number (1 before any change);
- a **service's index** is the number of the latest change to that service (1 when
  it never had one); both are whole numbers >= 1 and never go backwards;
- the **change log** is the numbered changes of the last :data:`LOG_SECONDS` at least,
  removed instances included; :class:`~keyard.errors.IndexTooOld` answers an index
  older than that.

:class:`Waiters` is how a process's threads wait for an index to move (a store wakes
them from its own notifications: another process's commit, a pub/sub message, an etcd
watch), and how a process's event loop hears of those notifications
(:meth:`Waiters.subscribe`); :func:`stop_waiting` ends every wait of the process at once
(a server shutting down); :class:`Sweeper` is the thread that makes expiries into changes within
:data:`SWEEP_INTERVAL` of their ``expires_at``, whether or not a request touches the store.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import NamedTuple

from keyard.model import Instance
from keyard.stores.background import BackgroundThread, Backoff

log = logging.getLogger(__name__)

#: The service name that means "the catalog" (the list of services) in the change API.
CATALOG = None
#: The first index of every service and catalog: before any change.
FIRST_INDEX = 1
#: Seconds of changes the log keeps at least.
LOG_SECONDS = 180.0
#: Seconds between two looks of the sweeper for expired instances.
SWEEP_INTERVAL = 0.2

#: What a change did to its instance.
PUT, REMOVED, EXPIRED = "put", "removed", "expired"


class Change(NamedTuple):
    """One entry of a namespace's change log.

    ``change_index`` is its number; ``kind`` is :data:`PUT` (registered or changed:
    ``instance`` is the record as stored), :data:`REMOVED` or :data:`EXPIRED`
    (``instance`` is the record removed).
    """

    change_index: int
    kind: str
    instance: Instance


#: Set by :func:`stop_waiting`: every wait of this process answers at once from then on.
_stopping = threading.Event()
#: Every :class:`Waiters` of this process, for :func:`stop_waiting` to wake.
_all_waiters: weakref.WeakSet[Waiters] = weakref.WeakSet()


def stop_waiting() -> None:
    """End every wait of this process now, and every later one at once: a server is
    shutting down, and its waiting requests are answered with the state they have.

    Safe to call from any thread (not from a signal handler that may have interrupted
    a :class:`Waiters` call: it takes their locks). Irreversible for the process.
    """
    _stopping.set()
    for waiters in list(_all_waiters):
        waiters.notify()


def stopping() -> bool:
    """Whether :func:`stop_waiting` was called in this process."""
    return _stopping.is_set()


class Waiters:
    """Threads of one process waiting for a change index to move, woken by :meth:`notify`.

    ``recheck`` bounds how long a waiter sleeps without reading the index again: a
    notification lost (or a store gone unreachable) costs at most that much.
    """

    def __init__(self, recheck: float = 1.0) -> None:
        self.recheck = recheck
        self._condition = threading.Condition()
        self._generation = 0
        self._subscribers: list[Callable[[], None]] = []
        _all_waiters.add(self)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at every :meth:`notify`, in the notifying thread.

        For a waiter that is not a thread (an event loop's): ``callback`` must be quick
        and must not raise (``loop.call_soon_threadsafe`` of the loop's own wake-up).
        """
        with self._condition:
            self._subscribers.append(callback)

    def notify(self) -> None:
        """Something may have changed: every waiter reads its index again."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback()

    def wait(self, current: Callable[[], int], index: int, timeout: float) -> int:
        """``current()`` as soon as it differs from ``index``, or when ``timeout`` has passed.

        Never later than ``timeout`` (plus one read), and at once after
        :func:`stop_waiting`; ``current``'s exceptions (the store's
        :class:`~keyard.errors.StoreUnavailable`) come through.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._condition:
            generation = self._generation
        while True:
            found = current()
            if found != index:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 or _stopping.is_set():
                return found
            with self._condition:
                if self._generation == generation:
                    self._condition.wait(min(remaining, self.recheck))
                generation = self._generation


class Sweeper:
    """A daemon thread that calls ``sweep()`` every ``interval`` seconds.

    ``sweep`` removes the instances whose expiry has passed, recording each as an
    :data:`EXPIRED` change. A failure (the store unreachable) is logged and tried
    again after a backoff. Started by a store's first use of its change API in a
    process (a thread never crosses a fork: a child starts its own).
    """

    def __init__(
        self, sweep: Callable[[], None], name: str, interval: float = SWEEP_INTERVAL
    ) -> None:
        self._sweep = sweep
        self.interval = interval
        self.thread = BackgroundThread(self._run, name)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop(wait=2.0)

    def _run(self) -> None:
        backoff = Backoff(self.interval, 5.0)
        pause = self.interval
        while not self.thread.wait(pause):
            try:
                self._sweep()
            except Exception as exc:  # noqa: BLE001 - the thread must live on
                pause = backoff.next()
                if backoff.failures == 1:
                    log.warning("sweeping expired instances failed (again in %.1f s): %s",
                                pause, exc)
            else:
                backoff.reset()
                pause = self.interval
