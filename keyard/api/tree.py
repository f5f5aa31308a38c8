"""What the mounting table (:mod:`keyard.api`) asks of each tree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import falcon

from keyard.registry import Registry


class Tree(Protocol):
    """One API: its path prefixes, its routes, its middleware and its error body.

    A path belongs to the tree when it is one of :attr:`prefixes` or starts with one
    and a ``/`` (``/eureka`` holds ``/eureka/v2/apps``); no two trees share a prefix.
    """

    prefixes: Sequence[str]
    middleware: Sequence[Any]

    def mount(self, app: falcon.App, registry: Registry) -> None:
        """Add the tree's routes, each under one of :attr:`prefixes`."""
        ...

    def serialize_error(
        self, req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError
    ) -> None:
        """Write ``ex`` as this API writes its errors."""
        ...


def error_description(req: falcon.Request, ex: falcon.HTTPError, served: str) -> str | None:
    """What ``ex`` says went wrong, or, for falcon's own 404 and 405 (which say nothing),
    what is served instead (``served``: the tree's routes) and which methods are allowed;
    ``None`` for another error without a description."""
    if ex.description:
        return str(ex.description)
    shown = req.path if len(req.path) <= 200 else f"{req.path[:200]}..."
    if ex.status == falcon.HTTP_404:
        return f"nothing is served at {shown!r}; {served}"
    if ex.status == falcon.HTTP_405:
        allowed = dict(ex.headers or {}).get("Allow", "")
        return f"{req.method} is not allowed on {shown!r}; use {allowed}"
    return None
