"""The ``keyard`` command line: serve a registry, and register, deregister and look up services.

Exit codes: 0 success; 1 the registry answered an error or could not be
reached (a one-line message on stderr); 2 a usage error or an invalid
configuration. Every option can also come from the environment variable
named in ``keyard COMMAND --help``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from keyard import __version__
from keyard.client import DEFAULT_TIMEOUT, DEFAULT_URL, Heartbeat, KeyardClient, Registration
from keyard.errors import ConfigError, KeyardError

F = TypeVar("F", bound=Callable[..., Any])

#: Where ``keyard serve`` listens unless told otherwise.
DEFAULT_BIND = "127.0.0.1:8000"
#: ``keyard serve``'s gunicorn worker processes and threads per worker, unless told
#: otherwise; chosen from the benchmarks (``bench/``, README "Performance"). The
#: memory store (``simple``) keeps its registry in one process: it gets one worker.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4


def default_workers(store_type: str) -> int:
    """``keyard serve``'s worker processes for ``store_type`` when ``--workers`` is not given."""
    return 1 if store_type == "simple" else DEFAULT_WORKERS


class RegistryFailed(click.ClickException):
    """The registry answered an error or could not be reached: exit code 1."""

    exit_code = 1


class BadConfig(click.ClickException):
    """The configuration is invalid: exit code 2, like a usage error, without the usage text."""

    exit_code = 2


@contextmanager
def _registry_errors() -> Iterator[None]:
    """Turn keyard's exceptions into a one-line ``Error: ...`` and exit code 1."""
    try:
        yield
    except KeyardError as exc:
        raise RegistryFailed(str(exc)) from exc


