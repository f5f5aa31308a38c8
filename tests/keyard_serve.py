"""``keyard serve`` as a subprocess on a loopback port, under either server::

    with keyard_serve.start("granian", tmp_path, port=free_port()) as served:
        urllib.request.urlopen(served.url + "/keyard?service_name=web")

:func:`start` runs ``python -m keyard.cli serve --server SERVER --bind
127.0.0.1:PORT`` in ``workdir`` (its config file and sqlite data go there) in a
session of its own, waits until it answers HTTP, and on the way out stops it
(SIGTERM, then SIGKILL to the whole process group), also when the test failed.
Its standard output and error go to files, shown when it fails to start.
:func:`run_to_exit` runs it expecting it to refuse to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.gunicorn_server import _answers

REPO_ROOT = Path(__file__).resolve().parent.parent
#: ``keyard serve --server`` values; every promise of ``keyard serve`` is tested under each.
SERVERS = ("granian", "gunicorn")


def command(server: str, port: int, args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "keyard.cli", "serve",
        "--server", server, "--bind", f"127.0.0.1:{port}", *args,
    ]  # fmt: skip


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    inherited = {
        name: value for name, value in os.environ.items() if not name.startswith("KEYARD_")
    }
    return {**inherited, "PYTHONPATH": pythonpath, **(env or {})}


class Served:
    """A running ``keyard serve``: its ``server``, ``port``, ``url`` and ``process``."""

    def __init__(
        self,
        server: str,
        process: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        cafile: str | None = None,
    ) -> None:
        self.server = server
        self.process = process
        self.port = port
        self.url = f"{'https' if cafile else 'http'}://127.0.0.1:{port}"
        self.workdir = workdir
        self.cafile = cafile

    def stdout(self) -> str:
        return (self.workdir / "serve.out").read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return (self.workdir / "serve.err").read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        return self.stderr() + self.stdout()

    def worker_pids(self) -> list[int]:
        """The processes whose parent is the server's main process (its workers)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            if int(stat.rpartition(")")[2].split()[1]) == self.process.pid:
                pids.append(int(entry.name))
        return sorted(pids)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` to the main process and wait for it to exit (SIGKILL after
        ``timeout``); returns its exit status. Any worker left behind is killed."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
        self._kill_group()
        return self.process.wait(timeout)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(self.process.pid, signal.SIGKILL)


def write_config(workdir: Path, config: str = '{"store_type": "simple"}') -> Path:
    path = workdir / "config.json"
    path.write_text(config)
    return path


@contextmanager
def start(
    server: str,
    workdir: Path,
    port: int,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 30.0,
    cafile: str | None = None,
) -> Iterator[Served]:
    """Run ``keyard serve --server SERVER`` on 127.0.0.1:``port`` until the block ends.

    From ``workdir``, with ``workdir/config.json`` (the memory store unless written
    before) unless ``env`` names another; ``args`` go to ``keyard serve``. Fails the
    test if it exits or does not answer HTTP within ``timeout`` seconds. With
    ``cafile`` it serves HTTPS (``args`` give ``--certfile``, ``--keyfile``): the
    probe and ``url`` are ``https://``, verified against ``cafile``.
    """
    if not (workdir / "config.json").exists():
        write_config(workdir)
    env = {"KEYARD_CONFIG": str(workdir / "config.json"), **(env or {})}
    with (workdir / "serve.out").open("wb") as out, (workdir / "serve.err").open("wb") as err:
        process = subprocess.Popen(
            command(server, port, args),
            cwd=workdir,
            env=_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, so that workers die with it
        )
    served = Served(server, process, port, workdir, cafile)
    try:
        deadline = time.monotonic() + timeout
        probe = served.url + "/"
        while not (_answers_https(probe, cafile) if cafile else _answers(probe)):
            if process.poll() is not None:
                pytest.fail(f"keyard serve exited with {process.returncode}:\n{served.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"keyard serve did not answer within {timeout} s:\n{served.output()}")
            time.sleep(0.05)
        yield served
    finally:
        served.stop()


def _answers_https(url: str, cafile: str) -> bool:
    try:
        context = ssl.create_default_context(cafile=cafile)
        with urllib.request.urlopen(url, timeout=0.5, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def run_to_exit(
    server: str,
    workdir: Path,
    port: int,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``keyard serve`` as :func:`start` does, expecting it to exit by itself
    (within ``timeout`` seconds, else the test fails); its exit status and output."""
    if not (workdir / "config.json").exists():
        write_config(workdir)
    env = {"KEYARD_CONFIG": str(workdir / "config.json"), **(env or {})}
    process = subprocess.Popen(
        command(server, port, args),
        cwd=workdir,
        env=_environment(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=10)
        pytest.fail(f"keyard serve was still running after {timeout} s:\n{stderr}{stdout}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # any worker left behind
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
