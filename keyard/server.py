"""Running keyard under gunicorn, from Python (``keyard serve``).

The configuration is read and the store checked here, in the process that
starts gunicorn, so that a bad configuration stops ``keyard serve`` at once
with its one-line message; each worker then builds its own app (and store)
from the checked configuration.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from keyard.app import create_app
from keyard.helpers.config import Config
from keyard.stores import create_store, store_class
from keyard.worker_processes import refuse_unshared_store_under_workers

#: gunicorn's worker class for keyard: gthread (threads, so a slow store call blocks one
#: request only), answering the requests gunicorn itself refuses in JSON.
WORKER_CLASS = "keyard.gunicorn_worker.JsonErrorThreadWorker"


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


def check_config(config: Config, workers: int = 1) -> None:
    """Build (and close) the store ``config`` names, and refuse the memory store under
    several ``workers``: ConfigError now rather than in a worker."""
    refuse_unshared_store_under_workers(store_class(config.store_type), workers)
    create_store(config.store_type, config.store_options).close()


def serve(config: Config, *, bind: str, workers: int, threads: int) -> None:
    """Check ``config``, then serve keyard on ``bind`` until gunicorn is told to stop."""
    check_config(config, workers)
    options = {
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "worker_class": WORKER_CLASS,
        "proc_name": "keyard",
    }
    KeyardServer(config, options).run()
