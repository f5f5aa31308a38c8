"""keyard under gunicorn with several worker processes, on every store that can share state.

Registrations made through any worker are seen by every worker, and survive a
restart of keyard. Adding a store is one entry in ``STORE_CONFIGS``.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests import gunicorn_server
from tests.conftest import free_port, wait_until
from tests.etcd_server import unique_base_path

WORKERS = 3
REGISTRATIONS = 60
LOOKUPS = 60

# store name -> (the test's request, tmp dir) -> (config file contents, environment)
StoreConfig = Callable[[pytest.FixtureRequest, Path], tuple[dict[str, Any], dict[str, str]]]
STORE_CONFIGS: dict[str, StoreConfig] = {
    # An empty config file: the default store is sqlite; its path comes from the environment.
    "sqlite": lambda request, tmp: ({}, {"KEYARD_SQLITE_PATH": str(tmp / "data" / "reg.db")}),
    "redis": lambda request, tmp: (
        {
            "store_type": "redis",
            "redis": {
                "url": request.getfixturevalue("redis_server").url,
                "prefix": request.getfixturevalue("redis_prefix"),
            },
        },
        {},
    ),
    "etcd": lambda request, tmp: (
        {
            "store_type": "etcd",
            "etcd": {
                "host": request.getfixturevalue("etcd_server").endpoint,
                "base_path": unique_base_path(),
            },
        },
        {},
    ),
    # The same with each worker's copy of the registry, switched on by the environment.
    "etcd-cache": lambda request, tmp: (
        {
            "store_type": "etcd",
            "etcd": {
                "host": request.getfixturevalue("etcd_server").endpoint,
                "base_path": unique_base_path(),
            },
        },
        {"KEYARD_ETCD_CACHE": "true"},
    ),
}


def call(url: str, method: str, fields: dict[str, Any]) -> tuple[int, Any]:
    """One request over a fresh connection: fields as JSON (POST, PUT) or a query string."""
    body, headers = None, {"Connection": "close"}
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


class Keyard:
    """keyard under gunicorn: WORKERS sync workers, an access log naming the worker pid."""

    def __init__(
        self,
        directory: Path,
        config: dict[str, Any],
        env: dict[str, str],
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.extra_args = list(extra_args)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(config))
        self.env = {**env, "KEYARD_CONFIG": str(directory / "config.json")}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/keyard"
        self.runs = 0

    def run(self) -> AbstractContextManager[gunicorn_server.GunicornProcess]:
        """Start gunicorn (a new access log per run); the block runs once every worker answers."""
        self.runs += 1
        args = [
            "--workers", str(WORKERS), "--worker-class", "sync",
            "--access-logfile", str(self.access_log),
            "--access-logformat", "%(p)s %(m)s %(s)s %(q)s",
            *self.extra_args,
        ]  # fmt: skip
        return gunicorn_server.start("keyard.wsgi:app", self.port, self.env, args, timeout=60)

    @property
    def access_log(self) -> Path:
        return self.directory / f"access-{self.runs}.log"

    def served_by(self, method: str, query: str) -> set[int]:
        """The worker pids that served this run's ``method`` requests with this query."""
        if not self.access_log.exists():
            return set()
        pattern = re.compile(rf"^<(\d+)> {method} \d+ (.*)$")
        found = map(pattern.match, self.access_log.read_text().splitlines())
        return {int(m.group(1)) for m in found if m and m.group(2) == query}

    def every_worker_answers(self, fields: dict[str, str], expected: Any) -> None:
        """GETs over fresh connections, six at a time, until every worker has served some.

        Each answer must be ``(200, expected)``.
        """
        query = urllib.parse.urlencode(fields)

        def lookups() -> bool:
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda _: call(self.url, "GET", fields), range(LOOKUPS)))
            wrong = [answer for answer in answers if answer != (200, expected)]
            assert wrong == [], f"{len(wrong)} of {LOOKUPS} answers differ"
            return len(self.served_by("GET", query)) == WORKERS

        wait_until(lookups, timeout=60, what=f"GET ?{query} answered by all {WORKERS} workers")


