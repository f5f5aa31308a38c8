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
