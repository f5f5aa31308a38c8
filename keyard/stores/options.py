"""Checking a store's options: one helper per kind of value, each raising ConfigError.

Options come from the config file's store section, overridden by
``KEYARD_<STORE>_<OPTION>`` environment variables whose values are parsed as
JSON when they parse. So a text option may arrive as a number
(``KEYARD_REDIS_PASSWORD=1234``); whole numbers are taken as their decimal text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from keyard.errors import ConfigError


def reject_unknown(store: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """ConfigError naming every option of ``options`` that is not in ``known``."""
    allowed = sorted(known)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        given = ", ".join(f"{name}={options[name]!r}" for name in unknown)
        raise ConfigError(
            f"{store} store: unknown option(s) {given}; valid options: {', '.join(allowed)}"
        )


def text(store: str, name: str, value: Any) -> str:
    """A non-empty string; a whole number (from an env var parsed as JSON) becomes its digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{store} store: option {name} must be a non-empty string, got {value!r}"
            " (in an environment variable, quote a value that would parse as JSON: '\"...\"')"
        )
    return value


def boolean(store: str, name: str, value: Any) -> bool:
    """``true`` or ``false`` (JSON booleans; in an environment variable, ``true`` or ``false``)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{store} store: option {name} must be true or false, got {value!r}")
    return value


def seconds(store: str, name: str, value: Any, *, zero_ok: bool, maximum: float) -> float:
    """A number of seconds from 0 (or just above, unless ``zero_ok``) to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{store} store: option {name} must be a number of seconds, got {value!r}"
        )
    in_range = (value >= 0 if zero_ok else value > 0) and value <= maximum
    if not in_range:
        low = "at least 0" if zero_ok else "greater than 0"
        raise ConfigError(
            f"{store} store: option {name} must be {low} and at most {maximum:g} seconds, "
            f"got {value!r}"
        )
    return float(value)


def whole_number(store: str, name: str, value: Any, *, minimum: int, maximum: int) -> int:
    """An integer in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{store} store: option {name} must be a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(
            f"{store} store: option {name} must be between {minimum} and {maximum}, got {value}"
        )
    return value


def flag(store: str, name: str, value: Any) -> bool:
    """``true`` or ``false`` (in an environment variable: ``true``/``false``, parsed as JSON)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{store} store: option {name} must be true or false, got {value!r}")
    return value
