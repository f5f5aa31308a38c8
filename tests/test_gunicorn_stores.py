"""keyard under gunicorn with several worker processes, on every store that can share state.

Registrations made through any worker are seen by every worker, and survive a
restart of keyard. Adding a store is one entry in ``STORE_CONFIGS``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.gunicorn_server import GunicornServer

WORKERS = 3
REGISTRATIONS = 60
LOOKUPS = 60

# store name -> (the test's request, tmp dir) -> (config file contents or None, env overrides)
StoreConfig = Callable[[pytest.FixtureRequest, Path], tuple[Any, dict[str, str]]]
STORE_CONFIGS: dict[str, StoreConfig] = {
    # No config file: the default store is sqlite; its path comes from the environment.
    "sqlite": lambda request, tmp: (None, {"KEYARD_SQLITE_PATH": str(tmp / "data" / "reg.db")}),
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
}


def every_worker_sees(server: GunicornServer, expected: list[str]) -> None:
    """Lookups over fresh connections, six at a time, until each worker has answered some.

    Every answer must list exactly ``expected``; stops once all worker processes
    have served lookups (the access log says which served which).
    """

    def lookups() -> bool:
        query = {"service_name": "web"}
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: server.call("GET", query), range(LOOKUPS)))
        assert answers == [(200, {"result": expected})] * LOOKUPS
        return len(set(server.served_by("GET", "service_name=web"))) == WORKERS

    wait_until(lookups, timeout=60, what=f"lookups answered by all {WORKERS} workers")


@pytest.mark.slow
@pytest.mark.parametrize("store", sorted(STORE_CONFIGS))
def test_every_worker_sees_every_registration_and_they_survive_a_restart(
    store: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    gunicorn: Callable[..., GunicornServer],
) -> None:
    config, env = STORE_CONFIGS[store](request, tmp_path)
    server = gunicorn(config, env=env, workers=WORKERS, worker_class="sync")
    server.start()
    expected = sorted(f"http://10.0.0.{n}:8000/" for n in range(REGISTRATIONS))

    with ThreadPoolExecutor(6) as pool:
        posted = list(
            pool.map(
                lambda location: server.call(
                    "POST", {"service_name": "web", "location": location, "ttl": 600}
                ),
                expected,
            )
        )
    assert [status for status, _ in posted] == [201] * REGISTRATIONS, "each one new, once"
    every_worker_sees(server, expected)

    server.stop()
    assert "Traceback" not in server.output, server.output
    if store == "sqlite":
        assert (tmp_path / "data" / "reg.db").is_file()
    server.start()
    every_worker_sees(server, expected)
    status, body = server.call("PUT", {"service_name": "web", "location": expected[0]})
    assert (status, body["ttl"]) == (200, 600), "known after the restart, TTL kept"


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])
def test_the_memory_store_refuses_to_start_under_several_workers(
    preload: bool, gunicorn: Callable[..., GunicornServer]
) -> None:
    server = gunicorn({"store_type": "simple"}, workers=2, args=("--preload",) if preload else ())
    code, output = server.run_expecting_failure()
    assert code != 0, output
    assert (
        "store_type 'simple' keeps the registry inside one process, but gunicorn runs 2 "
        "worker processes" in output
    ), output
