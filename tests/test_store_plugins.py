"""Third-party stores through a real ``keyard.stores`` entry point, and the registry's errors.

The test writes a tiny installed distribution (a ``.dist-info`` directory with
``entry_points.txt``) and its module into a temp dir and puts that dir on
``sys.path``: exactly what ``pip install`` of a package declaring the entry point
leaves behind, found by ``importlib.metadata`` the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import webtest

from keyard.app import create_app
from keyard.errors import ConfigError
from keyard.helpers import config
from keyard.stores import available, create_store, register_store, store_class
from keyard.stores.sqlite import SqliteStore

TINYSTORE = '''
"""A store shipped by another package."""
from keyard.errors import ConfigError
from keyard.stores.memory import MemoryStore


class TinyStore(MemoryStore):
    name = "tiny"

    def __init__(self, greeting):
        super().__init__()
        self.greeting = greeting

    @classmethod
    def from_options(cls, options):
        unknown = set(options) - {"greeting"}
        if unknown:
            raise ConfigError(f"tiny store: unknown option(s) {sorted(unknown)}")
        return cls(options.get("greeting", "hello"))


class NotAStore:
    pass
'''

ENTRY_POINTS = """
[keyard.stores]
tiny = tinystore:TinyStore
notastore = tinystore:NotAStore
missingmodule = tinystore_is_not_here:TinyStore
missingclass = tinystore:NoSuchClass
brokenmodule = tinystore_broken:TinyStore
sqlite = tinystore:TinyStore
"""


@pytest.fixture
def tinystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution ``tinystore 0.1`` declaring stores, installed on sys.path for this test."""
    site = tmp_path / "site"
    dist_info = site / "tinystore-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinystore\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS).lstrip())
    (site / "tinystore.py").write_text(TINYSTORE)
    (site / "tinystore_broken.py").write_text("raise RuntimeError('needs a consul agent')\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("tinystore", None)
    sys.modules.pop("tinystore_broken", None)


def test_an_entry_point_store_is_listed_and_built_with_its_options(tinystore: Path) -> None:
    assert "tiny" in available()
    store = create_store("tiny", {"greeting": "hi"})
    assert type(store).__name__ == "TinyStore" and type(store).__module__ == "tinystore"
    assert store.greeting == "hi"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="tiny store: unknown option"):
        create_store("tiny", {"colour": "red"})


def test_without_the_distribution_the_name_is_unknown() -> None:
    assert "tiny" not in available()
    with pytest.raises(ConfigError, match="'tiny' is not a known store"):
        create_store("tiny")


def test_an_unknown_store_type_lists_every_available_name(tinystore: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        create_store("nosuchstore")
    message = str(caught.value)
    assert message.startswith("store_type 'nosuchstore' is not a known store; available: ")
    listed = message.rpartition("available: ")[2].split(", ")
    assert listed == sorted(listed)
    assert {"simple", "sqlite", "redis", "etcd", "tiny"} <= set(listed)


def test_broken_entry_points_are_config_errors(tinystore: Path) -> None:
    with pytest.raises(ConfigError, match="'notastore' does not name a keyard Store subclass"):
        create_store("notastore")
    with pytest.raises(ConfigError, match="'missingmodule' could not be imported"):
        create_store("missingmodule")
    with pytest.raises(ConfigError, match="'missingclass' could not be imported"):
        create_store("missingclass")
    with pytest.raises(
        ConfigError,
        match="'brokenmodule' could not be imported: RuntimeError: needs a consul agent",
    ):
        create_store("brokenmodule")


def test_an_entry_point_cannot_replace_a_built_in_store(tinystore: Path) -> None:
    assert store_class("sqlite") is SqliteStore


def test_register_store_adds_a_store_at_run_time(
    tinystore: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyard import stores

    monkeypatch.setattr(stores, "_registered", {})
    register_store("greeter", "tinystore:TinyStore")
    assert "greeter" in available()
    assert create_store("greeter", {"greeting": "hey"}).greeting == "hey"  # type: ignore[attr-defined]


def test_the_app_runs_on_an_entry_point_store_configured_from_the_environment(
    tinystore: Path,
) -> None:
    loaded = config.load(environ={"KEYARD_STORE_TYPE": "tiny", "KEYARD_TINY_GREETING": "howdy"})
    assert loaded.store_type == "tiny" and loaded.store_options == {"greeting": "howdy"}
    api = webtest.TestApp(create_app(loaded))
    api.post_json("/keyard", {"service_name": "web", "location": "http://h:1"}, status=201)
    assert api.get("/keyard?service_name=web").json == {"result": ["http://h:1"]}


CONTRACT_TEST = """
import pytest

from keyard.testing.store_contract import StoreContract
from tinystore import TinyStore


class TestTinyStore(StoreContract):
    @pytest.fixture
    def store(self):
        return TinyStore("hi")
"""


def test_another_package_runs_the_contract_suite_without_a_keyard_checkout(
    tinystore: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "test_tiny.py").write_text(CONTRACT_TEST)
    env = {**os.environ, "PYTHONPATH": str(tinystore)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         str(outside)],
        cwd=outside, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout
