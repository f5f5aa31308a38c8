"""Raw request paths, so that a name with ``/`` in it (sent as ``%2F``) round-trips.

A WSGI server decodes ``PATH_INFO``, so ``/keyard/services/a%2Fb`` would reach
falcon as ``/keyard/services/a/b``. Where the server also gives the path as sent
(gunicorn's ``RAW_URI``, or ``REQUEST_URI``), keyard routes on that one and each
path segment is percent-decoded once, by :func:`segment`. Trailing slashes are
dropped (``/keyard/`` and ``/keyard//`` are ``/keyard``).
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes, urlsplit

import falcon


class RawPath:
    """Middleware: route on the path as the client sent it, where the server gives it."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = req.env.get("RAW_URI") or req.env.get("REQUEST_URI")
        req.context.encoded_path = False
        if raw:
            if not raw.startswith("/"):  # an absolute URI (a request to a proxy)
                try:
                    raw = urlsplit(raw).path or "/"
                except ValueError:
                    raw = req.path
            else:
                raw = raw.split("?", 1)[0].split("#", 1)[0]
            req.path = raw
            req.context.encoded_path = True
        if len(req.path) > 1 and req.path.endswith("/"):
            req.path = req.path.rstrip("/") or "/"


def segment(req: falcon.Request, value: str, name: str) -> str:
    """A path segment's text: percent-decoded once when the path is the raw one."""
    if not req.context.encoded_path:
        return value
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise falcon.HTTPBadRequest(
            title="Invalid input",
            description=f"{name} in the path is not valid UTF-8 after percent-decoding: "
            f"{value[:60]!r}",
        ) from exc
