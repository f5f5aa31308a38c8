"""What a store's background work needs: one daemon thread per process, its backoff, its owner.

A store's ``cache`` (the redis and the etcd store have one: a per-process copy of
the registry, kept current by a thread) belongs to the process that made it. A
thread does not survive ``fork``: a gunicorn worker forked from a master that had
a cache must never use it, and makes its own. So:

- :class:`BackgroundThread` runs one function in a daemon thread, started once,
  stopped by an event that the function waits on, and joined for a bounded time;
  it remembers the process that made it (:attr:`~BackgroundThread.owned`).
- :class:`PerProcess` holds a store's one value per process (its cache): made on
  first use, never handed to a forked child, which makes its own.
- :class:`Backoff` is the pause between two attempts while the server is down:
  doubling from the first to a cap.
- :func:`process_id` is ``os.getpid()`` without its system call, for the paths that
  ask it on every request.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_pid = os.getpid()


def process_id() -> int:
    """This process's id, as ``os.getpid()`` answers it, without its system call
    (glibc stopped caching it): a fork hook sets it again in each child."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class Backoff:
    """Pauses that double from ``first`` to at most ``cap`` seconds, until :meth:`reset`."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        #: Failures since the last :meth:`reset` (the first one is 1).
        self.failures = 0

    def next(self) -> float:
        """Count a failure; the pause before the next attempt."""
        self.failures += 1
        return min(self.cap, self.first * 2 ** min(self.failures - 1, 32))

    def reset(self) -> None:
        """An attempt succeeded: the next failure pauses ``first`` again."""
        self.failures = 0


class BackgroundThread:
    """One daemon thread running ``target()``, owned by the process that made this object.

    ``target`` runs until it returns; it should return soon after :attr:`stopping`
    is set (waiting with :meth:`wait`, which returns early when stopped).
    Thread-safe.
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        #: The process that made this object: the only one whose thread it starts.
        self.pid = os.getpid()
        #: Set by :meth:`stop`; the thread's function waits on it and ends when set.
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self._target = target
        self._name = name
        self._lock = threading.Lock()

    @property
    def owned(self) -> bool:
        """Whether this process made it (false in a child forked after that)."""
        return self.pid == _pid

    @property
    def alive(self) -> bool:
        """Whether the thread was started and has not ended."""
        thread = self.thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._lock:
            if self.thread is not None:
                return
            self.thread = threading.Thread(target=self._target, name=self._name, daemon=True)
        self.thread.start()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less when stopped; whether it was stopped."""
        return self.stopping.wait(seconds)

    def stop(self, wait: float) -> None:
        """Set :attr:`stopping` and wait up to ``wait`` seconds for the thread to end
        (not when called from the thread itself)."""
        self.stopping.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=wait)


class PerProcess(Generic[T]):
    """A store's value for this process only (its cache), made on first use.

    A child forked after the value was made does not see it (:meth:`here` is
    ``None`` there): its thread did not survive the fork. The child makes its
    own; the parent's is dropped in the child at the fork, with the lock, which
    another thread may have held at that moment. Thread-safe.
    """

    def __init__(self) -> None:
        self._value: T | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._fork_hook = False

    def here(self) -> T | None:
        """This process's value, or None when it has none (yet)."""
        value = self._value
        return value if value is not None and self._pid == _pid else None

    def get(self, make: Callable[[], T]) -> T:
        """This process's value, made by ``make()`` (once: racing threads wait) if none."""
        value = self.here()
        if value is not None:
            return value
        with self._lock:
            value = self.here()
            if value is None:
                if not self._fork_hook:
                    _forget_after_fork(self)
                    self._fork_hook = True
                value = make()
                self._value, self._pid = value, _pid
        return value

    def pop(self) -> T | None:
        """Forget the value; this process's, or None when it had none (a parent's is
        only dropped: stopping it is its own process's business)."""
        with self._lock:
            value = self.here()
            self._value = None
            return value

    def _forget(self) -> None:
        self._value = None
        self._lock = threading.Lock()


def _forget_after_fork(slot: PerProcess[T]) -> None:
    """In a forked child, drop ``slot``'s value and lock (a weak reference: hooks stay)."""
    ref = weakref.ref(slot)

    def forget() -> None:
        child = ref()
        if child is not None:
            child._forget()

    os.register_at_fork(after_in_child=forget)
