"""Configuration: the file format, environment overrides, and errors at app creation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import webtest

from keyard import app as app_module
from keyard import stores
from keyard.errors import ConfigError
from keyard.helpers import config
from keyard.helpers.config import TTL_LIMIT
from keyard.stores import options as opt
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
        ({"min_ttl": 100, "max_ttl": 10}, ["min_ttl (100, create_app", "max_ttl (10, create_app"]),
        (
            {"default_ttl": 5, "min_ttl": 10},
            ["default_ttl (5,", "min_ttl (10,", "(86400, the default)"],
        ),
        ({"store_type": "simple", "redis": 5}, ["'redis' must be an object", "5"]),
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


# -- store sections of stores not in use ---------------------------------------


class CheckedStore(MemoryStore):
    """A store that checks its options without being built, as ``check_options`` promises."""

    name = "checked"

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        opt.reject_unknown("checked", options, ("port", "path"))
        if "port" in options:
            opt.whole_number("checked", "port", options["port"], minimum=1, maximum=65535)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MemoryStore:
        raise AssertionError("an unused store must not be built")


@pytest.fixture
def checked_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """``store_type: "checked"`` (and a ``checked`` section) for this test."""
    monkeypatch.setattr(stores, "_registered", {"checked": f"{__name__}:CheckedStore"})


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"prt": 1}, ["'checked'", "prt=1", "valid options: path, port"]),
        ({"port": "80"}, ["'checked'", "option port must be a whole number", "'80'"]),
    ],
)
def test_an_unused_store_section_is_checked_at_start_up(
    checked_store: None, tmp_path: Path, section: dict, words: list[str]
) -> None:
    path = write(tmp_path / "c.json", {"store_type": "simple", "checked": section})
    with pytest.raises(ConfigError) as failure:
        config.load(path, environ={})
    message = str(failure.value)
    assert "c.json" in message
    for word in words:
        assert word in message


def test_an_unused_store_option_from_the_environment_is_checked_naming_the_variable(
    checked_store: None,
) -> None:
    with pytest.raises(ConfigError) as failure:
        config.load(environ={"KEYARD_STORE_TYPE": "simple", "KEYARD_CHECKED_PRT": "1"})
    assert "environment variable KEYARD_CHECKED_PRT (option prt)" in str(failure.value)
    assert "valid options: path, port" in str(failure.value)


def test_a_valid_unused_store_section_is_accepted_without_building_the_store(
    checked_store: None,
) -> None:
    loaded = config.from_dict({"store_type": "simple", "checked": {"port": 80}})
    assert loaded.store_sections["checked"] == {"port": 80}
    webtest.TestApp(app_module.create_app(loaded))  # CheckedStore.from_options is not called


@pytest.mark.parametrize(
    ("store", "section"),
    [("redis", {"prt": 1}), ("sqlite", {"pth": "x.db"}), ("etcd", {"hots": "h"})],
)
def test_a_typo_in_an_unused_built_in_store_section_fails_at_start_up(
    store: str, section: dict
) -> None:
    with pytest.raises(ConfigError) as failure:
        config.from_dict({"store_type": "simple", store: section})
    for word in [repr(store), next(iter(section)), "valid options"]:
        assert word in str(failure.value)


def test_an_unused_sqlite_section_creates_no_file(tmp_path: Path) -> None:
    loaded = config.from_dict({"store_type": "simple", "sqlite": {"path": "data/r.db"}})
    webtest.TestApp(app_module.create_app(loaded))
    assert list(tmp_path.iterdir()) == []


# -- duplicate keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"default_ttl": 10, "default_ttl": 20}', ["key 'default_ttl' is given more than once"]),
        ('{"redis": {"port": 1, "port": 2}}', ["key 'port' in 'redis' is given more than once"]),
    ],
)
def test_a_key_given_twice_in_the_file_fails_naming_it_and_the_file(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = write(tmp_path / "twice.json", text)
    with pytest.raises(ConfigError) as failure:
        config.load(path, environ={})
    assert "twice.json" in str(failure.value)
    for word in words:
        assert word in str(failure.value)


def test_a_key_given_twice_in_an_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="KEYARD_ETCD_HOST: key 'a' is given more than once"):
        config.load(environ={"KEYARD_ETCD_HOST": '{"a": 1, "a": 2}'})


# -- every value named by where it came from ------------------------------------


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"KEYARD_STORE_TYPE": "nope"}, ["KEYARD_STORE_TYPE", "'nope'", "available: "]),
        ({"KEYARD_STORE_TYPE": ""}, ["KEYARD_STORE_TYPE", "non-empty"]),
        ({"KEYARD_DEFAULT_TTL": "abc"}, ["KEYARD_DEFAULT_TTL", "'abc'"]),
        ({"KEYARD_MAX_TTL": "0"}, ["KEYARD_MAX_TTL", "max_ttl"]),
        (
            {"KEYARD_MIN_TTL": "100", "KEYARD_MAX_TTL": "50"},
            ["min_ttl (100, environment variable KEYARD_MIN_TTL)", "KEYARD_MAX_TTL"],
        ),
    ],
)
def test_a_bad_environment_value_names_its_variable(environ: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as failure:
        config.load(environ=environ)
    for word in words:
        assert word in str(failure.value)


def test_a_bad_store_type_at_app_creation_names_the_variable() -> None:
    with pytest.raises(
        ConfigError, match="environment variable KEYARD_STORE_TYPE: store_type 'nope'"
    ):
        app_module.create_app(config.load(environ={"KEYARD_STORE_TYPE": "nope"}))


def test_a_bad_file_value_names_the_file_not_the_variables_that_apply(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"store_type": "nope"})
    with pytest.raises(ConfigError) as failure:
        config.load(path, environ={"KEYARD_DEFAULT_TTL": "60"})
    assert str(failure.value).startswith(f"config file {str(path)!r}: store_type 'nope'")
    assert "KEYARD_DEFAULT_TTL" not in str(failure.value)


def test_a_file_named_by_keyard_config_is_named_with_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.json' \(named by KEYARD_CONFIG\) cannot"):
        config.from_environment({"KEYARD_CONFIG": str(tmp_path / "nowhere.json")})


def test_a_file_section_that_is_not_an_object_is_not_replaced_by_a_variable(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "c.json", {"store_type": "simple", "etcd": "localhost"})
    with pytest.raises(ConfigError, match="'etcd' must be an object"):
        config.load(path, environ={"KEYARD_ETCD_PORT": "2379"})


def test_store_variables_are_not_case_sensitive_after_the_prefix_like_the_others() -> None:
    loaded = config.load(environ={"KEYARD_etcd_Port": "2380", "KEYARD_default_ttl": "12"})
    assert (loaded.store_sections["etcd"], loaded.default_ttl) == ({"port": 2380}, 12)


def test_two_variables_for_one_setting_fail_naming_both() -> None:
    with pytest.raises(ConfigError, match="KEYARD_ETCD_PORT and KEYARD_etcd_port both set"):
        config.load(environ={"KEYARD_ETCD_PORT": "1", "KEYARD_etcd_port": "2"})


def test_a_store_whose_name_has_an_underscore_takes_its_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stores, "_registered", {"my_store": f"{__name__}:CheckedStore"})
    loaded = config.load(environ={"KEYARD_STORE_TYPE": "simple", "KEYARD_MY_STORE_PORT": "80"})
    assert loaded.store_sections["my_store"] == {"port": 80}
