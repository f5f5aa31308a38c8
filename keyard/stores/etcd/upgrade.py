"""Upgrade keyard 0.2.0's etcd keys to today's layout, once, when a store is first used.

keyard 0.2.0 kept an instance at ``{base_path}/{service}/{version}/{location}``
(see :func:`~keyard.stores.etcd.keys.parse_old_record`). :func:`convert_old_keys`
moves every live one to its key of today and deletes every old one:

1. create the new key with ``prevExist=false`` and the old key's remaining etcd
   TTL (none if it had none); if it exists already, another process converted
   it first, or the instance registered again since: that key stays as it is;
2. delete the old key with ``prevIndex`` of the read. If it is gone, another
   process deleted it: after this call's create (it found that key and left
   it), or before it, and then this call's key may stand for an instance
   deregistered meanwhile: etcd's event history says which (the old key's
   removal at an index below this call's create), and in that case this call's
   key is deleted again (with its own ``prevIndex``), so that it never comes
   back. If the old key changed (a 0.2.0 process still refreshes it), this
   call's key is deleted again and the old key converted anew from a fresh read.

So several processes may convert at once, each instance ends up once, and a
second run finds nothing to do. Expired old records are deleted, never
converted. The old directories left empty are deleted (best effort).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import etcd

from keyard.errors import StoreUnavailable
from keyard.stores.etcd.cache import leaves
from keyard.stores.etcd.cluster import Cluster
from keyard.stores.etcd.keys import (
    NAMESPACES,
    instance_key,
    parse_old_record,
    record_value,
    url_path,
)

log = logging.getLogger(__name__)

#: The change keys' directory (keyard.stores.etcd.changes): never 0.2.0's.
WATCH = "%watch"

#: How often one old key is converted again when a 0.2.0 process keeps changing it.
_ATTEMPTS = 5
_REMOVALS = frozenset({"delete", "compareAndDelete", "expire"})


def convert_old_keys(cluster: Cluster, base_path: str, timeout: float) -> int:
    """Convert every 0.2.0 key under ``base_path``; how many instances this call converted.

    Every request gets ``timeout`` seconds; a failure to reach etcd raises
    StoreUnavailable, and the caller runs the conversion again later (it is
    idempotent). When base_path holds nothing but today's keys this is one read.
    """
    try:
        top = cluster.read(time.monotonic() + timeout, url_path(base_path), quorum="true")
    except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
        return 0
    converted = 0
    for child in top.get("nodes") or ():
        child_key = child.get("key")
        if not isinstance(child_key, str) or child_key in (
            f"{base_path}/{NAMESPACES}", f"{base_path}/{WATCH}"
        ):
            continue
        try:
            tree = cluster.read(
                time.monotonic() + timeout, url_path(child_key), recursive="true", quorum="true"
            )
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            continue
        for node in leaves(tree):
            converted += _convert(cluster, base_path, node, timeout)
        _remove_empty_directories(cluster, tree, timeout)
    if converted:
        log.info("etcd store: converted %d keyard 0.2.0 instances under %s", converted, base_path)
    return converted


def _convert(cluster: Cluster, base_path: str, node: dict[str, Any], timeout: float) -> int:
    """Convert one old key (1 if this call made its new key, else 0); skip what is not ours."""
    for _ in range(_ATTEMPTS):
        old = parse_old_record(base_path, node.get("key", ""), node.get("value"))
        if old is None:
            return 0  # not a 0.2.0 instance: not ours to touch
        old_path, old_index = url_path(node["key"]), node["modifiedIndex"]
        created: dict[str, Any] | None = None
        new_path = url_path(instance_key(base_path, *old.key))
        if old.expires_at > time.time():
            fields: dict[str, Any] = {"value": record_value(old, uuid.uuid4().hex)}
            ttl = node.get("ttl")
            if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0:
                fields["ttl"] = ttl
            try:
                created = cluster.call(
                    time.monotonic() + timeout, "PUT", new_path, **fields, prevExist="false"
                )
            except etcd.EtcdAlreadyExist:
                created = None  # converted by another process, or registered anew: it stays
        try:
            cluster.call(time.monotonic() + timeout, "DELETE", old_path, prevIndex=old_index)
            return 1 if created is not None else 0
        except etcd.EtcdKeyNotFound:
            removed = created is not None and _removed_before(
                cluster, old_path, old_index, created, timeout
            )
            if removed:
                _undo(cluster, new_path, created, timeout)  # converted by another, then removed
            return 0
        except etcd.EtcdCompareFailed:
            _undo(cluster, new_path, created, timeout)  # changed since the read: read it again
        try:
            node = cluster.read(time.monotonic() + timeout, old_path, quorum="true")
        except etcd.EtcdKeyNotFound:
            return 0
    raise StoreUnavailable(
        f"etcd store: could not convert keyard 0.2.0's key {node.get('key')!r}: it changed "
        f"{_ATTEMPTS} times while being converted; stop the keyard 0.2.0 processes that "
        "still write to this base_path"
    )


def _removed_before(
    cluster: Cluster, path: str, read_at: int, created: dict[str, Any], timeout: float
) -> bool:
    """True when etcd's history says the old key was removed before this call's create.

    The first change of the key after the read (a watch from the read's index:
    etcd answers it from its history at once). False when the history does not
    reach back that far: then the key this call created stays.
    """
    created_at = (created.get("node") or {}).get("modifiedIndex")
    try:
        event = cluster.call(
            time.monotonic() + timeout, "GET", path, wait="true", waitIndex=str(read_at + 1)
        )
    except (etcd.EtcdEventIndexCleared, etcd.EtcdKeyNotFound):
        return False
    removed_at = (event.get("node") or {}).get("modifiedIndex")
    return (
        event.get("action") in _REMOVALS
        and isinstance(removed_at, int)
        and isinstance(created_at, int)
        and removed_at < created_at
    )


def _undo(cluster: Cluster, path: str, created: dict[str, Any] | None, timeout: float) -> None:
    """Delete the key this call created, unless it changed since (then it is someone's)."""
    index = ((created or {}).get("node") or {}).get("modifiedIndex")
    if not isinstance(index, int):
        return
    with contextlib.suppress(etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
        cluster.call(time.monotonic() + timeout, "DELETE", path, prevIndex=index)


def _remove_empty_directories(cluster: Cluster, tree: dict[str, Any], timeout: float) -> None:
    """Delete the directories of ``tree``, deepest first; etcd keeps those not empty."""
    directories: list[str] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if node.get("dir") and isinstance(node.get("key"), str):
            directories.append(node["key"])
            pending.extend(node.get("nodes") or ())
    for directory in sorted(directories, key=lambda d: d.count("/"), reverse=True):
        try:
            cluster.call(time.monotonic() + timeout, "DELETE", url_path(directory), dir="true")
        except (etcd.EtcdException, StoreUnavailable):
            continue
