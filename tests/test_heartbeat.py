"""The heartbeat helper: keeps an instance registered from a thread, through registry restarts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from keyard.app import create_app
from keyard.client import ConnectionFailed, Heartbeat, InvalidInput, KeyardClient, Registration
from tests.conftest import free_port, wait_until
from tests.wsgi_thread import ThreadServer, serve_in_thread


@pytest.fixture
def registry() -> Iterator[ThreadServer]:
    with serve_in_thread(create_app({"store_type": "simple"})) as server:
        yield server


@pytest.fixture
def client(registry: ThreadServer) -> KeyardClient:
    return KeyardClient(registry.url, timeout=1)


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("keyard-heartbeat")]


def test_it_health_checks_before_the_ttl_runs_out(client: KeyardClient) -> None:
    with Heartbeat(client, "app2", "loc", ttl=1, interval=0.2) as heartbeat:
        assert heartbeat.registration is not None and heartbeat.registration.created
        assert client.lookup("app2") == ["loc"]
        time.sleep(1.5)  # longer than the TTL: only health checks keep it alive
        assert client.lookup("app2") == ["loc"]
        assert 5 <= heartbeat.beats <= 11  # 1 + one per 0.16 to 0.2 s, jitter included
        assert heartbeat.last_error is None


def test_the_interval_defaults_to_a_third_of_the_registered_ttl(client: KeyardClient) -> None:
    heartbeat = Heartbeat(client, "app2", "loc", ttl=9)
    assert heartbeat.interval == 3
    with Heartbeat(client, "app2", "other") as default_ttl:
        assert default_ttl.interval == 10  # the registry's default TTL is 30 s


def test_stop_is_prompt_and_deregisters(client: KeyardClient) -> None:
    heartbeat = Heartbeat(client, "app2", "loc", ttl=60, interval=30).start()
    assert heartbeat.running
    started = time.monotonic()
    assert heartbeat.stop() is True
    assert time.monotonic() - started < 0.5  # not waiting out the 30 s interval
    assert not heartbeat.running
    assert client.lookup("app2") == []
    assert heartbeat.stop() is True  # again: same answer, nothing sent


def test_the_context_manager_deregisters_even_when_the_block_fails(client: KeyardClient) -> None:
    with pytest.raises(RuntimeError, match="boom"), client.keep_alive("app2", "loc", ttl=60):
        assert client.lookup("app2") == ["loc"]
        raise RuntimeError("boom")
    assert client.lookup("app2") == []
    assert heartbeat_threads() == []


def test_it_survives_a_registry_restart_and_registers_again(
    registry: ThreadServer, client: KeyardClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyard.client")
    with Heartbeat(client, "app2", "loc", ttl=5, interval=0.2) as heartbeat:
        registry.stop()
        wait_until(lambda: isinstance(heartbeat.last_error, ConnectionFailed), 2, "a failure")
        assert heartbeat.running

        # Empty, on the same port:
        with serve_in_thread(create_app({"store_type": "simple"}), registry.port):
            restarted = time.monotonic()
            wait_until(lambda: client.lookup("app2") == ["loc"], 2, "registering again")
            assert time.monotonic() - restarted < 0.8  # a couple of 0.2 s periods
            assert heartbeat.registration is not None
            assert heartbeat.registration.ttl == 5
    assert "health check of app2 at loc failed" in caplog.text
    assert "the registry had lost app2 at loc: registered again" in caplog.text


def test_start_raises_when_the_registry_refuses_the_instance(client: KeyardClient) -> None:
    heartbeat = Heartbeat(client, "app2", "loc", ttl=100_000)
    with pytest.raises(InvalidInput, match="ttl must be between 1 and 86400 seconds"):
        heartbeat.start()
    assert not heartbeat.running
    assert heartbeat.stop() is True  # nothing was registered, nothing to do


def test_start_without_blocking_registers_once_the_registry_comes_up() -> None:
    port = free_port()
    client = KeyardClient(f"http://127.0.0.1:{port}", timeout=1)
    heartbeat = Heartbeat(client, "app2", "loc", ttl=5, interval=0.2).start(block=False)
    try:
        wait_until(lambda: heartbeat.last_error is not None, 2, "a failed registration")
        assert heartbeat.registration is None
        with serve_in_thread(create_app({"store_type": "simple"}), port):
            wait_until(lambda: client.lookup("app2") == ["loc"], 2, "the registration")
            assert heartbeat.stop() is True
            assert client.lookup("app2") == []
    finally:
        heartbeat.stop()


def test_stop_reports_a_registry_that_cannot_be_reached(registry: ThreadServer) -> None:
    heartbeat = Heartbeat(KeyardClient(registry.url, timeout=1), "app2", "loc", interval=30)
    heartbeat.start()
    registry.stop()
    assert heartbeat.stop() is False
    assert isinstance(heartbeat.last_error, ConnectionFailed)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": 10, "interval": 10}, "must be shorter than the ttl"),
        ({"interval": 0}, "positive number of seconds"),
        ({"jitter": 1.0}, r"jitter must be a fraction in \[0, 1\)"),
    ],
)
def test_impossible_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Heartbeat(KeyardClient(), "app2", "loc", **options)


def test_it_cannot_be_started_twice(client: KeyardClient) -> None:
    heartbeat = Heartbeat(client, "app2", "loc", interval=30)
    with heartbeat, pytest.raises(RuntimeError, match="already started"):
        heartbeat.start()


class RecordingClient(KeyardClient):
    """Answers registrations itself and records when each health check came."""

    def __init__(self) -> None:
        super().__init__()
        self.beat_times: list[float] = []
        self.deregistered = False

    def _answer(self, service_name: str, location: str, **fields: object) -> Registration:
        self.beat_times.append(time.monotonic())
        expires = datetime.now(timezone.utc)
        return Registration(service_name, "1.0", location, 60, expires, created=True)

    register = heartbeat = _answer  # type: ignore[assignment]

    def deregister(self, service_name: str, location: str, **fields: object) -> None:
        self.deregistered = True


def test_health_checks_come_a_jittered_interval_apart() -> None:
    client = RecordingClient()
    with Heartbeat(client, "app2", "loc", interval=0.1, jitter=0.5):
        wait_until(lambda: len(client.beat_times) >= 12, 5, "twelve health checks")
    assert client.deregistered
    gaps = [later - earlier for earlier, later in zip(client.beat_times, client.beat_times[1:])]
    assert min(gaps) >= 0.05 - 0.005  # never earlier than interval * (1 - jitter)
    assert max(gaps) - min(gaps) > 0.005  # not in lockstep
    assert sorted(gaps)[len(gaps) // 2] < 0.1 + 0.02  # the median within the interval
