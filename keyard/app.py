"""The application factory: wires config, store, registry and the HTTP trees."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import falcon

from keyard import api
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
    ``time.time``. An invalid config raises ConfigError here, never later.
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
    app = falcon.App(middleware=api.middleware(config))
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
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keyard-app")
    # Whole answers are kept in the front only where a request's headers alone say who
    # asks: not with JWTs (a token expires) nor require_https (the peer's address counts).
    keep = "jwt" not in config.auth.modes and not config.require_https
    return WaitingFront(app, registry, executor, keep_answers=keep)
