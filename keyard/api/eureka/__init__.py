"""Netflix Eureka's REST API, at ``/eureka`` and ``/eureka/v2`` (one registry, both roots).

For Eureka's clients unchanged (py-eureka-client, Netflix's and Spring Cloud's Java
clients). Answers are XStream's XML, or Jackson's JSON when the Accept header
mentions json (:mod:`~keyard.api.eureka.codec`); how InstanceInfo maps onto keyard's
records: :mod:`~keyard.api.eureka.mapping`. ``ROOT`` is ``/eureka`` or
``/eureka/v2``; a trailing slash is optional (dropped before routing).

================================================  ================================
route                                             methods
================================================  ================================
``ROOT/apps``                                     GET: every instance, Applications
``ROOT/apps/delta``                               GET: the recent changes
``ROOT/apps/{app}``                               GET; POST registers (204)
``ROOT/apps/{app}/{instance_id}``                 GET; PUT heartbeat; DELETE cancel
``ROOT/apps/{app}/{instance_id}/status``          PUT ``?value=`` override; DELETE
``ROOT/apps/{app}/{instance_id}/metadata``        PUT ``?key=value`` merges metadata
``ROOT/instances/{instance_id}``                  GET
``ROOT/vips/{vip}``, ``ROOT/svips/{vip}``         GET: instances of a (secure) VIP
================================================  ================================

Eureka defines no error body (its server answers most errors with none). This
tree answers a status and keyard's short JSON error, ``{"title", "description"}``
saying what is wrong, except for a heartbeat (``PUT ROOT/apps/{app}/{instance_id}``):
its 404 and 400 have an empty body, because Eureka's Java clients decode a heartbeat
answer's body as an instance, and would fail instead of registering again (a 401
keeps its JSON body: the client is misconfigured, and fails either way). Every success
but the GETs' answers has an empty body (a registration is 204, the rest 200).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from keyard.api.eureka import resources
from keyard.api.tree import error_description
from keyard.registry import Registry

PREFIX = "/eureka"
#: The roots Eureka's clients are configured with (Spring's, then Netflix's).
ROOTS = (PREFIX, f"{PREFIX}/v2")


def _is_heartbeat(req: falcon.Request) -> bool:
    """Whether the request is a heartbeat: ``PUT ROOT/apps/{app}/{instance_id}``."""
    if req.method != "PUT":
        return False
    path = req.path
    for root in sorted(ROOTS, key=len, reverse=True):
        if path.startswith(root + "/apps/"):
            rest = path[len(root) + len("/apps/") :]
            return rest.count("/") == 1 and not rest.startswith("/") and not rest.endswith("/")
    return False


class EurekaTree:
    """The Eureka tree for :mod:`keyard.api`'s mounting table."""

    prefixes: Sequence[str] = (PREFIX,)
    middleware: Sequence[Any] = ()

    def mount(self, app: falcon.App, registry: Registry) -> None:
        for root in ROOTS:
            app.add_route(f"{root}/apps", resources.ApplicationsResource(registry))
            app.add_route(f"{root}/apps/{{app}}", resources.ApplicationResource(registry))
            instance = f"{root}/apps/{{app}}/{{instance_id}}"
            app.add_route(instance, resources.InstanceResource(registry))
            app.add_route(f"{instance}/status", resources.StatusResource(registry))
            app.add_route(f"{instance}/metadata", resources.MetadataResource(registry))
            app.add_route(
                f"{root}/instances/{{instance_id}}", resources.InstancesResource(registry)
            )
            app.add_route(f"{root}/vips/{{vip}}", resources.VipResource(registry, secure=False))
            app.add_route(f"{root}/svips/{{vip}}", resources.VipResource(registry, secure=True))

    def serialize_error(
        self, req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError
    ) -> None:
        """keyard's JSON error body; none for a heartbeat's errors but a 401."""
        if _is_heartbeat(req) and ex.status != falcon.HTTP_401:
            resp.content_type = None
            resp.data = b""
            return
        body = ex.to_dict()
        description = error_description(req, ex, f"Eureka's API is at {', '.join(ROOTS)}")
        if description is not None:
            body["description"] = description
        resp.content_type = falcon.MEDIA_JSON
        resp.media = body


TREE = EurekaTree()
