"""How the lyft tree reads its form fields into the registry's types.

A registration is a form post (lyft's clients send ``ip``, ``port``, ``revision``,
``service_repo_name``, ``tags`` as JSON text, ``auto_ip``); a JSON body with the same
fields is read too, ``tags`` then an object or its text. Fields lyft does not know
are ignored, as lyft does. Every bad value is an
:class:`~keyard.errors.InvalidInput` naming the field; unlike lyft, keyard refuses
tags that Envoy would reject (a non-string ``az``, a non-bool ``canary``, a
``load_balancing_weight`` outside 1..100), and it requires none of lyft's AWS tags
(``az``, ``instance_id``, ``region``) nor ``revision``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple

from keyard.api.lyft import hosts
from keyard.errors import InvalidInput
from keyard.model import (
    MAX_LENGTHS,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    Metadata,
)

Fields = Mapping[str, object]
#: Values of ``auto_ip`` that do not ask for it (any other non-empty value does, as in lyft).
_NOT_ASKED = frozenset({"", "0", "false", "no", "off"})
_LONGEST_TAG_NAME = MAX_METADATA_KEY_LENGTH - len(hosts.JSON_TAG_PREFIX)


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else f"{shown[:40]}..."


def text(fields: Fields, name: str) -> str | None:
    """A text field, None when not given; InvalidInput when it is not a string."""
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"{name} must be a string, got {_short(value)}")


def bounded(name: str, value: str, limit: int) -> str:
    """``value`` when it is not blank, at most ``limit`` characters and valid Unicode."""
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters long; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{name} is not valid Unicode: {_short(value)}") from exc
    return value


def service(value: str) -> str:
    """A service name from the path (keyard's ``service_name`` bounds)."""
    return bounded("service", value, MAX_LENGTHS["service_name"])


def ip_address(value: str, name: str = "ip") -> str:
    """An IPv4 address (all Envoy's v1 SDS takes)."""
    if not hosts.is_ipv4(value):
        raise InvalidInput(f"{name} must be an IPv4 address such as 10.0.0.5, got {_short(value)}")
    return value


def whole_number(fields: Fields, name: str, low: int, high: int) -> int | None:
    """A whole number from ``low`` to ``high`` (digits in a form; a JSON int), or None."""
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number: int | None = int(value.strip()) if len(value.strip()) <= 18 else None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = None
    if number is None or not low <= number <= high:
        raise InvalidInput(
            f"{name} must be a whole number from {low} to {high}, got {_short(value)}"
        )
    return number


def caller_ip(fields: Fields, forwarded_for: str | None, peer: str | None) -> str:
    """``ip``, or with ``auto_ip`` the caller's: the last ``X-Forwarded-For`` entry (the
    nearest proxy's), else the connection's peer address."""
    given = text(fields, "ip")
    if given:
        return ip_address(given)
    auto = text(fields, "auto_ip")
    if auto is None or auto.strip().lower() in _NOT_ASKED:
        raise InvalidInput("ip is required (or auto_ip=true to register the caller's address)")
    if forwarded_for and forwarded_for.split(",")[-1].strip():
        found, source = forwarded_for.split(",")[-1].strip(), "the last X-Forwarded-For entry"
    else:
        found, source = peer or "", "the connection's peer address"
    if not hosts.is_ipv4(found):
        raise InvalidInput(
            f"auto_ip: {source} {_short(found)} is not an IPv4 address; send ip instead"
        )
    return found


class LyftTags(NamedTuple):
    """A registration's tags: the metadata entries they are kept in, and the keyard weight."""

    metadata: dict[str, str]
    weight: int | None


def tags(fields: Fields) -> LyftTags:
    """``tags``: a JSON object (as text in a form) that Envoy would take.

    ``az`` a string, ``canary`` a bool, ``load_balancing_weight`` a whole number from
    1 to 100 (kept as the keyard weight); any other tag any JSON value.
    """
    value = fields.get("tags")
    if value is None or (isinstance(value, str) and not value.strip()):
        return LyftTags({}, None)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise InvalidInput(f"tags is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"tags must be a JSON object, got {type(value).__name__}")
    value = dict(value)
    weight = None
    if hosts.WEIGHT_TAG in value:
        lyft = value.pop(hosts.WEIGHT_TAG)
        if not isinstance(lyft, int) or isinstance(lyft, bool) or not 1 <= lyft <= 100:
            raise InvalidInput(
                f"tags.load_balancing_weight must be a whole number from 1 to 100 (Envoy "
                f"refuses a service with any other), got {_short(lyft)}"
            )
        weight = hosts.keyard_weight(lyft)
    if "az" in value and not isinstance(value["az"], str):
        raise InvalidInput(f"tags.az must be a string (Envoy refuses any other), got "
                           f"{_short(value['az'])}")
    if "canary" in value and not isinstance(value["canary"], bool):
        raise InvalidInput(f"tags.canary must be true or false (Envoy refuses any other), got "
                           f"{_short(value['canary'])}")
    return LyftTags({_tag_key(name, tag): _tag_text(name, tag) for name, tag in value.items()},
                    weight)


def _tag_key(name: str, value: object) -> str:
    if not name.strip():
        raise InvalidInput("tags must not have an empty name")
    if len(name) > _LONGEST_TAG_NAME:
        raise InvalidInput(
            f"tag name {name[:20]!r}... is {len(name)} characters long; the limit is "
            f"{_LONGEST_TAG_NAME}"
        )
    bounded("tag name", name, _LONGEST_TAG_NAME)
    return (hosts.TAG_PREFIX if isinstance(value, str) else hosts.JSON_TAG_PREFIX) + name


def _tag_text(name: str, value: object) -> str:
    found = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(found) > MAX_METADATA_VALUE_LENGTH:
        raise InvalidInput(
            f"tags.{name[:40]} is {len(found)} characters long (as JSON text); the limit is "
            f"{MAX_METADATA_VALUE_LENGTH}"
        )
    if found:
        bounded(f"tags.{name[:40]}", found, MAX_METADATA_VALUE_LENGTH)
    return found


def merged_metadata(stored: Metadata, given: dict[str, str], repo: str | None) -> dict[str, str]:
    """The metadata of a re-registration: the stored tags merged with the given ones (as lyft
    merges them), the repository replaced (dropped when not given, as lyft blanks it)."""
    metadata = dict(stored)
    for key in given:
        name = key.partition(".")[2].partition(".")[2]
        metadata.pop(hosts.TAG_PREFIX + name, None)
        metadata.pop(hosts.JSON_TAG_PREFIX + name, None)
    metadata.update(given)
    metadata.pop(hosts.REPO_KEY, None)
    if repo:
        metadata[hosts.REPO_KEY] = repo
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(
            f"tags: the host would keep {len(metadata)} tags and metadata entries; the limit "
            f"is {MAX_METADATA_KEYS}"
        )
    return metadata


def repo(fields: Fields) -> str | None:
    """``service_repo_name``, None when not given or empty."""
    value = text(fields, "service_repo_name")
    if not value:
        return None
    return bounded("service_repo_name", value, MAX_METADATA_VALUE_LENGTH)


def revision(fields: Fields) -> str | None:
    value = text(fields, "revision")
    return bounded("revision", value, MAX_LENGTHS["version"]) if value else None
