"""What the client sends and returns: plain, immutable records.

:class:`InstanceSpec` is what a register or health check asks for beyond the
service name, location, version and TTL; :class:`Instance` is the registry's full
record of one instance, :class:`Registration` its answer to a register or health
check, :class:`ServiceSummary` one line of its list of services.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

#: The statuses an instance may report or an operator may impose.
STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE")
#: The status an operator imposes for maintenance.
OUT_OF_SERVICE = "OUT_OF_SERVICE"


@dataclass(frozen=True)
class InstanceSpec:
    """The optional fields of a register or health check; ``None`` means "not sent".

    A field not sent keeps the registry's stored value (its default for a new
    instance: an id derived from version and location, ``UP``, no tags, no
    metadata, weight 100). ``tags`` and ``metadata`` sent empty clear them.

    >>> InstanceSpec(tags=["canary"], metadata={"zone": "eu-1"}, weight=50).fields()
    {'tags': ['canary'], 'metadata': {'zone': 'eu-1'}, 'weight': 50}
    """

    instance_id: str | None = None
    status: str | None = None
    tags: Sequence[str] | None = None  # kept as a tuple
    metadata: Mapping[str, str] | None = None  # kept as a dict
    weight: int | None = None

    def __post_init__(self) -> None:
        # Any iterable of tags and any mapping are accepted; kept as a tuple and a dict.
        if self.tags is not None:
            if isinstance(self.tags, str):
                raise TypeError(f"tags must be a list of strings, not the string {self.tags!r}")
            object.__setattr__(self, "tags", tuple(self.tags))
        if self.metadata is not None:
            object.__setattr__(self, "metadata", dict(self.metadata))

    def fields(self) -> dict[str, object]:
        """The fields to send, as the registry reads them (only those given)."""
        sent: dict[str, object] = {}
        if self.instance_id is not None:
            sent["instance_id"] = self.instance_id
        if self.status is not None:
            sent["status"] = self.status
        if self.tags is not None:
            sent["tags"] = list(self.tags)
        if self.metadata is not None:
            sent["metadata"] = dict(self.metadata)
        if self.weight is not None:
            sent["weight"] = self.weight
        return sent


@dataclass(frozen=True)
class Instance:
    """The registry's full record of one live instance.

    ``status`` is the effective one: the operator's ``status_override`` when set
    (``None`` otherwise), else what the instance reports. Times are aware
    datetimes in UTC.
    """

    namespace: str
    service_name: str
    version: str
    instance_id: str
    location: str
    status: str
    status_override: str | None
    tags: tuple[str, ...]
    metadata: Mapping[str, str]
    weight: int
    ttl: int
    registered_at: datetime
    last_heartbeat_at: datetime
    expires_at: datetime

    @property
    def in_maintenance(self) -> bool:
        """Whether an operator has imposed a status on it."""
        return self.status_override is not None


@dataclass(frozen=True)
class Registration:
    """A registered instance, as the registry answered a register or health check.

    ``created`` is ``True`` when the registry did not know the instance before
    (HTTP 201), ``False`` when it refreshed a live one (HTTP 200). ``record`` is
    the full record when the request sent any field of :class:`InstanceSpec`
    (the registry then answers it), else ``None`` (keyard 0.2's short answer).
    """

    service_name: str
    version: str
    location: str
    ttl: int
    expires_at: datetime
    created: bool
    record: Instance | None = None


@dataclass(frozen=True)
class ServiceSummary:
    """One service with live instances: how many, and how many are ``UP``."""

    service_name: str
    instances: int
    up: int


# -- reading the registry's JSON (ValueError for anything keyard would not answer) --------


def parse_time(text: object) -> datetime:
    """An ISO 8601 time as keyard writes it (``2026-11-22T02:29:27.972Z``), aware."""
    if not isinstance(text, str):
        raise ValueError(f"a time must be a string, got {text!r}")
    # fromisoformat() reads a trailing "Z" only from Python 3.11 on.
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if moment.tzinfo is None:
        raise ValueError(f"a time without its zone: {text!r}")
    return moment


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _whole(body: Mapping[str, Any], name: str) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return value


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise ValueError(f"{name} must be a list of strings, got {value!r}")
    return tuple(value)


def _metadata(value: object) -> Mapping[str, str]:
    if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        raise ValueError(f"metadata must be an object of strings, got {value!r}")
    return MappingProxyType(dict(value))


def instance_from_json(body: object) -> Instance:
    """The record a registry answered (``GET .../instances/{id}`` and the like)."""
    if not isinstance(body, dict):
        raise ValueError(f"an instance must be a JSON object, got {body!r}")
    override = body.get("status_override")
    if override is not None and not isinstance(override, str):
        raise ValueError(f"status_override must be a string, got {override!r}")
    return Instance(
        namespace=_text(body, "namespace"),
        service_name=_text(body, "service_name"),
        version=_text(body, "version"),
        instance_id=_text(body, "instance_id"),
        location=_text(body, "location"),
        status=_text(body, "status"),
        status_override=override,
        tags=_strings(body["tags"], "tags"),
        metadata=_metadata(body["metadata"]),
        weight=_whole(body, "weight"),
        ttl=_whole(body, "ttl"),
        registered_at=parse_time(body["registered_at"]),
        last_heartbeat_at=parse_time(body["last_heartbeat_at"]),
        expires_at=parse_time(body["expires_at"]),
    )


def registration_from_json(body: object, created: bool, *, full: bool) -> Registration:
    """The answer to a register or health check; ``full``: the request sent new fields."""
    if not isinstance(body, dict):
        raise ValueError(f"the answer must be a JSON object, got {body!r}")
    record = instance_from_json(body) if full else None
    return Registration(
        service_name=_text(body, "service_name"),
        version=_text(body, "version"),
        location=_text(body, "location"),
        ttl=_whole(body, "ttl"),
        expires_at=parse_time(body["expires_at"]),
        created=created,
        record=record,
    )


def summary_from_json(body: object) -> ServiceSummary:
    if not isinstance(body, dict):
        raise ValueError(f"a service must be a JSON object, got {body!r}")
    return ServiceSummary(
        _text(body, "service_name"), _whole(body, "instances"), _whole(body, "up")
    )


def joined(values: str | Iterable[str] | None) -> str | None:
    """A filter's values as the registry reads them: comma-separated text."""
    if values is None or isinstance(values, str):
        return values
    return ",".join(values)
