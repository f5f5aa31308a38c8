"""keyard's domain record and its value types: no I/O, no HTTP, no store.

Every instance, whichever API registered it, is one :class:`Instance`. Stores keep
it, the registry makes and checks it, balancing picks among them, and every API
translates its own requests and answers onto it.

Identity is :class:`InstanceKey` ``(namespace, service_name, instance_id)``. An
instance registered without an id gets :func:`derived_instance_id` of its version
and location, so registering the same location again names the same instance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import NamedTuple

from keyard.errors import InvalidInput

DEFAULT_NAMESPACE = "default"
DEFAULT_VERSION = "1.0"
DEFAULT_WEIGHT = 100

#: The statuses an instance may report or an operator may impose (Eureka's set).
STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE")
UP = "UP"

#: The longest value each text field may take, in characters.
MAX_LENGTHS = {
    "namespace": 128,
    "service_name": 128,
    "version": 128,
    "location": 1024,
    "instance_id": 128,
}
MAX_TAGS = 64
MAX_TAG_LENGTH = 128
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_LENGTH = 128
MAX_METADATA_VALUE_LENGTH = 1024
MIN_WEIGHT, MAX_WEIGHT = 0, 1000

#: The fields a register or heartbeat may leave out to keep what is stored.
KEPT_WHEN_MISSING = ("status", "tags", "metadata", "weight")

Metadata = Mapping[str, str]
_NO_METADATA: Metadata = {}


class InstanceKey(NamedTuple):
    """What names one instance: unique within its namespace and service."""

    namespace: str
    service_name: str
    instance_id: str


class Instance(NamedTuple):
    """One registered instance of a service (immutable).

    ``status`` is what the instance reports; ``status_override`` an operator's
    status that wins over it until removed (``None`` when not set); the effective
    one is :attr:`effective_status`. Times are Unix seconds. ``metadata`` is
    never mutated once in a record. A named tuple rather than a dataclass: a
    lookup builds one per live instance, and a tuple is built in less than half
    the time.
    """

    namespace: str
    service_name: str
    instance_id: str
    version: str
    location: str
    status: str
    status_override: str | None
    tags: tuple[str, ...]
    metadata: Metadata
    weight: int
    ttl: int
    registered_at: float
    last_heartbeat_at: float
    expires_at: float

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.namespace, self.service_name, self.instance_id)

    @property
    def effective_status(self) -> str:
        return self.status_override or self.status

    def is_live(self, now: float) -> bool:
        return self.expires_at > now


class ServiceSummary(NamedTuple):
    """One service of a namespace: how many live instances it has, and how many are UP."""

    service_name: str
    instances: int
    up: int


class InstanceFilter(NamedTuple):
    """What a lookup keeps of a service's live instances.

    ``version`` exact; every one of ``tags``; an effective status in ``statuses``
    (``None``: any status).
    """

    version: str | None = None
    tags: tuple[str, ...] = ()
    statuses: frozenset[str] | None = frozenset({UP})

    def apply(self, instances: list[Instance]) -> list[Instance]:
        """The instances this filter keeps, in their order (a lookup's hot path: inline)."""
        version, statuses, tags = self.version, self.statuses, self.tags
        if version is not None:
            instances = [i for i in instances if i.version == version]
        if statuses is not None:
            instances = [i for i in instances if (i.status_override or i.status) in statuses]
        if tags:
            instances = [i for i in instances if all(tag in i.tags for tag in tags)]
        return instances


class Registration(NamedTuple):
    """What a register or heartbeat asks for, read from a request by an API.

    ``None`` means "not given": ``instance_id`` is then derived, ``ttl`` is the
    default (register) or the stored one (heartbeat), and the fields of
    :data:`KEPT_WHEN_MISSING` keep their stored values (defaults when new).
    """

    namespace: str
    service_name: str
    version: str
    location: str
    instance_id: str | None = None
    ttl: int | None = None
    status: str | None = None
    tags: tuple[str, ...] | None = None
    metadata: Metadata | None = None
    weight: int | None = None


def derived_instance_id(version: str, location: str) -> str:
    """The id of an instance registered without one: 16 hex digits of a SHA-256.

    Of the UTF-8 bytes of ``version``, one NUL byte, and ``location``; so the same
    version and location always name the same instance.
    """
    data = version.encode("utf-8", "surrogatepass") + b"\0" + location.encode(
        "utf-8", "surrogatepass"
    )
    return hashlib.sha256(data).hexdigest()[:16]


def from_keyard_0_2(
    service_name: str, version: str, location: str, ttl: int, expires_at: float
) -> Instance:
    """What an instance that keyard 0.2 stored is in this record (the stores' upgrades).

    0.2 kept no id, status, tags, metadata, weight or times but the expiry: the id is
    derived, the rest take their defaults, and both times are the last heartbeat
    (``expires_at - ttl``).
    """
    since = expires_at - ttl
    return Instance(
        namespace=DEFAULT_NAMESPACE,
        service_name=service_name,
        instance_id=derived_instance_id(version, location),
        version=version,
        location=location,
        status=UP,
        status_override=None,
        tags=(),
        metadata=_NO_METADATA,
        weight=DEFAULT_WEIGHT,
        ttl=ttl,
        registered_at=since,
        last_heartbeat_at=since,
        expires_at=expires_at,
    )


def iso_time(seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds: ``2026-11-22T02:29:27.972Z``."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- checking values (each raises InvalidInput naming the field and the bound) --------


def check_text(name: str, value: str) -> str:
    """A non-blank string of at most ``MAX_LENGTHS[name]`` characters of valid Unicode."""
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    limit = MAX_LENGTHS[name]
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters long; the limit is {limit}")
    _check_unicode(name, value)
    return value


def _check_unicode(name: str, value: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{name} is not valid Unicode: {exc.reason} in {value!r}") from exc


def check_status(value: str, name: str = "status") -> str:
    """One of :data:`STATUSES`, exactly (upper case)."""
    if value not in STATUSES:
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise InvalidInput(f"{name} {shown!r} is not known; valid: {', '.join(STATUSES)}")
    return value


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Distinct non-blank strings: at most MAX_TAGS, each of at most MAX_TAG_LENGTH characters."""
    found: list[str] = []
    for tag in tags:
        if not tag.strip():
            raise InvalidInput("tags must not contain an empty tag")
        if len(tag) > MAX_TAG_LENGTH:
            raise InvalidInput(
                f"tag {tag[:20]!r}... is {len(tag)} characters long; the limit is {MAX_TAG_LENGTH}"
            )
        _check_unicode("tag", tag)
        if tag in found:
            raise InvalidInput(f"tag {tag!r} is given more than once; tags must be distinct")
        found.append(tag)
        if len(found) > MAX_TAGS:
            raise InvalidInput(f"more than {MAX_TAGS} tags; the limit is {MAX_TAGS}")
    return tuple(found)


def check_metadata(metadata: Mapping[str, str]) -> Metadata:
    """At most MAX_METADATA_KEYS non-blank keys and values within their lengths."""
    if not metadata:
        return _NO_METADATA
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(
            f"metadata has {len(metadata)} keys; the limit is {MAX_METADATA_KEYS}"
        )
    for key, value in metadata.items():
        if not key.strip():
            raise InvalidInput("metadata keys must not be empty")
        if len(key) > MAX_METADATA_KEY_LENGTH:
            raise InvalidInput(
                f"metadata key {key[:20]!r}... is {len(key)} characters long; "
                f"the limit is {MAX_METADATA_KEY_LENGTH}"
            )
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise InvalidInput(
                f"metadata value of {key!r} is {len(value)} characters long; "
                f"the limit is {MAX_METADATA_VALUE_LENGTH}"
            )
        _check_unicode("metadata key", key)
        _check_unicode(f"metadata value of {key!r}", value)
    return dict(metadata)


def check_weight(weight: int) -> int:
    """A whole number from MIN_WEIGHT to MAX_WEIGHT."""
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise InvalidInput(f"weight must be between {MIN_WEIGHT} and {MAX_WEIGHT}, got {weight}")
    return weight
