"""The HTTP trees keyard serves, mounted from one table: read this first.

Each tree is one API, a thin adapter onto the one :class:`~keyard.registry.Registry`:
it owns its routes, how it reads requests, its answers and its error body.

====================  =====================================================
prefix                tree
====================  =====================================================
``/keyard``           :mod:`keyard.api.native`: keyard's own API
``/v1/registration``  :mod:`keyard.api.lyft`: lyft's discovery (Envoy v1 SDS)
``/v1/loadbalancing`` :mod:`keyard.api.lyft`: its weight updates
``/healthcheck``      :mod:`keyard.api.lyft`: its health check
``/api/v1``           :mod:`keyard.api.amalgam8`: Amalgam8's registry API
``/eureka``           :mod:`keyard.api.eureka`: Netflix Eureka's (``/eureka/apps``,
                      ``/eureka/v2/apps``)
====================  =====================================================

Another API (the operations endpoints, say) is one more row. Everything that every
tree needs is applied here,
so that no route can forget it: raw paths, ``require_https``
(:mod:`keyard.api.transport`), the caller's namespace from its bearer token or basic
credentials (:mod:`keyard.api.authentication`, before routing: every path of every tree
answers 401 without credentials that the ``auth`` mode accepts), and the domain
errors' HTTP statuses; each tree writes the error bodies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from keyard import auth
from keyard.api import amalgam8, eureka, lyft, native, paths
from keyard.api.authentication import Authenticate
from keyard.api.transport import RequireHttps, networks
from keyard.api.tree import Tree
from keyard.errors import (
    CapacityExceeded,
    Forbidden,
    InvalidInput,
    KeyardError,
    NotFound,
    StoreUnavailable,
    Unauthorized,
)
from keyard.helpers.config import Config
from keyard.registry import Registry
from keyard.stores.base import WouldWait

#: The mounting table: every tree keyard serves, by its path prefix.
TREES: Sequence[Tree] = (native.TREE, lyft.TREE, amalgam8.TREE, eureka.TREE)


def middleware(config: Config) -> list[Any]:
    """The app's middleware: what every tree needs, then each tree's own.

    Raw paths first (the error serializer picks the tree by the path), then
    ``require_https``, then authentication: ``req.context.namespace`` is the
    caller's before any tree's middleware or resource runs.
    """
    found: list[Any] = [paths.RawPath()]
    if config.require_https:
        found.append(RequireHttps(networks(config.trusted_proxies)))
    found.append(Authenticate(auth.authenticator(config.auth)))
    for tree in TREES:
        found.extend(tree.middleware)
    return found


def mount(app: falcon.App, registry: Registry) -> None:
    """Add every tree's routes, the domain errors' handler and the error serializer."""
    for tree in TREES:
        tree.mount(app, registry)
    app.add_error_handler(KeyardError, _handle_keyard_error)
    app.add_error_handler(WouldWait, _not_answered)
    app.set_error_serializer(_serialize_error)


def tree_for(path: str) -> Tree | None:
    """The tree that serves ``path``, or None."""
    for tree in TREES:
        for prefix in tree.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return tree
    return None


def _not_answered(
    req: falcon.Request, resp: falcon.Response, ex: WouldWait, params: dict[str, Any]
) -> None:
    """Out of the app: nothing was written, and the caller (``keyard serve``'s front,
    which tried the request on its event loop) answers it again in a thread."""
    raise ex


def _handle_keyard_error(
    req: falcon.Request, resp: falcon.Response, ex: KeyardError, params: dict[str, Any]
) -> None:
    """Map keyard's domain errors to HTTP statuses; the tree's serializer writes the body."""
    description = str(ex)
    if isinstance(ex, Unauthorized):
        challenge = 'Bearer realm="keyard"'
        if req.env.get("HTTP_AUTHORIZATION") is not None:
            challenge += ', error="invalid_token"'
        raise falcon.HTTPUnauthorized(
            title="Unauthorized", description=description, challenges=[challenge]
        )
    if isinstance(ex, CapacityExceeded):
        raise falcon.HTTPForbidden(title="Namespace full", description=description)
    if isinstance(ex, Forbidden):
        raise falcon.HTTPForbidden(title="Forbidden", description=description)
    if isinstance(ex, InvalidInput):
        raise falcon.HTTPBadRequest(title="Invalid input", description=description)
    if isinstance(ex, NotFound):
        raise falcon.HTTPNotFound(title="Not found", description=description)
    if isinstance(ex, StoreUnavailable):
        native.log.warning("store unavailable: %s", ex)
        raise falcon.HTTPServiceUnavailable(
            title="Store unavailable", description=description, retry_after=1
        )
    raise ex


def _serialize_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    """Each tree writes its own error body; a path no tree serves gets a JSON one."""
    tree = tree_for(req.path)
    if tree is not None:
        tree.serialize_error(req, resp, ex)
        return
    body = ex.to_dict()
    if ex.status == falcon.HTTP_404 and "description" not in body:
        served = ", ".join(prefix for tree in TREES for prefix in tree.prefixes)
        body["description"] = f"nothing is served at {req.path!r}; keyard serves {served}"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = body
