"""keyard's Python client: register, health-check, deregister and look up services.

::

    from keyard.client import KeyardClient, NotFound

    client = KeyardClient("http://127.0.0.1:8000", timeout=2)
    with client.keep_alive("app2", "http://127.0.0.1:8002", ttl=10):
        ...                                  # registered, health-checked every ~3 s
    try:
        location = client.choose("app2", strategy="random")
    except NotFound:
        ...                                  # no live instance

Errors are keyard's own exceptions (all subclasses of ``KeyardError``), never
urllib's; see :mod:`keyard.client._exceptions` for which HTTP answer raises which.
"""

from keyard.client._client import DEFAULT_TIMEOUT, DEFAULT_URL, KeyardClient
from keyard.client._exceptions import (
    ConnectionFailed,
    InvalidInput,
    KeyardError,
    NotFound,
    RegistryUnavailable,
    UnexpectedResponse,
)
from keyard.client._heartbeat import Heartbeat
from keyard.client._models import Registration

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "ConnectionFailed",
    "Heartbeat",
    "InvalidInput",
    "KeyardClient",
    "KeyardError",
    "NotFound",
    "Registration",
    "RegistryUnavailable",
    "UnexpectedResponse",
]
