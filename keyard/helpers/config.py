"""keyard's configuration: a JSON file, overridden by ``KEYARD_*`` environment variables.

The file format of the original keyard is accepted as is::

    {"store_type": "etcd", "etcd": {"host": "localhost", "base_path": "/services"}}

Top-level keys: ``store_type``, the TTL bounds ``default_ttl``, ``min_ttl`` and
``max_ttl`` (seconds), ``namespace_capacity`` (the most live instances one
namespace may hold; ``null``, the default, for no limit), ``require_https``
(``true``: plain-HTTP requests are refused) and ``trusted_proxies`` (the
addresses whose ``X-Forwarded-Proto`` is believed). The object ``auth`` is the
authentication section (:mod:`keyard.auth.settings`). Every other key must be an
object: the options of the store of that name. A key given twice in one object
is an error, not the last value silently. Environment variables override the file:
``KEYARD_STORE_TYPE`` (taken as is), ``KEYARD_DEFAULT_TTL``, ``KEYARD_MIN_TTL``,
``KEYARD_MAX_TTL``, ``KEYARD_NAMESPACE_CAPACITY``, ``KEYARD_REQUIRE_HTTPS``,
``KEYARD_TRUSTED_PROXIES``, ``KEYARD_AUTH_<OPTION>`` for an auth option
(``KEYARD_AUTH_MODE``), and ``KEYARD_<STORE>_<OPTION>`` for a store's option (for
example ``KEYARD_ETCD_HOST``); after the prefix, names are not case-sensitive,
and two variables naming the same setting are an error. Their values are parsed
as JSON when they parse (``2379`` is a number, ``["a:1", "b:2"]`` a list), else
taken as strings. Every error names where its value came from: the variable, or
the key and the file.

Every store section is checked at start-up, whether or not its store is chosen:
it must name a known store and be an object, and when the store class has a
``check_options(options)`` classmethod (which checks names and types without
connecting or touching files) that checks it too. The chosen store's options are
checked again when the store is built (``from_options``).

The original API still works::

    from keyard.helpers import config
    config.load_file("example/config.json")
    app = keyard.app.create_app()    # uses the file loaded last
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keyard.auth import settings as auth_settings
from keyard.auth.settings import AuthSettings
from keyard.errors import ConfigError

DEFAULT_FILE = "config.json"
ENV_PREFIX = "KEYARD_"
_TTL_KEYS = ("default_ttl", "min_ttl", "max_ttl")
_TOP_LEVEL_KEYS = (
    "store_type",
    *_TTL_KEYS,
    "namespace_capacity",
    "require_https",
    "trusted_proxies",
)
#: The section that is not a store's: authentication (``KEYARD_AUTH_<OPTION>``).
AUTH = "auth"
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
    #: The most live instances one namespace may hold (``None``: no limit).
    namespace_capacity: int | None = None
    #: Refuse requests that did not come over HTTPS.
    require_https: bool = False
    #: The proxies (addresses or networks) whose ``X-Forwarded-Proto`` is believed.
    trusted_proxies: tuple[str, ...] = ()
    #: The ``auth`` section, checked (its key file read).
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: Store name -> that store's options, as given in the file.
    store_sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Where the configuration came from, for messages.
    source: str = "built-in defaults"

    @property
    def store_options(self) -> Mapping[str, Any]:
        """The options of the chosen store (its section, or empty)."""
        return self.store_sections.get(self.store_type, {})


_loaded: Config | None = None

# A setting's place in the configuration: ("default_ttl",) or ("redis", "port").
_Setting = tuple[str, ...]


@dataclass(frozen=True)
class _Origins:
    """Where each value came from, so that an error names the variable or the file."""

    #: The file (or mapping) that every value not set by a variable came from.
    source: str
    #: Setting -> the environment variable that set it.
    variables: Mapping[_Setting, str] = field(default_factory=dict)

    def of(self, *setting: str) -> str:
        """``environment variable KEYARD_X`` or the source, for a top-level value."""
        variable = self.variables.get(setting)
        return f"environment variable {variable}" if variable else self.source

    def section(self, store: str, in_file: bool) -> str:
        """Where the options of ``store``'s section came from: the file, variables, or both."""
        parts = [f"{self.source}, section {store!r}"] if in_file else []
        variables = [
            f"{variable} (option {setting[1]})"
            for setting, variable in sorted(self.variables.items())
            if len(setting) == 2 and setting[0] == store
        ]
        if variables:
            plural = "s" if len(variables) > 1 else ""
            parts.append(f"environment variable{plural} {', '.join(variables)}")
        return "; ".join(parts) or f"{self.source}, section {store!r}"


