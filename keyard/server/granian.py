"""``keyard serve`` (the default server): granian's ASGI interface, a Rust HTTP server.

Each worker process builds keyard's app from the configuration checked by
:func:`keyard.server.serve`: the WSGI app, run by ``threads`` threads per worker,
behind :class:`keyard.server.waiting.WaitingFront`, which parks blocking queries on
the worker's event loop instead (10,000 of them cost no thread). What keyard asks of
granian, and why:

- ``KEYARD_CLIENT_TIMEOUT`` is granian's HTTP/1 header read timeout: a client
  stalled within its headers, or silent on a kept-alive connection (one that
  never reads its answer included), is closed after it. Until its headers are
  complete no Python thread is involved, and an answer is written by granian's
  Rust side, never by a worker thread.
- a crashed worker is replaced (``respawn_failed_workers``); a worker crashing
  again within 5.5 s of its respawn makes granian stop, exit code 1.
- SIGTERM or SIGINT: the waiting blocking queries are answered at once with their
  current state (:func:`~keyard.stores.changes.stop_waiting`), then workers stop
  accepting, finish the requests in flight and exit; a worker still busy after
  ``KILL_TIMEOUT`` seconds is killed.
- uvloop as the workers' event loop, where it is installed.
- ``BACKPRESSURE`` requests at once per worker (granian's default is its backlog
  shared by the workers, 512 each, which 10,000 waiting watchers would exceed).
- on Linux each worker listens on its own socket (SO_REUSEPORT), so that the
  kernel spreads connections over the workers.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import signal
from pathlib import Path
from typing import Any

from granian import _signals as granian_signals
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.log import LOGGING_CONFIG, LogLevels
from granian.server import Server

from keyard.app import create_asgi_app
from keyard.helpers.config import Config
from keyard.server.client_timeout import client_timeout
from keyard.server.tls import Tls
from keyard.server.waiting import WaitingFront
from keyard.stores.changes import stop_waiting

#: Seconds a worker may take to finish its requests after SIGTERM before it is killed
#: (gunicorn's graceful timeout is the same).
KILL_TIMEOUT = 30
#: Seconds a worker gives its waiting queries' answers after SIGTERM before it stops.
ANSWER_TIMEOUT = 5.0
#: Requests a worker serves at once (waiting blocking queries included), and the
#: listening socket's queue of connections not yet accepted.
BACKPRESSURE = 32768
BACKLOG = 4096
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


def worker_app(config: Config, threads: int) -> WaitingFront:
    """keyard's app in a granian worker process (granian calls it once per worker).

    Before granian sets its signal handlers: SIGTERM and SIGINT will answer the
    waiting blocking queries first (:func:`_answer_waits_on_signals`).
    """
    front = create_asgi_app(config, threads=threads)
    _answer_waits_on_signals(front)
    return front


def _answer_waits_on_signals(front: WaitingFront) -> None:
    """Make the worker's SIGTERM and SIGINT answer ``front``'s waiting queries, then stop.

    granian's worker sets its handlers after loading the app, through
    ``granian._signals.set_loop_signals``: this wraps that function, so that the
    handler first ends every wait and lets the answers go (at most ``ANSWER_TIMEOUT``
    seconds), then tells granian to stop as its own handler would.
    """
    original = granian_signals.set_loop_signals

    def set_loop_signals(loop: asyncio.AbstractEventLoop) -> Any:
        stop_event = original(loop)

        stopping: set[asyncio.Task[None]] = set()  # referenced until done (never collected)

        async def answer_then_stop() -> None:
            try:
                await asyncio.to_thread(stop_waiting)
                await front.answered(ANSWER_TIMEOUT)
            finally:
                stop_event.set()

        def on_signal() -> None:
            task = loop.create_task(answer_then_stop())
            stopping.add(task)
            task.add_done_callback(stopping.discard)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        return stop_event

    granian_signals.set_loop_signals = set_loop_signals


def _address(bind: str) -> dict[str, Any]:
    """granian's address settings for ``keyard serve --bind``: HOST:PORT or unix:PATH."""
    from keyard.server import split_bind

    if bind.startswith("unix:"):
        return {"uds": Path(bind.removeprefix("unix:"))}
    if bind.startswith("fd://"):
        raise ValueError("granian cannot listen on an inherited fd://; use --server gunicorn")
    host, port = split_bind(bind)
    return {"address": host, "port": port}


def _event_loop() -> Loops:
    """uvloop where it is installed (keyard's dependency on Linux): with it a worker
    answers about 1.5 times the requests of asyncio's loop."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return Loops.asyncio
    return Loops.uvloop


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
        interface=Interfaces.ASGI,
        loop=_event_loop(),
        http=HTTPModes.http1,
        workers=workers,
        backlog=BACKLOG,
        backpressure=BACKPRESSURE,
        http1_settings=HTTP1Settings(header_read_timeout=timeout_ms),
        respawn_failed_workers=True,
        workers_kill_timeout=KILL_TIMEOUT,
        log_level=LogLevels.info,
        log_dictconfig=_logging_config(),
        log_access=access_log,
        **ssl,
    )
    server.serve(target_loader=functools.partial(worker_app, config, threads), wrap_loader=False)
