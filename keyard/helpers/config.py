"""keyard's configuration: a JSON file, overridden by ``KEYARD_*`` environment variables.

The file format of the original keyard is accepted as is::

    {"store_type": "etcd", "etcd": {"host": "localhost", "base_path": "/services"}}

Top-level keys: ``store_type`` and the TTL bounds ``default_ttl``, ``min_ttl`` and
``max_ttl`` (seconds). Every other key must be an object: the options of the
store of that name. Environment variables override the file:
``KEYARD_STORE_TYPE``, ``KEYARD_DEFAULT_TTL``, ``KEYARD_MIN_TTL``,
``KEYARD_MAX_TTL``, and ``KEYARD_<STORE>_<OPTION>`` for a store's option (for
example ``KEYARD_ETCD_HOST``). Values are parsed as JSON when they parse
(``2379`` is a number, ``["a:1", "b:2"]`` a list), else taken as strings.

The original API still works::

    from keyard.helpers import config
    config.load_file("example/config.json")
    app = keyard.app.create_app()    # uses the file loaded last
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyard.errors import ConfigError

DEFAULT_FILE = "config.json"
ENV_PREFIX = "KEYARD_"
_TTL_KEYS = ("default_ttl", "min_ttl", "max_ttl")
#: The largest TTL a configuration may allow: ten years. Far beyond it, an expiry
#: time no longer fits a date (year 9999) and registering would fail.
TTL_LIMIT = 10 * 366 * 86400


@dataclass(frozen=True)
class Config:
    """A validated configuration. Build it with :func:`from_dict` or :func:`load`."""

    store_type: str = "sqlite"
    default_ttl: int = 30
    min_ttl: int = 1
    max_ttl: int = 86400
    #: Store name -> that store's options, as given in the file.
    store_sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Where the configuration came from, for messages.
    source: str = "built-in defaults"

    @property
    def store_options(self) -> Mapping[str, Any]:
        """The options of the chosen store (its section, or empty)."""
        return self.store_sections.get(self.store_type, {})


_loaded: Config | None = None


def _reject_unknown_stores(sections: Mapping[str, Any], source: str) -> None:
    """ConfigError for a store section no store is named after: a typo (``"sqllite"``)
    would otherwise leave its options unused without a word."""
    from keyard.stores import available  # the store registry

    known = available()
    unknown = sorted(set(sections) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r} (an object): no store is named so; "
            f"store sections are named after a store: {', '.join(known)}"
        )


def from_dict(data: Mapping[str, Any], *, source: str = "config") -> Config:
    """Validate a parsed config mapping. Raises ConfigError naming the key and value."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the configuration must be a JSON object, got {data!r}")
    values: dict[str, Any] = {}
    sections: dict[str, Mapping[str, Any]] = {}
    for key, value in data.items():
        if key == "store_type":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source}: store_type must be a non-empty string, got {value!r}")
            values[key] = value
        elif key in _TTL_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= TTL_LIMIT:
                raise ConfigError(
                    f"{source}: {key} must be a whole number of seconds from 1 to "
                    f"{TTL_LIMIT} (ten years), got {value!r}"
                )
            values[key] = value
        elif isinstance(value, Mapping):
            sections[key] = dict(value)
        else:
            raise ConfigError(
                f"{source}: unknown key {key!r} (value {value!r}); top-level keys are "
                "store_type, default_ttl, min_ttl, max_ttl, and one object per store"
            )
    _reject_unknown_stores(sections, source)
    config = Config(**values, store_sections=sections, source=source)
    if config.min_ttl > config.max_ttl:
        raise ConfigError(
            f"{source}: min_ttl ({config.min_ttl}) must not be greater than max_ttl "
            f"({config.max_ttl})"
        )
    if not config.min_ttl <= config.default_ttl <= config.max_ttl:
        raise ConfigError(
            f"{source}: default_ttl ({config.default_ttl}) must lie between min_ttl "
            f"({config.min_ttl}) and max_ttl ({config.max_ttl})"
        )
    return config


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a JSON object, got {data!r}")
    return data


def _env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Overlay ``KEYARD_*`` variables onto ``data``; return the names that applied."""
    from keyard.stores import available  # the store registry, for KEYARD_<STORE>_<OPTION>

    applied = []
    store_names = {name.upper(): name for name in available()}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "store_type":
            data[key] = raw
        elif key in _TTL_KEYS:
            data[key] = _env_value(raw)
        else:
            store, _, option = name[len(ENV_PREFIX) :].partition("_")
            if store not in store_names or not option:
                continue  # KEYARD_CONFIG, KEYARD_URL and friends belong to others
            section = data.get(store_names[store])
            section = dict(section) if isinstance(section, Mapping) else {}
            section[option.lower()] = _env_value(raw)
            data[store_names[store]] = section
        applied.append(name)
    return applied


def load(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``path`` (if given) and overlay the environment. Does not change :func:`current`."""
    environ = os.environ if environ is None else environ
    data = _read_file(path) if path is not None else {}
    applied = _apply_environment(data, environ)
    source = f"config file {str(path)!r}" if path is not None else "built-in defaults"
    if applied:
        source += f" with {', '.join(applied)}"
    return from_dict(data, source=source)


def load_file(path: str | os.PathLike[str]) -> Config:
    """Load ``path`` and make it the configuration that ``create_app()`` uses."""
    global _loaded
    _loaded = load(path)
    return _loaded


def from_environment(environ: Mapping[str, str] | None = None) -> Config:
    """The file named by ``KEYARD_CONFIG``, else ``./config.json`` if present, else defaults."""
    environ = os.environ if environ is None else environ
    path: str | None = environ.get("KEYARD_CONFIG") or None
    if path is None and Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    return load(path, environ)


def current() -> Config:
    """The configuration ``create_app()`` uses when given none: the file loaded last, if any."""
    return _loaded if _loaded is not None else from_environment()


def reset() -> None:
    """Forget the file loaded by :func:`load_file` (for tests)."""
    global _loaded
    _loaded = None
