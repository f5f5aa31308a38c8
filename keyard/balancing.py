"""Load-balancing strategies: small named objects that pick one instance.

Add a strategy by adding an object with a ``name`` and a ``choose`` method to
:func:`default_strategies`. An unknown name is an error, never a silent fallback.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Hashable, Iterator, Sequence
from typing import Protocol

from keyard.errors import NotFound
from keyard.model import Instance


class Strategy(Protocol):
    """Picks one instance from a non-empty list of live instances."""

    name: str

    def choose(self, instances: Sequence[Instance], key: Hashable) -> Instance:
        """Pick one of ``instances``; ``key`` names what was looked up (service, filter).

        Raises :class:`~keyard.errors.NotFound` when none of them may be picked.
        """
        ...


class RandomStrategy:
    """Every instance is equally likely."""

    name = "random"

    def choose(self, instances: Sequence[Instance], key: Hashable) -> Instance:
        return random.choice(instances)


class RoundRobinStrategy:
    """Takes the instances in turn, per lookup (service and filters), within one process.

    Several keyard processes (``keyard serve``'s workers, or keyards on several hosts)
    each keep their own turns: sharing one counter through the store would make every
    lookup a write. Across processes the picks are spread evenly, not strictly in turn.
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Hashable, Iterator[int]] = {}

    def choose(self, instances: Sequence[Instance], key: Hashable) -> Instance:
        with self._lock:
            counter = self._counters.setdefault(key, itertools.count())
            turn = next(counter)
        return instances[turn % len(instances)]


class WeightedStrategy:
    """Picks an instance with probability proportional to its ``weight``; 0 is never picked."""

    name = "weighted"

    def choose(self, instances: Sequence[Instance], key: Hashable) -> Instance:
        weights = [instance.weight for instance in instances]
        if not any(weights):
            raise NotFound(
                f"every one of the {len(instances)} matching instance(s) has weight 0, "
                "so the weighted strategy picks none"
            )
        return random.choices(instances, weights)[0]


def default_strategies() -> dict[str, Strategy]:
    """A fresh set of the built-in strategies (each registry keeps its own turns)."""
    return {
        strategy.name: strategy
        for strategy in (RandomStrategy(), RoundRobinStrategy(), WeightedStrategy())
    }
