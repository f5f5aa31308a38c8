"""Real etcd servers for the tests: one member, or a three-member cluster.

Each server listens on free loopback ports, keeps its data in a temp dir, serves
the v2 API (``--enable-v2=true``) and is stopped (terminate, wait, kill) when
its fixture ends, whatever the test did. ``require_program`` skips the tests
locally when etcd is missing and fails them under ``CI=true``.

Fixtures:

- ``etcd_server``: one member for the whole session; tests share it, so each
  test uses its own ``base_path`` (``unique_base_path``).
- ``own_etcd``: a member of the test's own, which the test may stop and start.
- ``etcd_cluster``: three members of the test's own; the test may kill any.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from tests.conftest import free_port, require_program, wait_until

#: Raft timings for tests: a lost leader is replaced within about a second.
HEARTBEAT_MS = 50
ELECTION_MS = 500
START_TIMEOUT = 20.0


class PortTaken(Exception):
    """Another process took a port between ``free_port()`` and etcd binding it."""


class EtcdServer:
    """One etcd member: its ports, data dir and process. ``start`` may be called again."""

    def __init__(
        self,
        program: str,
        name: str,
        workdir: Path,
        initial_cluster: str | None = None,
        enable_v2: bool = True,
    ) -> None:
        self.program = program
        self.enable_v2 = enable_v2
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = workdir / f"{name}-{self.client_port}.data"
        self.log_path = workdir / f"{name}-{self.client_port}.log"
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<client port>``, as the store's ``host`` option takes it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        return [
            self.program,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--enable-v2={str(self.enable_v2).lower()}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=keyard-tests",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--log-level=warn",
        ]

    def start(self, wait: bool = True) -> None:
        """Start the process (on the same ports and data dir as before, if restarted)."""
        assert not self.running, f"etcd {self.name} is already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if wait:
            self.wait_healthy()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """True when the member answers ``/health`` with a leader elected."""
        if self.process is not None and self.process.poll() is not None:
            log = self.log()
            if "address already in use" in log:
                raise PortTaken(f"etcd {self.name}: {log}")
            pytest.fail(f"etcd {self.name} exited with {self.process.returncode}: {log}")
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=0.5) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, http.client.HTTPException, ValueError):
            return False  # not listening yet, or 503 until a leader is elected

    def wait_healthy(self) -> None:
        wait_until(self.healthy, START_TIMEOUT, f"etcd {self.name} answering /health")

    def is_leader(self) -> bool:
        with urllib.request.urlopen(f"{self.client_url}/v2/stats/self", timeout=1) as response:
            return json.loads(response.read()).get("state") == "StateLeader"

    def stop(self) -> None:
        """Terminate the process, then kill it if it does not exit in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: the member dies at once, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def raw(self, key: str, **query: str) -> dict[str, object] | None:
        """GET ``/v2/keys{key}`` (``key`` URL-encoded already); None on 404."""
        query_string = "&".join(f"{k}={v}" for k, v in query.items())
        url = f"{self.client_url}/v2/keys{key}" + (f"?{query_string}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())["node"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def raw_put(self, key: str, data: str) -> None:
        """PUT form-encoded ``data`` to ``/v2/keys{key}`` (``key`` URL-encoded already)."""
        request = urllib.request.Request(
            f"{self.client_url}/v2/keys{key}",
            data=data.encode(),
            method="PUT",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=2):
            pass


class EtcdCluster:
    """Three members started together; ``leader()`` says which one leads now."""

    def __init__(self, program: str, workdir: Path, size: int = 3) -> None:
        names = [f"member{n}" for n in range(size)]
        self.members = [EtcdServer(program, name, workdir) for name in names]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    def start(self) -> None:
        for member in self.members:
            member.start(wait=False)
        for member in self.members:
            member.wait_healthy()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def leader(self) -> EtcdServer:
        found: list[EtcdServer] = []

        def one_leader() -> bool:
            found[:] = [m for m in self.members if m.running and m.is_leader()]
            return len(found) == 1

        wait_until(one_leader, START_TIMEOUT, "one etcd member leading")
        return found[0]


class _Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Startable)


def started(build: Callable[[], S], attempts: int = 3) -> S:
    """``build()`` a server on free ports and start it; on other ports if one was taken."""
    for _ in range(attempts):
        server = build()
        try:
            server.start()
            return server
        except PortTaken:
            server.stop()
        except BaseException:
            server.stop()
            raise
    pytest.fail(f"etcd could not bind free ports in {attempts} attempts")


def unique_base_path() -> str:
    """A base path no other test uses, for tests that share one etcd."""
    return f"/keyard-tests/{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def etcd_program() -> str:
    return require_program("etcd", "etcd-server")


@pytest.fixture(scope="session")
def etcd_server(
    etcd_program: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EtcdServer]:
    """One etcd member shared by the whole session."""
    workdir = tmp_path_factory.mktemp("etcd")
    server = started(lambda: EtcdServer(etcd_program, "shared", workdir))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_etcd(etcd_program: str, tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd member for this test alone; the test may stop and start it."""
    server = started(lambda: EtcdServer(etcd_program, "own", tmp_path))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster(etcd_program: str, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster for this test alone."""
    cluster = started(lambda: EtcdCluster(etcd_program, tmp_path))
    try:
        yield cluster
    finally:
        cluster.stop()
