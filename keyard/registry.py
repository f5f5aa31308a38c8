"""The registry: keyard's domain rules, between the HTTP resource and the store.

It validates request fields, applies defaults and the TTL policy, computes
expiry times from its clock, and balances lookups. It knows nothing about HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from keyard.balancing import STRATEGIES, Strategy
from keyard.errors import InvalidInput, NotFound
from keyard.stores.base import Instance, Store

Clock = Callable[[], float]
Fields = Mapping[str, object]

DEFAULT_VERSION = "1.0"
#: The longest value each text field may take, in characters.
MAX_LENGTHS = {"service_name": 128, "version": 128, "location": 1024}

INSTANCE_FIELDS = ("service_name", "version", "location", "ttl")
KEY_FIELDS = ("service_name", "version", "location")
LOOKUP_FIELDS = ("service_name", "version", "load_balancer_strategy")


@dataclass(frozen=True)
class TtlPolicy:
    """How long a registration lives without a health check, in seconds."""

    default: int = 30
    minimum: int = 1
    maximum: int = 86400


def _reject_unknown(fields: Fields, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(allowed)}"
        )


def _text(fields: Fields, name: str, default: str | None = None) -> str:
    value = fields.get(name)
    if value is None:
        if default is not None:
            return default
        raise InvalidInput(f"{name} is required")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    limit = MAX_LENGTHS[name]
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters long; the limit is {limit}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{name} is not valid Unicode: {exc.reason} in {value!r}") from exc
    return value


class Registry:
    """Registers, refreshes, removes and finds service instances in a store."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = time.time,
        ttl: TtlPolicy | None = None,
        strategies: Mapping[str, Strategy] = STRATEGIES,
    ) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl or TtlPolicy()
        self.strategies = strategies

    def _ttl(self, value: object) -> int:
        bounds = f"between {self.ttl.minimum} and {self.ttl.maximum}"
        if isinstance(value, int) and not isinstance(value, bool):
            seconds: int | None = value
        elif isinstance(value, str) and value.isascii() and value.isdigit():
            seconds = int(value) if len(value) <= 18 else None  # int() of 5000 digits raises
        else:
            raise InvalidInput(f"ttl must be a whole number of seconds {bounds}, got {value!r}")
        if seconds is None or not self.ttl.minimum <= seconds <= self.ttl.maximum:
            shown = str(value) if len(str(value)) <= 20 else f"{str(value)[:20]}..."
            raise InvalidInput(f"ttl must be {bounds} seconds, got {shown}")
        return seconds

    def _key(self, fields: Fields) -> tuple[str, str, str]:
        return (
            _text(fields, "service_name"),
            _text(fields, "version", DEFAULT_VERSION),
            _text(fields, "location"),
        )

    def register(self, fields: Fields) -> tuple[Instance, bool]:
        """Register (or refresh) an instance. Returns it and whether it is new.

        ``version`` defaults to ``"1.0"`` and ``ttl`` to the default TTL.
        """
        _reject_unknown(fields, INSTANCE_FIELDS)
        service_name, version, location = self._key(fields)
        ttl = self._ttl(fields["ttl"]) if fields.get("ttl") is not None else self.ttl.default
        now = self.clock()
        instance = Instance(service_name, version, location, ttl, now + ttl)
        return instance, self.store.register(instance)

    def heartbeat(self, fields: Fields) -> tuple[Instance, bool]:
        """Refresh an instance's expiry; register it if unknown (so a restarted registry heals).

        Without ``ttl`` the instance keeps the TTL it was registered with.
        """
        _reject_unknown(fields, INSTANCE_FIELDS)
        service_name, version, location = self._key(fields)
        now = self.clock()
        if fields.get("ttl") is not None:
            ttl = self._ttl(fields["ttl"])
            instance = Instance(service_name, version, location, ttl, now + ttl)
            return instance, self.store.register(instance)
        ttl = self.ttl.default  # if the instance is unknown; else it keeps its own
        return self.store.refresh(Instance(service_name, version, location, ttl, now + ttl))

    def deregister(self, fields: Fields) -> tuple[str, str, str]:
        """Remove an instance; NotFound when no live instance has this key."""
        _reject_unknown(fields, KEY_FIELDS)
        service_name, version, location = self._key(fields)
        if not self.store.deregister(service_name, version, location, self.clock()):
            raise NotFound(
                f"no live instance of service {service_name!r} version {version!r} "
                f"at location {location!r}"
            )
        return service_name, version, location

    def _find(self, fields: Fields) -> tuple[str, str | None, list[Instance]]:
        _reject_unknown(fields, LOOKUP_FIELDS)
        service_name = _text(fields, "service_name")
        version = _text(fields, "version") if fields.get("version") is not None else None
        return service_name, version, self.store.lookup(service_name, version, self.clock())

    def lookup(self, fields: Fields) -> list[Instance]:
        """Every live instance of the service (and version), ordered by version, then location."""
        return self._find(fields)[2]

    def choose(self, fields: Fields) -> Instance:
        """One live instance, picked by ``load_balancer_strategy``; NotFound when none is live."""
        name = fields.get("load_balancer_strategy")
        strategy = self.strategies.get(name) if isinstance(name, str) else None
        if strategy is None:
            raise InvalidInput(
                f"load_balancer_strategy {name!r} is not known; "
                f"valid: {', '.join(sorted(self.strategies))}"
            )
        service_name, version, instances = self._find(fields)
        if not instances:
            which = f"service {service_name!r}" + (f" version {version!r}" if version else "")
            raise NotFound(f"no live instance of {which}")
        return strategy.choose(instances, (service_name, version))
