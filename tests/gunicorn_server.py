"""keyard under a real gunicorn, for tests: start, call over HTTP, stop, start again.

``GunicornServer(directory, config)`` writes ``config`` (if given) to
``directory/config.json`` and runs ``gunicorn keyard.wsgi:app`` there on a free
loopback port with ``KEYARD_CONFIG`` pointing at it. :meth:`GunicornServer.start`
returns once every worker process has answered. Each run's access log records
which worker served each request (:meth:`GunicornServer.served_by`). The
``gunicorn`` fixture hands out servers and stops every one of them afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, port_is_open, wait_until

ROOT = Path(__file__).resolve().parent.parent


class GunicornServer:
    """One gunicorn master and its workers serving ``keyard.wsgi:app``."""

    def __init__(
        self,
        directory: Path,
        config: Mapping[str, Any] | None = None,
        *,
        workers: int = 3,
        worker_class: str = "sync",
        threads: int = 1,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        self.config = config
        self.workers = workers
        self.worker_class = worker_class
        self.threads = threads
        self.env = dict(env or {})
        self.args = args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0  # how many times started
        self.output = ""  # what gunicorn printed, collected at stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/keyard"

    @property
    def access_log(self) -> Path:
        """The access log of the current (or last) run."""
        return self.directory / f"access-{self.runs}.log"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", "keyard.wsgi:app",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers),
            "--worker-class", self.worker_class,
            "--threads", str(self.threads),
            "--graceful-timeout", "5",
            "--access-logfile", str(self.access_log),
            "--access-logformat", "%(p)s %(m)s %(s)s %(q)s",
            *self.args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYARD_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("WEB_CONCURRENCY", None)  # gunicorn would take it as --workers
        if self.config is not None:
            (self.directory / "config.json").write_text(json.dumps(self.config))
            env["KEYARD_CONFIG"] = str(self.directory / "config.json")
        env.update(self.env)
        return env

    def start(self) -> None:
        """Start gunicorn (again, on the same port); return once every worker has answered."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, timeout=60, what=f"keyard answering on port {self.port}")
        wait_until(self._every_worker_answered, timeout=60, what="every worker answering")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            output = self.process.communicate()[0].decode(errors="replace")
            pytest.fail(f"gunicorn exited with {self.process.returncode}:\n{output}")
        return port_is_open(self.port) and self._probe()

    def _probe(self) -> bool:
        return self.call("GET", {"service_name": "-probe-"})[0] == 200

    def _every_worker_answered(self) -> bool:
        with ThreadPoolExecutor(2 * self.workers) as pool:
            assert all(pool.map(lambda _: self._probe(), range(2 * self.workers)))
        return len(set(self.served_by("GET", "service_name=-probe-"))) >= self.workers

    def stop(self) -> None:
        """Stop gunicorn gracefully and wait for it; its output goes to :attr:`output`."""
        if self.process is None:
            return
        process, self.process = self.process, None
        process.terminate()
        try:
            out = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            out = process.communicate(timeout=10)[0]
        self.output += out.decode(errors="replace")

    def run_expecting_failure(self, timeout: float = 30) -> tuple[int, str]:
        """Run gunicorn expecting it to refuse to start: its exit code and output.

        Fails the test (after stopping gunicorn) if it is still running after ``timeout``.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            out = self.process.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"gunicorn was still running after {timeout} s:\n{self.output}")
        code, self.process = self.process.returncode, None
        return code, out.decode(errors="replace")

    def call(self, method: str, fields: Mapping[str, Any]) -> tuple[int, Any]:
        """One request over a fresh connection: fields as JSON (POST, PUT) or a query."""
        url, body, headers = self.url, None, {"Connection": "close"}
        if method in ("POST", "PUT"):
            body = json.dumps(fields).encode()
            headers["Content-Type"] = "application/json"
        else:
            url += "?" + urllib.parse.urlencode(fields)
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def served_by(self, method: str, query: str | None = None) -> list[int]:
        """The worker process ids that served this run's ``method`` requests, in order.

        Only requests whose query string is ``query``, if given. A request is logged
        just after its answer is sent, so the latest may be missing for a moment.
        """
        pattern = re.compile(rf"^<(\d+)> {re.escape(method)} \d+ (.*)$")
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        found = [m for m in map(pattern.match, lines) if m]
        return [int(m.group(1)) for m in found if query is None or m.group(2) == query]


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., GunicornServer]]:
    """A factory of :class:`GunicornServer` (same arguments, minus the directory).

    Servers are not started; every one is stopped after the test.
    """
    servers: list[GunicornServer] = []

    def make(config: Mapping[str, Any] | None = None, **kwargs: Any) -> GunicornServer:
        server = GunicornServer(tmp_path / f"gunicorn-{len(servers)}", config, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
