"""Example apps: keyard itself, app2 which registers itself, and app1 which finds app2.

Run from the repository root::

    gunicorn example.keyard_app:app -b 0.0.0.0:8000
    gunicorn example.app2:app -b 0.0.0.0:8002
    gunicorn example.app1:app -b 0.0.0.0:8001
    curl 0.0.0.0:8001/app1        # -> Hello World
"""
