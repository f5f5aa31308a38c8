"""The SQLite store: the contract, plus its options, indexes, purging, locking and processes."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keyard.errors import ConfigError, InvalidInput, StoreUnavailable
from keyard.model import DEFAULT_NAMESPACE as NS
from keyard.model import InstanceKey, derived_instance_id
from keyard.stores import create_store
from keyard.stores.base import WouldWait, may_wait, without_waiting
from keyard.stores.sqlite import FILE_CHECK_INTERVAL, PURGE_BATCH, TABLE, SqliteStore
from keyard.testing.store_contract import (
    KEEP_ALL,
    StoreContract,
    WatchContract,
    locations,
    make,
)


class TestSqliteStore(StoreContract, WatchContract):
    @pytest.fixture
    def store(self, tmp_path: Path):
        store = SqliteStore(tmp_path / "registry.db")
        yield store
        store.close()

    @pytest.fixture
    def store_config(self, tmp_path: Path) -> tuple[str, dict[str, object]]:
        return "sqlite", {"path": str(tmp_path / "registry.db")}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "registry.db"


# -- options -------------------------------------------------------------------


def test_default_path_is_keyard_data_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = create_store("sqlite")
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == tmp_path / "keyard-data" / "registry.db"
        assert store.path.is_file()
        assert store.timeout == 5.0
    finally:
        store.close()


def test_options_path_and_timeout(db_path: Path) -> None:
    store = create_store("sqlite", {"path": str(db_path), "timeout": 0.5})
    try:
        assert isinstance(store, SqliteStore)
        assert (store.path, store.timeout) == (db_path, 0.5)
        assert db_path.parent.is_dir(), "the parent directory is created"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pth": "x.db"}, "unknown option(s) pth='x.db'; valid options: path, timeout"),
        ({"path": ""}, "option path must be a non-empty string, got ''"),
        ({"path": ["a"]}, "option path must be a non-empty string, got ['a']"),
        ({"path": ":memory:"}, "option path must name a file, got ':memory:'"),
        ({"timeout": "5"}, "option timeout must be a number of seconds, got '5'"),
        ({"timeout": True}, "option timeout must be a number of seconds, got True"),
        ({"timeout": -1}, "option timeout must be at least 0 and at most 600 seconds, got -1"),
        ({"timeout": 601}, "option timeout must be at least 0 and at most 600 seconds, got 601"),
    ],
)
def test_invalid_options_name_the_option_and_value(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_store("sqlite", options)
    assert message in str(caught.value)


def test_a_path_that_cannot_hold_a_database_fails_at_creation(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"option path .*file/registry.db.* cannot hold"):
        create_store("sqlite", {"path": str(tmp_path / "file" / "registry.db")})
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ConfigError, match="cannot hold a database.* is a directory; name a file"):
        create_store("sqlite", {"path": str(tmp_path / "dir.db")})
    (tmp_path / "garbage.db").write_bytes(b"this is not an SQLite database, not at all" * 100)
    with pytest.raises(ConfigError, match="cannot hold a database"):
        create_store("sqlite", {"path": str(tmp_path / "garbage.db")})


@pytest.mark.parametrize("below", ["registry.db", "data/registry.db", "a/b/registry.db"])
def test_a_parent_path_that_is_a_file_says_so(tmp_path: Path, below: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / below
    with pytest.raises(ConfigError) as caught:
        SqliteStore(path)
    message = str(caught.value)
    assert f"{str(tmp_path / 'file')!r} is a file, not a directory" in message, message
    assert "Errno" not in message, message


_OPEN_STORE_UNPRIVILEGED = """
import sys
from keyard.errors import ConfigError
from keyard.stores.sqlite import SqliteStore
try:
    SqliteStore(sys.argv[1]).close()
except ConfigError as exc:
    print(exc)
    sys.exit(3)
