"""The exceptions the client raises: keyard's own, plus two for a registry it cannot use.

keyard answers every error with a JSON body ``{"title", "description"}``. Such a
400 (or another 4xx) answer raises :class:`~keyard.errors.InvalidInput`, a 401
:class:`~keyard.errors.Unauthorized`, a 403 :class:`~keyard.errors.Forbidden`
(:class:`~keyard.errors.CapacityExceeded` for a full namespace), a 404
:class:`~keyard.errors.NotFound`, a 503 (or another 5xx) :class:`RegistryUnavailable`;
the message is the server's ``description``: what to change, as the server said it.
A refused connection or a timeout raises :class:`ConnectionFailed`. Any other
answer (an error without keyard's JSON body, whatever its status; a redirect; a
success that is not keyard's JSON) raises :class:`UnexpectedResponse`: the server
answered, but not as keyard does.
"""

from __future__ import annotations

from keyard.errors import (
    CapacityExceeded,
    Forbidden,
    InvalidInput,
    KeyardError,
    NotFound,
    Unauthorized,
)

__all__ = [
    "CapacityExceeded",
    "ConnectionFailed",
    "Forbidden",
    "InvalidInput",
    "KeyardError",
    "NotFound",
    "RegistryUnavailable",
    "Unauthorized",
    "UnexpectedResponse",
]


class RegistryUnavailable(KeyardError):
    """The registry cannot serve the request now (HTTP 503 or another 5xx); try again later."""


class ConnectionFailed(RegistryUnavailable):
    """The registry could not be reached: connection refused, unknown host, or no answer in time."""


class UnexpectedResponse(KeyardError):
    """The server's answer is not one keyard gives (is the URL really a keyard registry?).

    ``status`` is the answer's HTTP status, ``None`` when it was not HTTP at all.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