def _store_class(name: str, where: str) -> type:
    """The Store class registered as ``name``; its ConfigError prefixed with ``where``."""
    from keyard.stores import store_class  # the store registry

    try:
        return store_class(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _check_sections(
    sections: Mapping[str, Mapping[str, Any]], in_file: set[str], origins: _Origins
) -> None:
    """Check every store section, used or not, without building its store.

    Uses the store class's ``check_options`` classmethod where it has one: it checks
    option names and types without connecting or touching files. ``from_options``
    is never called here, since for some stores it connects or creates files.
    """
    for name, options in sections.items():
        where = origins.section(name, name in in_file)
        check = getattr(_store_class(name, where), "check_options", None)
        if check is None:
            continue  # the store checks its options only when built (from_options)
        try:
            check(options)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


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
    return _validate(
        data, _Origins(source), in_file=set(data) if isinstance(data, Mapping) else set()
    )


def _validate(data: Mapping[str, Any], origins: _Origins, in_file: set[str]) -> Config:
    """:func:`from_dict`, naming for each value the variable or file it came from.

    ``in_file`` holds the store sections the file (not only variables) gave.
    """
    source = origins.source
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the configuration must be a JSON object, got {data!r}")
    values: dict[str, Any] = {}
    sections: dict[str, Mapping[str, Any]] = {}
    for key, value in data.items():
        if key == AUTH:
            values[key] = auth_settings.parse(value, origins.section(AUTH, AUTH in in_file))
        elif key == "namespace_capacity":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(
                    f"{origins.of(key)}: namespace_capacity must be a whole number of at least "
                    f"1 (the most live instances one namespace may hold), or null for no "
                    f"limit, got {value!r}"
                )
            values[key] = value
        elif key == "require_https":
            if not isinstance(value, bool):
                raise ConfigError(
                    f"{origins.of(key)}: require_https must be true or false, got {value!r}"
                )
            values[key] = value
        elif key == "trusted_proxies":
            values[key] = _trusted_proxies(value, origins.of(key))
        elif key == "store_type":
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"{origins.of(key)}: store_type must be a non-empty string, got {value!r}"
                )
            values[key] = value
        elif key in _TTL_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= TTL_LIMIT:
                raise ConfigError(
                    f"{origins.of(key)}: {key} must be a whole number of seconds from 1 to "
                    f"{TTL_LIMIT} (ten years), got {value!r}"
                )
            values[key] = value
        elif isinstance(value, Mapping):
            sections[key] = dict(value)
        else:
            raise ConfigError(_not_a_section(key, value, source))
    _reject_unknown_stores(sections, source)
    config = Config(**values, store_sections=sections, source=source)
    _store_class(config.store_type, origins.of("store_type"))

    def shown(key: str) -> str:
        where = origins.of(key) if key in values else "the default"
        return f"{key} ({getattr(config, key)}, {where})"

    if config.min_ttl > config.max_ttl:
        raise ConfigError(f"{shown('min_ttl')} must not be greater than {shown('max_ttl')}")
    if not config.min_ttl <= config.default_ttl <= config.max_ttl:
        raise ConfigError(
            f"{shown('default_ttl')} must lie between {shown('min_ttl')} and {shown('max_ttl')}"
        )
    _check_sections(sections, in_file, origins)
    return config