print("opened")
"""


def _open_without_privileges(path: Path) -> subprocess.CompletedProcess[str]:
    """Open a store at ``path`` in a process that file modes bind (root drops DAC override)."""
    command = [sys.executable, "-c", _OPEN_STORE_UNPRIVILEGED, str(path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE with")
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(os.name != "posix", reason="file modes")
@pytest.mark.parametrize(
    "case", ["new file", "new directories", "existing database"]
)
def test_an_unwritable_data_directory_says_permission_denied(tmp_path: Path, case: str) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    path = directory / ("a/b/registry.db" if case == "new directories" else "registry.db")
    if case == "existing database":  # the -wal and -shm files cannot be made beside it
        SqliteStore(path).close()
        for extra in ("registry.db-wal", "registry.db-shm"):
            (directory / extra).unlink(missing_ok=True)
    directory.chmod(0o555)
    try:
        done = _open_without_privileges(path)
    finally:
        directory.chmod(0o755)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "cannot hold a database" in done.stdout
    assert "permission denied" in done.stdout.lower(), done.stdout
    assert str(directory) in done.stdout


def test_whole_number_path_from_an_environment_variable_is_taken_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KEYARD_SQLITE_PATH=1234 arrives parsed as JSON, i.e. as the number 1234.
    monkeypatch.chdir(tmp_path)
    store = create_store("sqlite", {"path": 1234})
    try:
        assert isinstance(store, SqliteStore) and store.path == tmp_path / "1234"
    finally:
        store.close()


# -- schema, indexes, purging --------------------------------------------------


def test_database_is_in_wal_mode_with_the_expected_table(db_path: Path) -> None:
    SqliteStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        info = db.execute(f"PRAGMA table_info({TABLE})").fetchall()
        assert [row[1] for row in info] == [
            "namespace",
            "service_name",
            "instance_id",
            "version",
            "location",
            "status",
            "status_override",
            "tags",
            "metadata",
            "weight",
            "ttl",
            "registered_at",
            "last_heartbeat_at",
            "expires_at",
            "replaced_expiry",
        ]
        types = {row[1]: row[2] for row in info}
        assert {types[name] for name in ("registered_at", "last_heartbeat_at", "expires_at")} == {
            "REAL"
        }
        primary_key = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]]
        assert primary_key == ["namespace", "service_name", "instance_id"]
        indexes = {row[1] for row in db.execute(f"PRAGMA index_list({TABLE})")}
        assert {f"{TABLE}_by_expiry", f"{TABLE}_by_version"} <= indexes
        by_version = [row[2] for row in db.execute(f"PRAGMA index_info({TABLE}_by_version)")]
        assert by_version == ["namespace", "service_name", "version", "location"]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {TABLE, "change_sequences", "service_indexes", "change_log"}, (
            "no table of keyard 0.2.0 is made")


def test_tags_and_metadata_are_kept_as_json_text(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        store.put(make(location="a", tags=("x", "ü"), metadata={"k": "服"}))
        store.put(make(location="b"))
    finally:
        store.close()
    with sqlite3.connect(db_path) as db:
        rows = db.execute(f"SELECT tags, metadata FROM {TABLE} ORDER BY location").fetchall()
    assert rows == [('["x","ü"]', '{"k":"服"}'), ("[]", "{}")]


_KEY_PARAMETERS = {"namespace": NS, "service_name": "svc-1", "instance_id": "x", "now": 0.0}


@pytest.mark.parametrize(
    ("query", "parameters"),
    [
        ("_GET", _KEY_PARAMETERS),
        ("_LOOKUP_SERVICE", {"namespace": NS, "service_name": "svc-1", "now": 0.0}),
        (
            "_LOOKUP_VERSION",
            {"namespace": NS, "service_name": "svc-1", "version": "1.0", "now": 0.0},
        ),
        ("_SERVICES", {"namespace": NS, "now": 0.0}),
        ("_DELETE", _KEY_PARAMETERS),
        ("_SET_OVERRIDE", {**_KEY_PARAMETERS, "status_override": "DOWN"}),
        ("_PURGE", {"now": 0.0, "batch": 10}),
    ],
)
def test_every_query_searches_an_index_and_never_scans_the_table(
    db_path: Path, query: str, parameters: dict
) -> None:
    from keyard.stores import sqlite as module

    store = SqliteStore(db_path)
    for n in range(300):  # enough rows, and statistics, for the planner to choose for real
        store.put(make(service=f"svc-{n % 30}", location=f"loc-{n}", version=f"{n % 3}.0"))
    store.close()
    with sqlite3.connect(db_path) as db:
        db.execute("ANALYZE")
        explained = db.execute(f"EXPLAIN QUERY PLAN {getattr(module, query)}", parameters)
        plan = [row[3] for row in explained]
    assert plan and all(not step.startswith("SCAN") for step in plan), plan
    assert any(step.startswith("SEARCH") for step in plan), plan
    if query != "_PURGE":
        assert not any("_by_expiry" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan  # read in answer order
    if query.startswith("_LOOKUP"):
        assert any(f"{TABLE}_by_version" in step for step in plan), plan
    if query == "_PURGE":
        assert any(f"{TABLE}_by_expiry" in step for step in plan), plan


def test_expired_rows_are_purged_by_writes_in_bounded_batches(db_path: Path) -> None:
    store = SqliteStore(db_path, purge_interval=0)
    try:
        for n in range(PURGE_BATCH + 100):
            store.put(make("old", location=f"loc-{n}", ttl=10, now=1000.0))
        assert len(store) == PURGE_BATCH + 100
        store.lookup(NS, "old", None, now=5000.0)
        store.services(NS, now=5000.0)
        assert len(store) == PURGE_BATCH + 100, "lookups only read"
        store.put(make("new", location="a", ttl=10, now=5000.0))
        assert len(store) == 100 + 1, "one write purges one batch"
        store.deregister(InstanceKey(NS, "new", "nothing-here"), now=5000.0)
        assert len(store) == 1
        assert locations(store.lookup(NS, "new", None, now=5000.0)) == ["a"]
    finally:
        store.close()


def test_purging_waits_for_the_purge_interval(db_path: Path) -> None:
    store = SqliteStore(db_path, purge_interval=3600)
    try:
        store.put(make(location="first", ttl=10, now=1000.0))  # purges (nothing)
        store.put(make(location="second", ttl=10, now=5000.0))  # too soon to purge
        assert len(store) == 2
        assert locations(store.lookup(NS, "web", None, now=5000.0)) == ["second"]
    finally:
        store.close()


def test_lookup_orders_by_code_point_not_by_locale(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        names = ["b", "B", "a", "é", "e", "z", "Z", "服", "🚀", "ﬀ", "a b", "a\x00b", "~"]
        for name in names:
            store.put(make(location=name))
        assert locations(store.lookup(NS, "web", "1.0", time.time())) == sorted(names)
    finally:
        store.close()


def test_text_that_is_not_valid_unicode_is_refused_as_invalid_input(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        with pytest.raises(InvalidInput, match="not valid Unicode"):
            store.put(make(location="\ud800"))
        assert store.put(make(location="fine"))[1] is True
    finally:
        store.close()


# -- durability, locking, failures ---------------------------------------------


def test_registrations_survive_reopening_the_database(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store.put(make(location="a", ttl=300))
    store.close()
    reopened = SqliteStore(db_path)
    try:
        assert locations(reopened.lookup(NS, "web", None, time.time())) == ["a"]
        assert reopened.put(make(location="a"))[1] is False
    finally:
        reopened.close()


def test_a_write_locked_beyond_the_timeout_is_store_unavailable_then_recovers(
    db_path: Path,
) -> None:
    store = SqliteStore(db_path, timeout=0.3)
    store.put(make(location="before"))
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database is locked") as caught:
            store.put(make(location="during"))
        assert 0.25 <= time.monotonic() - started < 2.0
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        # WAL: reads go on while another process holds the write lock.
        assert locations(store.lookup(NS, "web", None, time.time())) == ["before"]
        blocker.execute("COMMIT")
        assert store.put(make(location="after"))[1] is True
        assert locations(store.lookup(NS, "web", None, time.time())) == ["after", "before"]
    finally:
        blocker.close()
        store.close()


def test_without_waiting_a_locked_write_is_would_wait_and_writes_nothing(db_path: Path) -> None:
    """What ``keyard serve``'s event loop relies on: a write it may not wait for says so
    at once and leaves nothing behind; one that wrote lets the calls after it wait."""
    store = SqliteStore(db_path, timeout=5.0)
    store.put(make(location="before"))  # the writing connection is open,
    assert locations(store.lookup(NS, "web", None, time.time())) == ["before"]  # and the reading
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with without_waiting():
            with pytest.raises(WouldWait, match="another process holds the write lock"):
                store.put(make(location="during"))
            with pytest.raises(WouldWait):
                store.deregister(make(location="before").key, time.time())
            assert not may_wait()
            # Reads go on (WAL), on the loop as anywhere.
            assert locations(store.lookup(NS, "web", None, time.time())) == ["before"]
        assert time.monotonic() - started < 1.0  # not the store's 5 s timeout
        blocker.execute("COMMIT")
        assert locations(store.lookup(NS, "web", None, time.time())) == ["before"]
        with without_waiting():
            assert store.put(make(location="after"))[1] is True
            assert may_wait()  # it wrote: what follows waits as usual, never half made
    finally:
        blocker.close()
        store.close()


def test_without_waiting_a_first_write_of_the_process_is_would_wait(db_path: Path) -> None:
    SqliteStore(db_path).close()  # the file exists; this process has no connection to it
    store = SqliteStore(db_path)
    try:
        with without_waiting(), pytest.raises(WouldWait, match="not open yet"):
            store.put(make(location="a"))  # opening may wait for another process
        assert store.put(make(location="a"))[1] is True  # where it may wait, it opens
    finally:
        store.close()


def test_a_lost_database_directory_is_store_unavailable_then_recovers(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    store = SqliteStore(directory / "registry.db")
    try:
        store.put(make(location="a"))
        store.close()  # drop open connections, as if served by a new worker thread
        store = SqliteStore(directory / "registry.db")
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
        directory.write_text("the directory is now a file")
        with pytest.raises(StoreUnavailable, match="unable to open database file") as caught:
            store.lookup(NS, "web", None, time.time())
        assert f"{str(directory)!r} is a file, not a directory" in str(caught.value)
        with pytest.raises(StoreUnavailable):
            store.put(make(location="b"))
        directory.unlink()
        directory.mkdir()
        assert store.put(make(location="b"))[1] is True
        assert locations(store.lookup(NS, "web", None, time.time())) == ["b"]
    finally:
        store.close()


@pytest.mark.parametrize("how", ["directory removed", "file removed", "file replaced"])
def test_a_database_deleted_or_replaced_while_in_use_is_store_unavailable_never_a_silent_loss(
    tmp_path: Path, how: str
) -> None:
    """Open connections would go on writing to the deleted file, answering 200 for writes that
    vanish with it: every call answers StoreUnavailable saying to restart instead."""
    directory = tmp_path / "data"
    path = directory / "registry.db"
    store = SqliteStore(path)
    errors: list[BaseException] = []
    try:
        store.put(make(location="before"))

        def in_another_thread() -> None:
            try:
                store.put(make(location="thread"))
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        worker = threading.Thread(target=in_another_thread)
        worker.start()
        worker.join(timeout=30)
        assert errors == []
        if how == "directory removed":
            shutil.rmtree(directory)
        elif how == "file removed":
            path.unlink()
        else:
            replacement = SqliteStore(tmp_path / "new.db")
            replacement.put(make(location="new"))
            replacement.close()
            os.replace(tmp_path / "new.db", path)
        for call in (
            lambda: store.put(make(location="after")),
            lambda: store.lookup(NS, "web", None, time.time()),
            lambda: store.get(make(location="before").key, time.time()),
            lambda: store.deregister(make(location="before").key, time.time()),
        ):
            with pytest.raises(StoreUnavailable, match="deleted or replaced .* restart keyard"):
                call()
        # Every thread, not only those that found out.
        worker = threading.Thread(target=in_another_thread)
        worker.start()
        worker.join(timeout=30)
        assert len(errors) == 1 and isinstance(errors[0], StoreUnavailable)
    finally:
        store.close()
    restarted = SqliteStore(path)  # a restart serves again, on the file now at the path
    try:
        assert restarted.put(make(location="after"))[1] is True
    finally:
        restarted.close()


@pytest.mark.parametrize("how", ["directory removed", "file removed", "file replaced"])
def test_reads_refuse_a_deleted_or_replaced_database_even_before_any_write(
    tmp_path: Path, how: str
) -> None:
    """Reads look at the file at most every FILE_CHECK_INTERVAL: a lookup, get or services
    call made after that, with no write in between, answers StoreUnavailable, not a registry
    that no other process sees (0.2.0 answered an empty list)."""
    directory = tmp_path / "data"
    path = directory / "registry.db"
    store = SqliteStore(path)
    try:
        store.put(make(location="before"))
        assert locations(store.lookup(NS, "web", None, time.time())) == ["before"]  # cached
        if how == "directory removed":
            shutil.rmtree(directory)
        elif how == "file removed":
            path.unlink()
        else:
            replacement = SqliteStore(tmp_path / "new.db")
            replacement.close()
            os.replace(tmp_path / "new.db", path)
        time.sleep(FILE_CHECK_INTERVAL + 0.05)
        for call in (
            lambda: store.lookup(NS, "web", None, time.time()),
            lambda: store.lookup(NS, "web", "1.0", time.time()),
            lambda: store.get(make(location="before").key, time.time()),
            lambda: store.services(NS, time.time()),
        ):
            with pytest.raises(StoreUnavailable, match="deleted or replaced .* restart keyard"):
                call()
    finally:
        store.close()


def test_reads_look_at_the_file_at_most_every_check_interval(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(db_path)
    try:
        store.put(make(location="a"))
        store.lookup(NS, "web", None, time.time())
        looks: list[object] = []
        real_stat = os.stat

        def counted_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
            if str(path) == str(db_path):
                looks.append(path)
            return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "stat", counted_stat)
        started = time.monotonic()
        calls = 0
        while time.monotonic() - started < FILE_CHECK_INTERVAL * 2.5:
            store.lookup(NS, "web", None, time.time())
            calls += 1
        assert calls > 100
        assert 1 <= len(looks) <= 3, (calls, len(looks))
    finally:
        monkeypatch.undo()
        store.close()


_OPEN_STORE = """
import sys
from keyard.errors import ConfigError
from keyard.stores.sqlite import SqliteStore
try:
    SqliteStore(sys.argv[1]).close()
