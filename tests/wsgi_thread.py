"""A WSGI app served from a thread of the test process, on a loopback port.

For tests of HTTP clients against the real app without a subprocess::

    with serve_in_thread(create_app({"store_type": "simple"})) as server:
        KeyardClient(server.url).lookup("web")

``server.stop()`` closes the listening socket, so a new server may take over
the same port (a registry restart).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tests.conftest import free_port


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class ThreadServer:
    """A running server: ``url``, ``port``, and ``stop()``."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server = make_server(
            "127.0.0.1", port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
            self._server.server_close()


@contextmanager
def serve_in_thread(app: Any, port: int | None = None) -> Iterator[ThreadServer]:
    """Serve ``app`` on 127.0.0.1 (a free port unless given) until the block ends."""
    server = ThreadServer(app, port or free_port())
    try:
        yield server
    finally:
        server.stop()
