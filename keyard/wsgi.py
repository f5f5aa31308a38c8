"""The ready WSGI entry point: ``gunicorn keyard.wsgi:app`` (or any WSGI server).

Reads the file named by ``KEYARD_CONFIG``, else ``./config.json`` if present,
else the built-in defaults; ``KEYARD_*`` variables override.

An invalid configuration stops the server with its one message and no
traceback: in a gunicorn worker as an app that failed to load (gunicorn prints
the message and exits 4), elsewhere (gunicorn's ``--preload`` included) as
``SystemExit`` with ``Error: MESSAGE`` (exit 1).
"""

from __future__ import annotations

import sys

from keyard.app import create_app
from keyard.errors import ConfigError


def _in_gunicorn_worker() -> bool:
    """Whether a gunicorn worker is importing this module (its stack holds the worker)."""
    workers = sys.modules.get("gunicorn.workers.base")
    if workers is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), workers.Worker):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _startup_error(error: ConfigError) -> BaseException:
    """The exception that makes the server loading keyard print ``error`` alone and stop."""
    if _in_gunicorn_worker():
        from gunicorn.errors import AppImportError

        return AppImportError(f"Error: {error}")
    return SystemExit(f"Error: {error}")


try:
    app = create_app()
except ConfigError as exc:
    raise _startup_error(exc) from None