def _trusted_proxies(value: Any, where: str) -> tuple[str, ...]:
    """A list of addresses or networks (or one string, comma-separated), each checked."""
    from keyard.api.transport import networks

    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise ConfigError(
            f'{where}: trusted_proxies must be a list of addresses such as ["10.0.0.5", '
            f'"10.0.1.0/24"], got {value!r}'
        )
    try:
        networks(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: trusted_proxies: {exc}") from exc
    return tuple(value)


def _not_a_section(key: str, value: Any, source: str) -> str:
    """The message for a top-level key that is neither a setting nor an object."""
    from keyard.stores import available  # the store registry

    if key in available():
        return f"{source}: key {key!r} must be an object (the {key} store's options), got {value!r}"
    return (
        f"{source}: unknown key {key!r} (value {value!r}); top-level keys are "
        "store_type, default_ttl, min_ttl, max_ttl, namespace_capacity, require_https, "
        "trusted_proxies, the object auth, and one object per store"
    )


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's (key, value) pairs in order, duplicates kept, for :func:`_parse_json`."""


def _objects(value: Any, where: str, inside: tuple[str, ...] = ()) -> Any:
    """``value`` with every :class:`_Pairs` turned into a dict; ConfigError on a duplicate key."""
    if isinstance(value, list) and not isinstance(value, _Pairs):
        return [_objects(item, where, inside) for item in value]
    if not isinstance(value, _Pairs):
        return value
    result: dict[str, Any] = {}
    for key, item in value:
        if key in result:
            place = f" in {'.'.join(inside)!r}" if inside else ""
            raise ConfigError(
                f"{where}: key {key!r}{place} is given more than once; give it once "
                "(JSON would keep only the last value)"
            )
        result[key] = _objects(item, where, (*inside, key))
    return result


def _parse_json(text: str, where: str) -> Any:
    """``json.loads``, but a key given twice in one object is a ConfigError."""
    return _objects(json.loads(text, object_pairs_hook=_Pairs), where)


def _read_file(path: str | os.PathLike[str], source: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source} cannot be read: {exc}") from exc
    try:
        data = _parse_json(text, source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object, got {data!r}")
    return data


def _env_value(name: str, raw: str) -> Any:
    try:
        return _parse_json(raw, f"environment variable {name}")
    except json.JSONDecodeError:
        return raw


def _setting_of(name: str, store_names: Mapping[str, str]) -> _Setting | None:
    """The setting ``KEYARD_...`` variable ``name`` sets, or None if it is not a config one.

    After the prefix, names are not case-sensitive. A store's name may contain ``_``:
    the longest store name that matches wins.
    """
    rest = name[len(ENV_PREFIX) :].upper()
    if rest.lower() in _TOP_LEVEL_KEYS:
        return (rest.lower(),)
    matches = [
        upper
        for upper in store_names
        if rest.startswith(upper + "_") and len(rest) > len(upper) + 1
    ]
    if not matches:
        return None  # KEYARD_CONFIG, KEYARD_URL and friends belong to others
    store = max(matches, key=len)
    return (store_names[store], rest[len(store) + 1 :].lower())


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[_Setting, str]:
    """Overlay ``KEYARD_*`` variables onto ``data``; return setting -> the variable that set it."""
    from keyard.stores import available  # the store registry, for KEYARD_<STORE>_<OPTION>

    store_names = {name.upper(): name for name in available()}
    store_names[AUTH.upper()] = AUTH
    applied: dict[_Setting, str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        setting = _setting_of(name, store_names)
        if setting is None:
            continue
        if setting in applied:
            raise ConfigError(
                f"environment variables {applied[setting]} and {name} both set "
                f"{'.'.join(setting)}; set only one"
            )
        applied[setting] = name
        if setting == ("store_type",):
            data["store_type"] = raw  # a store's name, never JSON
        elif len(setting) == 1:
            data[setting[0]] = _env_value(name, raw)
        else:
            store, option = setting
            section = data.setdefault(store, {})
            if not isinstance(section, dict):
                continue  # the file's value is not an object: that error names the file
            raw_text = store == AUTH and option in auth_settings.RAW_TEXT_OPTIONS
            section[option] = raw if raw_text else _env_value(name, raw)
    return applied


def load(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``path`` (if given) and overlay the environment. Does not change :func:`current`."""
    source = f"config file {str(path)!r}" if path is not None else "built-in defaults"
    return _load(path, os.environ if environ is None else environ, source)


def _load(path: str | os.PathLike[str] | None, environ: Mapping[str, str], source: str) -> Config:
    """:func:`load`, with ``source`` naming the file (and the variable that named it)."""
    data = _read_file(path, source) if path is not None else {}
    in_file = {key for key, value in data.items() if isinstance(value, Mapping)}
    applied = _apply_environment(data, environ)
    config = _validate(data, _Origins(source, applied), in_file)
    if applied:
        config = replace(config, source=f"{source} with {', '.join(sorted(applied.values()))}")
    return config


def load_file(path: str | os.PathLike[str]) -> Config:
    """Load ``path`` and make it the configuration that ``create_app()`` uses."""
    global _loaded
    _loaded = load(path)
    return _loaded


def from_environment(environ: Mapping[str, str] | None = None) -> Config:
    """The file named by ``KEYARD_CONFIG``, else ``./config.json`` if present, else defaults."""
    environ = os.environ if environ is None else environ
    path: str | None = environ.get("KEYARD_CONFIG") or None
    if path is not None:
        return _load(path, environ, f"config file {path!r} (named by KEYARD_CONFIG)")
    if Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    return load(path, environ)


def current() -> Config:
    """The configuration ``create_app()`` uses when given none: the file loaded last, if any."""
    return _loaded if _loaded is not None else from_environment()


def reset() -> None:
    """Forget the file loaded by :func:`load_file` (for tests)."""
    global _loaded
    _loaded = None
