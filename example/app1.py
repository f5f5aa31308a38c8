"""app1: ``GET /app1`` finds app2 through keyard and answers ``Hello `` + app2's answer.

Environment:

- ``KEYARD_URL``: the registry (default ``http://127.0.0.1:8000``).
- ``APP1_TIMEOUT``: seconds to wait for keyard and for app2 (default 2).

app1 asks keyard for one app2 location with ``load_balancer_strategy=random``,
so its calls spread over every live app2. When no app2 is registered, or the
one chosen does not answer in time, app1 answers ``503`` with a JSON
``{"title": "app2 unavailable", "description": ...}``, never hangs. The
``X-Served-By`` header says which app2 answered.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import falcon

from keyard.client import KeyardClient, KeyardError, NotFound

KEYARD_URL = os.environ.get("KEYARD_URL", "http://127.0.0.1:8000")
TIMEOUT = float(os.environ.get("APP1_TIMEOUT", "2"))


def _unavailable(description: str) -> falcon.HTTPServiceUnavailable:
    return falcon.HTTPServiceUnavailable(title="app2 unavailable", description=description)


class App1:
    """``GET /app1`` -> ``Hello World``; 503 when no app2 can answer."""

    def __init__(self, keyard: KeyardClient, timeout: float) -> None:
        self.keyard = keyard
        self.timeout = timeout

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            location = self.keyard.choose("app2", strategy="random")
        except NotFound as exc:
            raise _unavailable("no live instance of app2 is registered in keyard") from exc
        except KeyardError as exc:
            raise _unavailable(f"cannot look app2 up in keyard: {exc}") from exc
        base = location if "://" in location else f"http://{location}"
        try:
            with urllib.request.urlopen(f"{base}/app2", timeout=self.timeout) as answer:
                text = answer.read().decode("utf-8")
                served_by = answer.headers.get("X-Served-By", location)
        except urllib.error.HTTPError as exc:
            raise _unavailable(f"app2 at {location} answered HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:  # refused, timeout, bad location
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _unavailable(f"app2 at {location} did not answer: {reason}") from exc
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = f"Hello {text}"
        resp.set_header("X-Served-By", served_by)


app = falcon.App()
app.add_route("/app1", App1(KeyardClient(KEYARD_URL, timeout=TIMEOUT), TIMEOUT))
