"""Watching a service (or the catalog) with blocking queries: an iterator of snapshots.

:meth:`KeyardClient.watch` sends ``GET /keyard/services/{name}?index=N&wait=W``: the
registry answers when the service's change index moves from ``N`` (or when ``W`` has
passed), and the watch yields a :class:`Snapshot` only when what the caller watches has
changed. The first snapshot is the current state, never reported as a change. The
watch outlives the registry's restarts, an index that goes backwards (the registry's
store was reset) and 503s: it retries with a doubling pause (logged), and carries on.
It stops when the caller breaks out of the loop or calls :meth:`Watch.close`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from keyard.client._exceptions import RegistryUnavailable, UnexpectedResponse
from keyard.client._models import Instance, ServiceSummary

log = logging.getLogger("keyard.client")

#: The pause after the first failed request of a watch, and the longest, in seconds.
RETRY_FIRST, RETRY_CAP = 0.2, 10.0


@dataclass(frozen=True)
class Snapshot:
    """What a watch saw: the registry's change ``index`` and the state at it.

    ``instances`` for :meth:`KeyardClient.watch` (full records, in the registry's
    order), ``services`` for :meth:`KeyardClient.watch_services`; the other is empty.
    """

    index: int
    instances: tuple[Instance, ...] = ()
    services: tuple[ServiceSummary, ...] = ()


#: One blocking read: (the index to wait on, or None for a plain read; the wait) -> snapshot.
Fetch = Callable[["int | None", float], Snapshot]


class Watch(Iterator[Snapshot]):
    """An iterator of :class:`Snapshot` s, each a change of the state (the first: the state).

    Also a context manager (``with client.watch("payments") as watch: ...``), which
    closes it. :meth:`close` may be called from any thread: the iterator ends at the
    next step (a request already waiting is answered by the registry within its wait).
    """

    def __init__(self, fetch: Fetch, wait: float, what: str) -> None:
        self._fetch = fetch
        self.wait = wait
        self.what = what
        #: The index of the last snapshot yielded (None before the first).
        self.index: int | None = None
        self._last: Snapshot | None = None
        self._closed = threading.Event()
        self._failures = 0

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Snapshot:
        while not self._closed.is_set():
            try:
                found = self._fetch(self.index, self.wait)
            except (RegistryUnavailable, UnexpectedResponse) as exc:
                self._failures += 1
                pause = min(RETRY_CAP, RETRY_FIRST * 2 ** min(self._failures - 1, 16))
                log.warning("watching %s: %s; trying again in %.1f s", self.what, exc, pause)
                self._closed.wait(pause)
                continue
            if self._failures:
                log.warning("watching %s: the registry answers again", self.what)
                self._failures = 0
            last = self._last
            self.index = found.index  # also when it went backwards: a reset store
            if last is not None and _state(found) == _state(last):
                continue  # the index moved, what is watched did not (or the wait ran out)
            self._last = found
            return found
        raise StopIteration

    def close(self) -> None:
        """Stop the watch: the iterator ends."""
        self._closed.set()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _state(snapshot: Snapshot) -> tuple[object, ...]:
    """What a change is a change of: every field but an instance's lease (its heartbeats)."""
    return (
        tuple(lease_free(i) for i in snapshot.instances),
        snapshot.services,
    )


def lease_free(instance: Instance) -> Instance:
    """The record without what a health check changes (the last heartbeat and the expiry)."""
    return replace(instance, last_heartbeat_at=instance.registered_at,
                   expires_at=instance.registered_at)
