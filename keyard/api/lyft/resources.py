"""The lyft tree's resources: read the form, call the registry, answer as lyft does."""

from __future__ import annotations

import falcon

from keyard.api.lyft import fields, hosts
from keyard.api.paths import segment
from keyard.api.request_fields import read_fields
from keyard.errors import InvalidInput, NotFound
from keyard.model import DEFAULT_VERSION, Instance, InstanceFilter, InstanceKey, Registration
from keyard.registry import Registry

#: Every live instance, whatever its status (what a delete or a weight update acts on).
EVERY_STATUS = InstanceFilter(statuses=None)


class LyftResource:
    """Base of the lyft tree's resources."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _at_ip(self, namespace: str, service: str, ip: str) -> list[Instance]:
        """The service's live instances of the host ``ip``: the one lyft registered (its id
        is the IP) and any other whose location is at that IP (registered natively)."""
        return [
            instance
            for instance in self.registry.instances(namespace, service, EVERY_STATUS)
            if instance.instance_id == ip or hosts.ip_of(instance) == ip
        ]


def _service(req: falcon.Request, service: str) -> str:
    return fields.service(segment(req, service, "service"))


class RegistrationResource(LyftResource):
    """``/v1/registration/{service}``: the SDS answer (GET), register or heartbeat (POST)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        name = _service(req, service)
        found = self.registry.instances(req.context.namespace, name)
        resp.media = {
            "env": req.context.namespace,
            "hosts": hosts.host_views(found),
            "service": name,
        }

    def on_post(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        """200 ``{}`` for a first registration and for every one after it (the heartbeat)."""
        name = _service(req, service)
        given = read_fields(req)
        ip = fields.caller_ip(given, req.get_header("X-Forwarded-For"), req.remote_addr)
        port = fields.whole_number(given, "port", 1, 65535)
        if port is None:
            raise InvalidInput("port is required: a whole number from 1 to 65535")
        tags = fields.tags(given)
        repo = fields.repo(given)
        namespace = req.context.namespace
        try:
            stored = self.registry.get(InstanceKey(namespace, name, ip)).metadata
        except NotFound:
            stored = {}
        self.registry.register(
            Registration(
                namespace=namespace,
                service_name=name,
                version=fields.revision(given) or DEFAULT_VERSION,
                location=hosts.location_of(ip, port),
                instance_id=ip,
                metadata=fields.merged_metadata(stored, tags.metadata, repo),
                weight=tags.weight,
            )
        )
        resp.media = {}


class HostResource(LyftResource):
    """``/v1/registration/{service}/{ip_address}``: deregister the host (DELETE)."""

    def on_delete(
        self, req: falcon.Request, resp: falcon.Response, service: str, ip_address: str
    ) -> None:
        """200 ``{}``; 400 when no live instance of the service is at that IP (as lyft)."""
        name = _service(req, service)
        ip = fields.ip_address(segment(req, ip_address, "ip_address"), "ip_address")
        removed = 0
        for instance in self._at_ip(req.context.namespace, name, ip):
            try:
                self.registry.deregister(instance.key)
                removed += 1
            except NotFound:  # gone meanwhile
                continue
        if not removed:
            raise falcon.HTTPBadRequest(
                title="Unknown host",
                description=f"no host {ip} is registered for service {name!r}",
            )
        resp.media = {}


class RepoResource(LyftResource):
    """``/v1/registration/repo/{service_repo_name}``: the hosts of every service of a repo."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, service_repo_name: str) -> None:
        repo = fields.bounded(
            "service_repo_name",
            segment(req, service_repo_name, "service_repo_name"),
            fields.MAX_METADATA_VALUE_LENGTH,
        )
        namespace = req.context.namespace
        found = [
            instance
            for instance in self.registry.everything(namespace)
            if instance.metadata.get(hosts.REPO_KEY) == repo
        ]
        resp.media = {
            "env": namespace,
            "hosts": hosts.host_views(found),
            "service_repo_name": repo,
        }


def _lyft_weight(req: falcon.Request) -> int:
    weight = fields.whole_number(read_fields(req), hosts.WEIGHT_TAG, 1, 100)
    if weight is None:
        raise InvalidInput("load_balancing_weight is required: a whole number from 1 to 100")
    return hosts.keyard_weight(weight)


class ServiceWeightResource(LyftResource):
    """``/v1/loadbalancing/{service}``: the weight of every live instance of the service."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        """204, also when the service has no live instance (as lyft)."""
        name = _service(req, service)
        weight = _lyft_weight(req)
        for instance in self.registry.instances(req.context.namespace, name, EVERY_STATUS):
            try:
                self.registry.set_weight(instance.key, weight)
            except NotFound:  # gone meanwhile
                continue
        resp.status = falcon.HTTP_204


class HostWeightResource(LyftResource):
    """``/v1/loadbalancing/{service}/{ip_address}``: the weight of one host."""

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, service: str, ip_address: str
    ) -> None:
        """204; 404 when no live instance of the service is at that IP (as lyft)."""
        name = _service(req, service)
        ip = fields.ip_address(segment(req, ip_address, "ip_address"), "ip_address")
        weight = _lyft_weight(req)
        updated = 0
        for instance in self._at_ip(req.context.namespace, name, ip):
            try:
                self.registry.set_weight(instance.key, weight)
                updated += 1
            except NotFound:
                continue
        if not updated:
            raise falcon.HTTPNotFound(
                title="Host not found",
                description=f"Host not found: no host {ip} is registered for service {name!r}",
            )
        resp.status = falcon.HTTP_204


class HealthcheckResource:
    """``/healthcheck``: 200 ``OK`` while the process answers (lyft's; the store is not asked)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "OK"

    on_head = on_get
