"""The ``/keyard`` resource: read the request, call the registry, write the answer."""

from __future__ import annotations

from datetime import datetime, timezone

import falcon

from keyard.registry import Registry
from keyard.request_fields import read_fields
from keyard.stores.base import Instance


def instance_json(instance: Instance) -> dict[str, object]:
    """An instance as the API shows it; ``expires_at`` in ISO 8601 UTC."""
    expires = datetime.fromtimestamp(instance.expires_at, timezone.utc)
    return {
        "service_name": instance.service_name,
        "version": instance.version,
        "location": instance.location,
        "ttl": instance.ttl,
        "expires_at": expires.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


class KeyardResource:
    """Register (POST), health-check (PUT), deregister (DELETE) and look up (GET, HEAD)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        fields = read_fields(req)
        if "load_balancer_strategy" in fields:
            resp.media = {"result": self.registry.choose(fields).location}
        else:
            resp.media = {"result": [i.location for i in self.registry.lookup(fields)]}

    # HEAD is GET without the body (RFC 9110 9.3.2: every server supports both);
    # falcon drops the body and keeps the status and headers, Content-Length included.
    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        instance, created = self.registry.register(read_fields(req))
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.media = instance_json(instance)

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        instance, created = self.registry.heartbeat(read_fields(req))
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.media = instance_json(instance)

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        service_name, version, location = self.registry.deregister(read_fields(req))
        resp.media = {
            "deregistered": {"service_name": service_name, "version": version, "location": location}
        }
