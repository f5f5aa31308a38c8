"""The registry a benchmark runs against: one looked-up service among many others.

The looked-up service ``TARGET`` has ``TARGET_INSTANCES`` locations of equal
length, so that every answer that names one has the same size. The others are
``OTHERS_PER_SERVICE`` locations per service, numbered from 0.
"""

from __future__ import annotations

from keyard.stores.base import Instance

TARGET = "payments"
TARGET_VERSION = "2"
TARGET_INSTANCES = 10
OTHERS_PER_SERVICE = 10
OTHER_VERSION = "1"
TTL = 3600


def target_locations() -> list[str]:
    return [f"http://10.200.0.1:{9000 + n}" for n in range(TARGET_INSTANCES)]


def other_key(n: int) -> tuple[str, str, str]:
    """(service_name, version, location) of the ``n``-th other instance."""
    return (
        f"svc-{n // OTHERS_PER_SERVICE:06d}",
        OTHER_VERSION,
        f"http://10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}:8080",
    )


def instances(start: int, stop: int, now: float) -> list[Instance]:
    """Other instances ``start`` to ``stop - 1``, with fresh strings each (as requests make)."""
    made = []
    for n in range(start, stop):
        service_name, version, location = other_key(n)
        made.append(Instance(service_name, version, location, TTL, now + TTL))
    return made


def target_instances(now: float) -> list[Instance]:
    return [
        Instance(TARGET, TARGET_VERSION, location, TTL, now + TTL)
        for location in target_locations()
    ]


def lookup_query() -> str:
    return f"service_name={TARGET}&version={TARGET_VERSION}"


def heartbeat_form(n: int) -> str:
    """The form body of a health check of the ``n``-th other instance (no ttl: kept as is)."""
    from urllib.parse import urlencode

    service_name, version, location = other_key(n)
    return urlencode({"service_name": service_name, "version": version, "location": location})
