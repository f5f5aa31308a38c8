"""The native tree's resources: read the request, call the registry, write the answer."""

from __future__ import annotations

import functools
from typing import NamedTuple

import falcon

from keyard.answers import BODY_KEY, READING_KEY, Answers
from keyard.api.native import codec, fields
from keyard.api.paths import segment
from keyard.api.request_fields import has_no_body, read_fields
from keyard.balancing import Chooser
from keyard.errors import NotFound
from keyard.model import DEFAULT_VERSION, InstanceKey
from keyard.registry import Registry, no_instance_message


class NativeResource:
    """Base of the native tree's resources (its middleware recognises them by it)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @property
    def ttl_bounds(self) -> str:
        return f"between {self.registry.ttl.minimum} and {self.registry.ttl.maximum}"


class _Choice(NamedTuple):
    """A kept lookup for a load-balancing choice: the strategy's picker and each answer."""

    pick: Chooser
    answers: dict[str, bytes]  # instance_id -> the answer that names it


class KeyardResource(NativeResource):
    """``/keyard``: register (POST), health-check (PUT), deregister (DELETE), look up (GET).

    A lookup's answer is kept (:class:`keyard.answers.Answers`) under the namespace
    and the query string, so a repeated lookup reads no field and no store.
    """

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self.answers: Answers[bytes | _Choice] = Answers(registry)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = None
        if has_no_body(req):
            key = (req.context.namespace, req.query_string)
            kept = self.answers.get(key)
            if kept is not None:
                resp.data = kept if isinstance(kept, bytes) else _chosen(kept)
                return
        given = read_fields(req)
        fields.reject_unknown(given, fields.LOOKUP_FIELDS)
        service_name = fields.text(given, "service_name")
        where = fields.instance_filter(given, default_statuses=frozenset({"UP"}))
        namespace = req.context.namespace
        reading = self.registry.read(namespace, service_name, where)
        if "load_balancer_strategy" in given:
            strategy = self.registry.strategy(fields.text(given, "load_balancer_strategy"))
            if not reading.instances:
                raise NotFound(no_instance_message(service_name, where))
            choice = _Choice(
                strategy.chooser(reading.instances, (namespace, service_name, where)),
                {i.instance_id: codec.encode({"result": i.location}) for i in reading.instances},
            )
            if key is not None:
                self.answers.keep(key, reading, choice)
                req.env[READING_KEY] = reading
                req.env[BODY_KEY] = functools.partial(_chosen, choice)
            resp.data = _chosen(choice)
        else:
            answer = codec.encode({"result": [i.location for i in reading.instances]})
            if key is not None:
                self.answers.keep(key, reading, answer)
                req.env[READING_KEY] = reading
            resp.data = answer

    # HEAD is GET without the body (RFC 9110 9.3.2: every server supports both);
    # falcon drops the body and keeps the status and headers, Content-Length included.
    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        registration, full = fields.registration(
            read_fields(req), req.context.namespace, self.ttl_bounds
        )
        instance, created = self.registry.register(registration)
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.media = codec.record_view(instance) if full else codec.short_view(instance)

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        registration, full = fields.registration(
            read_fields(req), req.context.namespace, self.ttl_bounds
        )
        instance, created = self.registry.heartbeat(registration)
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.media = codec.record_view(instance) if full else codec.short_view(instance)

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = read_fields(req)
        fields.reject_unknown(given, fields.DELETE_FIELDS)
        namespace = req.context.namespace
        service_name = fields.text(given, "service_name")
        instance_id = fields.optional_text(given, "instance_id")
        if instance_id is not None:
            removed = self.registry.deregister(InstanceKey(namespace, service_name, instance_id))
            resp.media = {
                "deregistered": {
                    "service_name": removed.service_name,
                    "version": removed.version,
                    "location": removed.location,
                    "instance_id": removed.instance_id,
                }
            }
            return
        version = fields.text(given, "version", DEFAULT_VERSION)
        location = fields.text(given, "location")
        self.registry.deregister_location(namespace, service_name, version, location)
        resp.media = {
            "deregistered": {"service_name": service_name, "version": version, "location": location}
        }


