"""The store interface: how keyard keeps and expires registered instances.

A store knows nothing about HTTP, TTL policy or load balancing. The registry
hands it fully validated :class:`Instance` records whose ``expires_at`` is
already computed, and asks it for the live ones.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple


class Instance(NamedTuple):
    """One registered location of a service version (immutable).

    ``(service_name, version, location)`` is the key; ``ttl`` is the lease in
    whole seconds and ``expires_at`` the Unix time at which the lease ends.
    A named tuple rather than a dataclass: lookups build one per live location,
    and a tuple is built in less than half the time of a frozen dataclass.
    """

    service_name: str
    version: str
    location: str
    ttl: int
    expires_at: float


class Store(abc.ABC):
    """Abstract base class of every store.

    Guarantees every implementation gives (checked by ``tests/store_contract.py``):

    - Keys are compared exactly: ``"web"`` never matches ``"webapp"``, ``"1.0"``
      never matches ``"1.0.1"``. Any string round-trips byte for byte, including
      ``/ ? : % #``, spaces, unicode and path-like names such as ``a/b`` or ``..``.
    - An instance whose ``expires_at`` has passed is never returned, whether or
      not it has been purged yet. Expired records are purged without scanning the
      whole store on every call.
    - Every method is safe to call from many threads at once; ``register`` is
      atomic (concurrent writers never lose a registration).
    - A backend that cannot be reached raises :class:`keyard.errors.StoreUnavailable`,
      within the store's configured timeout; the store recovers by itself when the
      backend is back.
    """

    #: The ``store_type`` name this store is registered under.
    name: ClassVar[str] = ""

    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: Mapping[str, Any]) -> Store:
        """Build the store from its config section (``config[store_type]``, maybe empty).

        Raises :class:`keyard.errors.ConfigError` naming the option and value
        when an option is unknown or invalid.
        """

    @abc.abstractmethod
    def register(self, instance: Instance) -> bool:
        """Insert the instance, or replace the live one with the same key.

        Sets its ``ttl`` and ``expires_at`` to the given ones. Returns ``True``
        when no live instance had this key before (a new registration), ``False``
        when an existing one was refreshed.
        """

    def refresh(self, instance: Instance) -> tuple[Instance, bool]:
        """The health check: extend the lease of the live instance with ``instance``'s key.

        The lease is extended by the live instance's own ``ttl``, from now
        (``instance.expires_at - instance.ttl``). When no live instance has the
        key, ``instance`` is registered as given. Returns the instance as stored
        and whether it is new.

        This default is :meth:`get` then :meth:`register`: two calls, and not
        atomic (a concurrent write between them wins or loses as it would
        anyway). A store that can do it in one call should.
        """
        now = instance.expires_at - instance.ttl
        key = (instance.service_name, instance.version, instance.location)
        known = self.get(*key, now)
        if known is not None:
            instance = instance._replace(ttl=known.ttl, expires_at=now + known.ttl)
        return instance, self.register(instance)

    @abc.abstractmethod
    def get(self, service_name: str, version: str, location: str, now: float) -> Instance | None:
        """Return the live instance with exactly this key, or ``None``."""

    @abc.abstractmethod
    def deregister(self, service_name: str, version: str, location: str, now: float) -> bool:
        """Remove the instance with this key. Returns ``True`` if a live one was removed."""

    @abc.abstractmethod
    def lookup(self, service_name: str, version: str | None, now: float) -> list[Instance]:
        """Return the live instances of ``service_name`` (and ``version``, if not ``None``).

        Ordered by ``(version, location)``, comparing strings by code point.
        Unknown services give an empty list.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most stores need nothing
        """Release connections or files. The store is not used afterwards."""
