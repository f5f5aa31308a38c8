"""The HTTP trees keyard serves, mounted from one table: read this first.

Each tree is one API, a thin adapter onto the one :class:`~keyard.registry.Registry`:
it owns its routes, how it reads requests, its answers and its error body.

====================  =====================================================
prefix                tree
====================  =====================================================
``/keyard``           :mod:`keyard.api.native`: keyard's own API
====================  =====================================================

The Eureka, lyft discovery and Amalgam8 APIs, and the operations endpoints, are
added here as further rows. Everything that every tree needs (the caller's
namespace, raw paths, the domain errors' HTTP statuses) is applied here, so that
no route can forget it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from keyard.api import native, paths
from keyard.api.tree import Tree
from keyard.errors import InvalidInput, KeyardError, NotFound, StoreUnavailable
from keyard.model import DEFAULT_NAMESPACE
from keyard.registry import Registry

#: The mounting table: every tree keyard serves, by its path prefix.
TREES: Sequence[Tree] = (native.TREE,)


class _Namespace:
    """Sets ``req.context.namespace``: ``"default"`` until namespaces and authentication."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.namespace = DEFAULT_NAMESPACE


def middleware() -> list[Any]:
    """The app's middleware: what every tree needs, then each tree's own."""
    found: list[Any] = [paths.RawPath(), _Namespace()]
    for tree in TREES:
        found.extend(tree.middleware)
    return found


def mount(app: falcon.App, registry: Registry) -> None:
    """Add every tree's routes, the domain errors' handler and the error serializer."""
    for tree in TREES:
        tree.mount(app, registry)
    app.add_error_handler(KeyardError, _handle_keyard_error)
    app.set_error_serializer(_serialize_error)


def tree_for(path: str) -> Tree | None:
    """The tree that serves ``path``, or None."""
    for tree in TREES:
        if path == tree.prefix or path.startswith(tree.prefix + "/"):
            return tree
    return None


def _handle_keyard_error(
    req: falcon.Request, resp: falcon.Response, ex: KeyardError, params: dict[str, Any]
) -> None:
    """Map keyard's domain errors to HTTP statuses; the tree's serializer writes the body."""
    description = str(ex)
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
        served = ", ".join(tree.prefix for tree in TREES)
        body["description"] = f"nothing is served at {req.path!r}; keyard serves {served}"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = body
