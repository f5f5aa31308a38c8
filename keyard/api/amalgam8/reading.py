"""How the Amalgam8 tree reads its requests: a JSON registration, and a listing's query.

As Amalgam8 reads them: unknown body fields are ignored (the Go client sends ``id`` and
``last_heartbeat``); a body that is not ``application/json`` (UTF-8) is a 415; the
``ttl`` is clamped into keyard's bounds rather than refused; ``status`` is read
case-insensitively. Every problem is an :class:`~keyard.errors.InvalidInput` or a
falcon error naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import parse_qsl

import falcon

from keyard import model
from keyard.api.amalgam8 import mapping
from keyard.api.request_fields import has_no_body, read_body
from keyard.errors import InvalidInput
from keyard.model import DEFAULT_VERSION, MAX_METADATA_KEYS, Registration
from keyard.registry import TtlPolicy

#: The statuses an Amalgam8 client may register with.
REGISTER_STATUSES = ("UP", "STARTING", "OUT_OF_SERVICE")
#: ``status=ALL`` in a listing: every status.
ALL = "ALL"
#: The query fields a listing may select on (Amalgam8's string fields).
CRITERIA = ("id", "service_name", "status", "tags")


def require_json(req: falcon.Request) -> None:
    """415 for a request with a body that is not ``application/json`` in UTF-8."""
    if has_no_body(req):
        return
    media_type, _, parameters = (req.content_type or "").partition(";")
    charset = "utf-8"
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise falcon.HTTPUnsupportedMediaType(
            description="Bad Content-Type or charset, expected 'application/json' (UTF-8); "
            f"got {req.content_type or 'none'!r}"
        )


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def json_body(req: falcon.Request) -> dict[str, object]:
    """The request's JSON object (after :func:`require_json`)."""
    require_json(req)
    body = b"" if has_no_body(req) else read_body(req)
    if not body.strip():
        raise InvalidInput("Failed to register instance: the body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(
            f"Failed to register instance: the body is not valid JSON: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidInput(
            f"Failed to register instance: the body must be a JSON object, got "
            f"{type(data).__name__}"
        )
    return data


def _string(body: Mapping[str, object], name: str, missing: str) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise InvalidInput(missing)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    return value


def _endpoint(body: Mapping[str, object]) -> tuple[str, str]:
    endpoint = body.get("endpoint")
    if endpoint is None:
        raise InvalidInput("Instance endpoint is required")
    if not isinstance(endpoint, dict):
        raise InvalidInput(
            'endpoint must be an object {"type": ..., "value": ...}, '
            f"got {type(endpoint).__name__}"
        )
    missing = "Endpoint type or value are missing"
    kind = _string(endpoint, "type", missing)
    value = _string(endpoint, "value", missing)
    if kind not in mapping.ENDPOINT_TYPES:
        shown = kind if len(kind) <= 40 else f"{kind[:40]}..."
        raise InvalidInput(
            f"Endpoint type is invalid: {shown!r}; valid: {', '.join(mapping.ENDPOINT_TYPES)}"
        )
    return kind, value


def _status(body: Mapping[str, object]) -> str:
    status = body.get("status")
    if status is None or status == "":
        return "UP"
    if not isinstance(status, str):
        raise InvalidInput(f"status must be a string, got {type(status).__name__}")
    if status.upper() not in REGISTER_STATUSES:
        shown = status if len(status) <= 40 else f"{status[:40]}..."
        raise InvalidInput(f"Valid statuses are: {', '.join(REGISTER_STATUSES)}; got {shown!r}")
    return status.upper()


