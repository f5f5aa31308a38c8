"""The Eureka tree's resources: read the request, call the registry, write the answer.

Every route reads and writes only the caller's namespace. An app matches every
service of the namespace whose name upper-cased is the app upper-cased; a
registration writes the service ``app.lower()``, and a heartbeat renews only
there (a heartbeat for an instance registered natively under another case is a
404, and the Eureka client registers it again, lower-cased).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import falcon

from keyard.api.eureka import codec, mapping
from keyard.api.paths import segment
from keyard.api.request_fields import read_fields
from keyard.errors import InvalidInput, NotFound
from keyard.model import STATUSES, Instance, InstanceFilter, InstanceKey
from keyard.registry import Registry

#: Every status: Eureka shows instances whatever their status.
ANY_STATUS = InstanceFilter(statuses=None)


class EurekaResource:
    """Base of the Eureka tree's resources."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def app_instances(self, namespace: str, app: str) -> list[Instance]:
        """Every live instance of the services that show as ``app``."""
        found: list[Instance] = []
        for summary in self.registry.services(namespace):
            if mapping.app_name(summary.service_name) == app:
                found.extend(self.registry.instances(namespace, summary.service_name, ANY_STATUS))
        return found

    def find(self, namespace: str, app: str, instance_id: str) -> Instance:
        """The live instance ``instance_id`` of ``app``; NotFound when there is none.

        First in the service a Eureka registration writes (one read), then in every
        service that shows as ``app``.
        """
        key = InstanceKey(namespace, mapping.service_name(app), instance_id)
        found = self.registry.find(key)
        if found is not None:
            return found
        for instance in self.app_instances(namespace, app):
            if instance.instance_id == instance_id:
                return instance
        raise NotFound(f"no live instance {instance_id!r} of app {app!r}")

    def applications(
        self, req: falcon.Request, resp: falcon.Response, wanted: Callable[[Instance], bool]
    ) -> None:
        """Answer the namespace's instances that ``wanted(instance)`` keeps, as Applications."""
        namespace = req.context.namespace
        index = self.registry.change_index(namespace, None)
        found = [i for i in self.registry.everything(namespace) if wanted(i)]
        infos = [(i, mapping.instance_info(i)) for i in found]
        codec.answer(req, resp, "applications", _applications(infos, index, found))


def _app(req: falcon.Request, app: str) -> str:
    name = segment(req, app, "app").strip().upper()
    if not name:
        raise InvalidInput("the app name in the path is empty")
    return name


def _id(req: falcon.Request, instance_id: str) -> str:
    return segment(req, instance_id, "instance id")


def _applications(
    infos: Iterable[tuple[Instance, dict[str, Any]]], index: int | None, counted: list[Instance]
) -> dict[str, Any]:
    """Eureka's Applications: grouped by app, sorted by name, with its hashcode and index."""
    by_app: dict[str, list[dict[str, Any]]] = {}
    for instance, info in infos:
        by_app.setdefault(mapping.app_name(instance.service_name), []).append(info)
    return {
        "versions__delta": str(index if index is not None else 1),
        "apps__hashcode": mapping.hashcode(counted),
        "application": [{"name": name, "instance": by_app[name]} for name in sorted(by_app)],
    }


def _status_field(given: dict[str, object], name: str) -> str | None:
    value = given.get(name)
    if value is None:
        return None
    return mapping.check_status(str(value), name)


def _timestamp_field(given: dict[str, object], name: str = "lastDirtyTimestamp") -> int | None:
    value = given.get(name)
    if value is None or value == "":
        return None
    return mapping.timestamp(str(value), name)


class ApplicationsResource(EurekaResource):
    """``apps``: every instance of the namespace (any status), as Applications."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        read_fields(req)  # regions= and the like are accepted and ignored
        self.applications(req, resp, lambda instance: True)

    on_head = on_get


class ApplicationResource(EurekaResource):
    """``apps/{app}``: register (POST), and the app's instances (GET; 404 when none).

    ``GET apps/delta`` is the delta, as in Eureka (so an app named DELTA registers, and
    its instances are found, but it cannot be read as a whole).
    """

    def on_get(self, req: falcon.Request, resp: falcon.Response, app: str) -> None:
        read_fields(req)
        name = _app(req, app)
        if name == "DELTA":
            self.delta(req, resp)
            return
        found = self.app_instances(req.context.namespace, name)
        if not found:
            raise NotFound(f"no live instance of app {name!r}")
        body = {"name": name, "instance": [mapping.instance_info(i) for i in found]}
        codec.answer(req, resp, "application", body)

    on_head = on_get

    def delta(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``apps/delta``: the instances changed in the change log's window (at least 3
        minutes), each with its last change's action (:func:`mapping.delta_actions`), and
        the whole namespace's hashcode. A store that keeps no change log answers every
        instance as ``ADDED``.
        """
        namespace = req.context.namespace
        index = self.registry.change_index(namespace, None)
        if index is None:
            self.applications(req, resp, lambda instance: True)
            return
        changed = mapping.delta_actions(self.registry.recent_changes(namespace))
        everything = self.registry.everything(namespace)
        infos = [(i, mapping.instance_info(i, action)) for i, action in changed]
        codec.answer(req, resp, "applications", _applications(infos, index, everything))

    def on_post(self, req: falcon.Request, resp: falcon.Response, app: str) -> None:
        """Register the body's InstanceInfo: 204, no body (as Eureka).

        As Eureka, a registration older than the registered instance (its
        ``lastDirtyTimestamp`` is below the registered one's) only renews the lease.
        """
        info = codec.read_instance(req)
        asked = mapping.registration(info, _app(req, app), req.context.namespace, self.registry.ttl)
        registration = asked.registration
        key = InstanceKey(
            registration.namespace, registration.service_name, str(registration.instance_id)
        )
        live = self.registry.find(key)
        if live is not None and mapping.older_than(registration, live):
            self.registry.renew(key)
        else:
            instance, _ = self.registry.register(registration)
            if asked.override is not None and instance.status_override is None:
                self.registry.set_status_override(instance.key, asked.override)
        resp.status = falcon.HTTP_204


