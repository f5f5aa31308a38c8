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

Errors are a status and a short ``text/plain`` body that says what is wrong,
except a heartbeat's (``PUT ROOT/apps/{app}/{instance_id}``), whose body is
empty: Eureka's Java clients decode any heartbeat answer's body as an instance.
Every success but the registration's 204 and the GETs' answers has an empty body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from keyard.api.eureka import resources
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
        """A short text body naming what is wrong; a heartbeat's errors have none."""
        if _is_heartbeat(req):
            resp.content_type = None
            resp.data = b""
            return
        text = ex.description or ex.title or str(ex.status)
        if ex.status == falcon.HTTP_404 and ex.description is None:
            text = f"nothing is served at {req.path!r}; the Eureka API is under {', '.join(ROOTS)}"
        elif ex.status == falcon.HTTP_405 and ex.description is None:
            allowed = dict(ex.headers or {}).get("Allow", "")
            text = f"{req.method} is not allowed on {req.path!r}; use {allowed}"
        resp.content_type = falcon.MEDIA_TEXT
        resp.data = (text + "\n").encode("utf-8")


TREE = EurekaTree()
