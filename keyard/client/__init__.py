"""keyard's Python client: register, health-check, deregister and look up services.

::

    from keyard.client import KeyardClient, NotFound

    client = KeyardClient("http://127.0.0.1:8000", timeout=2)
    # a registry with authentication: client = KeyardClient(url, token=..., cafile=...)
    with client.keep_alive("app2", "http://127.0.0.1:8002", ttl=10):
        ...                                  # registered, health-checked every ~3 s
    try:
        location = client.choose("app2", strategy="random")
    except NotFound:
        ...                                  # no live instance

    spec = InstanceSpec(instance_id="app2-a", tags=["canary"], metadata={"zone": "eu-1"})
    client.register("app2", "http://127.0.0.1:8002", spec=spec)
    client.set_status("app2", "app2-a", "OUT_OF_SERVICE")    # maintenance: lookups skip it
    for instance in client.instances("app2"):                # full records, every status
        print(instance.instance_id, instance.status, instance.tags)

    for snapshot in client.watch("app2"):                    # the state, then each change
        print(snapshot.index, [i.location for i in snapshot.instances])

Errors are keyard's own exceptions (all subclasses of ``KeyardError``), never
urllib's; see :mod:`keyard.client._exceptions` for which HTTP answer raises which.
"""

from keyard.client._client import DEFAULT_TIMEOUT, DEFAULT_URL, KeyardClient
from keyard.client._exceptions import (
    CapacityExceeded,
    ConnectionFailed,
    Forbidden,
    InvalidInput,
    KeyardError,
    NotFound,
    RegistryUnavailable,
    Unauthorized,
    UnexpectedResponse,
)
from keyard.client._heartbeat import Heartbeat
from keyard.client._models import (
    OUT_OF_SERVICE,
    STATUSES,
    Instance,
    InstanceSpec,
    Registration,
    ServiceSummary,
)
from keyard.client._watch import Snapshot, Watch

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "OUT_OF_SERVICE",
    "STATUSES",
    "CapacityExceeded",
    "ConnectionFailed",
    "Forbidden",
    "Heartbeat",
    "Instance",
    "InstanceSpec",
    "InvalidInput",
    "KeyardClient",
    "KeyardError",
    "NotFound",
    "Registration",
    "RegistryUnavailable",
    "ServiceSummary",
    "Snapshot",
    "Unauthorized",
    "UnexpectedResponse",
    "Watch",
]
