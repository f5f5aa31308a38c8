"""The Amalgam8 tree's resources: read the request, call the registry, write the answer."""

from __future__ import annotations

import falcon

from keyard.api.amalgam8 import mapping, reading
from keyard.api.paths import segment
from keyard.errors import NotFound
from keyard.model import MAX_LENGTHS, Instance, InstanceFilter
from keyard.registry import Registry


class Amalgam8Resource:
    """Base of the Amalgam8 tree's resources."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _instance(self, req: falcon.Request, amalgam8_id: str, failure: str) -> Instance:
        """The live instance the id names; 410 Gone when there is none or the id is not
        one this API gives out (Amalgam8's answer, on which the sidecar registers again)."""
        shown = segment(req, amalgam8_id, "id")
        for key in mapping.keys_of(req.context.namespace, shown):
            found = self.registry.find(key)
            if found is not None:
                return found
        raise falcon.HTTPGone(description=f"{failure}: no live instance has the id {shown[:200]!r}")


class InstancesResource(Amalgam8Resource):
    """``/api/v1/instances``: register (POST), list with filters (GET)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = reading.json_body(req)
        registration = reading.registration(body, req.context.namespace, self.registry.ttl)
        instance, _ = self.registry.register(registration)
        amalgam8_id = mapping.shown_id(instance)
        links = mapping.links(req.prefix, amalgam8_id)
        resp.status = falcon.HTTP_201  # a re-registration too: the Go client wants 201
        resp.set_header("Location", links["self"])
        resp.media = {"id": amalgam8_id, "ttl": instance.ttl, "links": links}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        wanted = reading.criteria(req)
        namespace = req.context.namespace
        name = wanted.service_name
        if name is None:
            found = self.registry.everything(namespace)
        elif name.strip() and len(name) <= MAX_LENGTHS["service_name"]:
            found = self.registry.instances(namespace, name, InstanceFilter(statuses=None))
        else:
            found = []  # no instance can have that name
        found = InstanceFilter(tags=wanted.tags, statuses=wanted.statuses).apply(found)
        if wanted.instance_id is not None:
            found = [i for i in found if mapping.shown_id(i) == wanted.instance_id]
        resp.media = {"instances": [mapping.instance_view(i, wanted.fields) for i in found]}


class InstanceResource(Amalgam8Resource):
    """``/api/v1/instances/{id}``: deregister (DELETE; 410 for an unknown id)."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, amalgam8_id: str) -> None:
        reading.require_json(req)
        instance = self._instance(req, amalgam8_id, "Failed to deregister instance")
        try:
            self.registry.deregister(instance.key)
        except NotFound as exc:  # gone meanwhile (expired, or deleted by another caller)
            raise falcon.HTTPGone(description=f"Failed to deregister instance: {exc}") from exc
        resp.status = falcon.HTTP_200


class HeartbeatResource(Amalgam8Resource):
    """``/api/v1/instances/{id}/heartbeat``: renew the lease (PUT; 410 for an unknown id)."""

    def on_put(self, req: falcon.Request, resp: falcon.Response, amalgam8_id: str) -> None:
        reading.require_json(req)
        instance = self._instance(req, amalgam8_id, "Failed to renew instance registration")
        if self.registry.renew(instance.key) is None:  # expired meanwhile
            raise falcon.HTTPGone(
                description="Failed to renew instance registration: the instance expired"
            )
        resp.status = falcon.HTTP_200


class ServicesResource(Amalgam8Resource):
    """``/api/v1/services``: the names of the services with a live instance (any status)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        summaries = self.registry.services(req.context.namespace)
        resp.media = {"services": [summary.service_name for summary in summaries]}


class ServiceResource(Amalgam8Resource):
    """``/api/v1/services/{name}``: its live instances, every status; 404 when none."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, service_name: str) -> None:
        name = segment(req, service_name, "service_name")
        found: list[Instance] = []
        if name.strip() and len(name) <= MAX_LENGTHS["service_name"]:
            found = self.registry.instances(
                req.context.namespace, name, InstanceFilter(statuses=None)
            )
        if not found:
            raise NotFound(f"Service name not found: {name[:200]!r} has no live instance")
        resp.media = {
            "service_name": name,
            "instances": [mapping.instance_view(i) for i in found],
        }
