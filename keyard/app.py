"""The application factory: wires config, store, registry and the HTTP resource."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import falcon

from keyard.errors import InvalidInput, KeyardError, NotFound, StoreUnavailable
from keyard.helpers import config as config_module
from keyard.helpers.config import Config
from keyard.registry import Clock, Registry, TtlPolicy
from keyard.resource import KeyardResource
from keyard.stores import create_store
from keyard.stores.base import Store
from keyard.worker_processes import gunicorn_workers, refuse_memory_store_under_workers

log = logging.getLogger("keyard")


def _handle_keyard_error(
    req: falcon.Request, resp: falcon.Response, ex: KeyardError, params: dict[str, Any]
) -> None:
    """Map keyard's domain errors to HTTP; the only place that does."""
    description = str(ex)
    if isinstance(ex, InvalidInput):
        raise falcon.HTTPBadRequest(title="Invalid input", description=description)
    if isinstance(ex, NotFound):
        raise falcon.HTTPNotFound(title="Not found", description=description)
    if isinstance(ex, StoreUnavailable):
        log.warning("store unavailable: %s", ex)
        raise falcon.HTTPServiceUnavailable(
            title="Store unavailable", description=description, retry_after=1
        )
    raise ex


def _serialize_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    """Every error is JSON, whatever the request's Accept header said."""
    body = ex.to_dict()
    if "description" not in body:
        if ex.status == falcon.HTTP_404:
            body["description"] = f"nothing is served at {req.path!r}; keyard serves /keyard"
        elif ex.status == falcon.HTTP_405:
            allowed = dict(ex.headers or {}).get("Allow", "GET, POST, PUT, DELETE")
            body["description"] = f"{req.method} is not allowed on {req.path!r}; use {allowed}"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = body


class _RequireJsonAccept:
    """406 for a request whose Accept header excludes JSON (keyard only speaks JSON)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not req.client_accepts_json:
            raise falcon.HTTPNotAcceptable(
                title="Not acceptable",
                description=f"keyard answers in application/json; Accept was {req.accept!r}",
            )


def create_app(
    config: Config | Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
) -> falcon.App:
    """Build keyard's WSGI app.

    ``config`` is a :class:`Config`, a mapping in the config file's format, or
    ``None`` for the file loaded by ``keyard.helpers.config.load_file`` (else
    ``KEYARD_CONFIG``, ``./config.json``, defaults). ``store`` replaces the store
    the config names; ``clock`` (a function returning Unix seconds) replaces
    ``time.time``. An invalid config raises ConfigError here, never later.
    """
    if config is None:
        config = config_module.current()
    elif not isinstance(config, Config):
        config = config_module.from_dict(config, source="create_app(config=...)")
    store_name = store.name if store is not None else config.store_type
    refuse_memory_store_under_workers(store_name, gunicorn_workers())
    if store is None:
        store = create_store(config.store_type, config.store_options)
    registry = Registry(
        store,
        clock=clock or time.time,
        ttl=TtlPolicy(config.default_ttl, config.min_ttl, config.max_ttl),
    )
    app = falcon.App(middleware=[_RequireJsonAccept()])
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    app.add_route("/keyard", KeyardResource(registry))
    app.add_error_handler(KeyardError, _handle_keyard_error)
    app.set_error_serializer(_serialize_error)
    log.info("keyard ready: store %s (%s)", config.store_type, config.source)
    return app
