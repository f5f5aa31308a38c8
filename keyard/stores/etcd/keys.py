"""The etcd store's key codec: key segments, the key layout and the record values.

Layout (``%ns`` is a segment :func:`encode_part` never produces, so these keys
never collide with keyard 0.2.0's ``{base_path}/{service}/{version}/{location}``)::

    {base_path}/%ns/{namespace}/{service_name}/{instance_id}  ->  the record as JSON

Each name is one segment of :func:`encode_part`. The value holds every field of
the :class:`~keyard.model.Instance` exactly, and the ``writer`` token of the
call that wrote it (see :func:`record_value`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any
from urllib.parse import quote

from keyard.errors import ConfigError
from keyard.model import (
    Instance,
    from_keyard_0_2,
)

#: The longest key segment kept readable; longer parts are stored under a digest.
MAX_SEGMENT = 150
#: The longest base path, so that every request line stays far below etcd's 4 KiB.
MAX_BASE_PATH = 200
#: The directory under base_path that holds the namespaces: ``%`` then a non-hex
#: letter, which percent-encoding never yields.
NAMESPACES = "%ns"


# -- segments ------------------------------------------------------------------


def encode_part(part: str) -> str:
    """The key segment that stands for ``part``: distinct parts give distinct segments.

    Percent-encoding with no safe characters, plus: a leading ``.`` is encoded
    (so ``.`` and ``..`` are never path segments that etcd would resolve), a
    leading ``_`` is encoded (etcd v2 hides such keys from listings), and the
    empty string becomes ``%``. A part whose encoding is longer than
    :data:`MAX_SEGMENT` characters is stored under its SHA-256 instead (etcd
    resets requests whose first line exceeds 4 KiB), as ``%sha256-<hex>``.
    None of these forms can be produced by another rule: percent-encoding never
    yields a ``%`` without two hex digits after it.
    """
    if not part:
        return "%"
    encoded = quote(part, safe="", errors="surrogatepass")
    if len(encoded) > MAX_SEGMENT:
        digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()
        return f"%sha256-{digest}"
    if encoded[0] in "._":
        encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
    return encoded


@functools.lru_cache(maxsize=4096)
def lookup_segment(part: str) -> str:
    """:func:`encode_part`, remembered for the names that lookups ask for again and again.

    The registry lets at most 128 characters through, so this holds a few MiB at most.
    """
    return encode_part(part)


def url_path(key: str) -> str:
    # python-etcd puts the key into the URL as it is, and etcd decodes the URL
    # path once: quote the key so that etcd sees our encoded segments verbatim.
    return quote(key, safe="/")


def parse_base_path(base_path: object) -> str:
    if not isinstance(base_path, str) or not base_path.startswith("/"):
        raise ConfigError(
            f"etcd store: option base_path must be a path starting with '/', got {base_path!r}"
        )
    segments = base_path.strip("/").split("/")
    if segments == [""] or any(s in ("", ".", "..") or s.startswith("_") for s in segments):
        raise ConfigError(
            f"etcd store: option base_path must be like '/services': non-empty segments, none of "
            f"them '.', '..' or starting with '_'; got {base_path!r}"
        )
    normalized = "/" + "/".join(segments)
    if len(url_path(normalized)) > MAX_BASE_PATH:
        raise ConfigError(
            f"etcd store: option base_path must be at most {MAX_BASE_PATH} characters once "
            f"URL-encoded; got {base_path!r}"
        )
    return normalized


# -- the layout ------------------------------------------------------------------


def namespace_path(base_path: str, namespace: str) -> str:
    """The directory of one namespace (its services are its sub-directories)."""
    return f"{base_path}/{NAMESPACES}/{lookup_segment(namespace)}"


def service_path(base_path: str, namespace: str, service_name: str) -> str:
    """The directory of one service of a namespace: one key per instance in it."""
    return f"{namespace_path(base_path, namespace)}/{lookup_segment(service_name)}"


def instance_key(base_path: str, namespace: str, service_name: str, instance_id: str) -> str:
    """The key of one instance."""
    return f"{service_path(base_path, namespace, service_name)}/{encode_part(instance_id)}"


#: Seconds etcd's own TTL outlives a lease: the store's sweeper deletes an expired
#: instance first, and records its expiry (keyard.stores.etcd.changes); etcd's TTL is
#: the backstop when no keyard process sweeps. Reads hide an expired instance anyway.
EXPIRY_MARGIN = 2


def etcd_ttl(seconds: float) -> int:
    """etcd's TTL for a lease of ``seconds`` left: whole seconds, at least 1 (etcd's minimum),
    and :data:`EXPIRY_MARGIN` more."""
    return max(1, math.ceil(seconds)) + EXPIRY_MARGIN


# -- values ----------------------------------------------------------------------

#: The JSON types of a record's fields (``None`` allowed for status_override only).
_TEXT = ("namespace", "service_name", "instance_id", "version", "location", "status")
_TIMES = ("registered_at", "last_heartbeat_at", "expires_at")


def record_value(instance: Instance, token: str) -> str:
    """The JSON value of ``instance``'s key: every field by name, and the writer ``token``.

    The token tells a call's own write apart from anyone else's when a request
    is resent after its answer was lost (a member died).
    """
    fields: dict[str, Any] = instance._asdict()
    fields["tags"] = list(instance.tags)
    fields["metadata"] = dict(instance.metadata)
    fields["writer"] = token
    return json.dumps(fields)


def record_writer(value: str | None) -> str | None:
    """The writer token of a value, or None when it has none."""
    try:
        record = json.loads(value) if value is not None else None
    except (ValueError, RecursionError):
        return None
    writer = record.get("writer") if isinstance(record, dict) else None
    return writer if isinstance(writer, str) else None


def parse_record(base_path: str, key: str, value: str) -> Instance | None:
    """The instance a key and value hold, or None when they are not one of ours.

    Every field must have its type, and the names must give back exactly the
    key the value was found under (segments may be digests).
    """
    try:
        record = json.loads(value)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read: not ours
        return None
    if not isinstance(record, dict):
        return None
    if not all(isinstance(record.get(name), str) for name in _TEXT) or "metadata" not in record:
        return None
    override, tags, metadata = record.get("status_override"), record.get("tags"), record["metadata"]
    weight: Any = record.get("weight")
    ttl: Any = record.get("ttl")
    times: list[Any] = [record.get(name) for name in _TIMES]
    if not (
        (override is None or isinstance(override, str))
        and isinstance(tags, list)
        and all(isinstance(tag, str) for tag in tags)
        and isinstance(metadata, dict)
        and all(isinstance(v, str) for v in metadata.values())
        and _is_int(weight)
        and _is_int(ttl)
        and all(_is_number(t) for t in times)
    ):
        return None
    if key != instance_key(
        base_path, record["namespace"], record["service_name"], record["instance_id"]
    ):
        return None
    return Instance(
        namespace=record["namespace"],
        service_name=record["service_name"],
        instance_id=record["instance_id"],
        version=record["version"],
        location=record["location"],
        status=record["status"],
        status_override=override,
        tags=tuple(tags),
        metadata=metadata,
        weight=weight,
        ttl=ttl,
        registered_at=float(times[0]),
        last_heartbeat_at=float(times[1]),
        expires_at=float(times[2]),
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- keyard 0.2.0's layout (read only, to upgrade it) -------------------------------


def old_key(base_path: str, service_name: str, version: str, location: str) -> str:
    """Where keyard 0.2.0 kept an instance: ``{base_path}/{service}/{version}/{location}``."""
    return "/".join(
        (base_path, encode_part(service_name), encode_part(version), encode_part(location))
    )


def parse_old_record(base_path: str, key: str, value: str | None) -> Instance | None:
    """The instance keyard 0.2.0 kept at ``key``, as a record of today; None if not one.

    The fields 0.2.0 did not have take their defaults: namespace ``default``,
    the derived instance id, status UP, no override, tags or metadata, weight
    100, registered and last heartbeaten at ``expires_at - ttl``.
    """
    record = _old_record(value)
    if record is None:
        return None
    names = tuple(record.get(name) for name in ("service_name", "version", "location"))
    if not all(isinstance(name, str) for name in names):
        return None
    service_name, version, location = names
    assert isinstance(service_name, str) and isinstance(version, str) and isinstance(location, str)
    if key != old_key(base_path, service_name, version, location):
        return None
    return from_keyard_0_2(service_name, version, location, record["ttl"], record["expires_at"])


def _old_record(value: str | None) -> dict[str, Any] | None:
    """The JSON record of an instance's value, or None when it is not one."""
    try:
        record = json.loads(value) if value is not None else None
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read: not ours
        return None
    if not isinstance(record, dict):
        return None
    ttl, expires_at = record.get("ttl"), record.get("expires_at")
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        return None
    record["expires_at"] = float(expires_at)
    return record
