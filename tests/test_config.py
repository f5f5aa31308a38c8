"""Configuration: the file format, environment overrides, and errors at app creation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webtest

from keyard import app as app_module
from keyard.errors import ConfigError
from keyard.helpers import config
from keyard.helpers.config import TTL_LIMIT
from keyard.stores.memory import MemoryStore


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in list(__import__("os").environ):
        if name.startswith("KEYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    config.reset()
    yield
    config.reset()


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_defaults_without_any_file() -> None:
    loaded = config.current()
    assert (loaded.store_type, loaded.default_ttl, loaded.min_ttl, loaded.max_ttl) == (
        "sqlite",
        30,
        1,
        86400,
    )


def test_original_readme_snippet_works_verbatim(tmp_path: Path) -> None:
    (tmp_path / "example").mkdir()
    write(tmp_path / "example" / "config.json", {"store_type": "simple", "default_ttl": 45})
    from keyard import app
    from keyard.helpers import config

    config.load_file("example/config.json")
    app = app.create_app()
    response = webtest.TestApp(app).post("/keyard", {"service_name": "web", "location": "a"})
    assert response.json["ttl"] == 45


def test_original_etcd_format_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        {"store_type": "etcd", "etcd": {"host": "localhost", "base_path": "/services"}},
    )
    loaded = config.load(path, environ={})
    assert loaded.store_type == "etcd"
    assert loaded.store_options == {"host": "localhost", "base_path": "/services"}


def test_config_json_in_the_working_directory_is_read(tmp_path: Path) -> None:
    write(tmp_path / "config.json", {"default_ttl": 12})
    assert config.from_environment({}).default_ttl == 12


def test_keyard_config_names_the_file(tmp_path: Path) -> None:
    write(tmp_path / "config.json", {"default_ttl": 12})
    other = write(tmp_path / "other.json", {"default_ttl": 13})
    assert config.from_environment({"KEYARD_CONFIG": str(other)}).default_ttl == 13


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"store_type": "etcd", "default_ttl": 12, "etcd": {}})
    loaded = config.load(
        path,
        environ={
            "KEYARD_STORE_TYPE": "simple",
            "KEYARD_DEFAULT_TTL": "60",
            "KEYARD_MAX_TTL": "600",
            "KEYARD_ETCD_PORT": "2380",
            "KEYARD_ETCD_HOST": '["127.0.0.1:2379", "127.0.0.1:2479"]',
            "KEYARD_URL": "http://not-a-config-key",
        },
    )
    assert (loaded.store_type, loaded.default_ttl, loaded.max_ttl) == ("simple", 60, 600)
    assert loaded.store_sections["etcd"] == {
        "port": 2380,
        "host": ["127.0.0.1:2379", "127.0.0.1:2479"],
    }
    assert "KEYARD_DEFAULT_TTL" in loaded.source


def test_create_app_applies_the_ttl_bounds() -> None:
    api = webtest.TestApp(app_module.create_app({"min_ttl": 10, "max_ttl": 20, "default_ttl": 15}))
    assert api.post("/keyard", {"service_name": "w", "location": "a"}).json["ttl"] == 15
    response = api.post("/keyard", {"service_name": "w", "location": "a", "ttl": "9"}, status=400)
    assert "between 10 and 20" in response.json["description"]


def test_the_largest_configurable_ttl_registers_and_shows_its_expiry() -> None:
    api = webtest.TestApp(app_module.create_app({"store_type": "simple", "max_ttl": TTL_LIMIT}))
    fields = {"service_name": "w", "location": "a", "ttl": str(TTL_LIMIT)}
    assert api.post("/keyard", fields, status=201).json["ttl"] == TTL_LIMIT


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"store_type": "cassandra"}, ["'cassandra'", "simple", "etcd"]),
        ({"store_type": 5}, ["store_type", "5"]),
        ({"default_ttl": "30"}, ["default_ttl", "'30'"]),
        ({"min_ttl": 0}, ["min_ttl", "0"]),
        ({"max_ttl": True}, ["max_ttl", "True"]),
        ({"max_ttl": 10**30}, ["max_ttl", str(10**30), "ten years"]),
        ({"min_ttl": 100, "max_ttl": 10}, ["min_ttl (100)", "max_ttl (10)"]),
        ({"default_ttl": 5, "min_ttl": 10}, ["default_ttl (5)", "min_ttl (10)"]),
        ({"defualt_ttl": 30}, ["'defualt_ttl'"]),
        ({"store_type": "simple", "simple": {"path": "x"}}, ["simple", "path"]),
        ({"sqlite": {"pth": "x"}}, ["sqlite", "pth='x'"]),
        ({"sqllite": {"path": "/srv/r.db"}}, ["'sqllite'", "no store is named so", "sqlite"]),
    ],
)
def test_invalid_config_fails_at_app_creation_naming_key_and_value(
    data: dict, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as failure:
        app_module.create_app(data)
    for word in words:
        assert word in str(failure.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["must hold a JSON object"]),
        ("\xff\xfe", []),
    ],
)
def test_malformed_file_fails_at_load(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as failure:
        config.load_file(path)
    assert "bad.json" in str(failure.value)
    for word in words:
        assert word in str(failure.value)


def test_missing_file_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.json"):
        config.load_file(tmp_path / "nowhere.json")


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="KEYARD_DEFAULT_TTL"):
        config.load(environ={"KEYARD_DEFAULT_TTL": "soon"})


def test_explicit_store_wins_over_the_config() -> None:
    store = MemoryStore()
    api = webtest.TestApp(app_module.create_app({"store_type": "simple"}, store=store))
    api.post("/keyard", {"service_name": "w", "location": "a"}, status=201)
    assert len(store) == 1
