"""What the mounting table (:mod:`keyard.api`) asks of each tree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import falcon

from keyard.registry import Registry


class Tree(Protocol):
    """One API: a path prefix, its routes, its middleware and its error body."""

    prefix: str
    middleware: Sequence[Any]

    def mount(self, app: falcon.App, registry: Registry) -> None:
        """Add the tree's routes, each under :attr:`prefix`."""
        ...

    def serialize_error(
        self, req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError
    ) -> None:
        """Write ``ex`` as this API writes its errors."""
        ...
