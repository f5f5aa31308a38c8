"""``keyard serve`` (the default server): granian's WSGI interface, a Rust HTTP server.

Each worker process builds keyard's app from the configuration checked by
:func:`keyard.server.serve`; granian's blocking threads (``threads`` per worker)
run it. What keyard asks of granian, and why:

- ``KEYARD_CLIENT_TIMEOUT`` is granian's HTTP/1 header read timeout: a client
  stalled within its headers, or silent on a kept-alive connection (one that
  never reads its answer included), is closed after it. Until its headers are
  complete no Python thread is involved, and an answer is written by granian's
  Rust side, never by a worker thread.
- a crashed worker is replaced (``respawn_failed_workers``); a worker crashing
  again within 5.5 s of its respawn makes granian stop, exit code 1.
- SIGTERM or SIGINT: workers stop accepting, finish the requests in flight and
  exit; a worker still busy after ``KILL_TIMEOUT`` seconds is killed.
- on Linux each worker listens on its own socket (SO_REUSEPORT), so that the
  kernel spreads connections over the workers.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import falcon
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LOGGING_CONFIG, LogLevels
from granian.server import Server

from keyard.app import create_app
from keyard.helpers.config import Config
from keyard.server.client_timeout import client_timeout
from keyard.server.tls import Tls

#: Seconds a worker may take to finish its requests after SIGTERM before it is killed
#: (gunicorn's graceful timeout is the same).
KILL_TIMEOUT = 30
#: keyard's and granian's log lines: time, process, level, message, on standard error.
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def _logging_config() -> dict[str, Any]:
    """granian's logging configuration, with keyard's logger beside granian's.

    granian applies it in every process (``dictConfig``): the access log (one line
    per request, when asked for) on standard output, everything else on standard error.
    """
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["generic"].update(fmt=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
    config["handlers"]["console"]["stream"] = "ext://sys.stderr"
    config["loggers"]["keyard"] = {"handlers": ["console"], "level": "INFO", "propagate": False}
    return config


def worker_app(config: Config) -> falcon.App:
    """keyard's app in a granian worker process (granian calls it once per worker)."""
    return create_app(config)


def _address(bind: str) -> dict[str, Any]:
    """granian's address settings for ``keyard serve --bind``: HOST:PORT or unix:PATH."""
    from keyard.server import split_bind

    if bind.startswith("unix:"):
        return {"uds": Path(bind.removeprefix("unix:"))}
    if bind.startswith("fd://"):
        raise ValueError("granian cannot listen on an inherited fd://; use --server gunicorn")
    host, port = split_bind(bind)
    return {"address": host, "port": port}


def serve(
    config: Config,
    *,
    bind: str,
    workers: int,
    threads: int,
    access_log: bool,
    tls: Tls | None = None,
) -> None:
    """Serve keyard under granian on ``bind`` until SIGINT or SIGTERM (HTTPS with ``tls``)."""
    ssl: dict[str, Any] = {}
    if tls is not None:
        ssl = {"ssl_cert": Path(tls.certfile), "ssl_key": Path(tls.keyfile)}
    timeout_ms = max(1, round(client_timeout() * 1000))
    server = Server(
        "keyard.wsgi:app",  # shown as the process's title; the app comes from worker_app
        **_address(bind),
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        workers=workers,
        blocking_threads=threads,
        http1_settings=HTTP1Settings(header_read_timeout=timeout_ms),
        respawn_failed_workers=True,
        workers_kill_timeout=KILL_TIMEOUT,
        log_level=LogLevels.info,
        log_dictconfig=_logging_config(),
        log_access=access_log,
        **ssl,
    )
    server.serve(target_loader=functools.partial(worker_app, config), wrap_loader=False)
