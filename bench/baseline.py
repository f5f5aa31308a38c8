"""The baseline: a bare falcon app that answers ``/keyard`` with constant JSON bodies.

It is served by gunicorn with the same settings as keyard, and its bodies are
keyard's own answers, byte for byte (``BENCH_BODIES``: a JSON object with ``get``,
``choose`` and ``put``), so that the two differ only by keyard's own work.
"""

from __future__ import annotations

import json
import os

import falcon


class ConstantResource:
    """GET answers the lookup (or choice) body, PUT the health-check body."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        chosen = "load_balancer_strategy" in req.query_string
        resp.data = self.bodies["choose" if chosen else "get"]

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.bodies["put"]


def make_app(bodies: dict[str, bytes]) -> falcon.App:
    """The bare app answering ``bodies`` (``get``, ``choose``, ``put``); the in-process
    bench calls it directly."""
    bare = falcon.App()
    bare.add_route("/keyard", ConstantResource(bodies))
    return bare


app = make_app(
    {
        name: body.encode("utf-8")
        for name, body in json.loads(os.environ.get("BENCH_BODIES", "{}")).items()
    }
)
