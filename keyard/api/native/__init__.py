"""keyard's own API, at ``/keyard``: JSON only, errors as ``{"title", "description"}``.

=====================================================================  =====================
route                                                                  resource
=====================================================================  =====================
``/keyard``                                                            register, look up
``/keyard/services``                                                   every service
``/keyard/services/{service_name}``                                    its instances
``/keyard/services/{service_name}/instances/{instance_id}``            one instance
``/keyard/services/{service_name}/instances/{instance_id}/status``     its status override
=====================================================================  =====================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import falcon

from keyard.api.native import resources
from keyard.api.tree import error_description
from keyard.registry import Registry

log = logging.getLogger("keyard")

PREFIX = "/keyard"


#: Accept headers that surely accept JSON (or no Accept header at all).
_ACCEPTS_JSON = frozenset({None, "*/*", "application/json"})


class _RequireJsonAccept:
    """406 for a request whose Accept header excludes JSON (this tree only speaks JSON)."""

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]
    ) -> None:
        accept = req.env.get("HTTP_ACCEPT")
        if accept in _ACCEPTS_JSON:
            return  # most requests: no parsing of the header
        if isinstance(resource, resources.NativeResource) and not req.client_accepts_json:
            raise falcon.HTTPNotAcceptable(
                title="Not acceptable",
                description=f"keyard answers in application/json; Accept was {req.accept!r}",
            )


class _OptionsAnswer:
    """``OPTIONS`` answers 204 with every method in ``Allow``, OPTIONS included.

    204 (No Content) rather than falcon's 200: an answer without a body then carries
    no Content-Type either.
    """

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        if req.method != "OPTIONS" or not isinstance(resource, resources.NativeResource):
            return
        if resp.status_code == 200:
            allowed = [m.strip() for m in (resp.get_header("Allow") or "").split(",") if m.strip()]
            if "OPTIONS" not in allowed:
                allowed.append("OPTIONS")
            resp.set_header("Allow", ", ".join(allowed))
            resp.status = falcon.HTTP_204
            resp.text = None
            resp.data = None


class NativeTree:
    """The native tree for :mod:`keyard.api`'s mounting table."""

    prefixes: Sequence[str] = (PREFIX,)
    middleware: Sequence[Any] = (_RequireJsonAccept(), _OptionsAnswer())

    def mount(self, app: falcon.App, registry: Registry) -> None:
        base = PREFIX
        app.add_route(base, resources.KeyardResource(registry))
        app.add_route(f"{base}/services", resources.ServicesResource(registry))
        app.add_route(f"{base}/services/{{service_name}}", resources.ServiceResource(registry))
        instance = f"{base}/services/{{service_name}}/instances/{{instance_id}}"
        app.add_route(instance, resources.InstanceResource(registry))
        app.add_route(f"{instance}/status", resources.StatusResource(registry))

    def serialize_error(
        self, req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError
    ) -> None:
        """Every error is JSON, whatever the request's Accept header said."""
        body = ex.to_dict()
        description = error_description(req, ex, "keyard's own API is at /keyard")
        if description is not None:
            body["description"] = description
        resp.content_type = falcon.MEDIA_JSON
        resp.media = body


TREE = NativeTree()
