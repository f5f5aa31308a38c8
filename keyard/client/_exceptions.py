"""The exceptions the client raises: keyard's own, plus two for a registry it cannot use.

A 400 (or another 4xx) answer raises :class:`~keyard.errors.InvalidInput`, a 404
:class:`~keyard.errors.NotFound`, a 503 (or another 5xx) :class:`RegistryUnavailable`
and a refused connection or a timeout :class:`ConnectionFailed`. The message is
the server's ``description``: what to change, as the server said it.
"""

from __future__ import annotations

from keyard.errors import InvalidInput, KeyardError, NotFound

__all__ = [
    "ConnectionFailed",
    "InvalidInput",
    "KeyardError",
    "NotFound",
    "RegistryUnavailable",
    "UnexpectedResponse",
]


class RegistryUnavailable(KeyardError):
    """The registry cannot serve the request now (HTTP 503 or another 5xx); try again later."""


class ConnectionFailed(RegistryUnavailable):
    """The registry could not be reached: connection refused, unknown host, or no answer in time."""


class UnexpectedResponse(KeyardError):
    """The server's answer is not one keyard gives (is the URL really a keyard registry?)."""
