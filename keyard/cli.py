"""The ``keyard`` command line: serve a registry; register, deregister, look up and list
services and their instances; put an instance into maintenance and back.

Exit codes: 0 success; 1 the registry answered an error or could not be
reached (a one-line message on stderr); 2 a usage error or an invalid
configuration; 3 ``keyard serve`` cannot listen on its ``--bind`` address (the
port is in use). Every option can also come from the environment variable
named in ``keyard COMMAND --help``.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import click

from keyard import __version__, model
from keyard.client import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    OUT_OF_SERVICE,
    STATUSES,
    Heartbeat,
    Instance,
    InstanceSpec,
    KeyardClient,
    Registration,
    ServiceSummary,
)
from keyard.client._watch import lease_free
from keyard.errors import ConfigError, InvalidInput, KeyardError

F = TypeVar("F", bound=Callable[..., Any])

#: ``keyard serve --server``: the first is the default (``keyard.server.SERVERS``,
#: repeated here so that the other commands need not import the servers).
SERVERS = ("granian", "gunicorn")

#: Where ``keyard serve`` listens unless told otherwise.
DEFAULT_BIND = "127.0.0.1:8000"
#: ``keyard serve``'s worker processes and threads per worker (granian's blocking
#: threads, gunicorn's gthread threads), unless told otherwise; chosen from the
#: benchmarks (``bench/``, README "Performance"). The memory store (``simple``)
#: keeps its registry in one process: it gets one worker.
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


class CannotListen(click.ClickException):
    """``keyard serve`` cannot listen on ``--bind`` (the port is in use): exit code 3."""

    exit_code = 3


@contextmanager
def _registry_errors() -> Iterator[None]:
    """Turn keyard's exceptions into a one-line ``Error: ...`` and exit code 1."""
    try:
        yield
    except KeyardError as exc:
        raise RegistryFailed(str(exc)) from exc


