"""Amalgam8's registry API, at ``/api/v1``: JSON, errors as ``{"Error": "..."}``.

For Amalgam8's Go client (``registry/client``) and sidecar, as Amalgam8's registry
answers them (``registry/server/protocol/amalgam8``):

======================================  ======  =========================================
route                                   method  answer
======================================  ======  =========================================
``/api/v1/instances``                   POST    201 ``{id, ttl, links}``, ``Location``
``/api/v1/instances``                   GET     200 ``{instances}``: ``service_name``,
                                                ``status`` (``ALL``), ``tags``, ``id``,
                                                ``fields``; no criterion: UP only
``/api/v1/instances/{id}``              DELETE  200 (empty); 410 for an unknown id
``/api/v1/instances/{id}/heartbeat``    PUT     200 (empty); 410 for an unknown id
``/api/v1/services``                    GET     200 ``{services: [names]}``
``/api/v1/services/{name}``             GET     200 ``{service_name, instances}``; 404
======================================  ======  =========================================

Another method on these paths is a 405, another path under ``/api/v1`` a 404, a
body that is not ``application/json`` a 415. How the fields map onto keyard's
instance: :mod:`keyard.api.amalgam8.mapping`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from keyard.api.amalgam8 import resources
from keyard.api.tree import error_description
from keyard.registry import Registry

PREFIX = "/api/v1"


#: How go-json-rest begins its own 404 and 405 messages.
_GO_JSON_REST = {falcon.HTTP_404: "Resource not found", falcon.HTTP_405: "Method not allowed"}


class Amalgam8Tree:
    """The Amalgam8 tree for :mod:`keyard.api`'s mounting table."""

    prefixes: Sequence[str] = (PREFIX,)
    middleware: Sequence[Any] = ()

    def mount(self, app: falcon.App, registry: Registry) -> None:
        instances = f"{PREFIX}/instances"
        app.add_route(instances, resources.InstancesResource(registry))
        app.add_route(f"{instances}/{{amalgam8_id}}", resources.InstanceResource(registry))
        app.add_route(
            f"{instances}/{{amalgam8_id}}/heartbeat", resources.HeartbeatResource(registry)
        )
        app.add_route(f"{PREFIX}/services", resources.ServicesResource(registry))
        app.add_route(f"{PREFIX}/services/{{service_name}}", resources.ServiceResource(registry))

    def serialize_error(
        self, req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError
    ) -> None:
        """``{"Error": "..."}`` (go-json-rest's ``rest.Error``), whatever the Accept header."""
        message = error_description(req, ex, f"Amalgam8's API is at {PREFIX}")
        if not ex.description and ex.status in _GO_JSON_REST:
            message = f"{_GO_JSON_REST[ex.status]}: {message}"  # as go-json-rest begins them
        resp.content_type = falcon.MEDIA_JSON
        resp.media = {"Error": message or ex.title or str(ex.status)}


TREE = Amalgam8Tree()