def _client(url: str, timeout: float) -> KeyardClient:
    try:
        return KeyardClient(url, timeout=timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--url'") from exc


def _bind_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Check --bind before gunicorn sees it: gunicorn's own check of a bad port is a
    traceback (port 99999) or an exit code 1 ('abc'), and an empty value binds its default."""
    if value.startswith(("unix:", "fd://")):
        return value
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if (
        not host
        or (":" in host and not bracketed)
        or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)
    ):
        raise click.BadParameter(
            f"expected HOST:PORT with a port from 1 to 65535 (127.0.0.1:8000, [::1]:8000) "
            f"or unix:PATH, got {value!r}"
        )
    return value


def _registry_options(command: F) -> F:
    command = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        envvar="KEYARD_TIMEOUT",
        show_envvar=True,
        help="Seconds to wait for the registry.",
    )(command)
    return click.option(
        "--url",
        default=DEFAULT_URL,
        show_default=True,
        envvar="KEYARD_URL",
        show_envvar=True,
        help="The registry's base URL.",
    )(command)


def _service_options(*, location: bool = True, version_help: str = "") -> Callable[[F], F]:
    """--service-name, --version and (unless ``location=False``) --location."""

    def decorate(command: F) -> F:
        if location:
            command = click.option(
                "--location",
                required=True,
                envvar="KEYARD_SERVICE_LOCATION",
                show_envvar=True,
                help="Where the instance answers, e.g. http://10.0.0.5:8002.",
            )(command)
        command = click.option(
            "--version",
            envvar="KEYARD_SERVICE_VERSION",
            show_envvar=True,
            help=version_help or "The service version [registry default: 1.0].",
        )(command)
        return click.option(
            "--service-name",
            required=True,
            envvar="KEYARD_SERVICE_NAME",
            show_envvar=True,
            help="The service's name.",
        )(command)

    return decorate


def _describe(registration: Registration) -> str:
    verb = "registered" if registration.created else "refreshed"
    expires = registration.expires_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    return (
        f"{verb} {registration.service_name} {registration.version} at "
        f"{registration.location} (ttl {registration.ttl} s, expires {expires})"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="keyard")
def main() -> None:
    """keyard: a service registry over HTTP.

    Run a registry with `keyard serve`; register, deregister and find services
    with the other commands. Exit codes: 0 success, 1 the registry answered an
    error or could not be reached, 2 a usage error.
    """


@main.command()
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="KEYARD_CONFIG",
    show_envvar=True,
    help="The JSON config file [default: ./config.json if present, else built-in defaults].",
)
@click.option(
    "--bind",
    default=DEFAULT_BIND,
    callback=_bind_address,
    show_default=True,
    envvar="KEYARD_BIND",
    show_envvar=True,
    help="HOST:PORT to listen on (0.0.0.0:8000 for every interface).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    envvar="KEYARD_WORKERS",
    show_envvar=True,
    help=f"gunicorn worker processes [default: {DEFAULT_WORKERS}; 1 for store_type simple].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_THREADS,
    show_default=True,
    envvar="KEYARD_THREADS",
    show_envvar=True,
    help="Threads per worker (gunicorn's gthread worker).",
)
def serve(config_path: str | None, bind: str, workers: int | None, threads: int) -> None:
    """Run the registry under gunicorn until SIGINT or SIGTERM.

    KEYARD_* variables override the config file's values (see
    keyard.helpers.config). An invalid configuration stops here with exit code 2.
    """
    from keyard import server
    from keyard.helpers import config

    try:
        loaded = config.load(config_path) if config_path else config.from_environment()
        if workers is None:
            workers = default_workers(loaded.store_type)
        server.check_config(loaded, workers)
    except ConfigError as exc:
        raise BadConfig(str(exc)) from exc
    server.serve(loaded, bind=bind, workers=workers, threads=threads)


@main.command()
@_service_options()
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    envvar="KEYARD_TTL",
    show_envvar=True,
    help="Seconds the registration lives without a health check [registry default].",
)
@click.option(
    "--refresh-every",
    type=click.FloatRange(min=0, min_open=True),
    envvar="KEYARD_REFRESH_EVERY",
    show_envvar=True,
    metavar="SECONDS",
    help="Stay in the foreground, health-check this often, and deregister on SIGINT/SIGTERM.",
)
@_registry_options
def register(
    service_name: str,
    version: str | None,
    location: str,
    ttl: int | None,
    refresh_every: float | None,
    url: str,
    timeout: float,
) -> None:
    """Register a service instance (or refresh it).

    With --refresh-every, keep it registered until SIGINT or SIGTERM, then
    deregister it and exit 0; the registry may go away and come back meanwhile.
    """
    client = _client(url, timeout)
    if refresh_every is None:
        with _registry_errors():
            registration = client.register(service_name, location, version=version, ttl=ttl)
        click.echo(_describe(registration))
        return
    try:
        heartbeat = Heartbeat(
            client, service_name, location, version=version, ttl=ttl, interval=refresh_every
        )
    except ValueError as exc:
        raise click.UsageError(f"--refresh-every: {exc}") from exc
    _keep_alive(heartbeat)


def _keep_alive(heartbeat: Heartbeat) -> None:
    """Health-check in the background until SIGINT or SIGTERM, then deregister."""
    stop = threading.Event()
    with _stop_on_signals(stop), _log_to_stderr("keyard.client"):
        with _registry_errors():
            heartbeat.start()
        assert heartbeat.registration is not None
        click.echo(
            f"{_describe(heartbeat.registration)}; health check every "
            f"{heartbeat.interval:g} s until SIGINT or SIGTERM"
        )
        stop.wait()
        gone = heartbeat.stop()
    if not gone:
        raise RegistryFailed(
            f"could not deregister {heartbeat.service_name} at {heartbeat.location}: "
            f"{heartbeat.last_error}"
        )
    click.echo(f"deregistered {heartbeat.service_name} at {heartbeat.location}")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM inside the block; the old handlers come back after."""

    def handle(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _log_to_stderr(name: str) -> Iterator[None]:
    """Show the logger's records (the heartbeat's warnings) on stderr inside the block."""
    logger = logging.getLogger(name)
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(logging.Formatter("%(asctime)s keyard: %(message)s", "%H:%M:%S"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@main.command()
@_service_options()
@_registry_options
def unregister(
    service_name: str, version: str | None, location: str, url: str, timeout: float
) -> None:
    """Deregister a service instance.

    Exit code 1 when the registry has no live instance with this name, version
    and location.
    """
    with _registry_errors():
        _client(url, timeout).deregister(service_name, location, version=version)
    which = f"{service_name}" + (f" {version}" if version else "")
    click.echo(f"deregistered {which} at {location}")


@main.command()
@_service_options(location=False, version_help="Only this version [default: every version].")
@click.option(
    "--strategy",
    metavar="NAME",
    help="Answer one location, picked by this load-balancing strategy (random, round_robin).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: one location per line; json: a JSON list (a JSON string with --strategy).",
)
@_registry_options
def lookup(
    service_name: str,
    version: str | None,
    strategy: str | None,
    output_format: str,
    url: str,
    timeout: float,
) -> None:
    """Print the live locations of a service.

    Locations come ordered by version, then location. An unknown service
    prints nothing (exit 0); with --strategy, no live instance is an error
    (exit 1).
    """
    client = _client(url, timeout)
    with _registry_errors():
        if strategy is None:
            result: list[str] | str = client.lookup(service_name, version=version)
        else:
            result = client.choose(service_name, version=version, strategy=strategy)
    if output_format == "json":
        click.echo(json.dumps(result))
    else:
        for location in [result] if isinstance(result, str) else result:
            click.echo(location)


if __name__ == "__main__":
    main()
