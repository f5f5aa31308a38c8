"""keyard's gunicorn worker: gthread, with gunicorn's own error pages in keyard's JSON.

gunicorn refuses some requests before the app sees them: a request line over
4094 bytes (414), a header too large (431), a malformed request line, header
or chunk (400). It answers those with an HTML page. This worker answers them
as keyard answers every error, ``{"title": ..., "description": ...}`` in
``application/json``, so that no input gets a non-JSON error body.

``keyard serve`` uses it; with plain gunicorn, pass
``--worker-class keyard.gunicorn_worker.JsonErrorThreadWorker``.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with a JSON body instead of an HTML page."""
    description = mesg or "the server could not handle the request; its log says why"
    body = json.dumps({"title": reason, "description": description}).encode("utf-8")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


class JsonErrorThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, writing the errors gunicorn raises itself as JSON."""

    def init_process(self) -> Any:
        # gunicorn's workers call util.write_error at the time of the error; this
        # process is a keyard worker only, so its error writer is keyard's.
        util.write_error = write_json_error
        return super().init_process()