class InstanceResource(EurekaResource):
    """``apps/{app}/{instance_id}``: the instance (GET), its heartbeat (PUT), cancel (DELETE).

    A heartbeat answers 200, or 404 when the instance is unknown or its client's
    ``lastDirtyTimestamp`` is newer than the one registered (the client then
    registers again); both with an empty body, which Eureka's Java clients need.
    """

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, app: str, instance_id: str
    ) -> None:
        read_fields(req)
        found = self.find(req.context.namespace, _app(req, app), _id(req, instance_id))
        codec.answer(req, resp, "instance", mapping.instance_info(found))

    on_head = on_get

    def on_put(
        self, req: falcon.Request, resp: falcon.Response, app: str, instance_id: str
    ) -> None:
        given = read_fields(req)
        _status_field(given, "status")
        _status_field(given, "overriddenstatus")
        sent = _timestamp_field(given)
        key = InstanceKey(
            req.context.namespace, mapping.service_name(_app(req, app)), _id(req, instance_id)
        )
        renewed = self.registry.renew(key)
        if renewed is None:
            raise NotFound(f"no live instance {key.instance_id!r} of app {_app(req, app)!r}")
        registered = mapping.last_dirty_timestamp(renewed.metadata)
        if sent is not None and registered is not None and sent > registered:
            raise falcon.HTTPNotFound(
                title="Not found", description="the client's instance is newer: register it again"
            )
        resp.status = falcon.HTTP_200

    def on_delete(
        self, req: falcon.Request, resp: falcon.Response, app: str, instance_id: str
    ) -> None:
        read_fields(req)
        found = self.find(req.context.namespace, _app(req, app), _id(req, instance_id))
        self.registry.deregister(found.key)
        resp.status = falcon.HTTP_200


class StatusResource(EurekaResource):
    """``apps/{app}/{instance_id}/status``: the override (PUT ``?value=``, DELETE)."""

    def on_put(
        self, req: falcon.Request, resp: falcon.Response, app: str, instance_id: str
    ) -> None:
        given = read_fields(req)
        _timestamp_field(given)
        if given.get("value") is None:
            raise InvalidInput(f"value is required: one of {', '.join(STATUSES)}")
        status = _status_field(given, "value")
        if status is None:
            raise InvalidInput("value UNKNOWN is no override: DELETE .../status removes one")
        found = self.find(req.context.namespace, _app(req, app), _id(req, instance_id))
        self.registry.set_status_override(found.key, status)
        resp.status = falcon.HTTP_200

    def on_delete(
        self, req: falcon.Request, resp: falcon.Response, app: str, instance_id: str
    ) -> None:
        given = read_fields(req)
        _timestamp_field(given)
        _status_field(given, "value")
        found = self.find(req.context.namespace, _app(req, app), _id(req, instance_id))
        self.registry.clear_status_override(found.key)
        resp.status = falcon.HTTP_200


class MetadataResource(EurekaResource):
    """``apps/{app}/{instance_id}/metadata?k=v``: merge the query's entries into metadata."""

    def on_put(
        self, req: falcon.Request, resp: falcon.Response, app: str, instance_id: str
    ) -> None:
        given = mapping.user_metadata_of(read_fields(req))
        found = self.find(req.context.namespace, _app(req, app), _id(req, instance_id))
        self.registry.merge_metadata(found.key, given)
        resp.status = falcon.HTTP_200


class InstancesResource(EurekaResource):
    """``instances/{instance_id}``: the first live instance of that id, in any app."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, instance_id: str) -> None:
        read_fields(req)
        wanted = _id(req, instance_id)
        for instance in self.registry.everything(req.context.namespace):
            if instance.instance_id == wanted:
                codec.answer(req, resp, "instance", mapping.instance_info(instance))
                return
        raise NotFound(f"no live instance {wanted!r}")

    on_head = on_get


class VipResource(EurekaResource):
    """``vips/{vip}`` or ``svips/{vip}``: the instances with that (secure) VIP address,
    in any case, as Applications (200 with no application when none has it)."""

    def __init__(self, registry: Registry, *, secure: bool) -> None:
        super().__init__(registry)
        self.secure = secure

    def on_get(self, req: falcon.Request, resp: falcon.Response, vip: str) -> None:
        read_fields(req)
        wanted = segment(req, vip, "vip address")
        self.applications(
            req, resp, lambda instance: mapping.has_vip(instance, wanted, secure=self.secure)
        )

    on_head = on_get
