"""How the native API reads its fields into the registry's types.

Fields come from the query string and a JSON or form body
(:func:`keyard.api.request_fields.read_fields`). One rule for their types: text
fields are strings (in JSON, ``"version": "2"``, never ``2``: 2 and 2.0 would
be two versions); whole-number fields (``ttl``, ``weight``) are a JSON number
without a fraction (``30``, ``30.0``) or its decimal digits as text (``"30"``,
as a form sends it). ``tags`` is a JSON list of strings or comma-separated text;
``metadata`` a JSON object of strings, or in a form one ``metadata.KEY=VALUE``
field per key (``metadata=`` alone clears it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from keyard.errors import InvalidInput
from keyard.model import (
    DEFAULT_VERSION,
    STATUSES,
    InstanceFilter,
    Registration,
)
from keyard.registry import DEFAULT_WAIT, MAX_WAIT

Fields = Mapping[str, object]

LEGACY_WRITE_FIELDS = ("service_name", "version", "location", "ttl")
NEW_WRITE_FIELDS = ("instance_id", "status", "tags", "metadata", "weight")
WRITE_FIELDS = LEGACY_WRITE_FIELDS + NEW_WRITE_FIELDS
DELETE_FIELDS = ("service_name", "version", "location", "instance_id")
FILTER_FIELDS = ("version", "status", "tag")
#: The fields of a blocking query (``index``, ``wait``).
BLOCKING_FIELDS = ("index", "wait")
LOOKUP_FIELDS = ("service_name", "load_balancer_strategy", *FILTER_FIELDS)
METADATA_PREFIX = "metadata."


def reject_unknown(fields: Fields, allowed: tuple[str, ...]) -> None:
    unknown = sorted(
        name for name in fields if name not in allowed and not _is_metadata_field(name, allowed)
    )
    if unknown:
        shown = ", ".join(repr(name if len(name) <= 60 else f"{name[:60]}...") for name in unknown)
        raise InvalidInput(f"unknown field(s) {shown}; accepted: {', '.join(allowed)}")


def _is_metadata_field(name: str, allowed: tuple[str, ...]) -> bool:
    return "metadata" in allowed and name.startswith(METADATA_PREFIX)


def text(fields: Fields, name: str, default: str | None = None) -> str:
    """A text field; InvalidInput when it is missing (without a default) or not a string."""
    value = fields.get(name)
    if value is None:
        if default is not None:
            return default
        raise InvalidInput(f"{name} is required")
    if not isinstance(value, str):
        hint = " (quote it in JSON: text fields are strings)" if _is_number(value) else ""
        raise InvalidInput(
            f"{name} must be a string, got {type(value).__name__} {_short(value)}{hint}"
        )
    return value


def optional_text(fields: Fields, name: str) -> str | None:
    return text(fields, name) if fields.get(name) is not None else None


def whole_number(fields: Fields, name: str, bounds: str) -> int | None:
    """A whole-number field (see the module's rule), or None when not given."""
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    raise InvalidInput(f"{name} must be a whole number {bounds}, got {_short(value)}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else f"{shown[:40]}..."


def _tags(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(tag.strip() for tag in value.split(",")) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return tuple(value)
    raise InvalidInput(
        f"{name} must be a list of strings or comma-separated text, got {_short(value)}"
    )


def _metadata(fields: Fields) -> dict[str, str] | None:
    given = {
        name[len(METADATA_PREFIX) :]: value
        for name, value in fields.items()
        if name.startswith(METADATA_PREFIX)
    }
    whole = fields.get("metadata")
    if given and whole is not None:
        raise InvalidInput("give metadata either as one object or as metadata.KEY fields, not both")
    if given:
        return _strings(given)
    if whole is None:
        return None
    if whole == "":
        return {}
    if isinstance(whole, dict):
        return _strings(whole)
    raise InvalidInput(
        "metadata must be a JSON object of strings (or, in a form, metadata.KEY=VALUE fields), "
        f"got {_short(whole)}"
    )


def _strings(metadata: Mapping[str, object]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise InvalidInput(f"metadata value of {key!r} must be a string, got {_short(value)}")
        checked[key] = value
    return checked


def _status(value: str) -> str:
    return value.strip().upper()


def registration(
    fields: Fields, namespace: str, ttl_bounds: str
) -> tuple[Registration, bool]:
    """The registration a POST or PUT asks for; and whether it used any of the new fields."""
    reject_unknown(fields, WRITE_FIELDS)
    status = optional_text(fields, "status")
    tags = fields.get("tags")
    weight_bounds = "between 0 and 1000"
    found = Registration(
        namespace=namespace,
        service_name=text(fields, "service_name"),
        version=text(fields, "version", DEFAULT_VERSION),
        location=text(fields, "location"),
        instance_id=optional_text(fields, "instance_id"),
        ttl=whole_number(fields, "ttl", f"of seconds {ttl_bounds}"),
        status=_status(status) if status is not None else None,
        tags=_tags(tags, "tags") if tags is not None else None,
        metadata=_metadata(fields),
        weight=whole_number(fields, "weight", weight_bounds),
    )
    uses_new = any(
        name in fields for name in NEW_WRITE_FIELDS
    ) or any(name.startswith(METADATA_PREFIX) for name in fields)
    return found, uses_new


def instance_filter(fields: Fields, *, default_statuses: frozenset[str] | None) -> InstanceFilter:
    """The ``version``, ``tag`` and ``status`` filters of a lookup.

    ``status`` is comma-separated statuses or ``any``; without it,
    ``default_statuses`` (``None``: any status).
    """
    version = optional_text(fields, "version")
    tag = optional_text(fields, "tag")
    tags = _tags(tag, "tag") if tag is not None else ()
    status = optional_text(fields, "status")
    statuses = default_statuses
    if status is not None:
        if status.strip().lower() == "any":
            statuses = None
        else:
            named = [_status(part) for part in status.split(",")]
            for part in named:
                if part not in STATUSES:
                    raise InvalidInput(
                        f"status {part[:40]!r} is not known; valid: {', '.join(STATUSES)}, "
                        "or any"
                    )
            statuses = frozenset(named)
    return InstanceFilter(version=version, tags=tags, statuses=statuses)


_WAIT = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)(ms|s|m)?")
_WAIT_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}


def blocking(fields: Fields) -> tuple[int | None, float]:
    """A blocking query's ``index`` (None when not given) and ``wait`` in seconds.

    ``index`` is a whole number of at least 0; ``wait`` is seconds (``30``), or with a
    unit (``30s``, ``1500ms``, ``5m``) up to :data:`~keyard.registry.MAX_WAIT`, 60 s by
    default. ``wait`` without ``index`` is refused: it would wait for nothing.
    """
    index_text = optional_text(fields, "index")
    wait_text = optional_text(fields, "wait")
    if index_text is None:
        if wait_text is not None:
            raise InvalidInput("wait is given without index; a blocking query needs both "
                               "(index: the X-Keyard-Index of the answer last seen)")
        return None, DEFAULT_WAIT
    text_index = index_text.strip()
    if not (text_index.isascii() and text_index.isdigit()) or len(text_index) > 18:
        raise InvalidInput(
            f"index must be a whole number of at least 0 (an X-Keyard-Index), got "
            f"{_short(index_text)}"
        )
    if wait_text is None:
        return int(text_index), DEFAULT_WAIT
    found = _WAIT.fullmatch(wait_text.strip())
    seconds = float(found[1]) * _WAIT_UNITS[found[2]] if found else None
    if seconds is None or seconds > MAX_WAIT:
        raise InvalidInput(
            f"wait must be seconds from 0 to {MAX_WAIT:g} (30, 30s, 1500ms or 5m), got "
            f"{_short(wait_text)}"
        )
    return int(text_index), seconds