#: The header that carries an answer's change index (as Consul's ``X-Consul-Index``).
INDEX_HEADER = "X-Keyard-Index"


def _answer_index(resp: falcon.Response, body: dict[str, object], index: int | None) -> None:
    """Put the change index in the header and the body (when the store keeps one)."""
    if index is not None:
        resp.set_header(INDEX_HEADER, str(index))
        body["index"] = index
    resp.media = body


class ServicesResource(NativeResource):
    """``/keyard/services``: every service with a live instance, and how many are UP.

    A blocking query with ``?index=N&wait=30s`` (see :meth:`Registry.watch_services`).
    """

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = read_fields(req)
        fields.reject_unknown(given, fields.BLOCKING_FIELDS)
        index, wait = fields.blocking(given)
        watched = self.registry.watch_services(req.context.namespace, index, wait)
        body: dict[str, object] = {
            "services": [codec.summary_view(summary) for summary in watched.services]
        }
        _answer_index(resp, body, watched.index)

    on_head = on_get


class ServiceResource(NativeResource):
    """``/keyard/services/{service_name}``: the service's live instances as full records.

    Every status by default (``status=`` narrows it, as on ``/keyard``), so that an
    operator sees the instances in maintenance too. A blocking query with
    ``?index=N&wait=30s`` (see :meth:`Registry.watch_instances`).
    """

    def on_get(self, req: falcon.Request, resp: falcon.Response, service_name: str) -> None:
        name = segment(req, service_name, "service_name")
        given = read_fields(req)
        fields.reject_unknown(given, (*fields.FILTER_FIELDS, *fields.BLOCKING_FIELDS))
        where = fields.instance_filter(given, default_statuses=None)
        index, wait = fields.blocking(given)
        watched = self.registry.watch_instances(req.context.namespace, name, where, index, wait)
        body: dict[str, object] = {
            "service_name": name,
            "instances": [codec.record_view(i) for i in watched.instances],
        }
        _answer_index(resp, body, watched.index)

    on_head = on_get


def _chosen(choice: _Choice) -> bytes:
    return choice.answers[choice.pick().instance_id]


def _key(req: falcon.Request, service_name: str, instance_id: str) -> InstanceKey:
    return InstanceKey(
        req.context.namespace,
        segment(req, service_name, "service_name"),
        segment(req, instance_id, "instance_id"),
    )


class InstanceResource(NativeResource):
    """``/keyard/services/{service_name}/instances/{instance_id}``: one record."""

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, service_name: str, instance_id: str
    ) -> None:
        fields.reject_unknown(read_fields(req), ())
        resp.media = codec.record_view(self.registry.get(_key(req, service_name, instance_id)))

    on_head = on_get

    def on_delete(
        self, req: falcon.Request, resp: falcon.Response, service_name: str, instance_id: str
    ) -> None:
        fields.reject_unknown(read_fields(req), ())
        removed = self.registry.deregister(_key(req, service_name, instance_id))
        resp.media = {"deregistered": codec.record_view(removed)}


class StatusResource(NativeResource):
    """``.../instances/{instance_id}/status``: an operator's status override (maintenance)."""

    def on_put(
        self, req: falcon.Request, resp: falcon.Response, service_name: str, instance_id: str
    ) -> None:
        given = read_fields(req)
        fields.reject_unknown(given, ("status",))
        status = fields.text(given, "status").strip().upper()
        key = _key(req, service_name, instance_id)
        resp.media = codec.record_view(self.registry.set_status_override(key, status))

    def on_delete(
        self, req: falcon.Request, resp: falcon.Response, service_name: str, instance_id: str
    ) -> None:
        fields.reject_unknown(read_fields(req), ())
        key = _key(req, service_name, instance_id)
        resp.media = codec.record_view(self.registry.clear_status_override(key))
