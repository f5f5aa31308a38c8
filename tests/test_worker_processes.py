"""The memory store is refused where several worker processes would each hold their own."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from keyard.app import create_app
from keyard.cli import main
from keyard.errors import ConfigError
from keyard.helpers.config import Config
from keyard.stores import store_class
from keyard.stores.memory import MemoryStore
from keyard.worker_processes import gunicorn_workers, refuse_unshared_store_under_workers


class FakeWorker:
    """Stands in for gunicorn's worker: loads the app from a method, with ``self.cfg``."""

    __module__ = "gunicorn.workers.fake"

    def __init__(self, workers: int) -> None:
        self.cfg = SimpleNamespace(workers=workers)

    def load_wsgi(self, load: Callable[[], object]) -> object:
        return load()


def test_outside_gunicorn_there_is_no_worker_count() -> None:
    assert gunicorn_workers() is None


def test_the_worker_count_of_the_gunicorn_loading_the_app_is_found() -> None:
    assert FakeWorker(4).load_wsgi(gunicorn_workers) == 4
    assert FakeWorker(1).load_wsgi(lambda: [gunicorn_workers()][0]) == 1


@pytest.mark.parametrize(
    ("store", "workers", "refused"),
    [
        ("simple", 2, True),
        ("simple", 1, False),
        ("simple", None, False),
        ("sqlite", 8, False),
        ("redis", 8, False),
    ],
)
def test_only_a_store_not_shared_across_processes_is_refused_under_several_workers(
    store: str, workers: int | None, refused: bool
) -> None:
    if refused:
        with pytest.raises(ConfigError, match="gunicorn runs 2 worker processes"):
            refuse_unshared_store_under_workers(store_class(store), workers)
    else:
        refuse_unshared_store_under_workers(store_class(store), workers)


def test_create_app_refuses_the_memory_store_under_several_gunicorn_workers() -> None:
    with pytest.raises(ConfigError, match="store_type 'simple' keeps the registry inside one"):
        FakeWorker(3).load_wsgi(lambda: create_app({"store_type": "simple"}))
    with pytest.raises(ConfigError, match="gunicorn runs 3 worker processes"):
        FakeWorker(3).load_wsgi(lambda: create_app({}, store=MemoryStore()))
    assert FakeWorker(1).load_wsgi(lambda: create_app({"store_type": "simple"})) is not None


def test_keyard_serve_refuses_the_memory_store_under_several_workers_before_starting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from keyard import server as servers
    from keyard.server import granian as server

    monkeypatch.setattr(servers, "check_bind", lambda bind: None)  # 8000 may be taken here
    started: list[Config] = []
    monkeypatch.setattr(server, "serve", lambda config, **options: started.append(config))
    monkeypatch.chdir(tmp_path)  # no ./config.json; the default sqlite file goes here
    env = {"KEYARD_CONFIG": None, "KEYARD_STORE_TYPE": "simple"}
    result = CliRunner().invoke(main, ["serve", "--workers", "2"], env=env)
    assert result.exit_code == 2 and started == []
    assert "store_type 'simple' keeps the registry inside one process" in result.output
    assert CliRunner().invoke(main, ["serve", "--workers", "1"], env=env).exit_code == 0
    assert [config.store_type for config in started] == ["simple"]


def test_keyard_serve_uses_sqlite_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from keyard import server as servers
    from keyard.server import granian as server

    monkeypatch.setattr(servers, "check_bind", lambda bind: None)  # 8000 may be taken here
    started: list[Config] = []
    monkeypatch.setattr(server, "serve", lambda config, **options: started.append(config))
    monkeypatch.chdir(tmp_path)
    env = {name: None for name in os.environ if name.startswith("KEYARD_")}
    result = CliRunner().invoke(main, ["serve", "--workers", "3"], env=env)
    assert result.exit_code == 0, result.output
    assert [config.store_type for config in started] == ["sqlite"]
    assert (tmp_path / "keyard-data" / "registry.db").is_file()


@pytest.mark.parametrize(("store_type", "workers"), [("sqlite", 2), ("simple", 1)])
def test_keyard_serve_runs_two_workers_by_default_and_one_for_the_memory_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store_type: str, workers: int
) -> None:
    from keyard import server as servers
    from keyard.server import granian as server

    monkeypatch.setattr(servers, "check_bind", lambda bind: None)  # 8000 may be taken here
    options: list[dict[str, object]] = []
    monkeypatch.setattr(server, "serve", lambda config, **given: options.append(given))
    monkeypatch.chdir(tmp_path)
    env = {name: None for name in os.environ if name.startswith("KEYARD_")}
    result = CliRunner().invoke(main, ["serve"], env={**env, "KEYARD_STORE_TYPE": store_type})
    assert result.exit_code == 0, result.output
    assert options == [
        {"bind": "127.0.0.1:8000", "workers": workers, "threads": 4, "access_log": False}
    ]
    given = CliRunner().invoke(
        main, ["serve", "--workers", "3"], env={**env, "KEYARD_STORE_TYPE": "sqlite"}
    )
    assert given.exit_code == 0 and options[-1]["workers"] == 3
