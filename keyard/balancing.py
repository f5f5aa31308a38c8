"""Load-balancing strategies: small named objects that pick one instance.

Add a strategy by adding an object with a ``name`` and a ``chooser`` method to
:func:`default_strategies`. An unknown name is an error, never a silent fallback.
A chooser is made once for a list of instances and picks from it on each call, so
that a kept lookup answer (``/keyard?...&load_balancer_strategy=``) prepares the
strategy's work (the weighted strategy's running totals) once, not per request.
"""

from __future__ import annotations

import itertools
import random
import threading
from bisect import bisect
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Protocol

from keyard.errors import NotFound
from keyard.model import Instance

#: Picks one of the instances a chooser was made for, on each call.
Chooser = Callable[[], Instance]


class Strategy(Protocol):
    """Picks one instance from a non-empty list of live instances."""

    name: str

    def chooser(self, instances: Sequence[Instance], key: Hashable) -> Chooser:
        """A picker of one of ``instances``; ``key`` names what was looked up (service,
        filter). The picker raises :class:`~keyard.errors.NotFound` when none of them may
        be picked.
        """
        ...


class RandomStrategy:
    """Every instance is equally likely."""

    name = "random"

    def chooser(self, instances: Sequence[Instance], key: Hashable) -> Chooser:
        candidates = tuple(instances)
        return lambda: random.choice(candidates)


class RoundRobinStrategy:
    """Takes the instances in turn, per lookup (service and filters), within one process.

    Several keyard processes (``keyard serve``'s workers, or keyards on several hosts)
    each keep their own turns: sharing one counter through the store would make every
    lookup a write. Across processes the picks are spread evenly, not strictly in turn.
    It keeps the turns of the :data:`MAX_COUNTERS` lookups most recently begun; an older
    one starts again at the first instance.
    """

    name = "round_robin"
    #: The most lookups whose turns are kept (a counter is a few hundred bytes).
    MAX_COUNTERS = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Hashable, Iterator[int]] = {}

    def chooser(self, instances: Sequence[Instance], key: Hashable) -> Chooser:
        candidates = tuple(instances)

        def pick() -> Instance:
            with self._lock:
                counters = self._counters
                counter = counters.get(key)
                if counter is None:
                    if len(counters) >= self.MAX_COUNTERS:
                        del counters[next(iter(counters))]  # the oldest begun
                    counter = counters[key] = itertools.count()
                turn = next(counter)
            return candidates[turn % len(candidates)]

        return pick


class WeightedStrategy:
    """Picks an instance with probability proportional to its ``weight``; 0 is never picked."""

    name = "weighted"

    def chooser(self, instances: Sequence[Instance], key: Hashable) -> Chooser:
        candidates = tuple(instances)
        # As random.choices with cum_weights: the first running total past a uniform
        # draw in [0, total) names the pick, so a weight of 0 is never picked.
        totals = list(itertools.accumulate(instance.weight for instance in candidates))
        total = float(totals[-1]) if totals else 0.0
        last = len(candidates) - 1

        def pick() -> Instance:
            if not total:
                raise NotFound(
                    f"every one of the {len(candidates)} matching instance(s) has weight 0, "
                    "so the weighted strategy picks none"
                )
            return candidates[bisect(totals, random.random() * total, 0, last)]

        return pick


def default_strategies() -> dict[str, Strategy]:
    """A fresh set of the built-in strategies (each registry keeps its own turns)."""
    return {
        strategy.name: strategy
        for strategy in (RandomStrategy(), RoundRobinStrategy(), WeightedStrategy())
    }
