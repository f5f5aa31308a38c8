"""Load-balancing strategies: small named objects that pick one live instance.

Add a strategy by adding an object with a ``name`` and a ``choose`` method to
:data:`STRATEGIES`. An unknown name is an error, never a silent fallback.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Hashable, Iterator, Sequence
from typing import Protocol

from keyard.stores.base import Instance


class Strategy(Protocol):
    """Picks one instance from a non-empty list of live instances."""

    name: str

    def choose(self, instances: Sequence[Instance], key: Hashable) -> Instance:
        """Pick one of ``instances``; ``key`` names what was looked up (service, version)."""
        ...


class RandomStrategy:
    """Every live instance is equally likely."""

    name = "random"

    def choose(self, instances: Sequence[Instance], key: Hashable) -> Instance:
        return random.choice(instances)


class RoundRobinStrategy:
    """Takes the live instances in turn, per (service, version), within one process."""

    name = "round_robin"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Hashable, Iterator[int]] = {}

    def choose(self, instances: Sequence[Instance], key: Hashable) -> Instance:
        with self._lock:
            counter = self._counters.setdefault(key, itertools.count())
            turn = next(counter)
        return instances[turn % len(instances)]


STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy for strategy in (RandomStrategy(), RoundRobinStrategy())
}
