"""Shared test helpers: free loopback ports, and finding the real servers.

A test that needs a real server (etcd, Redis, gunicorn) gets it from a fixture
that starts it on a free loopback port in a temp dir and stops it afterwards.
When the server's program is missing, the test skips with a reason locally and
fails under ``CI=true``: CI never passes without the real thing.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable

import pytest

#: Fixture modules: real servers the tests start (see each module's docstring).
pytest_plugins = ["tests.redis_server", "tests.etcd_server"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_program(name: str, package: str) -> str:
    """The path of ``name``; skip (locally) or fail (under CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install Debian's {package} (tests/install-servers.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it returns True; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout} s")


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class FakeClock:
    """A clock the test moves by hand: ``clock()`` returns Unix seconds."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