def _client(url: str, timeout: float, token: str | None, cafile: str | None) -> KeyardClient:
    try:
        return KeyardClient(url, timeout=timeout, token=token, cafile=cafile)
    except ValueError as exc:
        hint = "'--token'" if str(exc).startswith("token") else "'--url'"
        raise click.BadParameter(str(exc), param_hint=hint) from exc
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read CA certificates from {cafile!r}: {exc.strerror or exc}",
            param_hint="'--cafile'",
        ) from exc


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
    """--url, --timeout, --token and --cafile: the command receives one ``client``."""
    options = [
        click.option(
            "--url",
            default=DEFAULT_URL,
            show_default=True,
            envvar="KEYARD_URL",
            show_envvar=True,
            help="The registry's base URL.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            envvar="KEYARD_TIMEOUT",
            show_envvar=True,
            help="Seconds to wait for the registry.",
        ),
        click.option(
            "--token",
            metavar="TOKEN",
            envvar="KEYARD_TOKEN",
            show_envvar=True,
            help="The bearer token: your namespace (auth mode trusted) or a JWT (mode jwt). "
            "Prefer the variable: an option shows in the process list.",
        ),
        click.option(
            "--cafile",
            metavar="FILE",
            envvar="KEYARD_CAFILE",
            show_envvar=True,
            help="PEM certificates of the authorities to verify an https:// registry with "
            "[default: the system's].",
        ),
    ]

    @functools.wraps(command)
    def with_client(
        *args: Any, url: str, timeout: float, token: str | None, cafile: str | None, **kwargs: Any
    ) -> Any:
        return command(*args, client=_client(url, timeout, token, cafile), **kwargs)

    decorated: Any = with_client
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def _text(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that checks a text value as the registry would (not blank, not too long)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return model.check_text(field, value)
        except InvalidInput as exc:
            raise click.BadParameter(str(exc)) from exc

    return check


def _tags(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> tuple[str, ...]:
    try:
        return model.check_tags(value)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from exc


def _metadata(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE pairs (each key once) as a dict."""
    found: dict[str, str] = {}
    for pair in value:
        key, equals, text = pair.partition("=")
        if not equals:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        if key in found:
            raise click.BadParameter(f"metadata key {key!r} is given more than once")
        found[key] = text
    try:
        return dict(model.check_metadata(found))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from exc


def _status(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """One status, in any case."""
    if value is None:
        return None
    try:
        return model.check_status(value.strip().upper())
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from exc


def _status_filter(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Comma-separated statuses (any case), or ``any``."""
    if value is None or value.strip().lower() == "any":
        return value and "any"
    named = [part.strip().upper() for part in value.split(",")]
    for part in named:
        if part not in STATUSES:
            raise click.BadParameter(
                f"status {part!r} is not known; valid: {', '.join(STATUSES)}, or any"
            )
    return ",".join(named)


def _service_options(
    *, location: bool = True, location_required: bool = True, version_help: str = ""
) -> Callable[[F], F]:
    """--service-name, --version and (unless ``location=False``) --location."""

    def decorate(command: F) -> F:
        if location:
            command = click.option(
                "--location",
                required=location_required,
                callback=_text("location"),
                envvar="KEYARD_SERVICE_LOCATION",
                show_envvar=True,
                help="Where the instance answers, e.g. http://10.0.0.5:8002.",
            )(command)
        command = click.option(
            "--version",
            callback=_text("version"),
            envvar="KEYARD_SERVICE_VERSION",
            show_envvar=True,
            help=version_help or "The service version [registry default: 1.0].",
        )(command)
        return click.option(
            "--service-name",
            required=True,
            callback=_text("service_name"),
            envvar="KEYARD_SERVICE_NAME",
            show_envvar=True,
            help="The service's name.",
        )(command)

    return decorate


def _instance_id_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--instance-id",
        metavar="ID",
        callback=_text("instance_id"),
        envvar="KEYARD_INSTANCE_ID",
        show_envvar=True,
        help=help_text,
    )


def _spec_options(command: F) -> F:
    """--instance-id, --status, --tag, --meta and --weight: one InstanceSpec, ``spec``.

    The command receives ``spec`` (``None`` when none of them is given), never the
    five values.
    """
    options = [
        _instance_id_option(
            "The instance's id [registry default: derived from version and location]."
        ),
        click.option(
            "--status",
            metavar="|".join(STATUSES),
            callback=_status,
            envvar="KEYARD_STATUS",
            show_envvar=True,
            help="The status the instance reports [registry default: UP; else kept].",
        ),
        click.option(
            "--tag",
            "tags",
            metavar="TAG",
            multiple=True,
            callback=_tags,
            envvar="KEYARD_TAGS",
            show_envvar=True,
            help="A tag (repeatable; the variable: space-separated).",
        ),
        click.option(
            "--meta",
            "metadata",
            metavar="KEY=VALUE",
            multiple=True,
            callback=_metadata,
            envvar="KEYARD_METADATA",
            show_envvar=True,
            help="A metadata entry (repeatable; the variable: space-separated).",
        ),
        click.option(
            "--weight",
            type=click.IntRange(model.MIN_WEIGHT, model.MAX_WEIGHT),
            envvar="KEYARD_WEIGHT",
            show_envvar=True,
            help="The weight for the weighted strategy [registry default: 100].",
        ),
    ]

    @functools.wraps(command)
    def with_spec(
        *args: Any,
        instance_id: str | None,
        status: str | None,
        tags: tuple[str, ...],
        metadata: dict[str, str],
        weight: int | None,
        **kwargs: Any,
    ) -> Any:
        spec = InstanceSpec(
            instance_id=instance_id,
            status=status,
            tags=tags or None,
            metadata=metadata or None,
            weight=weight,
        )
        return command(*args, spec=spec if spec.fields() else None, **kwargs)

    decorated: Any = with_spec
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def _time(moment: datetime, timespec: str = "seconds") -> str:
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def _describe(registration: Registration) -> str:
    verb = "registered" if registration.created else "refreshed"
    line = (
        f"{verb} {registration.service_name} {registration.version} at "
        f"{registration.location} (ttl {registration.ttl} s, "
        f"expires {_time(registration.expires_at)})"
    )
    record = registration.record
    if record is None:
        return line
    line += f"; instance {record.instance_id}, status {_status_text(record)}"
    line += f", weight {record.weight}"
    if record.tags:
        line += f", tags {','.join(record.tags)}"
    if record.metadata:
        line += f", metadata {_metadata_text(record)}"
    return line


def _status_text(instance: Instance) -> str:
    return instance.status + (" (maintenance)" if instance.in_maintenance else "")


def _metadata_text(instance: Instance) -> str:
    return ",".join(f"{key}={value}" for key, value in instance.metadata.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="keyard")
def main() -> None:
    """keyard: a service registry over HTTP.

    Run a registry with `keyard serve`; register, deregister and find services
    with the other commands. Exit codes: 0 success, 1 the registry answered an
    error or could not be reached, 2 a usage error, 3 `keyard serve` cannot
    listen on its address (the port is in use).
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
    "--server",
    type=click.Choice(SERVERS),
    default=SERVERS[0],
    show_default=True,
    envvar="KEYARD_SERVER",
    show_envvar=True,
    help="The HTTP server: granian (Rust) or gunicorn (gthread, keyard's JSON-error worker).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    envvar="KEYARD_WORKERS",
    show_envvar=True,
    help=f"Worker processes [default: {DEFAULT_WORKERS}; 1 for store_type simple].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_THREADS,
    show_default=True,
    envvar="KEYARD_THREADS",
    show_envvar=True,
    help="Threads per worker that run requests (under granian: writes and remote stores' "
    "reads; gunicorn's gthread threads).",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    envvar="KEYARD_ACCESS_LOG",
    show_envvar=True,
    help="Log one line per request on standard output.",
)
@click.option(
    "--certfile",
    metavar="FILE",
    envvar="KEYARD_CERTFILE",
    show_envvar=True,
    help="Serve HTTPS with this PEM certificate (chain); needs --keyfile.",
)
@click.option(
    "--keyfile",
    metavar="FILE",
    envvar="KEYARD_KEYFILE",
    show_envvar=True,
    help="The PEM private key of --certfile (unencrypted).",
)
def serve(
    config_path: str | None,
    bind: str,
    server: str,
    workers: int | None,
    threads: int,
    access_log: bool,
    certfile: str | None,
    keyfile: str | None,
) -> None:
    """Run the registry under granian (or gunicorn) until SIGINT or SIGTERM.

    KEYARD_* variables override the config file's values (see
    keyard.helpers.config). An invalid configuration stops here with exit code 2;
    an address that cannot be listened on (the port is in use) with exit code 3.
    """
    from keyard import server as servers
    from keyard.helpers import config

    if server == "granian" and bind.startswith("fd://"):
        raise click.BadParameter(
            "granian cannot listen on fd://; use --server gunicorn", param_hint="'--bind'"
        )
    try:
        loaded = config.load(config_path) if config_path else config.from_environment()
        if workers is None:
            workers = default_workers(loaded.store_type)
        # Checks the config and the address before it starts the server: both errors
        # come from here, in this process, before any worker exists.
        servers.serve(
            loaded, server=server, bind=bind, workers=workers, threads=threads,
            access_log=access_log, certfile=certfile, keyfile=keyfile,
        )  # fmt: skip
    except ConfigError as exc:
        raise BadConfig(str(exc)) from exc
    except servers.CannotListen as exc:
        raise CannotListen(str(exc)) from exc


@main.command()
@_service_options()
@_spec_options
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
    spec: InstanceSpec | None,
    ttl: int | None,
    refresh_every: float | None,
    client: KeyardClient,
) -> None:
    """Register a service instance (or refresh it).

    --instance-id, --status, --tag, --meta and --weight left out keep what the
    registry stored (its defaults for a new instance). With --refresh-every,
    keep it registered until SIGINT or SIGTERM, then deregister it and exit 0;
    the registry may go away and come back meanwhile.
    """
    if refresh_every is None:
        with _registry_errors():
            registration = client.register(
                service_name, location, version=version, ttl=ttl, spec=spec
            )
        click.echo(_describe(registration))
        return
    try:
        heartbeat = Heartbeat(
            client,
            service_name,
            location,
            version=version,
            ttl=ttl,
            spec=spec,
            interval=refresh_every,
            strict_interval=True,
        )
    except ValueError as exc:
        raise click.UsageError(f"--refresh-every: {exc}") from exc
    _keep_alive(heartbeat)


def _keep_alive(heartbeat: Heartbeat) -> None:
    """Health-check in the background until SIGINT or SIGTERM, then deregister."""
    stop = threading.Event()
    with _stop_on_signals(stop), _log_to_stderr("keyard.client"):
        with _registry_errors():
            try:
                heartbeat.start()
            except ValueError as exc:  # not shorter than the TTL the registry answered
                raise click.UsageError(
                    f"--refresh-every: {exc}; give a shorter --refresh-every or a longer --ttl"
                ) from exc
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
@_service_options(location_required=False)
@_instance_id_option("Deregister the instance with this id (instead of --location).")
@_registry_options
def unregister(
    service_name: str,
    version: str | None,
    location: str | None,
    instance_id: str | None,
    client: KeyardClient,
) -> None:
    """Deregister a service instance: by --location (and --version), or by --instance-id.

    By location, every instance of the version at that location goes. Exit code
    1 when the registry has no such live instance.
    """
    if (location is None) == (instance_id is None):
        raise click.UsageError("give either --location or --instance-id")
    if instance_id is not None and version is not None:
        raise click.UsageError("--version goes with --location; an --instance-id is enough")
    if instance_id is not None:
        with _registry_errors():
            removed = client.deregister_instance(service_name, instance_id)
        click.echo(
            f"deregistered {removed.service_name} {removed.version} at {removed.location} "
            f"(instance {removed.instance_id})"
        )
        return
    assert location is not None
    with _registry_errors():
        client.deregister(service_name, location, version=version)
    which = f"{service_name}" + (f" {version}" if version else "")
    click.echo(f"deregistered {which} at {location}")


@main.command()
@_service_options(location=False, version_help="Only this version [default: every version].")
@click.option(
    "--strategy",
    metavar="NAME",
    help="Answer one location, picked by this load-balancing strategy "
    "(random, round_robin, weighted).",
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
    client: KeyardClient,
) -> None:
    """Print the live UP locations of a service.

    Locations come ordered by version, then location. An unknown service
    prints nothing (exit 0); with --strategy, no live instance is an error
    (exit 1).
    """
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


def _format_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help=f"table: a readable table; json: {what}.",
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, under a header line."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _record_json(instance: Instance) -> dict[str, object]:
    """The record as the registry's API shows it."""
    shown: dict[str, object] = {
        "namespace": instance.namespace,
        "service_name": instance.service_name,
        "version": instance.version,
        "instance_id": instance.instance_id,
        "location": instance.location,
        "status": instance.status,
    }
    if instance.status_override is not None:
        shown["status_override"] = instance.status_override
    shown.update(
        tags=list(instance.tags),
        metadata=dict(instance.metadata),
        weight=instance.weight,
        ttl=instance.ttl,
        registered_at=_time(instance.registered_at, "milliseconds"),
        last_heartbeat_at=_time(instance.last_heartbeat_at, "milliseconds"),
        expires_at=_time(instance.expires_at, "milliseconds"),
    )
    return shown


@main.command()
@_format_option("a JSON list of {service_name, instances, up}")
@_registry_options
def services(output_format: str, client: KeyardClient) -> None:
    """List every service with a live instance: how many instances, how many UP.

    Sorted by name; no service prints nothing (exit 0).
    """
    with _registry_errors():
        found = client.services()
    if output_format == "json":
        click.echo(
            json.dumps(
                [
                    {"service_name": s.service_name, "instances": s.instances, "up": s.up}
                    for s in found
                ]
            )
        )
    elif found:
        rows = [(s.service_name, str(s.instances), str(s.up)) for s in found]
        click.echo(_table(("SERVICE", "INSTANCES", "UP"), rows))


@main.command()
@click.argument("name", callback=_text("service_name"))
@click.option("--version", callback=_text("version"), help="Only this version.")
@click.option(
    "--tag",
    "tags",
    metavar="TAG",
    multiple=True,
    callback=_tags,
    help="Only instances with this tag (repeatable: with every one of them).",
)
@click.option(
    "--status",
    callback=_status_filter,
    metavar="STATUS[,STATUS...]",
    help=f"Only instances with one of these statuses ({', '.join(STATUSES)}) "
    "[default: any status].",
)
@_format_option("a JSON list of the full records")
@_registry_options
def instances(
    name: str,
    version: str | None,
    tags: tuple[str, ...],
    status: str | None,
    output_format: str,
    client: KeyardClient,
) -> None:
    """List the live instances of service NAME, in every status unless --status says.

    Ordered by version, location and id. An instance in maintenance shows
    "(maintenance)" after its status. An unknown service prints nothing (exit 0).
    """
    with _registry_errors():
        found = client.instances(
            name, version=version, tag=tags or None, status=status
        )
    if output_format == "json":
        click.echo(json.dumps([_record_json(instance) for instance in found], indent=2))
        return
    if not found:
        return
    rows = [
        (
            i.instance_id,
            i.version,
            i.location,
            _status_text(i),
            str(i.weight),
            ",".join(i.tags) or "-",
            _metadata_text(i) or "-",
            _time(i.expires_at),
        )
        for i in found
    ]
    headers = ("INSTANCE", "VERSION", "LOCATION", "STATUS", "WEIGHT", "TAGS", "METADATA", "EXPIRES")
    click.echo(_table(headers, rows))


@main.command()
@click.argument("name", required=False, callback=_text("service_name"))
@click.option("--version", callback=_text("version"), help="Only this version.")
@click.option(
    "--tag",
    "tags",
    metavar="TAG",
    multiple=True,
    callback=_tags,
    help="Only instances with this tag (repeatable: with every one of them).",
)
@click.option(
    "--status",
    callback=_status_filter,
    metavar="STATUS[,STATUS...]",
    help=f"Only instances with one of these statuses ({', '.join(STATUSES)}) "
    "[default: any status].",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one readable line per instance; json: one JSON object per line "
    "({event, index, instance} or {event, index, service}).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=1, max=600),
    default=60,
    show_default=True,
    help="Seconds the registry holds each blocking query.",
)
@_registry_options
def watch(
    name: str | None,
    version: str | None,
    tags: tuple[str, ...],
    status: str | None,
    output_format: str,
    wait: float,
    client: KeyardClient,
) -> None:
    """Print the live instances of service NAME, then one line per instance added,
    removed or changed, until SIGINT (Ctrl-C) or SIGTERM (exit 0).

    Without NAME, watches the services instead. The first lines (event "present") are
    the state when the watch starts; every line is flushed at once. The watch survives
    a restart of the registry and its 503s (retried, logged on stderr).
    """
    if name is None and (version or tags or status):
        raise click.UsageError("--version, --tag and --status need a service NAME")
    with _registry_errors():
        watching = (
            client.watch(name, version=version, tag=tags or None, status=status, wait=wait)
            if name is not None
            else client.watch_services(wait=wait)
        )
    previous: dict[str, object] | None = None

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = signal.signal(signal.SIGTERM, interrupted)
    try:
        with _log_to_stderr("keyard.client"), _registry_errors(), watching:
            for snapshot in watching:
                current: dict[str, object] = (
                    {i.instance_id: i for i in snapshot.instances}
                    if name is not None
                    else {s.service_name: s for s in snapshot.services}
                )
                for event, item in _changes(previous, current):
                    click.echo(_watch_line(event, snapshot.index, item, output_format))
                previous = current
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, saved)


