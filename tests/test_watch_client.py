"""client.watch / watch_services and ``keyard watch`` against keyard in a real gunicorn process
(SQLite), restarted and reset under a running watch."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from click.testing import CliRunner

from keyard.cli import main
from keyard.client import InstanceSpec, InvalidInput, KeyardClient, Snapshot, Watch
from tests import gunicorn_server
from tests.conftest import free_port

A, B, C = "http://10.0.0.7:9000", "http://10.0.0.8:9000", "http://10.0.0.9:9000"


class Keyard:
    """keyard under gunicorn (gthread: waiting requests hold a thread each) on one port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "config.json").write_text("{}")
        self.database = directory / "registry.db"

    def run(self) -> AbstractContextManager[gunicorn_server.GunicornProcess]:
        env = {"KEYARD_CONFIG": str(self.directory / "config.json"),
               "KEYARD_SQLITE_PATH": str(self.database)}
        args = ["--worker-class", "gthread", "--threads", "8", "--graceful-timeout", "1"]
        return gunicorn_server.start("keyard.wsgi:app", self.port, env, args, timeout=60)


@pytest.fixture
def keyard(tmp_path: Path) -> Keyard:
    return Keyard(tmp_path)


@pytest.fixture
def running(keyard: Keyard) -> Iterator[Keyard]:
    with keyard.run():
        yield keyard


@pytest.fixture
def client(running: Keyard) -> KeyardClient:
    return KeyardClient(running.url, timeout=5)


def locations(snapshot: Snapshot) -> list[str]:
    return [i.location for i in snapshot.instances]


def later(seconds: float, action: object) -> threading.Thread:
    """Run ``action()`` in a thread after ``seconds``."""

    def run() -> None:
        time.sleep(seconds)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def next_within(watch: Watch, seconds: float) -> Snapshot:
    """The watch's next snapshot, which must come within ``seconds``."""
    started = time.monotonic()
    found = next(watch)
    assert time.monotonic() - started < seconds
    return found


def test_a_watch_yields_the_state_first_then_each_change(client: KeyardClient) -> None:
    client.register("payments", A, version="2")
    with client.watch("payments", wait=10) as watch:
        first = next_within(watch, 2)
        assert locations(first) == [A] and first.index >= 1
        later(0.3, lambda: client.register("payments", B, version="2"))
        second = next_within(watch, 3)
        assert locations(second) == [A, B] and second.index > first.index
        later(0.3, lambda: client.deregister("payments", A, version="2"))
        assert locations(next_within(watch, 3)) == [B]


def test_a_heartbeat_is_no_change_a_new_status_is(client: KeyardClient) -> None:
    client.register("payments", A, spec=InstanceSpec(instance_id="a"))
    with client.watch("payments", wait=10) as watch:
        next(watch)

        def beat_then_change() -> None:
            client.heartbeat("payments", A, spec=InstanceSpec(instance_id="a"))
            time.sleep(0.3)
            client.set_status("payments", "a", "OUT_OF_SERVICE")

        later(0.2, beat_then_change)
        changed = next_within(watch, 3)
        assert changed.instances[0].status == "OUT_OF_SERVICE"


def test_filters_apply_and_changes_outside_them_yield_nothing(client: KeyardClient) -> None:
    client.register("payments", A, spec=InstanceSpec(tags=["canary"]))
    with client.watch("payments", tag="canary", status="UP", wait=10) as watch:
        assert locations(next(watch)) == [A]

        def others_then_canary() -> None:
            client.register("payments", B)  # no canary tag: the filtered state is the same
            time.sleep(0.3)
            client.register("payments", C, spec=InstanceSpec(tags=["canary"]))

        later(0.2, others_then_canary)
        assert locations(next_within(watch, 3)) == [A, C]


def test_watch_services_watches_the_catalog(client: KeyardClient) -> None:
    with client.watch_services(wait=10) as watch:
        assert next(watch).services == ()
        later(0.3, lambda: client.register("payments", A))
        found = next_within(watch, 3)
        assert [(s.service_name, s.instances, s.up) for s in found.services] == [
            ("payments", 1, 1)]


