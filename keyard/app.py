"""The application factory: wires config, store, registry and the HTTP trees."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import falcon

from keyard import api
from keyard.answers import BODY_KEY, READING_KEY, Answers
from keyard.helpers import config as config_module
from keyard.helpers.config import Config
from keyard.registry import Clock, Registry, TtlPolicy
from keyard.stores import create_store, store_class
from keyard.stores.base import Store
from keyard.worker_processes import gunicorn_workers, refuse_unshared_store_under_workers

if TYPE_CHECKING:
    from keyard.server.waiting import WaitingFront

log = logging.getLogger("keyard")


def create_app(
    config: Config | Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
) -> falcon.App:
    """Build keyard's WSGI app (the arguments: see :func:`wire`).

    Under any WSGI server a blocking query holds one of its threads while it waits;
    ``keyard serve`` serves :func:`create_asgi_app` instead, whose waits hold none.
    """
    return wire(config, store=store, clock=clock)[0]


def keeps_whole_answers(config: Config) -> bool:
    """Whether a lookup's whole answer may be kept by its request's path, query string,
    ``Authorization`` and ``Accept`` alone: not with JWTs (a token expires, and the
    same header is then refused) nor with ``require_https`` (the peer counts too)."""
    return "jwt" not in config.auth.modes and not config.require_https


class App(falcon.App):
    """keyard's falcon app; with ``registry``, it also answers a repeated lookup again
    from its whole kept answer (status, headers, bytes), before falcon parses anything.

    A ``GET`` without a body whose answer the API marked as holding
    (:data:`~keyard.answers.READING_KEY`) is kept under its path, query string,
    ``Authorization`` and ``Accept`` (all the answer depends on) while it holds
    (:class:`~keyard.answers.Answers`: no write to the service, no lease run out).
    Where the API left a function making each answer's body afresh from the same
    reading (:data:`~keyard.answers.BODY_KEY`: a load-balancing choice), the kept
    answer calls it.
    """

    def __init__(self, *args: Any, registry: Registry | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: Answers[_KeptAnswer] | None = Answers(registry) if registry is not None else None
        #: False where a server in front keeps the lookups' whole answers itself
        #: (``keyard serve``'s front): the app then keeps only its choices.
        self.keeps_lookups = True

    def __call__(self, env: dict[str, Any], start_response: Any) -> Any:
        kept = self.kept
        if (
            kept is None
            or env.get("REQUEST_METHOD") != "GET"
            or env.get("CONTENT_LENGTH") not in (None, "", "0")
            or "HTTP_TRANSFER_ENCODING" in env
        ):
            return super().__call__(env, start_response)
        key = (
            env.get("PATH_INFO"),
            env.get("RAW_URI") or env.get("REQUEST_URI"),
            env.get("QUERY_STRING"),
            env.get("HTTP_AUTHORIZATION"),
            env.get("HTTP_ACCEPT"),
        )
        answer = kept.get(key)
        if answer is not None:
            status, headers, body = answer
            if not isinstance(body, bytes):
                made = body()
                headers = [
                    (name, str(len(made))) if name.lower() == "content-length" else (name, value)
                    for name, value in headers
                ]
                body = made
            start_response(status, list(headers))
            return [body]
        started: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return start_response(status, headers, exc_info)

        answered = super().__call__(env, capture)
        reading = env.get(READING_KEY)
        if reading is not None and started and isinstance(answered, list) and len(answered) == 1:
            maker: bytes | Callable[[], bytes] | None = env.get(BODY_KEY)
            if maker is None and self.keeps_lookups:
                maker = answered[0]
            if maker is not None:
                kept.keep(key, reading, (started[0], list(started[1]), maker))
        return answered


_KeptAnswer = tuple[str, list[tuple[str, str]], bytes | Callable[[], bytes]]


def wire(
    config: Config | Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
) -> tuple[falcon.App, Registry]:
    """keyard's WSGI app and the registry it serves.

    ``config`` is a :class:`Config`, a mapping in the config file's format, or
    ``None`` for the file loaded by ``keyard.helpers.config.load_file`` (else
    ``KEYARD_CONFIG``, ``./config.json``, defaults). ``store`` replaces the store
    the config names; ``clock`` (a function returning Unix seconds) replaces
    ``time.time``. The app keeps whole lookup answers (:class:`App`) where the
    config allows it (:func:`keeps_whole_answers`). An invalid config raises
    ConfigError here, never later.
    """
    config = _checked(config)
    chosen = type(store) if store is not None else store_class(config.store_type)
    refuse_unshared_store_under_workers(chosen, gunicorn_workers())
    if store is None:
        store = create_store(config.store_type, config.store_options)
    registry = Registry(
        store,
        clock=clock or time.time,
        ttl=TtlPolicy(config.default_ttl, config.min_ttl, config.max_ttl),
        capacity=config.namespace_capacity,
    )
    keep = keeps_whole_answers(config)
    app = App(middleware=api.middleware(config), registry=registry if keep else None)
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    api.mount(app, registry)
    log.info("keyard ready: store %s (%s)", config.store_type, config.source)
    return app, registry


def _checked(config: Config | Mapping[str, Any] | None) -> Config:
    if config is None:
        return config_module.current()
    if not isinstance(config, Config):
        return config_module.from_dict(config, source="create_app(config=...)")
    return config


def create_asgi_app(
    config: Config | Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
    threads: int = 4,
) -> WaitingFront:
    """keyard as an ASGI app: the WSGI app in ``threads`` threads, with blocking queries
    waiting on the event loop (:mod:`keyard.server.waiting`); arguments as :func:`wire`."""
    from keyard.server.waiting import WaitingFront

    config = _checked(config)
    app, registry = wire(config, store=store, clock=clock)
    keep = keeps_whole_answers(config)
    if isinstance(app, App):
        app.keeps_lookups = not keep  # the front keeps them, before it builds an environ
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keyard-app")
    return WaitingFront(app, registry, executor, keep_answers=keep)