def _changes(
    previous: dict[str, object] | None, current: dict[str, object]
) -> Iterator[tuple[str, object]]:
    """The events from one state to the next: present (the first state), added, removed,
    changed (every field but the lease: a health check is no change)."""
    if previous is None:
        for item in current.values():
            yield "present", item
        return
    for key, item in current.items():
        before = previous.get(key)
        if before is None:
            yield "added", item
        elif _unleased(before) != _unleased(item):
            yield "changed", item
    for key, item in previous.items():
        if key not in current:
            yield "removed", item


def _unleased(item: object) -> object:
    return lease_free(item) if isinstance(item, Instance) else item


def _watch_line(event: str, index: int, item: object, output_format: str) -> str:
    if isinstance(item, Instance):
        if output_format == "json":
            return json.dumps({"event": event, "index": index, "instance": _record_json(item)})
        return (
            f"{event:<8} {item.instance_id} version {item.version} at {item.location} "
            f"{_status_text(item)} (index {index})"
        )
    assert isinstance(item, ServiceSummary)
    if output_format == "json":
        service = {"service_name": item.service_name, "instances": item.instances, "up": item.up}
        return json.dumps({"event": event, "index": index, "service": service})
    return (
        f"{event:<8} {item.service_name}: {item.instances} instance(s), {item.up} UP "
        f"(index {index})"
    )