def _ttl(body: Mapping[str, object], policy: TtlPolicy) -> int:
    """The ttl clamped into the policy's bounds; 0 or none is the default (as Amalgam8)."""
    ttl = body.get("ttl")
    if ttl is None:
        return policy.default
    if isinstance(ttl, float) and ttl.is_integer() and abs(ttl) < 1e18:
        ttl = int(ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        shown = str(ttl) if len(str(ttl)) <= 20 else f"{str(ttl)[:20]}..."
        raise InvalidInput(f"ttl must be a whole number of seconds, at least 0; got {shown}")
    if ttl == 0:
        return policy.default
    return min(max(ttl, policy.minimum), policy.maximum)


def _tags(body: Mapping[str, object]) -> tuple[str, ...]:
    tags = body.get("tags")
    if tags is None:
        return ()
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise InvalidInput("tags must be a list of strings")
    return tuple(dict.fromkeys(tags))  # a repeated tag is one tag


def _checked_metadata(body: Mapping[str, object]) -> object:
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for key in metadata:
            if key.startswith(mapping.RESERVED_PREFIX):
                raise InvalidInput(
                    f"metadata key {key[:60]!r} is reserved: keys starting with "
                    f"{mapping.RESERVED_PREFIX!r} hold keyard's mapping of Amalgam8's fields"
                )
        if len(metadata) > MAX_METADATA_KEYS - 1:
            raise InvalidInput(
                f"metadata has {len(metadata)} keys; the limit is {MAX_METADATA_KEYS - 1}"
            )
    return metadata


def _version(metadata: object) -> str:
    if isinstance(metadata, dict):
        version = metadata.get("version")
        if isinstance(version, str) and version.strip():
            return version
    return DEFAULT_VERSION


def registration(body: Mapping[str, object], namespace: str, policy: TtlPolicy) -> Registration:
    """The registration an Amalgam8 registration body asks for.

    Everything the client may send is replaced on a re-registration (as Amalgam8
    overwrites the instance): tags and metadata left out are emptied.
    """
    service_name = model.check_text(
        "service_name", _string(body, "service_name", "Service name is required")
    )
    if len(mapping.encoded_name(service_name)) > mapping.MAX_ENCODED_NAME:
        raise InvalidInput(
            f"service_name is {len(service_name.encode('utf-8'))} bytes long in UTF-8; "
            f"the limit is {mapping.MAX_NAME_BYTES} (the instance id carries it)"
        )
    kind, value = _endpoint(body)
    metadata = _checked_metadata(body)
    return Registration(
        namespace=namespace,
        service_name=service_name,
        version=_version(metadata),
        location=mapping.location(kind, value),
        instance_id=mapping.instance_id(service_name, kind, value),
        ttl=_ttl(body, policy),
        status=_status(body),
        tags=_tags(body),
        metadata=mapping.keyard_metadata(metadata, kind),
    )


# -- a listing's query -------------------------------------------------------------------


class Criteria(NamedTuple):
    """What ``GET /api/v1/instances`` selects and shows.

    ``statuses`` ``None``: any status. Without any criterion only UP instances are
    listed; with another criterion and no ``status``, every status (as Amalgam8).
    ``fields`` ``None``: every field.
    """

    instance_id: str | None = None
    service_name: str | None = None
    statuses: frozenset[str] | None = frozenset({"UP"})
    tags: tuple[str, ...] = ()
    fields: frozenset[str] | None = None


def _query(req: falcon.Request) -> dict[str, str]:
    try:
        pairs = parse_qsl(req.query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidInput("the query string is not valid UTF-8 after percent-decoding") from exc
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in found:
            raise InvalidInput(f"{name[:60]} is given more than once")
        found[name] = value
    return found


def criteria(req: falcon.Request) -> Criteria:
    """The listing's criteria from its query string."""
    query = _query(req)
    fields = None
    if "fields" in query:
        names = [name for name in query.pop("fields").split(",") if name]
        undefined = ", ".join(repr(n[:60]) for n in names if n not in mapping.INSTANCE_FIELDS)
        if undefined:
            raise InvalidInput(
                f"Undefined instance field(s) in fields: {undefined}; "
                f"valid: {', '.join(mapping.INSTANCE_FIELDS)}"
            )
        fields = frozenset(names)
    unknown = [name for name in query if name not in CRITERIA]
    if unknown:
        raise InvalidInput(
            f"Invalid instance selection criteria: {', '.join(repr(n[:60]) for n in unknown)}; "
            f"select on {', '.join(CRITERIA)} (and fields=)"
        )
    statuses: frozenset[str] | None = frozenset({"UP"}) if not query else None
    status = query.get("status")
    if status is not None:
        upper = status.upper()
        if upper == ALL:
            statuses = None
        elif upper in model.STATUSES:
            statuses = frozenset({upper})
        else:
            shown = status if len(status) <= 40 else f"{status[:40]}..."
            raise InvalidInput(
                f"status {shown!r} is not known; valid: {', '.join(model.STATUSES)}, {ALL}"
            )
    tags = tuple(query["tags"].split(",")) if "tags" in query else ()
    return Criteria(query.get("id"), query.get("service_name"), statuses, tags, fields)
