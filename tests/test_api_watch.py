"""Blocking queries on the services tree: the change index in every answer, and waits on it.

Through webtest on the memory store (real time: waits are real), against a real Redis for
an outage mid-wait, and against gunicorn with two worker processes on one SQLite file.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest

from keyard.app import create_app
from keyard.stores import create_store
from keyard.stores.memory import MemoryStore
from tests import gunicorn_server
from tests.conftest import free_port
from tests.redis_server import RedisServer

A, B = "http://10.0.0.7:9000", "http://10.0.0.8:9000"


@pytest.fixture
def api() -> Iterator[webtest.TestApp]:
    store = MemoryStore()
    yield webtest.TestApp(create_app({}, store=store))
    store.close()


def register(api: webtest.TestApp, location: str, **fields: Any) -> None:
    api.post_json("/keyard", {"service_name": "payments", "version": "2", "location": location,
                              **fields})


class Background:
    """One request in a thread of its own: its answer, and when it came."""

    def __init__(self, api: webtest.TestApp, path: str, status: int = 200) -> None:
        self.response: webtest.TestResponse | None = None
        self.at = 0.0
        self.started = time.monotonic()

        def run() -> None:
            self.response = api.get(path, status=status)
            self.at = time.monotonic()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def wait(self, timeout: float = 15) -> webtest.TestResponse:
        self.thread.join(timeout)
        assert self.response is not None, "the request was not answered"
        return self.response


def test_a_service_read_answers_its_index_in_the_header_and_the_body(
    api: webtest.TestApp,
) -> None:
    register(api, A)
    response = api.get("/keyard/services/payments")
    index = int(response.headers["X-Keyard-Index"])
    assert index >= 1
    assert response.json["index"] == index
    assert [i["location"] for i in response.json["instances"]] == [A]
    assert api.get("/keyard/services/unknown").json["index"] >= 1


def test_the_catalog_answers_its_index_too(api: webtest.TestApp) -> None:
    before = api.get("/keyard/services").json["index"]
    register(api, A)
    response = api.get("/keyard/services")
    assert response.json["index"] == int(response.headers["X-Keyard-Index"]) > before
    assert response.json["services"] == [{"service_name": "payments", "instances": 1, "up": 1}]


def test_an_old_index_is_answered_at_once(api: webtest.TestApp) -> None:
    register(api, A)
    index = api.get("/keyard/services/payments").json["index"]
    register(api, B)
    started = time.monotonic()
    response = api.get(f"/keyard/services/payments?index={index}&wait=30")
    assert time.monotonic() - started < 1
    assert response.json["index"] > index
    assert len(response.json["instances"]) == 2


def test_a_current_index_waits_for_wait_then_answers_the_same_state(api: webtest.TestApp) -> None:
    register(api, A)
    index = api.get("/keyard/services/payments").json["index"]
    started = time.monotonic()
    response = api.get(f"/keyard/services/payments?index={index}&wait=1s")
    took = time.monotonic() - started
    assert 1.0 <= took < 1.0 + 1 / 16 + 0.5
    assert response.json["index"] == index
    assert [i["location"] for i in response.json["instances"]] == [A]


def test_a_write_wakes_a_waiting_query_with_the_new_state(api: webtest.TestApp) -> None:
    register(api, A)
    index = api.get("/keyard/services/payments").json["index"]
    waiting = Background(api, f"/keyard/services/payments?index={index}&wait=20")
    time.sleep(0.3)
    assert waiting.response is None, "no change yet"
    register(api, B)
    wrote = time.monotonic()
    response = waiting.wait()
    assert waiting.at - wrote < 0.5
    assert response.json["index"] > index
    assert response.headers["X-Keyard-Index"] == str(response.json["index"])
    assert [i["location"] for i in response.json["instances"]] == [A, B]


def test_a_new_service_wakes_a_catalog_watcher(api: webtest.TestApp) -> None:
    index = api.get("/keyard/services").json["index"]
    waiting = Background(api, f"/keyard/services?index={index}&wait=20")
    time.sleep(0.2)
    register(api, A)
    response = waiting.wait()
    assert response.json["index"] > index
    assert [s["service_name"] for s in response.json["services"]] == ["payments"]


def test_filters_apply_to_a_blocking_query_and_its_index_is_a_plain_reads(
    api: webtest.TestApp,
) -> None:
    register(api, A, tags=["canary"])
    index = api.get("/keyard/services/payments?tag=canary").json["index"]
    waiting = Background(api, f"/keyard/services/payments?tag=canary&status=UP&index={index}")
    time.sleep(0.2)
    register(api, B)  # no canary: the filtered answer is the same, the index moves
    response = waiting.wait()
    assert [i["location"] for i in response.json["instances"]] == [A]
    assert response.json["index"] == api.get("/keyard/services/payments").json["index"]


def test_an_expiry_wakes_a_blocking_query(api: webtest.TestApp) -> None:
    register(api, A, ttl=1)
    index = api.get("/keyard/services/payments").json["index"]
    started = time.monotonic()
    response = api.get(f"/keyard/services/payments?index={index}&wait=10")
    assert time.monotonic() - started < 2.2
    assert response.json["instances"] == []
    assert response.json["index"] > index


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("index=abc", ["index must be a whole number", "'abc'"]),
        ("index=-1", ["index must be a whole number"]),
        ("index=1.5", ["index must be a whole number"]),
        ("index=", ["index"]),
        ("index=1&wait=x", ["wait must be seconds", "'x'"]),
        ("index=1&wait=601", ["wait must be seconds from 0 to 600"]),
        ("index=1&wait=11m", ["wait must be seconds from 0 to 600"]),
        ("index=1&wait=10h", ["wait must be seconds"]),
        ("wait=10", ["wait is given without index"]),
        ("index=1&index=2", ["index"]),
    ],
)
def test_a_bad_index_or_wait_is_a_400_naming_it(
    api: webtest.TestApp, query: str, words: list[str]
) -> None:
    for path in ("/keyard/services/payments", "/keyard/services"):
        response = api.get(f"{path}?{query}", status=400)
        assert response.json["title"] == "Invalid input"
        for word in words:
            assert word in response.json["description"], response.json


def test_a_store_outage_during_a_wait_is_a_503_not_a_hang(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": own_redis_server.url, "prefix": redis_prefix,
                                   "timeout": 0.5})
    api = webtest.TestApp(create_app({}, store=store))
    try:
        index = api.get("/keyard/services/payments").json["index"]
        waiting = Background(api, f"/keyard/services/payments?index={index}&wait=60",
                             status=503)
        time.sleep(0.3)
        own_redis_server.stop()
        stopped = time.monotonic()
        response = waiting.wait(timeout=20)
        assert waiting.at - stopped < 5
        assert response.json["title"] == "Store unavailable" or "description" in response.json
    finally:
        store.close()


# -- gunicorn: two worker processes on one SQLite file ---------------------------------


def _get(url: str, timeout: float = 30) -> tuple[dict[str, Any], dict[str, str]]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}


def _post(url: str, fields: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(fields).encode(), method="POST",
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_a_write_through_one_gunicorn_worker_wakes_a_watcher_on_the_other(
    tmp_path: Path,
) -> None:
    """Sync workers: the waiting request holds one worker, so the write goes to the other."""
    (tmp_path / "config.json").write_text("{}")
    env = {"KEYARD_CONFIG": str(tmp_path / "config.json"),
           "KEYARD_SQLITE_PATH": str(tmp_path / "registry.db")}
    access_log = tmp_path / "access.log"
    args = ["--workers", "2", "--worker-class", "sync", "--timeout", "120",
            "--access-logfile", str(access_log), "--access-logformat", "%(p)s %(m)s %(q)s"]
    with gunicorn_server.start("keyard.wsgi:app", free_port(), env, args, timeout=60) as server:
        base = f"{server.url}/keyard"
        body, headers = _get(f"{base}/services/payments")
        index = body["index"]
        assert headers["x-keyard-index"] == str(index)
        answer: list[tuple[dict[str, Any], float]] = []

        def watch() -> None:
            found, _ = _get(f"{base}/services/payments?index={index}&wait=30")
            answer.append((found, time.monotonic()))

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.5)
        _post(base, {"service_name": "payments", "version": "2", "location": A})
        wrote = time.monotonic()
        watcher.join(timeout=40)
        assert answer, "the watcher was answered"
        found, at = answer[0]
        assert at - wrote < 1.0
        assert found["index"] > index
        assert [i["location"] for i in found["instances"]] == [A]
    served = [line.split(" ", 2) for line in access_log.read_text().splitlines()]
    [watcher_pid] = {pid for pid, method, query in served
                     if method == "GET" and query.startswith("index=")}
    writer_pids = {pid for pid, method, _ in served if method == "POST"}
    assert writer_pids and watcher_pid not in writer_pids, "the write went to the other worker"
