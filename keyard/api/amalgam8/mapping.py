"""Between Amalgam8's instance and keyard's :class:`~keyard.model.Instance`, both ways.

======================  =========================================================
Amalgam8                keyard
======================  =========================================================
``id``                  ``instance_id``: :func:`instance_id` of service and endpoint
``service_name``        ``service_name``
``endpoint``            ``location``: ``TYPE://VALUE`` (``user``: ``VALUE`` as is),
                        the type kept in metadata ``amalgam8.endpoint_type``
``status``              ``status`` (the effective one on the way out)
``tags``                ``tags``
``metadata`` (JSON)     ``metadata``: each key's value as JSON text; metadata that
                        is not an object as JSON text under ``amalgam8.metadata``
``ttl``                 ``ttl``
``last_heartbeat``      ``last_heartbeat_at``
(none)                  ``version``: metadata ``version`` when it is a string,
                        else keyard's default
======================  =========================================================
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping

from keyard.model import MAX_LENGTHS, Instance, InstanceKey, iso_time

#: The endpoint types Amalgam8 accepts.
ENDPOINT_TYPES = ("http", "https", "tcp", "udp", "user")
#: Metadata keys with this prefix hold the mapping's own values; a client may not send them.
RESERVED_PREFIX = "amalgam8."
ENDPOINT_TYPE_KEY = "amalgam8.endpoint_type"
WHOLE_METADATA_KEY = "amalgam8.metadata"
#: Between the encoded service name and the rest of an id (not in base64url's alphabet).
ID_SEPARATOR = "."
HASH_DIGITS = 16
#: The longest encoded service name an id can hold within keyard's instance_id limit.
MAX_ENCODED_NAME = MAX_LENGTHS["instance_id"] - len(ID_SEPARATOR) - HASH_DIGITS
#: The longest service name, in UTF-8 bytes, that Amalgam8 can register (83).
MAX_NAME_BYTES = MAX_ENCODED_NAME * 3 // 4
#: The fields of an Amalgam8 instance, in the order Amalgam8 writes them.
INSTANCE_FIELDS = (
    "id", "service_name", "endpoint", "ttl", "status", "metadata", "last_heartbeat",
    "links", "tags",
)  # fmt: skip


# -- ids ---------------------------------------------------------------------------------


def encoded_name(service_name: str) -> str:
    """The service name as unpadded base64url of its UTF-8 bytes."""
    data = service_name.encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def instance_id(service_name: str, endpoint_type: str, value: str) -> str:
    """The id of an instance Amalgam8 registers: the same for the same service and endpoint.

    ``ENCODED_NAME.HASH``: :func:`encoded_name`, a dot, and 16 hex digits of a SHA-256
    of ``service/type/value`` (as Amalgam8 hashes them), so the service is read back
    from the id alone.
    """
    text = "/".join((service_name, endpoint_type, value)).encode("utf-8", "surrogatepass")
    return f"{encoded_name(service_name)}{ID_SEPARATOR}{hashlib.sha256(text).hexdigest()[:16]}"


def shown_id(instance: Instance) -> str:
    """The Amalgam8 id of any instance.

    Its keyard id when that already starts with its encoded service name (an instance
    Amalgam8 registered); otherwise the encoded name, a dot and the keyard id, so that an
    instance registered through another API can be found from its Amalgam8 id too.
    """
    prefix = encoded_name(instance.service_name) + ID_SEPARATOR
    if instance.instance_id.startswith(prefix):
        return instance.instance_id
    return prefix + instance.instance_id


def keys_of(namespace: str, amalgam8_id: str) -> list[InstanceKey]:
    """The keys an Amalgam8 id may name, the likelier first; none for an id that is not
    one (so the caller answers as for an unknown id)."""
    prefix, separator, rest = amalgam8_id.partition(ID_SEPARATOR)
    if not prefix or not separator or not rest.strip():
        return []
    try:
        data = base64.b64decode(prefix + "=" * (-len(prefix) % 4), altchars=b"-_", validate=True)
        service_name = data.decode("utf-8")
    except (binascii.Error, ValueError):
        return []
    if encoded_name(service_name) != prefix or not service_name.strip():
        return []  # not the canonical encoding: no id this API gave out
    limit = MAX_LENGTHS["instance_id"]
    return [
        InstanceKey(namespace, service_name, candidate)
        for candidate in (amalgam8_id, rest)
        if len(candidate) <= limit
    ]


# -- endpoints ---------------------------------------------------------------------------


def location(endpoint_type: str, value: str) -> str:
    """keyard's location of an endpoint: ``TYPE://VALUE``, or the value of a ``user`` one."""
    return value if endpoint_type == "user" else f"{endpoint_type}://{value}"


