"""lyft's discovery API (what Envoy's v1 SDS reads), at ``/v1/registration``,
``/v1/loadbalancing`` and ``/healthcheck``: form posts in, JSON out, errors as
``{"error": "..."}``.

============================================  ======  ===========================================
route                                         method  answer
============================================  ======  ===========================================
``/v1/registration/{service}``                GET     ``{"env", "hosts", "service"}`` (SDS)
``/v1/registration/{service}``                POST    register or heartbeat: 200 ``{}``
``/v1/registration/{service}/{ip_address}``   DELETE  200 ``{}``; 400 for an unknown host
``/v1/registration/repo/{service_repo_name}`` GET     ``{"env", "hosts", "service_repo_name"}``
``/v1/loadbalancing/{service}/{ip_address}``  POST    one host's weight: 204; 404 unknown host
``/v1/loadbalancing/{service}``               POST    every host's weight: 204
``/healthcheck``                              GET     200 ``OK``
============================================  ======  ===========================================

How a keyard instance is a lyft host: :mod:`keyard.api.lyft.hosts`; how the form is
read: :mod:`keyard.api.lyft.fields`. ``env`` is the caller's namespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from keyard.api.lyft import resources
from keyard.api.tree import error_description
from keyard.registry import Registry

REGISTRATION, LOADBALANCING, HEALTHCHECK = "/v1/registration", "/v1/loadbalancing", "/healthcheck"

_ROUTES = (
    "GET, POST /v1/registration/{service}, DELETE /v1/registration/{service}/{ip_address}, "
    "GET /v1/registration/repo/{service_repo_name}, POST /v1/loadbalancing/{service}[/{ip}], "
    "GET /healthcheck"
)


class LyftTree:
    """The lyft discovery tree for :mod:`keyard.api`'s mounting table."""

    prefixes: Sequence[str] = (REGISTRATION, LOADBALANCING, HEALTHCHECK)
    middleware: Sequence[Any] = ()

    def mount(self, app: falcon.App, registry: Registry) -> None:
        app.add_route(f"{REGISTRATION}/{{service}}", resources.RegistrationResource(registry))
        app.add_route(
            f"{REGISTRATION}/{{service}}/{{ip_address}}", resources.HostResource(registry)
        )
        app.add_route(
            f"{REGISTRATION}/repo/{{service_repo_name}}", resources.RepoResource(registry)
        )
        app.add_route(f"{LOADBALANCING}/{{service}}", resources.ServiceWeightResource(registry))
        app.add_route(
            f"{LOADBALANCING}/{{service}}/{{ip_address}}", resources.HostWeightResource(registry)
        )
        app.add_route(HEALTHCHECK, resources.HealthcheckResource())

    def serialize_error(
        self, req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError
    ) -> None:
        """``{"error": "..."}`` (lyft's error body), whatever the request's Accept said."""
        message = error_description(req, ex, f"lyft discovery serves {_ROUTES}")
        resp.content_type = falcon.MEDIA_JSON
        resp.media = {"error": message or ex.title or str(ex.status)}


TREE = LyftTree()
