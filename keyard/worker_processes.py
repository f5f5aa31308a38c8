"""Refusing a store that one process keeps to itself where several worker processes run.

Under gunicorn with ``--workers 3`` every worker process builds its own app, so
with ``store_type: "simple"`` each would keep a separate registry: a service
registered through one worker would be unknown to the others. keyard refuses to
start that way; gunicorn reports the error and stops.
"""

from __future__ import annotations

import sys

from keyard.errors import ConfigError
from keyard.stores.base import Store


def gunicorn_workers() -> int | None:
    """The number of worker processes of the gunicorn now loading keyard, or ``None``.

    gunicorn keeps no global state to ask, so this looks up the call stack for
    the gunicorn object (arbiter, worker or application) whose ``cfg`` is loading
    the app: found both in a worker and in the master with ``--preload``.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        workers = getattr(getattr(owner, "cfg", None), "workers", None)
        if type(owner).__module__.startswith("gunicorn.") and isinstance(workers, int):
            return workers
        frame = frame.f_back  # type: ignore[assignment]
    return None


def refuse_unshared_store_under_workers(store: type[Store], workers: int | None) -> None:
    """ConfigError when a store that one process keeps to itself would run in several."""
    if not store.shared_across_processes and workers is not None and workers > 1:
        raise ConfigError(
            f"store_type {store.name!r} keeps the registry inside one process, but gunicorn runs "
            f"{workers} worker processes: each would hold its own registry. Use store_type "
            "'sqlite' (the default) or 'redis', or run gunicorn with --workers 1 "
            "(add --threads for concurrency)"
        )