def endpoint(instance: Instance) -> dict[str, str]:
    """The instance's Amalgam8 endpoint.

    Of an instance Amalgam8 registered, exactly the endpoint it sent; of another, its
    location's scheme when that is an Amalgam8 type (``http://10.0.0.1:8080`` is
    ``{"type": "http", "value": "10.0.0.1:8080"}``), else ``user`` and the whole location.
    """
    loc = instance.location
    kind = instance.metadata.get(ENDPOINT_TYPE_KEY)
    if kind not in ENDPOINT_TYPES:
        scheme, separator, rest = loc.partition("://")
        kind = scheme.lower() if separator else "user"
        if kind not in ENDPOINT_TYPES or kind == "user":
            return {"type": "user", "value": loc}
        return {"type": kind, "value": rest}
    prefix = f"{kind}://"
    if kind != "user" and loc.startswith(prefix):
        return {"type": kind, "value": loc[len(prefix) :]}
    return {"type": kind, "value": loc}


# -- metadata ----------------------------------------------------------------------------


def to_json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def keyard_metadata(metadata: object, endpoint_type: str) -> dict[str, str]:
    """keyard's metadata for Amalgam8's (any JSON, ``None`` when not sent), with the
    endpoint type; the caller has refused reserved keys."""
    found = {ENDPOINT_TYPE_KEY: endpoint_type}
    if metadata is None:
        return found
    if isinstance(metadata, Mapping):
        for key, value in metadata.items():
            found[key] = to_json_text(value)
    else:
        found[WHOLE_METADATA_KEY] = to_json_text(metadata)
    return found


def _from_json_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text  # written through another API: shown as the text it is


def amalgam8_metadata(instance: Instance) -> object | None:
    """The instance's Amalgam8 metadata, ``None`` when it has none.

    Of an instance Amalgam8 registered, the JSON it sent; of another, its metadata
    with each value as the string it is.
    """
    metadata = instance.metadata
    if not metadata:
        return None
    if WHOLE_METADATA_KEY in metadata:
        return _from_json_text(metadata[WHOLE_METADATA_KEY])
    as_json = ENDPOINT_TYPE_KEY in metadata
    shown = {
        key: _from_json_text(value) if as_json else value
        for key, value in metadata.items()
        if not key.startswith(RESERVED_PREFIX)
    }
    return shown or None


# -- views -------------------------------------------------------------------------------


def instance_view(instance: Instance, fields: frozenset[str] | None = None) -> dict[str, object]:
    """The instance as Amalgam8 lists it, with only ``fields`` (``id`` and ``endpoint``
    always) when given; empty values left out, as Go's ``omitempty`` does."""
    view: dict[str, object] = {
        "id": shown_id(instance),
        "service_name": instance.service_name,
        "endpoint": endpoint(instance),
        "ttl": instance.ttl,
        "status": instance.effective_status,
    }
    metadata = amalgam8_metadata(instance)
    if metadata is not None:
        view["metadata"] = metadata
    view["last_heartbeat"] = iso_time(instance.last_heartbeat_at)
    if instance.tags:
        view["tags"] = list(instance.tags)
    if fields is not None:
        view = {
            name: value
            for name, value in view.items()
            if name in fields or name in ("id", "endpoint")
        }
    return view


def links(base_url: str, amalgam8_id: str) -> dict[str, str]:
    """An instance's links: itself and its heartbeat."""
    self_url = f"{base_url}/api/v1/instances/{amalgam8_id}"
    return {"self": self_url, "heartbeat": f"{self_url}/heartbeat"}
