"""Answers kept while they hold: a repeated lookup costs a dict read and a stamp compare.

An API that turns a lookup (a :class:`~keyard.registry.Reading`) into an answer
(bytes, or the candidates of a load-balancing choice) keeps it here under a key of
its own (for example the namespace and the query string). The kept answer is given
back while both of these hold, and never after:

- the store's change stamp for the service (:meth:`Store.change_stamp`) is the one
  taken before the read: no write of any process has changed the service since;
- the clock is between the read and the earliest expiry of the instances read.

A store whose stamp is ``None`` (it cannot tell cheaply) has nothing kept.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from keyard.registry import Reading, Registry

T = TypeVar("T")

#: The WSGI environ key where an API leaves the :class:`~keyard.registry.Reading` that
#: a GET's whole answer was made from, and holds as long as (its bytes depend on nothing
#: else of the request but its path, query string, ``Authorization`` and ``Accept``):
#: ``keyard serve``'s front then keeps the whole answer (:mod:`keyard.server.waiting`).
READING_KEY = "keyard.reading"

#: Beside :data:`READING_KEY`, for an answer whose body is made afresh each time from
#: the same reading (a load-balancing choice): the function that makes it
#: (:class:`keyard.app.App` calls it for each kept answer; the front keeps none of these).
BODY_KEY = "keyard.body"

#: At most this many answers are kept per cache; past it the cache starts afresh
#: (a lookup's keys are few; a flood of distinct query strings must not grow memory).
KEPT_ANSWERS = 4096


class Answers(Generic[T]):
    """Answers of an API's reads, by the API's key, each valid as the module says."""

    def __init__(self, registry: Registry, limit: int = KEPT_ANSWERS) -> None:
        self._registry = registry
        self._limit = limit
        self._kept: dict[Hashable, tuple[Reading, T]] = {}

    def get(self, key: Hashable) -> T | None:
        """The answer kept under ``key`` if it still holds, else ``None``."""
        entry = self._kept.get(key)
        if entry is None:
            return None
        reading, answer = entry
        registry = self._registry
        if not reading.read_at <= registry.clock() < reading.fresh_until:
            return None
        if registry.store.change_stamp(reading.namespace, reading.service_name) != reading.stamp:
            return None
        return answer

    def keep(self, key: Hashable, reading: Reading, answer: T) -> None:
        """Keep ``answer``, made from ``reading``, under ``key`` (unless the store has no stamp)."""
        if reading.stamp is None:
            return
        if len(self._kept) >= self._limit:
            self._kept = {}
        self._kept[key] = (reading, answer)