@pytest.mark.slow
@pytest.mark.parametrize("store", sorted(STORE_CONFIGS))
def test_every_worker_sees_every_registration_and_they_survive_a_restart(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config, env = STORE_CONFIGS[store](request, tmp_path)
    keyard = Keyard(tmp_path / "keyard", config, env)
    expected = sorted(f"http://10.0.0.{n}:8000/" for n in range(REGISTRATIONS))

    with keyard.run() as server:
        # Every worker is up before the registrations, so they spread over the workers.
        keyard.every_worker_answers({"service_name": "-"}, {"result": []})
        with ThreadPoolExecutor(6) as pool:
            posted = list(
                pool.map(
                    lambda location: call(
                        keyard.url,
                        "POST",
                        {"service_name": "web", "location": location, "ttl": 600},
                    ),
                    expected,
                )
            )
        assert [status for status, _ in posted] == [201] * REGISTRATIONS, "each one new, once"
        keyard.every_worker_answers({"service_name": "web"}, {"result": expected})
        assert server.stop() == 0
        assert "Traceback" not in server.output(), server.output()
    if store == "sqlite":
        assert (tmp_path / "data" / "reg.db").is_file()

    with keyard.run():
        keyard.every_worker_answers({"service_name": "web"}, {"result": expected})
        status, body = call(keyard.url, "PUT", {"service_name": "web", "location": expected[0]})
        assert (status, body["ttl"]) == (200, 600), "known after the restart, TTL kept"


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])
def test_with_the_redis_cache_every_worker_sees_every_change_within_a_bounded_wait(
    preload: bool, redis_server: Any, redis_prefix: str, tmp_path: Path
) -> None:
    """Each worker keeps its own copy (never one made in the master before the fork)."""
    config = {
        "store_type": "redis",
        "redis": {"url": redis_server.url, "prefix": redis_prefix, "cache": True},
    }
    extra = ["--preload"] if preload else []
    keyard = Keyard(tmp_path / "keyard", config, {}, extra)
    expected = sorted(f"http://10.0.0.{n}:8000/" for n in range(REGISTRATIONS))
    fields = {"service_name": "web"}
    query = urllib.parse.urlencode(fields)

    def every_worker_soon_answers(result: list[str]) -> None:
        """Lookups until every worker has served some and, from some point, all are right."""

        def right() -> bool:
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda _: call(keyard.url, "GET", fields), range(LOOKUPS)))
            served = keyard.served_by("GET", query)
            return answers == [(200, {"result": result})] * LOOKUPS and len(served) == WORKERS

        wait_until(right, timeout=30, what=f"every worker answering {len(result)} locations")

    with keyard.run() as server:
        every_worker_soon_answers([])  # every worker has copied "web" (empty)
        with ThreadPoolExecutor(6) as pool:
            posted = list(
                pool.map(
                    lambda location: call(
                        keyard.url, "POST", {**fields, "location": location, "ttl": 600}
                    ),
                    expected,
                )
            )
        assert [status for status, _ in posted] == [201] * REGISTRATIONS
        every_worker_soon_answers(expected)
        status, _ = call(keyard.url, "DELETE", {**fields, "location": expected[0]})
        assert status == 200
        every_worker_soon_answers(expected[1:])
        assert server.stop() == 0
        assert "Traceback" not in server.output(), server.output()


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])
def test_the_memory_store_refuses_to_start_under_several_gunicorn_workers(
    preload: bool, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text('{"store_type": "simple"}')
    code, output = gunicorn_server.run_to_exit(
        "keyard.wsgi:app",
        free_port(),
        {"KEYARD_CONFIG": str(tmp_path / "config.json")},
        ["--workers", "2", *(["--preload"] if preload else [])],
    )
    assert code != 0, output
    assert (
        "store_type 'simple' keeps the registry inside one process, but gunicorn runs 2 "
        "worker processes" in output
    ), output
