"""The registry a benchmark runs against: one looked-up service among many others.

The looked-up service ``TARGET`` has ``TARGET_INSTANCES`` locations of equal
length, so that every answer that names one has the same size. The others are
``OTHERS_PER_SERVICE`` locations per service, numbered from 0.

Every instance carries what a real one registers beside its location: two tags
(its zone and its tier) and one metadata key (its rack). The target's instances
have weights of their own (for the weighted strategy) and two zones (for a
lookup filtered by ``TAG_FILTER``); the others keep the default weight. Each
instance is described once, as a :class:`~keyard.model.Registration`: its
record for an in-process store (:func:`record`) and its form for the HTTP API
(:func:`registration_form`) both come from it. A health check restates only the
legacy fields (:func:`heartbeat_form`), so the store keeps the tags, metadata
and weight, as a heartbeat does.
"""

from __future__ import annotations

from urllib.parse import urlencode

from keyard.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_WEIGHT,
    UP,
    Instance,
    Registration,
    derived_instance_id,
)

TARGET = "payments"
TARGET_VERSION = "2"
TARGET_INSTANCES = 10
OTHERS_PER_SERVICE = 10
OTHER_VERSION = "1"
TTL = 3600
#: The tag of a filtered lookup: half the target's instances have it.
TAG_FILTER = "zone-a"
TAGS_PER_INSTANCE = 2
METADATA_KEYS_PER_INSTANCE = 1


def target_locations() -> list[str]:
    return [f"http://10.200.0.1:{9000 + n}" for n in range(TARGET_INSTANCES)]


def other_key(n: int) -> tuple[str, str, str]:
    """(service_name, version, location) of the ``n``-th other instance."""
    return (
        f"svc-{n // OTHERS_PER_SERVICE:06d}",
        OTHER_VERSION,
        f"http://10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}:8080",
    )


def _parsed(text: str) -> str:
    """A new string object with this text, as parsing each request makes one.

    A literal would be one object shared by every record, and the memory
    measure would miss what a real registry holds.
    """
    return text.encode().decode()


def _labels(n: int, zones: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The tags and metadata of instance ``n``, spread over ``zones`` (letters)."""
    tags = (f"zone-{zones[n % len(zones)]}", _parsed("prod"))
    return tags, {_parsed("rack"): f"rack-{n % 64:02d}"}


def other(n: int) -> Registration:
    """The registration of the ``n``-th other instance."""
    service_name, version, location = other_key(n)
    tags, metadata = _labels(n, "abc")
    return Registration(
        DEFAULT_NAMESPACE, service_name, version, location, tags=tags, metadata=metadata
    )


def targets() -> list[Registration]:
    """The registrations of the looked-up service: weights 50 to 140, zones a and b."""
    made = []
    for n, location in enumerate(target_locations()):
        tags, metadata = _labels(n, "ab")
        registration = Registration(DEFAULT_NAMESPACE, TARGET, TARGET_VERSION, location)
        made.append(registration._replace(tags=tags, metadata=metadata, weight=50 + 10 * n))
    return made


def record(registration: Registration, now: float) -> Instance:
    """The record the registry makes of ``registration`` at ``now`` (values not checked)."""
    r = registration
    return Instance(
        namespace=r.namespace,
        service_name=r.service_name,
        instance_id=r.instance_id or derived_instance_id(r.version, r.location),
        version=r.version,
        location=r.location,
        status=r.status or UP,
        status_override=None,
        tags=r.tags or (),
        metadata=r.metadata or {},
        weight=r.weight if r.weight is not None else DEFAULT_WEIGHT,
        ttl=r.ttl if r.ttl is not None else TTL,
        registered_at=now,
        last_heartbeat_at=now,
        expires_at=now + (r.ttl if r.ttl is not None else TTL),
    )


def instances(start: int, stop: int, now: float) -> list[Instance]:
    """Records of other instances ``start`` to ``stop - 1``, with fresh strings each."""
    return [record(other(n), now) for n in range(start, stop)]


def target_instances(now: float) -> list[Instance]:
    return [record(registration, now) for registration in targets()]


def registration_form(registration: Registration) -> str:
    """The form body that registers ``registration`` through ``POST /keyard``."""
    r = registration
    form = {"service_name": r.service_name, "version": r.version, "location": r.location}
    if r.tags is not None:
        form["tags"] = ",".join(r.tags)
    if r.weight is not None:
        form["weight"] = str(r.weight)
    for key, value in (r.metadata or {}).items():
        form[f"metadata.{key}"] = value
    return urlencode(form)


def lookup_query() -> str:
    return f"service_name={TARGET}&version={TARGET_VERSION}"


def tag_lookup_query() -> str:
    """A lookup of the target's instances that have the tag ``TAG_FILTER``."""
    return f"{lookup_query()}&tag={TAG_FILTER}"


def weighted_query() -> str:
    """A choice of one of the target's instances by the weighted strategy."""
    return f"{lookup_query()}&load_balancer_strategy=weighted"


def heartbeat_form(n: int) -> str:
    """The form body of a health check of the ``n``-th other instance.

    keyard 0.2's fields only, as before: no ttl, tags, metadata or weight, so
    the stored ones are kept.
    """
    service_name, version, location = other_key(n)
    return urlencode({"service_name": service_name, "version": version, "location": location})
