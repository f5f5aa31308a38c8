"""End to end: the example apps under real gunicorn processes, as the README runs them.

keyard (``example.keyard_app``), two app2 instances that register themselves,
and app1, which finds app2 through keyard and answers ``Hello World``.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from email.message import Message

import pytest

from keyard.client import KeyardClient
from tests import gunicorn_server
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow

APP2_TTL = 2  # seconds: short, so the test sees a crashed app2 expire


def get(url: str, timeout: float = 5) -> tuple[int, Message, str]:
    """Status, headers (case-insensitive) and body of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read().decode()


@pytest.fixture
def servers() -> Iterator[dict[str, gunicorn_server.GunicornProcess]]:
    with ExitStack() as stack:
        keyard = stack.enter_context(gunicorn_server.start("example.keyard_app:app", free_port()))
        running = {"keyard": keyard}
        for name in ("app2a", "app2b"):
            port = free_port()
            env = {
                "KEYARD_URL": keyard.url,
                "APP2_LOCATION": f"http://127.0.0.1:{port}",
                "APP2_TTL": str(APP2_TTL),
            }
            running[name] = stack.enter_context(
                gunicorn_server.start("example.app2:app", port, env)
            )
        app1_env = {"KEYARD_URL": keyard.url, "APP1_TIMEOUT": "1"}
        running["app1"] = stack.enter_context(
            gunicorn_server.start("example.app1:app", free_port(), app1_env)
        )
        yield running


def test_app1_finds_app2_through_keyard_and_answers_503_once_app2_is_gone(
    servers: dict[str, gunicorn_server.GunicornProcess],
) -> None:
    keyard = KeyardClient(servers["keyard"].url, timeout=2)
    app2a, app2b = servers["app2a"].url, servers["app2b"].url
    app1 = servers["app1"].url + "/app1"
    wait_until(lambda: keyard.lookup("app2") == sorted([app2a, app2b]), 10, "app2 registering")

    # Both app2 answer, at random.
    answers = [get(app1) for _ in range(30)]
    assert {(status, body) for status, _, body in answers} == {(200, "Hello World")}
    assert {headers["X-Served-By"] for _, headers, _ in answers} == {app2a, app2b}

    # app2a stops cleanly: it deregisters on its way out, app1 uses app2b only.
    assert servers["app2a"].stop() == 0
    assert keyard.lookup("app2") == [app2b]
    assert {get(app1)[1]["X-Served-By"] for _ in range(5)} == {app2b}

    # app2b hangs: app1 gives up after its timeout (1 s) with a 503, not a hang.
    servers["app2b"].signal_group(signal.SIGSTOP)
    started = time.monotonic()
    status, headers, body = get(app1)
    assert status == 503
    assert 0.9 < time.monotonic() - started < 3
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["title"] == "app2 unavailable"
    assert json.loads(body)["description"] == f"app2 at {app2b} did not answer: timed out"

    # app2b crashes (no deregistration): 503 at once, and keyard forgets it within its TTL.
    servers["app2b"].kill()
    status, _, body = get(app1)
    problem = json.loads(body)
    assert (status, problem["title"]) == (503, "app2 unavailable")
    assert problem["description"].startswith(f"app2 at {app2b} did not answer: [Errno ")
    crashed = time.monotonic()
    wait_until(lambda: keyard.lookup("app2") == [], APP2_TTL + 1, "app2b expiring")
    assert time.monotonic() - crashed <= APP2_TTL + 0.5
    status, _, body = get(app1)
    assert status == 503
    assert json.loads(body) == {
        "title": "app2 unavailable",
        "description": "no live instance of app2 is registered in keyard",
    }
