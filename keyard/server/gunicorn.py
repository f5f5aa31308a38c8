"""``keyard serve --server gunicorn``: gunicorn's gthread worker, answering in JSON.

The worker class is :data:`keyard.server.WORKER_CLASS` (``keyard/gunicorn_worker.py``):
gunicorn's gthread with gunicorn's own error pages in keyard's JSON and a
deadline for clients. The same app runs under plain ``gunicorn keyard.wsgi:app``.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from keyard.app import create_app
from keyard.helpers.config import Config
from keyard.server import WORKER_CLASS
from keyard.server.tls import Tls


class KeyardServer(BaseApplication):
    """gunicorn running keyard's app with ``config``; ``options`` are gunicorn settings."""

    def __init__(self, config: Config, options: dict[str, Any]) -> None:
        self.config = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        # gunicorn >= 25.1 opens a control socket at one fixed path per user, which
        # several servers on one machine would fight over; keyard does not use it.
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> falcon.App:
        # keyard's own log lines (the store in use, a store that went away) go
        # where gunicorn's go, unless the embedding program set up logging itself.
        keyard_log = logging.getLogger("keyard")
        if not keyard_log.handlers:
            gunicorn_log = logging.getLogger("gunicorn.error")
            for handler in gunicorn_log.handlers:
                keyard_log.addHandler(handler)
            keyard_log.setLevel(gunicorn_log.level)
        return create_app(self.config)


def serve(
    config: Config,
    *,
    bind: str,
    workers: int,
    threads: int,
    access_log: bool,
    tls: Tls | None = None,
) -> None:
    """Serve keyard under gunicorn on ``bind`` until gunicorn is told to stop (HTTPS with
    ``tls``)."""
    options: dict[str, Any] = {
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "worker_class": WORKER_CLASS,
        "proc_name": "keyard",
    }
    if tls is not None:
        options.update(certfile=tls.certfile, keyfile=tls.keyfile)
    if access_log:
        options["accesslog"] = "-"  # one line per request, on standard output
    KeyardServer(config, options).run()
