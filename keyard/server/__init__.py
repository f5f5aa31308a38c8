"""Running keyard's HTTP server for ``keyard serve``: granian by default, or gunicorn.

:func:`serve` is the one entry. It checks the configuration (the store it names
is built and closed, the memory store refused under several workers) and the
address to listen on, here in the process that starts the server, so that a bad
configuration or a port in use stops ``keyard serve`` at once with one message;
each worker process then builds its own app (and store) from the checked
configuration. One module per server says how that server runs keyard:
``keyard.server.granian`` and ``keyard.server.gunicorn``.
"""

from __future__ import annotations

import errno
import socket

from keyard.errors import KeyardError
from keyard.helpers.config import Config
from keyard.server.client_timeout import CLIENT_TIMEOUT, CLIENT_TIMEOUT_VARIABLE, client_timeout
from keyard.server.tls import Tls, check_tls
from keyard.stores import create_store, store_class
from keyard.worker_processes import refuse_unshared_store_under_workers

#: gunicorn's worker class for keyard (``keyard serve --server gunicorn``).
WORKER_CLASS = "keyard.gunicorn_worker.JsonErrorThreadWorker"
#: The servers ``keyard serve --server`` runs; the first is the default.
SERVERS = ("granian", "gunicorn")
DEFAULT_SERVER = SERVERS[0]

__all__ = [
    "CLIENT_TIMEOUT",
    "CLIENT_TIMEOUT_VARIABLE",
    "DEFAULT_SERVER",
    "SERVERS",
    "WORKER_CLASS",
    "CannotListen",
    "Tls",
    "check_bind",
    "check_config",
    "client_timeout",
    "serve",
]


class CannotListen(KeyardError):
    """``keyard serve`` cannot listen on its address: the port is in use (another program
    listens on it), or the address is not this machine's, or the port is privileged."""


def check_config(config: Config, workers: int = 1) -> None:
    """Build (and close) the store ``config`` names, and refuse the memory store under
    several ``workers``: ConfigError now rather than in a worker."""
    refuse_unshared_store_under_workers(store_class(config.store_type), workers)
    create_store(config.store_type, config.store_options).close()


def split_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` (as ``keyard serve --bind`` checked it) as a pair."""
    host, _, port = bind.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_bind(bind: str) -> None:
    """CannotListen when something listens on ``bind`` (``HOST:PORT``) already.

    Both servers would otherwise find out in their own way: gunicorn retries for
    5 s with an ERROR line a second and exits 1, granian's worker fails. The probe
    binds as the servers do (SO_REUSEADDR, not SO_REUSEPORT) and closes at once.
    """
    if bind.startswith(("unix:", "fd://")):
        return
    host, port = split_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CannotListen(f"cannot listen on {bind}: port in use") from exc
            raise CannotListen(f"cannot listen on {bind}: {exc.strerror}") from exc


def serve(
    config: Config,
    *,
    server: str = DEFAULT_SERVER,
    bind: str,
    workers: int,
    threads: int,
    access_log: bool = False,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """Check ``config`` and ``bind``, then serve keyard on ``bind`` until SIGINT or SIGTERM.

    Raises ConfigError or CannotListen before any server starts.

    ``server`` is one of :data:`SERVERS`; ``workers`` processes with ``threads``
    threads each (gunicorn's gthread threads; under granian, the app's threads for writes
    and remote stores' reads) run the app; ``access_log`` logs one line per request on
    standard output; ``certfile`` and ``keyfile`` (PEM, both or neither) serve HTTPS.
    """
    if server not in SERVERS:
        raise ValueError(f"server {server!r} is not one of {', '.join(SERVERS)}")
    check_config(config, workers)
    tls = check_tls(certfile, keyfile)
    check_bind(bind)
    if server == "granian":
        from keyard.server import granian as chosen
    else:
        from keyard.server import gunicorn as chosen  # type: ignore[no-redef]
    https = {"tls": tls} if tls is not None else {}  # plain HTTP: the call as before
    chosen.serve(
        config, bind=bind, workers=workers, threads=threads, access_log=access_log, **https
    )
