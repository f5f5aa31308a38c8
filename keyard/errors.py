"""keyard's exceptions: one base class and a small subclass for each kind of failure.

The HTTP layer maps these to status codes in one place (``keyard.app``); the
client library raises them too, so callers catch the same names on both sides.
"""

from __future__ import annotations


class KeyardError(Exception):
    """Base class of every error keyard raises on purpose."""


class InvalidInput(KeyardError):
    """A request field is missing, of the wrong type, or out of bounds (HTTP 400)."""


class NotFound(KeyardError):
    """No live instance matches what was asked for (HTTP 404)."""


class StoreUnavailable(KeyardError):
    """The store could not be reached or did not answer in time (HTTP 503)."""


class ConfigError(KeyardError):
    """The configuration is invalid; raised when the app is created, never later."""


class IndexTooOld(KeyardError):
    """A change index is older than the change log keeps: read the whole state again."""


class Unauthorized(KeyardError):
    """The request's credentials are missing or not accepted (HTTP 401).

    The message says why (no token, expired, bad signature ...); it never repeats
    the token.
    """


class Forbidden(KeyardError):
    """The caller is known, but the request is refused (HTTP 403)."""


class CapacityExceeded(Forbidden):
    """A new registration would put more live instances in a namespace than
    ``namespace_capacity`` allows (HTTP 403)."""