except ConfigError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_read_only_database_file_fails_at_creation(tmp_path: Path) -> None:
    """A read-only file opens and reads fine; keyard refuses it at start-up, not at each write."""
    path = tmp_path / "registry.db"
    SqliteStore(path).close()
    path.chmod(0o444)
    command = [sys.executable, "-c", _OPEN_STORE, str(path)]
    if os.geteuid() == 0:  # root writes to read-only files, unless it drops CAP_DAC_OVERRIDE
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE with")
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    finally:
        path.chmod(0o644)
    assert done.returncode == 3, done.stderr
    assert "cannot hold a database: attempt to write a readonly database" in done.stdout


def test_a_write_waits_out_another_connections_write_lock_within_the_timeout(
    db_path: Path,
) -> None:
    """keyard waits for another process's write lock itself (short sleeps, not SQLite's):
    the write lands once the lock is let go, and its answer is the usual one."""
    store = SqliteStore(db_path, timeout=5)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    outcome: list[bool] = []
    try:
        store.put(make(location="before"))
        blocker.execute("BEGIN IMMEDIATE")
        writer = threading.Thread(
            target=lambda: outcome.append(store.put(make(location="during"))[1])
        )
        writer.start()
        time.sleep(0.2)
        assert outcome == [], "the lock is held: the write waits"
        blocker.execute("COMMIT")
        writer.join(timeout=30)
        assert outcome == [True]
        assert locations(store.lookup(NS, "web", None, time.time())) == ["before", "during"]
    finally:
        blocker.close()
        store.close()


