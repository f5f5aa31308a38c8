"""keyard's gunicorn worker: gthread, with gunicorn's own error pages in keyard's JSON.

gunicorn refuses some requests before the app sees them: a request line over
4094 bytes (414), a header too large (431), a malformed request line, header
or chunk (400). It answers those with an HTML page. This worker answers them
as keyard answers every error, ``{"title": ..., "description": ...}`` in
``application/json``, so that no input gets a non-JSON error body.

It also gives a client a deadline: a worker thread that waits more than
``KEYARD_CLIENT_TIMEOUT`` seconds (default 10) for the next bytes of a request, or
for the client to take the answer, gives up on that connection: a body that
stops short of its ``Content-Length`` gets a 408 (and the connection is closed,
so that the rest of the body is never taken for a request), a request stalled
within its headers is closed. gthread's own thread would wait for as long as the client
kept the connection open, and a few such clients would hold every thread.

``keyard serve`` uses it; with plain gunicorn, pass
``--worker-class keyard.gunicorn_worker.JsonErrorThreadWorker``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from keyard.server.client_timeout import CLIENT_TIMEOUT, CLIENT_TIMEOUT_VARIABLE, client_timeout
from keyard.stores.changes import stop_waiting

__all__ = [
    "CLIENT_TIMEOUT",
    "CLIENT_TIMEOUT_VARIABLE",
    "JsonErrorThreadWorker",
    "client_timeout",
    "set_client_timeout",
    "write_json_error",
]


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


class _StalledClientFilter(logging.Filter):
    """gthread logs a client that ran out of time as a socket error with a traceback:
    make it one line at INFO level, since the client, not the server, is at fault."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BlockingIOError) and record.msg == "Socket error processing request.":
            record.msg = "closed a connection whose client sent nothing for %g s mid-request"
            record.args = (self.seconds,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def set_client_timeout(sock: socket.socket, seconds: float = CLIENT_TIMEOUT) -> None:
    """Make blocking reads and writes on ``sock`` fail after ``seconds`` (EAGAIN).

    The kernel's SO_RCVTIMEO and SO_SNDTIMEO, not Python's socket timeout: gthread
    puts the socket back in blocking mode before each request, which resets
    Python's timeout but not these.
    """
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def honour_connection_close(app: WsgiApp) -> WsgiApp:
    """``app``, where an answer with ``Connection: close`` closes the connection.

    gunicorn drops the hop-by-hop headers an app sets and decides on its own
    whether to keep the connection; keyard's app says ``Connection: close`` when the
    rest of the request cannot be trusted (a body that stopped short).
    """

    def closing_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            for name, value in headers:
                if name.lower() == "connection" and value.lower() == "close":
                    # gunicorn's start_response is its Response's bound method.
                    start_response.__self__.force_close()  # type: ignore[attr-defined]
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return closing_app


class JsonErrorThreadWorker(ThreadWorker):
    """gunicorn's gthread worker: JSON for the errors gunicorn raises, a deadline for clients."""

    def init_process(self) -> Any:
        # gunicorn's workers call util.write_error at the time of the error; this
        # process is a keyard worker only, so its error writer is keyard's.
        util.write_error = write_json_error
        self.client_timeout = client_timeout()
        logging.getLogger("gunicorn.error").addFilter(_StalledClientFilter(self.client_timeout))
        return super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM: gthread finishes the requests in flight before it exits; the waiting
        # ones (blocking queries) are answered now with their state, not when their wait
        # runs out. From a thread: this signal handler may have interrupted a wait's lock.
        threading.Thread(target=stop_waiting, name="keyard-stop-waiting", daemon=True).start()
        super().handle_exit(sig, frame)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi: WsgiApp = honour_connection_close(self.wsgi)

    def enqueue_req(self, conn: Any) -> None:
        if not getattr(conn, "keyard_timeout_set", False):
            # OSError: the client is gone already; gthread finds out on its own.
            with contextlib.suppress(OSError):
                set_client_timeout(conn.sock, self.client_timeout)
            conn.keyard_timeout_set = True
        super().enqueue_req(conn)
