"""How a keyard instance is a lyft host, and back: the field mapping of the lyft tree.

==============================  =====================================================
lyft host                       keyard :class:`~keyard.model.Instance`
==============================  =====================================================
``service``                     ``service_name``
``ip_address``, ``port``        ``location`` ``http://IP:PORT``; ``instance_id`` is the
                                IP (lyft keys a host by service and IP: a new port
                                replaces it)
``revision``                    ``version`` (keyard's default ``1.0`` when not given)
``service_repo_name``           metadata ``lyft.service_repo_name`` (absent: ``""``)
``tags.load_balancing_weight``  ``weight`` = 10 x the lyft weight; shown: the keyard
                                weight divided by 10, rounded up, at least 1
                                (:func:`lyft_weight`)
``tags.NAME``, a string         metadata ``lyft.tag.NAME`` (``az``, ``region``,
                                ``instance_id``)
``tags.NAME``, other JSON       metadata ``lyft.json.NAME``: its JSON text (``canary``)
``last_check_in``               ``last_heartbeat_at``, UTC: ``2026-12-03 18:22:37.123456``
==============================  =====================================================

An SDS answer shows only what Envoy takes: an instance is left out unless its
effective status is ``UP``, its weight is above 0 (keyard never picks a weight-0
instance; Envoy has no weight 0), and its location is an IPv4 address with an
explicit port (``http://10.0.0.5:8080``, ``10.0.0.5:8080``; not a host name, IPv6,
or a location with a path). Every host shown has a string ``tags.az`` (``""`` when
none is known), a bool ``tags.canary`` (``false`` by default) and an int
``tags.load_balancing_weight`` from 1 to 100, whatever its metadata holds.
"""

from __future__ import annotations

import ipaddress
import json
import math
from datetime import datetime, timezone
from urllib.parse import urlsplit

from keyard.model import UP, Instance

#: Metadata keys the lyft tree keeps its fields in (a reserved prefix).
REPO_KEY = "lyft.service_repo_name"
TAG_PREFIX = "lyft.tag."
JSON_TAG_PREFIX = "lyft.json."
#: The tag the keyard weight stands for (never kept in metadata).
WEIGHT_TAG = "load_balancing_weight"
#: How many keyard weight units one lyft weight unit is (keyard: 0..1000, lyft: 1..100).
WEIGHT_SCALE = 10
MIN_LYFT_WEIGHT, MAX_LYFT_WEIGHT = 1, 100


def is_ipv4(text: str) -> bool:
    """Whether ``text`` is a dotted-quad IPv4 address exactly (``10.0.0.5``; no leading 0s)."""
    try:
        return str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        return False


def location_of(ip: str, port: int) -> str:
    """The keyard location of a lyft host: ``http://IP:PORT`` (a usable URL for native clients)."""
    return f"http://{ip}:{port}"


def address_of(location: str) -> tuple[str, int] | None:
    """The IPv4 address and port of a location, or None when it has none to show.

    ``scheme://IP:PORT`` (any scheme, an optional ``/`` after it) or ``IP:PORT``;
    nothing else (a host name, IPv6, no port, a path, a query, user info).
    """
    try:
        parts = urlsplit(location if "://" in location else f"//{location}")
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if (
        host is None
        or port is None
        or not 1 <= port <= 65535
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or not is_ipv4(host)
    ):
        return None
    return host, port


def ip_of(instance: Instance) -> str | None:
    """The IPv4 address the instance is found at (its location's), or None."""
    address = address_of(instance.location)
    return address[0] if address is not None else None


def keyard_weight(lyft: int) -> int:
    """The keyard weight of a lyft ``load_balancing_weight`` (1..100 gives 10..1000)."""
    return lyft * WEIGHT_SCALE


def lyft_weight(keyard: int) -> int:
    """The lyft weight shown for a keyard weight: divided by 10, rounded up, in 1..100.

    Exact for a weight lyft set (``lyft_weight(keyard_weight(w)) == w``); keyard's
    default 100 shows as 10.
    """
    return min(MAX_LYFT_WEIGHT, max(MIN_LYFT_WEIGHT, math.ceil(keyard / WEIGHT_SCALE)))


def tags_of(instance: Instance) -> dict[str, object]:
    """The lyft tags kept in the instance's metadata (without the weight and the defaults)."""
    tags: dict[str, object] = {}
    for key, value in instance.metadata.items():
        if key.startswith(TAG_PREFIX):
            tags[key[len(TAG_PREFIX) :]] = value
        elif key.startswith(JSON_TAG_PREFIX):
            try:
                tags[key[len(JSON_TAG_PREFIX) :]] = json.loads(value)
            except (ValueError, RecursionError):
                continue  # written through another API: not lyft's, left out
    tags.pop(WEIGHT_TAG, None)
    return tags


def check_in_time(seconds: float) -> str:
    """Unix seconds as lyft writes ``last_check_in``: ``2026-12-03 18:22:37.123456`` (UTC)."""
    moment = datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)
    return moment.isoformat(sep=" ", timespec="microseconds")


def host_view(instance: Instance) -> dict[str, object] | None:
    """The instance as an SDS host (lyft's fields), or None when Envoy could not take it."""
    if (instance.status_override or instance.status) != UP or instance.weight <= 0:
        return None
    address = address_of(instance.location)
    if address is None:
        return None
    tags = tags_of(instance)
    az, canary = tags.get("az"), tags.get("canary")
    tags["az"] = az if isinstance(az, str) else ""
    tags["canary"] = canary if isinstance(canary, bool) else False
    tags[WEIGHT_TAG] = lyft_weight(instance.weight)
    return {
        "ip_address": address[0],
        "last_check_in": check_in_time(instance.last_heartbeat_at),
        "port": address[1],
        "revision": instance.version,
        "service": instance.service_name,
        "service_repo_name": instance.metadata.get(REPO_KEY, ""),
        "tags": tags,
    }


def host_views(instances: list[Instance]) -> list[dict[str, object]]:
    """The hosts Envoy can take, in the instances' order."""
    views = (host_view(instance) for instance in instances)
    return [view for view in views if view is not None]