def _heartbeat_many(path: str, worker: int, count: int, results: multiprocessing.Queue) -> None:
    store = SqliteStore(path)
    failures: list[str] = []

    def beat(thread: int) -> None:
        for n in range(count):
            try:
                instance = make(location=f"{n}", now=time.time())
                if store.put(instance, KEEP_ALL)[1]:
                    failures.append(f"{n} was new")
                store.put(make(location=f"{worker}-{thread}-{n}"))
            except Exception as exc:  # noqa: BLE001 - reported to the test
                failures.append(repr(exc))

    threads = [threading.Thread(target=beat, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    results.put(failures)


def test_heartbeats_from_threads_of_two_processes_all_land(db_path: Path) -> None:
    """Two processes of four threads each write to one file at once: every heartbeat
    answers (none is new or an error), and every registration is there."""
    count = 50
    store = SqliteStore(db_path)
    try:
        for n in range(count):
            store.put(make(location=f"{n}"))
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        workers = [
            context.Process(target=_heartbeat_many, args=(str(db_path), w, count, results))
            for w in range(2)
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
        assert outcomes == [[], []]
        found = set(locations(store.lookup(NS, "web", None, time.time())))
        expected = {f"{n}" for n in range(count)} | {
            f"{w}-{t}-{n}" for w in range(2) for t in range(4) for n in range(count)
        }
        assert found == expected
    finally:
        store.close()


def test_the_store_says_it_is_shared_across_processes(db_path: Path) -> None:
    assert SqliteStore.shared_across_processes is True
    store = SqliteStore(db_path)
    try:
        assert store.shared_across_processes is True
    finally:
        store.close()


def test_a_busy_database_does_not_fail_creation(db_path: Path) -> None:
    SqliteStore(db_path).close()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        SqliteStore(db_path, timeout=0.1).close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_a_path_with_a_nul_character_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot hold a database"):
        create_store("sqlite", {"path": "data/reg\x00istry.db"})


def test_a_process_keeps_one_reading_and_one_writing_connection_for_all_its_threads(
    db_path: Path,
) -> None:
    store = SqliteStore(db_path)
    try:
        store.put(make(location="main"))

        def work(n: int) -> None:
            store.lookup(NS, "web", None, time.time())
            store.put(make(location=f"thread-{n}"))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(store._connections) == 2
        assert len(store.lookup(NS, "web", None, time.time())) == 6
    finally:
        store.close()
    assert store._connections == []


def _register_many(path: str, worker: int, count: int, results: multiprocessing.Queue) -> None:
    store = SqliteStore(path)
    created = [store.put(make(location=f"{n}"))[1] for n in range(count)]
    store.put(make(location=f"only-{worker}"))
    store.close()
    results.put(created)


def test_register_is_atomic_across_processes(db_path: Path) -> None:
    """Several processes register the same keys: each key is reported new exactly once."""
    SqliteStore(db_path).close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes, count = 3, 40
    workers = [
        context.Process(target=_register_many, args=(str(db_path), w, count, results))
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert [sum(outcome[n] for outcome in outcomes) for n in range(count)] == [1] * count
    store = SqliteStore(db_path)
    try:
        found = locations(store.lookup(NS, "web", None, time.time()))
        expected = [str(n) for n in range(count)] + [f"only-{w}" for w in range(processes)]
        assert sorted(found) == sorted(expected)
    finally:
        store.close()


# -- the lookup cache ----------------------------------------------------------


def test_a_cached_lookup_sees_every_write_of_another_connection_at_once(db_path: Path) -> None:
    reader, writer = SqliteStore(db_path), SqliteStore(db_path)
    try:
        now = time.time()
        writer.put(make(location="a", now=now))
        assert locations(reader.lookup(NS, "web", "1.0", now)) == ["a"]
        assert locations(reader.lookup(NS, "web", "1.0", now)) == ["a"]  # answered from the cache
        writer.put(make(location="b", now=now))
        assert locations(reader.lookup(NS, "web", "1.0", now)) == ["a", "b"]
        writer.put(make(location="a", ttl=5, now=now + 1), KEEP_ALL)
        assert [i.expires_at for i in reader.lookup(NS, "web", "1.0", now + 1)] == [
            now + 1 + 30,
            now + 30,
        ]
        assert writer.deregister(make(location="a").key, now + 1) is not None
        assert locations(reader.lookup(NS, "web", None, now + 1)) == ["b"]
    finally:
        reader.close()
        writer.close()


def test_a_cached_lookup_sees_its_own_writes_and_other_threads_writes(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        now = time.time()
        assert store.lookup(NS, "web", "1.0", now) == []
        store.put(make(location="a", now=now))
        assert locations(store.lookup(NS, "web", "1.0", now)) == ["a"]
        thread = threading.Thread(target=store.put, args=(make(location="b", now=now),))
        thread.start()
        thread.join()
        assert locations(store.lookup(NS, "web", "1.0", now)) == ["a", "b"]
        store.deregister(make(location="a").key, now)
        assert locations(store.lookup(NS, "web", "1.0", now)) == ["b"]
    finally:
        store.close()


def test_a_cached_lookup_drops_what_expires_and_keeps_what_an_earlier_now_sees(
    db_path: Path,
) -> None:
    store = SqliteStore(db_path)
    try:
        now = time.time()
        store.put(make(location="short", ttl=5, now=now))
        store.put(make(location="long", ttl=60, now=now))
        assert locations(store.lookup(NS, "web", "1.0", now)) == ["long", "short"]
        assert locations(store.lookup(NS, "web", "1.0", now + 10)) == ["long"]
        # A clock that steps back must not be answered from what was read later.
        assert locations(store.lookup(NS, "web", "1.0", now + 1)) == ["long", "short"]
        assert store.lookup(NS, "web", "1.0", now + 61) == []
    finally:
        store.close()


def _register_one(path: str, location: str) -> None:
    store = SqliteStore(path)
    try:
        store.put(make(location=location, now=time.time()))
    finally:
        store.close()


def test_a_cached_lookup_sees_a_write_of_another_process_at_once(db_path: Path) -> None:
    store = SqliteStore(db_path)
    context = multiprocessing.get_context("spawn")
    try:
        assert store.lookup(NS, "web", "1.0", time.time()) == []
        for location in ("a", "b"):
            writer = context.Process(target=_register_one, args=(str(db_path), location))
            writer.start()
            writer.join(timeout=60)
            assert writer.exitcode == 0
            assert location in locations(store.lookup(NS, "web", "1.0", time.time()))
    finally:
        store.close()


#: Run in another process: can it take the lock on the "-shm" byte that SQLite's
#: connections hold shared while they are open (UNIX_SHM_DMS, byte 128)?
_TAKES_THE_INDEX_LOCK = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
except OSError:
    sys.exit(1)
sys.exit(0)
"""


def _index_lock_is_free(db_path: Path) -> bool:
    probe = [sys.executable, "-c", _TAKES_THE_INDEX_LOCK, f"{db_path}-shm"]
    return subprocess.run(probe, timeout=60).returncode == 0


def test_mapping_the_wal_index_keeps_the_locks_sqlite_holds_on_it(db_path: Path) -> None:
    """POSIX drops a process's locks on a file when it closes any descriptor of it:
    the map of the WAL index header must not, or another process rebuilds the index
    under this one (a worker killed by SIGBUS under health checks was the symptom)."""
    first, second = SqliteStore(db_path), SqliteStore(db_path)
    try:
        now = time.time()
        for store in (first, second):
            store.put(make(location="a", now=now))
            assert locations(store.lookup(NS, "web", "1.0", now)) == ["a"]
            assert store.change_stamp(NS, "web") is not None  # the header is mapped
        assert not _index_lock_is_free(db_path)
        second.close()  # another store of this process, on the same file
        assert not _index_lock_is_free(db_path)
        first.lookup(NS, "web", "1.0", now)  # its look at the file is due after 0.25 s
        assert first.change_stamp(NS, "web") is not None
        first.put(make(location="b", now=now))
        assert locations(first.lookup(NS, "web", "1.0", now)) == ["a", "b"]
    finally:
        first.close()
        second.close()
    # SQLite's last connection deletes the file; had it not, nothing holds the lock.
    assert not Path(f"{db_path}-shm").exists() or _index_lock_is_free(db_path)


def test_a_database_made_before_0_2_0_had_the_replaced_expiry_column_is_upgraded(
    db_path: Path,
) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TABLE instances (service_name TEXT NOT NULL, version TEXT NOT NULL,"
            " location TEXT NOT NULL, ttl INTEGER NOT NULL, expires_at REAL NOT NULL,"
            " PRIMARY KEY (service_name, version, location)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO instances VALUES ('web', '1.0', 'old', 60, ?)", (time.time() + 60,))
    db.close()
    store = SqliteStore(db_path)
    try:
        now = time.time()
        assert locations(store.lookup(NS, "web", "1.0", now)) == ["old"]
        old_id = derived_instance_id("1.0", "old")
        heartbeat = make(location="old", ttl=5, now=now, instance_id=old_id)
        refreshed, new = store.put(heartbeat, KEEP_ALL)
        assert (refreshed.ttl, new) == (60, False)
        assert store.put(make(location="fresh", now=now))[1] is True
        assert locations(store.lookup(NS, "web", "1.0", now)) == ["fresh", "old"]
    finally:
        store.close()


def test_a_background_thread_checkpoints_the_log_and_stops_with_the_store(db_path: Path) -> None:
    """Writes leave their pages in the log; the process's checkpoint thread moves them into
    the database file within a few seconds, so health checks need not do it themselves."""
    store = SqliteStore(db_path)
    try:
        empty = db_path.stat().st_size
        now = time.time()
        for n in range(200):  # some 20 pages of the log: far below a write's own checkpoint
            store.put(make(service=f"svc-{n}", location="x" * 300, now=now))
        assert store._checkpointer is not None
        thread = store._checkpointer._thread
        assert thread.is_alive() and thread.daemon and thread.name == "keyard-sqlite-checkpoint"
        deadline = time.monotonic() + 10
        while db_path.stat().st_size <= empty and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db_path.stat().st_size > empty
    finally:
        store.close()
    assert not thread.is_alive()


# -- change indexes ---------------------------------------------------------------


def test_the_change_log_forgets_what_is_older_than_it_keeps(db_path: Path) -> None:
    from keyard.errors import IndexTooOld

    store = SqliteStore(db_path)
    try:
        start = store.change_index(NS, None)
        store.put(make(location="a"))
        store.put(make(location="b"))
        latest = store.change_index(NS, None)
        store._trim_log(time.time() + 1)
        with pytest.raises(IndexTooOld, match="read everything"):
            store.changes_since(NS, start)
        assert store.changes_since(NS, latest) == []
        assert store.change_index(NS, None) == latest, "trimming moves no index"
    finally:
        store.close()


def test_a_database_of_keyard_0_3_gets_indexes_starting_at_one(db_path: Path) -> None:
    """A database written before the change tables: its data is kept, its indexes start at 1."""
    store = SqliteStore(db_path)
    store.put(make(location="kept"))
    store.close()
    with sqlite3.connect(db_path) as raw:
        for trigger in ("inserted", "updated", "deleted"):
            raw.execute(f"DROP TRIGGER {TABLE}_{trigger}")
        for table in ("change_sequences", "service_indexes", "change_log"):
            raw.execute(f"DROP TABLE {table}")
    raw.close()
    store = SqliteStore(db_path)
    try:
        assert locations(store.lookup(NS, "web", None, time.time())) == ["kept"]
        assert store.change_index(NS, "web") == store.change_index(NS, None) == 1
        store.put(make(location="new"))
        assert store.change_index(NS, "web") == store.change_index(NS, None) == 2
    finally:
        store.close()
