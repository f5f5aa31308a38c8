"""gunicorn as a subprocess on a loopback port, for tests of the real thing::

    with gunicorn_server.start("example.app2:app", free_port(), env={"X": "1"}) as server:
        urllib.request.urlopen(server.url + "/app2")

:func:`start` runs ``python -m gunicorn APP_SPEC --bind 127.0.0.1:PORT`` from the
repository root in a session of its own, waits until it answers HTTP, and on
the way out stops it (SIGTERM, then SIGKILL to the whole process group), also
when the test failed. Its output goes to a temp file, shown when it fails to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _control_socket_args() -> list[str]:
    """gunicorn >= 25.1 opens a control socket at one path per user: not for parallel tests."""
    from gunicorn.config import Config

    return ["--no-control-socket"] if "control_socket_disable" in Config().settings else []


class GunicornProcess:
    """A running gunicorn: its ``port``, ``url`` and ``process`` (the master)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def output(self) -> str:
        """Everything gunicorn and the app printed so far."""
        return Path(self.log_path).read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` to the master and wait for it to exit (SIGKILL after ``timeout``).

        Returns the exit status. Any worker left behind is killed.
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_group()
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the master and its workers at once: a crash, with no clean-up."""
        self._kill_group()
        self.process.wait(10)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the master and its workers (e.g. SIGSTOP to make them hang)."""
        os.killpg(self.process.pid, sig)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(self.process.pid, signal.SIGKILL)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (404 included) means a worker is serving
    except OSError:
        return False


@contextmanager
def start(
    app_spec: str,
    port: int,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 20.0,
) -> Iterator[GunicornProcess]:
    """Run gunicorn with ``app_spec`` on 127.0.0.1:``port`` until the block ends.

    ``env`` is added to this process's environment; ``extra_args`` go to gunicorn
    (a second ``--workers`` wins over the default of 1). Fails the test if gunicorn
    exits or does not answer HTTP within ``timeout`` seconds.
    """
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        app_spec,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        *_control_socket_args(),
        *extra_args,
    ]
    log_fd, log_path = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
    try:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that workers die with it
        )
    finally:
        os.close(log_fd)
    server = GunicornProcess(process, port, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(server.url + "/"):
            if process.poll() is not None:
                pytest.fail(
                    f"gunicorn {app_spec} exited with {process.returncode}:\n{server.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"gunicorn {app_spec} did not answer within {timeout} s:\n{server.output()}"
                )
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
        os.unlink(log_path)


def run_to_exit(
    app_spec: str,
    port: int,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 30.0,
) -> tuple[int, str]:
    """Run gunicorn as :func:`start` does, expecting it to refuse to start.

    Returns its exit status and output; fails the test (after killing it) if it is
    still running after ``timeout`` seconds.
    """
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "gunicorn", app_spec,
        "--bind", f"127.0.0.1:{port}", "--workers", "1",
        *_control_socket_args(), *extra_args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output = process.communicate(timeout=timeout)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate(timeout=10)[0].decode(errors="replace")
        pytest.fail(f"gunicorn {app_spec} was still running after {timeout} s:\n{output}")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # any worker left behind
    return process.returncode, output