def test_close_from_another_thread_ends_the_watch(client: KeyardClient) -> None:
    watch = client.watch("payments", wait=1)
    next(watch)
    later(0.2, watch.close)
    assert list(watch) == []


def test_a_bad_wait_is_invalid_input(client: KeyardClient) -> None:
    with pytest.raises(InvalidInput, match="wait must be between 1 and 600"):
        client.watch("payments", wait=0)


def test_a_watch_survives_a_restart_and_a_reset_of_the_registry(
    keyard: Keyard, caplog: pytest.LogCaptureFixture
) -> None:
    client = KeyardClient(keyard.url, timeout=2)
    with keyard.run():
        client.register("payments", A)
        watch = client.watch("payments", wait=2)
        first = next(watch)
        assert locations(first) == [A]
    answers: queue.Queue[Snapshot] = queue.Queue()

    def read() -> None:
        for snapshot in watch:
            answers.put(snapshot)

    reader = threading.Thread(target=read, daemon=True)
    with caplog.at_level(logging.WARNING, logger="keyard.client"):
        reader.start()
        time.sleep(1.0)  # the watch meets a registry that is down
        keyard.database.unlink()  # and a reset one: every index starts again at 1
        for suffix in ("-wal", "-shm"):
            Path(f"{keyard.database}{suffix}").unlink(missing_ok=True)
        with keyard.run():
            client.register("payments", B)
            # The restarted, empty registry may be seen before B's registration: nothing else.
            seen = [answers.get(timeout=20)]
            while locations(seen[-1]) != [B]:
                assert locations(seen[-1]) == []
                seen.append(answers.get(timeout=20))
            with urllib.request.urlopen(f"{keyard.url}/keyard/services/payments") as answer:
                assert seen[-1].index == int(answer.headers["X-Keyard-Index"])
            watch.close()
        reader.join(timeout=10)
        assert not reader.is_alive()
    assert any("trying again" in record.getMessage() for record in caplog.records)


# -- keyard watch ------------------------------------------------------------------------


class Lines:
    """The lines a process prints, read in a thread so that a test can wait for each."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                self.lines.put(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()

    def next(self, timeout: float = 10) -> str:
        return self.lines.get(timeout=timeout)


def keyard_watch(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "keyard", "watch", *args, "--url", url, "--wait", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(gunicorn_server.REPO_ROOT)},
    )


def test_keyard_watch_prints_the_state_then_each_change_until_sigterm(
    client: KeyardClient, running: Keyard
) -> None:
    client.register("payments", A, spec=InstanceSpec(instance_id="a"))
    process = keyard_watch(running.url, "payments")
    try:
        lines = Lines(process)
        assert lines.next().startswith(f"present  a version 1.0 at {A} UP (index ")
        client.register("payments", B, spec=InstanceSpec(instance_id="b"))
        assert lines.next().startswith(f"added    b version 1.0 at {B} UP")
        client.set_status("payments", "a", "OUT_OF_SERVICE")
        assert lines.next().startswith(f"changed  a version 1.0 at {A} OUT_OF_SERVICE")
        client.deregister_instance("payments", "b")
        assert lines.next().startswith(f"removed  b version 1.0 at {B}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait(10)


def test_keyard_watch_in_json_and_of_the_catalog(client: KeyardClient, running: Keyard) -> None:
    client.register("payments", A, spec=InstanceSpec(instance_id="a"))
    process = keyard_watch(running.url, "--format", "json")
    try:
        lines = Lines(process)
        first = json.loads(lines.next())
        assert first["event"] == "present" and first["index"] >= 1
        assert first["service"] == {"service_name": "payments", "instances": 1, "up": 1}
        client.register("orders", B)
        added = json.loads(lines.next())
        assert (added["event"], added["service"]["service_name"]) == ("added", "orders")
        assert added["index"] > first["index"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait(10)


def test_keyard_watch_filters_need_a_name() -> None:
    result = CliRunner().invoke(main, ["watch", "--tag", "x"])
    assert result.exit_code == 2
    assert "--version, --tag and --status need a service NAME" in result.output
