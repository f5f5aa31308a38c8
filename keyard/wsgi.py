"""The ready WSGI entry point: ``gunicorn keyard.wsgi:app``.

Reads the file named by ``KEYARD_CONFIG``, else ``./config.json`` if present,
else the built-in defaults; ``KEYARD_*`` variables override.
"""

from keyard.app import create_app

app = create_app()
