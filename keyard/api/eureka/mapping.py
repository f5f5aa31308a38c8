"""Eureka's InstanceInfo to keyard's records and back (no HTTP here, no I/O).

An InstanceInfo arrives as a dict in one shape whichever the wire format was
(:mod:`keyard.api.eureka.codec` reads JSON and XML into it): Jackson's, with
attributes as ``"@name"`` keys and an element's text as ``"$"``
(``"port": {"$": 8080, "@enabled": "true"}``), or plain values
(``"port": 8080``). :func:`registration` reads it into a
:class:`~keyard.model.Registration`; :func:`instance_info` writes a keyard
:class:`~keyard.model.Instance` back in that shape, which the codec writes as
Jackson's JSON or XStream's XML.

The mapping (the README's "Eureka clients" section has it as a table):

- the app is the service, lower-cased when registered (``PAYMENTS`` is
  ``payments``), and answered upper-cased whatever the service's case;
- ``instanceId`` is ``instance_id``;
- ``location`` is ``http://{ipAddr or hostName}:{port}``, or
  ``https://...:{securePort}`` when only the secure port is enabled; an instance
  registered natively shows the host and port of its location;
- ``status`` and ``overriddenstatus`` are ``status`` and ``status_override``;
- ``leaseInfo.durationInSecs`` (90 when not given or not above 0) is the ``ttl``,
  clamped into the registry's TTL bounds;
- ``vipAddress`` and ``secureVipAddress`` (comma-separated lists) are tags
  ``vip:NAME`` and ``svip:NAME``;
- ``metadata`` is the metadata (without Java's empty-map marker ``@class``);
  ``metadata.version``, when given, is keyard's ``version``;
- what else a Eureka client needs echoed (host name, IP, ports, data center,
  URLs, app group, country, lease interval, ``lastDirtyTimestamp`` exactly as
  sent) is kept in metadata keys starting ``eureka.`` (:data:`RESERVED_PREFIX`),
  which Eureka's own ``metadata`` answer leaves out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from keyard.errors import InvalidInput
from keyard.model import DEFAULT_VERSION, STATUSES, Instance, InstanceKey, Registration
from keyard.registry import TtlPolicy
from keyard.stores.changes import PUT, Change

#: Metadata keys that keep Eureka's own InstanceInfo fields start with this.
RESERVED_PREFIX = "eureka."
#: The status Eureka knows and keyard does not: "no information", never stored.
UNKNOWN = "UNKNOWN"
#: What Eureka knows as a status: keyard's and UNKNOWN.
EUREKA_STATUSES = (*STATUSES, UNKNOWN)
#: A lease's duration when the client gives none (Eureka's default), in seconds.
DEFAULT_DURATION = 90
#: A client's heartbeat interval when it gives none (Eureka's default), in seconds.
DEFAULT_RENEWAL_INTERVAL = 30
DEFAULT_DATA_CENTER = {
    "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
    "name": "MyOwn",
}
#: Jackson's marker of an empty metadata map (and XStream's ``class`` attribute).
EMPTY_METADATA = {"@class": "java.util.Collections$EmptyMap"}
VIP_TAG, SECURE_VIP_TAG = "vip:", "svip:"

#: InstanceInfo's text fields echoed from reserved metadata, in XStream's order.
_ECHOED_URLS = ("homePageUrl", "statusPageUrl", "healthCheckUrl", "secureHealthCheckUrl")


class EurekaRegistration(NamedTuple):
    """What a Eureka registration asks of the registry: the record, and the override
    its ``overriddenstatus`` asks for (set only when the instance has none, as Eureka)."""

    registration: Registration
    override: str | None


def app_name(service_name: str) -> str:
    """The Eureka app a keyard service shows as."""
    return service_name.upper()


def service_name(app: str) -> str:
    """The keyard service a Eureka app registers as."""
    return app.lower()


# -- reading an InstanceInfo ----------------------------------------------------------


def registration(
    info: Mapping[str, Any], app: str, namespace: str, ttl: TtlPolicy
) -> EurekaRegistration:
    """The registration an InstanceInfo asks for, registered under ``app`` (the path's).

    InvalidInput, naming the field, for what Eureka refuses (no instanceId nor
    hostName, no ipAddr, no app or another app than the path's, no dataCenterInfo
    or its name) and for values keyard cannot keep (a port outside 0..65535, a
    status Eureka does not know, a value that is not text).
    """
    host = _text(info, "hostName")
    instance_id = _text(info, "instanceId") or host
    if not instance_id:
        raise InvalidInput("Missing instanceId: give instanceId (or hostName)")
    if not host:
        raise InvalidInput("Missing hostname: give hostName")
    ip = _text(info, "ipAddr")
    if not ip:
        raise InvalidInput("Missing ip address: give ipAddr")
    given_app = _text(info, "app")
    if not given_app:
        raise InvalidInput("Missing appName: give app")
    if given_app.upper() != app.upper():
        raise InvalidInput(
            f"Mismatched appName, expecting {app.upper()!r} but was {given_app.upper()!r}"
        )
    data_center = _data_center(info.get("dataCenterInfo"))
    port, port_enabled = _port(info, "port", default_enabled=True)
    secure_port, secure_enabled = _port(info, "securePort", default_enabled=False)
    lease = info.get("leaseInfo")
    if lease is not None and not isinstance(lease, Mapping):
        raise InvalidInput("leaseInfo must be an object")
    duration = _whole(lease or {}, "durationInSecs", "leaseInfo.durationInSecs")
    if duration is None or duration <= 0:
        duration = DEFAULT_DURATION
    metadata = user_metadata_of(info.get("metadata"))
    ports = {
        "port": f"{port} {_flag(port_enabled)}",
        "securePort": f"{secure_port} {_flag(secure_enabled)}",
        "dataCenterInfo": json.dumps(data_center, separators=(",", ":"), sort_keys=True),
    }
    for name, value in _reserved(info, lease or {}, ports).items():
        metadata[RESERVED_PREFIX + name] = value
    if secure_enabled and not port_enabled:
        scheme, location_port = "https", secure_port
    else:
        scheme, location_port = "http", port
    address = ip if ":" not in ip else f"[{ip}]"
    tags = [VIP_TAG + vip for vip in _vips(_text(info, "vipAddress"))]
    tags += [SECURE_VIP_TAG + vip for vip in _vips(_text(info, "secureVipAddress"))]
    found = Registration(
        namespace=namespace,
        service_name=service_name(app),
        version=metadata.get("version") or DEFAULT_VERSION,
        location=f"{scheme}://{address}:{location_port}",
        instance_id=instance_id,
        ttl=min(max(duration, ttl.minimum), ttl.maximum),
        status=_status(info, "status"),
        tags=tuple(dict.fromkeys(tags)),
        metadata=metadata,
    )
    override = _status(info, "overriddenstatus") or _status(info, "overriddenStatus")
    return EurekaRegistration(found, override)


def _reserved(
    info: Mapping[str, Any], lease: Mapping[str, Any], read: Mapping[str, str]
) -> dict[str, str]:
    """The InstanceInfo fields kept in reserved metadata keys (without their prefix):
    ``read`` (the ports and data center, read already), and the rest of ``info``'s."""
    reserved: dict[str, str] = {
        "hostName": _text(info, "hostName") or "",
        "ipAddr": _text(info, "ipAddr") or "",
        **read,
    }
    for name in ("appGroupName", *_ECHOED_URLS, "asgName"):
        value = _text(info, name)
        if value:
            reserved[name] = value
    country = _whole(info, "countryId", "countryId")
    if country is not None:
        reserved["countryId"] = str(country)
    dirty = _text(info, "lastDirtyTimestamp")
    if dirty:
        timestamp(dirty)
        reserved["lastDirtyTimestamp"] = dirty.strip()  # exactly as sent
    interval = _whole(lease, "renewalIntervalInSecs", "leaseInfo.renewalIntervalInSecs")
    if interval is not None:
        reserved["renewalIntervalInSecs"] = str(interval)
    if _text(info, "isCoordinatingDiscoveryServer") == "true":
        reserved["isCoordinatingDiscoveryServer"] = "true"
    return reserved


def user_metadata_of(value: object) -> dict[str, str]:
    """A metadata object's entries, without the ``@class`` marker; InvalidInput for a
    value that is not text (numbers and booleans are taken as their JSON text) and for
    reserved keys (``eureka.``...)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("metadata must be an object of names to text")
    found: dict[str, str] = {}
    for key, item in value.items():
        if key == "@class" or item is None:
            continue
        if key.startswith(RESERVED_PREFIX):
            raise InvalidInput(
                f"metadata key {key[:60]!r} is reserved: keys starting {RESERVED_PREFIX!r} "
                "keep Eureka's own fields"
            )
        found[key] = _scalar_text(item, f"metadata value of {key[:60]!r}")
    return found


def check_status(value: str, name: str) -> str | None:
    """A status given in a query (``status=``, ``value=``): keyard's, or None for UNKNOWN."""
    upper = value.strip().upper()
    if upper not in EUREKA_STATUSES:
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise InvalidInput(f"{name} {shown!r} is not known; valid: {', '.join(EUREKA_STATUSES)}")
    return None if upper == UNKNOWN else upper


def timestamp(value: str, name: str = "lastDirtyTimestamp") -> int:
    """A timestamp in milliseconds, as Eureka sends them (a whole number >= 0)."""
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 19:
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise InvalidInput(f"{name} must be a whole number of milliseconds, got {shown!r}")
    return int(text)


def _text(info: Mapping[str, Any], name: str) -> str | None:
    value = info.get(name)
    if isinstance(value, Mapping) and set(value) <= {"$"} | {k for k in value if k[:1] == "@"}:
        value = value.get("$")  # an XML element with attributes, or Jackson's wrapper
    if value is None:
        return None
    return _scalar_text(value, name)


def _scalar_text(value: object, name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return value if isinstance(value, str) else json.dumps(value)
    raise InvalidInput(f"{name} must be text, got {type(value).__name__}")


def _whole(info: Mapping[str, Any], name: str, shown: str) -> int | None:
    text = _text(info, name)
    if text is None or text == "":
        return None
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] == "-" else stripped
    if not digits.isdigit() or not digits.isascii() or len(digits) > 18:
        raise InvalidInput(f"{shown} must be a whole number, got {text[:40]!r}")
    return int(stripped)


def _flag(enabled: bool) -> str:
    return "true" if enabled else "false"


def _port(info: Mapping[str, Any], name: str, *, default_enabled: bool) -> tuple[int, bool]:
    """A port and whether it is enabled, from ``8080``, ``"8080"`` or
    ``{"$": 8080, "@enabled": "true"}``; Eureka's defaults (port 7001 or 7002)."""
    value = info.get(name)
    enabled = default_enabled
    if isinstance(value, Mapping):
        flag = value.get("@enabled")
        if flag is not None:
            text = _scalar_text(flag, f"{name}.@enabled").strip().lower()
            if text not in ("true", "false"):
                raise InvalidInput(f"{name}'s enabled must be true or false, got {text[:20]!r}")
            enabled = text == "true"
        value = value.get("$")
    default = 7001 if name == "port" else 7002
    if value is None or value == "":
        return default, enabled
    number = _whole({name: value}, name, name)
    assert number is not None
    if not 0 <= number <= 65535:
        raise InvalidInput(f"{name} must be between 0 and 65535, got {number}")
    return number, enabled


def _status(info: Mapping[str, Any], name: str) -> str | None:
    value = _text(info, name)
    if value is None or value == "":
        return None
    return check_status(value, name)


def _data_center(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput("Missing dataCenterInfo: give dataCenterInfo with a name")
    name = _text(value, "name")
    if not name:
        raise InvalidInput("Missing dataCenterInfo Name: give dataCenterInfo.name")
    found: dict[str, Any] = {"@class": _text(value, "@class") or DEFAULT_DATA_CENTER["@class"]}
    found["name"] = name
    extra = value.get("metadata")
    if isinstance(extra, Mapping):
        found["metadata"] = {
            str(k): _scalar_text(v, f"dataCenterInfo.metadata.{k}")
            for k, v in extra.items()
            if v is not None and k != "@class"
        }
    return found


def _vips(value: str | None) -> list[str]:
    return [vip.strip() for vip in (value or "").split(",") if vip.strip()]


# -- writing an InstanceInfo ----------------------------------------------------------


def _millis(seconds: float) -> int:
    return int(seconds * 1000)


def _stored_int(text: str | None, limit: int = 18) -> int | None:
    """A whole number kept in metadata (which a native client may have written as
    anything): None unless it is ASCII digits, at most ``limit`` of them."""
    if text and text.isascii() and text.isdigit() and len(text) <= limit:
        return int(text)
    return None


def _host_and_ports(location: str) -> tuple[str, tuple[int, bool], tuple[int, bool]]:
    """The host of a native instance's location and its port as Eureka's two ports."""
    try:
        parts = urlsplit(location)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        host, port = "", None
    if not host:
        return location, (0, False), (0, False)
    if parts.scheme == "https":
        return host, (0, False), (port or 443, True)
    return host, (port or 80, True), (443, False)


def _stored_port(text: str | None) -> tuple[int, bool] | None:
    number, _, flag = (text or "").partition(" ")
    port = _stored_int(number, 5)
    return (port, flag == "true") if port is not None and port <= 65535 else None


def instance_info(instance: Instance, action: str = "ADDED") -> dict[str, Any]:
    """The InstanceInfo of a keyard instance, in Jackson's shape and XStream's order."""
    kept = {
        key[len(RESERVED_PREFIX) :]: value
        for key, value in instance.metadata.items()
        if key.startswith(RESERVED_PREFIX)
    }
    host, port, secure_port = _host_and_ports(instance.location)
    port = _stored_port(kept.get("port")) or port
    secure_port = _stored_port(kept.get("securePort")) or secure_port
    try:
        data_center = json.loads(kept["dataCenterInfo"])
    except (KeyError, ValueError):
        data_center = None
    if not (
        isinstance(data_center, dict)
        and isinstance(data_center.get("@class"), str)
        and isinstance(data_center.get("name"), str)
    ):
        data_center = dict(DEFAULT_DATA_CENTER)  # kept by another API as anything
    registered = _millis(instance.registered_at)
    info: dict[str, Any] = {
        "instanceId": instance.instance_id,
        "hostName": kept.get("hostName") or host,
        "app": app_name(instance.service_name),
        "ipAddr": kept.get("ipAddr") or host,
        "status": instance.effective_status,
        "overriddenstatus": instance.status_override or UNKNOWN,
        "port": {"$": port[0], "@enabled": _flag(port[1])},
        "securePort": {"$": secure_port[0], "@enabled": _flag(secure_port[1])},
        "countryId": _stored_int(kept.get("countryId"), 9) or 1,
        "dataCenterInfo": data_center,
        "leaseInfo": {
            "renewalIntervalInSecs": _stored_int(kept.get("renewalIntervalInSecs"), 9)
            or DEFAULT_RENEWAL_INTERVAL,
            "durationInSecs": instance.ttl,
            "registrationTimestamp": registered,
            "lastRenewalTimestamp": _millis(instance.last_heartbeat_at),
            "evictionTimestamp": 0,
            "serviceUpTimestamp": registered,
        },
        "metadata": user_metadata(instance.metadata) or dict(EMPTY_METADATA),
    }
    for name in ("appGroupName", *_ECHOED_URLS):
        if kept.get(name):
            info[name] = kept[name]
    vips = [tag[len(VIP_TAG) :] for tag in instance.tags if tag.startswith(VIP_TAG)]
    secure_vips = [
        tag[len(SECURE_VIP_TAG) :] for tag in instance.tags if tag.startswith(SECURE_VIP_TAG)
    ]
    if vips:
        info["vipAddress"] = ",".join(vips)
    if secure_vips:
        info["secureVipAddress"] = ",".join(secure_vips)
    info["isCoordinatingDiscoveryServer"] = kept.get("isCoordinatingDiscoveryServer", "false")
    info["lastUpdatedTimestamp"] = str(_millis(instance.last_heartbeat_at))
    info["lastDirtyTimestamp"] = str(last_dirty_timestamp(instance.metadata) or registered)
    info["actionType"] = action
    if kept.get("asgName"):
        info["asgName"] = kept["asgName"]
    return info


def user_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata a Eureka answer shows: without reserved keys, nor keys starting
    ``@`` or ``$`` (which Jackson's and XStream's shapes take for attributes and text)."""
    return {
        key: value
        for key, value in metadata.items()
        if not key.startswith(RESERVED_PREFIX) and key[:1] not in ("@", "$")
    }


def last_dirty_timestamp(metadata: Mapping[str, str]) -> int | None:
    """The ``lastDirtyTimestamp`` a client registered with, from an instance's metadata
    (None: not known)."""
    return _stored_int(metadata.get(RESERVED_PREFIX + "lastDirtyTimestamp"))


def older_than(registration: Registration, live: Instance) -> bool:
    """Whether a registration's ``lastDirtyTimestamp`` is below the live instance's (then
    Eureka keeps the instance as it is, and only renews its lease)."""
    sent = last_dirty_timestamp(registration.metadata or {})
    registered = last_dirty_timestamp(live.metadata)
    return sent is not None and registered is not None and sent < registered


def has_vip(instance: Instance, vip: str, *, secure: bool) -> bool:
    """Whether the instance has ``vip`` among its (secure) VIP addresses, in any case."""
    prefix = SECURE_VIP_TAG if secure else VIP_TAG
    wanted = vip.upper()
    return any(
        tag.startswith(prefix) and tag[len(prefix) :].upper() == wanted for tag in instance.tags
    )


def delta_actions(changes: Iterable[Change]) -> list[tuple[Instance, str]]:
    """Each instance of a change log once, with its last change as Eureka's actionType.

    ``DELETED`` when removed or expired; ``ADDED`` when the change registered it (its
    registration time differs from the change before's, or, first in the log, is its
    last heartbeat); else ``MODIFIED``. In the order of their last changes.
    """
    latest: dict[InstanceKey, tuple[Instance, str]] = {}
    for change in changes:
        instance = change.instance
        before = latest.pop(instance.key, None)
        if change.kind != PUT:
            action = "DELETED"
        elif before is not None and before[1] != "DELETED":
            same = before[0].registered_at == instance.registered_at
            action = "MODIFIED" if same else "ADDED"
        elif instance.registered_at == instance.last_heartbeat_at:
            action = "ADDED"
        else:
            action = "MODIFIED"
        latest[instance.key] = (instance, action)
    return list(latest.values())


def hashcode(instances: Iterable[Instance]) -> str:
    """Eureka's ``apps__hashcode``: ``STATUS_COUNT_`` for every status, sorted by name."""
    counts: dict[str, int] = {}
    for instance in instances:
        status = instance.effective_status
        counts[status] = counts.get(status, 0) + 1
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))
