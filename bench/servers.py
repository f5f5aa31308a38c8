"""The WSGI servers under benchmark, and how to run one on a loopback port.

A :class:`Server` is a server with its settings: keyard and the bare falcon
baseline run under the same one, so that their throughputs compare.
:func:`keyard_serve_command` is the command a user runs, with its own defaults.
:func:`serving` runs any of them until the block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from keyard.server import WORKER_CLASS

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Sockets' accept queue: wrk's connections all arrive at once.
BACKLOG = "2048"


@dataclass(frozen=True)
class Server:
    """A WSGI server and its settings: ``python -m PROGRAM OPTIONS... APP_SPEC``.

    ``label`` names the settings in the results; ``{port}`` in ``options`` is the
    port it binds.
    """

    program: str
    label: str
    options: tuple[str, ...]

    def argv(self, app_spec: str, port: int) -> list[str]:
        options = [option.format(port=port) for option in self.options]
        return [sys.executable, "-m", self.program, *options, app_spec]


def gunicorn(workers: int, threads: int) -> Server:
    """gunicorn with keyard's gthread worker (gunicorn's, with its error pages in JSON)."""
    from gunicorn.config import Config

    options: tuple[str, ...] = (
        "--bind", "127.0.0.1:{port}", "--worker-class", WORKER_CLASS,
        "--workers", str(workers), "--threads", str(threads),
        "--backlog", BACKLOG, "--log-level", "warning",
        # --reuse-port: each worker listens on its own socket and the kernel spreads
        # wrk's connections over them. On one shared socket the first worker awake
        # took them all in about one run in three (the bare baseline: 2,600 req/s
        # instead of 7,000), and the luck of each run decided its ratio.
        "--reuse-port",
    )  # fmt: skip
    if "control_socket_disable" in Config().settings:  # gunicorn >= 25.1: one path per user
        options += ("--no-control-socket",)
    return Server("gunicorn", f"gunicorn gthread {workers}w x{threads}t", options)


def granian(workers: int, threads: int) -> Server:
    """granian's WSGI interface: ``threads`` is its blocking threads per worker."""
    options: tuple[str, ...] = (
        "--interface", "wsgi", "--host", "127.0.0.1", "--port", "{port}",
        "--workers", str(workers), "--blocking-threads", str(threads),
        "--backlog", BACKLOG, "--log-level", "warning", "--no-access-log",
    )  # fmt: skip
    return Server("granian", f"granian {workers}w x{threads}t", options)


def keyard_serve_command(port: int) -> list[str]:
    """``keyard serve`` from this environment, with its defaults and only the bind given."""
    program = Path(sys.executable).parent / "keyard"
    return [str(program), "serve", "--bind", f"127.0.0.1:{port}"]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (404 included) means a worker is serving
    except OSError:
        return False


@contextmanager
def serving(
    argv: Sequence[str], port: int, env: Mapping[str, str], log_path: Path, timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (which binds 127.0.0.1:``port``) until the block ends; yields its process.

    From the repository root, with ``env`` added to this environment and its output
    in ``log_path``. Raises RuntimeError, with that output, if it exits or does not
    answer HTTP within ``timeout`` seconds. On the way out: SIGTERM, then SIGKILL to
    its whole process group (the server's workers with it).
    """
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": pythonpath, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that workers die with it
        )
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"http://127.0.0.1:{port}/"):
            if process.poll() is not None:
                failure = f"exited with {process.returncode}"
            elif time.monotonic() > deadline:
                failure = f"did not answer within {timeout:g} s"
            else:
                time.sleep(0.05)
                continue
            raise RuntimeError(f"{' '.join(argv)} {failure}:\n{log_path.read_text()}")
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
