"""The registry of stores by name.

Built-in stores are imported lazily, only when chosen, so that a user of the
memory store never imports a database driver. Other packages add stores through
the ``keyard.stores`` entry-point group::

    # in the other package's setup.py
    entry_points={"keyard.stores": ["mystore = mypackage.mystore:MyStore"]}

An entry point names a :class:`~keyard.stores.base.Store` subclass.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from keyard.errors import ConfigError
from keyard.stores.base import Instance, Store

__all__ = ["Instance", "Store", "available", "create_store", "register_store"]

ENTRY_POINT_GROUP = "keyard.stores"

#: name -> "module:ClassName" for the stores that ship with keyard.
_BUILTIN: dict[str, str] = {
    "simple": "keyard.stores.memory:MemoryStore",
    "etcd": "keyard.stores.etcd:EtcdStore",
    "sqlite": "keyard.stores.sqlite:SqliteStore",
    "redis": "keyard.stores.redis:RedisStore",
}

#: Stores registered at run time with :func:`register_store` (tests, embedding apps).
_registered: dict[str, str] = {}


def register_store(name: str, target: str) -> None:
    """Make ``store_type: name`` load ``target`` (``"module:ClassName"``)."""
    _registered[name] = target


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """The ``keyard.stores`` entry points of the installed distributions, by name."""
    if sys.version_info >= (3, 10):
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    else:  # Python 3.9: a dict of group -> entry points
        found = metadata.entry_points().get(ENTRY_POINT_GROUP, ())
    return {ep.name: ep for ep in found}


def available() -> list[str]:
    """Every store name that ``store_type`` may take, sorted."""
    return sorted({*_BUILTIN, *_registered, *_entry_points()})


def _load(name: str) -> type[Store]:
    target = _registered.get(name) or _BUILTIN.get(name)
    if target is not None:
        module_name, _, attribute = target.partition(":")
        store_class = getattr(importlib.import_module(module_name), attribute)
    else:
        entry_point = _entry_points().get(name)
        if entry_point is None:
            raise ConfigError(
                f"store_type {name!r} is not a known store; available: {', '.join(available())}"
            )
        store_class = entry_point.load()
    if not (isinstance(store_class, type) and issubclass(store_class, Store)):
        raise ConfigError(f"store_type {name!r} does not name a keyard Store subclass")
    return store_class


def store_class(name: str) -> type[Store]:
    """The Store subclass registered as ``name``; ConfigError listing the names if unknown."""
    try:
        return _load(name)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of another package's module
        raise ConfigError(
            f"store_type {name!r} could not be imported: {type(exc).__name__}: {exc}"
        ) from exc


def create_store(name: str, options: Mapping[str, Any] | None = None) -> Store:
    """Build the store registered as ``name`` from its config section."""
    return store_class(name).from_options(options or {})
