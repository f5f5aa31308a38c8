"""app2: answers ``World`` on ``/app2`` and keeps itself registered in keyard as ``app2``.

Environment:

- ``KEYARD_URL``: the registry (default ``http://127.0.0.1:8000``).
- ``APP2_LOCATION``: the URL app2 registers, where app1 will call it (default
  ``http://127.0.0.1:8002``, matching ``gunicorn example.app2:app -b 0.0.0.0:8002``;
  set it when binding another port or host: gunicorn does not tell the app its bind).
- ``APP2_TTL``: seconds the registration lives without a health check (default 10);
  a health check goes out about every third of it.

The registration starts when the module is imported (in each gunicorn worker)
and does not wait for the registry: app2 starts even if keyard is not up yet
and registers as soon as it is. On exit the instance is deregistered; if app2
dies without exiting cleanly, the registry forgets it after ``APP2_TTL``.
"""

from __future__ import annotations

import atexit
import os

import falcon

from keyard.client import Heartbeat, KeyardClient

KEYARD_URL = os.environ.get("KEYARD_URL", "http://127.0.0.1:8000")
LOCATION = os.environ.get("APP2_LOCATION", "http://127.0.0.1:8002")
TTL = int(os.environ.get("APP2_TTL", "10"))


class App2:
    """``GET /app2`` -> ``World``, with an ``X-Served-By`` header naming this instance."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "World"
        resp.set_header("X-Served-By", LOCATION)


def create_app() -> falcon.App:
    """The app, with its heartbeat started (registration in the background)."""
    heartbeat = Heartbeat(KeyardClient(KEYARD_URL, timeout=2), "app2", LOCATION, ttl=TTL)
    heartbeat.start(block=False)
    atexit.register(heartbeat.stop)
    application = falcon.App()
    application.add_route("/app2", App2())
    return application


app = create_app()