@main.group()
def maintenance() -> None:
    """Take an instance out of lookups (on) and put it back (off).

    `on` imposes the status OUT_OF_SERVICE: lookups and load balancing skip the
    instance, its health checks keep it registered but do not change the
    status. `off` removes it: the instance's own status applies again.
    """


def _maintenance_arguments(command: F) -> F:
    command = click.argument("instance_id", callback=_text("instance_id"))(command)
    return click.argument("name", callback=_text("service_name"))(command)


@maintenance.command("on")
@_maintenance_arguments
@_registry_options
def maintenance_on(name: str, instance_id: str, client: KeyardClient) -> None:
    """Put instance INSTANCE_ID of service NAME into maintenance (OUT_OF_SERVICE)."""
    with _registry_errors():
        record = client.set_status(name, instance_id, OUT_OF_SERVICE)
    click.echo(
        f"{record.service_name} {record.instance_id} at {record.location}: "
        f"{_status_text(record)}; lookups skip it until "
        f"'keyard maintenance off {name} {instance_id}'"
    )


@maintenance.command("off")
@_maintenance_arguments
@_registry_options
def maintenance_off(name: str, instance_id: str, client: KeyardClient) -> None:
    """Take instance INSTANCE_ID of service NAME out of maintenance."""
    with _registry_errors():
        record = client.clear_status(name, instance_id)
    click.echo(
        f"{record.service_name} {record.instance_id} at {record.location}: "
        f"maintenance off, status {record.status}"
    )


if __name__ == "__main__":
    main(prog_name="keyard")
