"""The SQLite store reads a registry that keyard 0.2.0 wrote (tests/fixtures/keyard_0_2_0)."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from keyard.model import DEFAULT_NAMESPACE as NS
from keyard.model import Instance, InstanceKey, ServiceSummary, derived_instance_id
from keyard.stores.sqlite import CHANGE_LOG, SEQUENCES, SERVICE_INDEXES, TABLE, SqliteStore
from keyard.testing.store_contract import KEEP_ALL, make

CHANGE_TABLES = {SEQUENCES, SERVICE_INDEXES, CHANGE_LOG}

FIXTURE = Path(__file__).parent / "fixtures" / "keyard_0_2_0" / "registry.db"
LIVE_UNTIL = 4_102_444_800.0  # 2100-01-01T00:00:00Z
# (service_name, version, location, ttl) as keyard 0.2.0 registered them (make_fixtures.py).
LIVE = [
    ("payments", "2", "http://10.0.0.7:9000", 30),
    ("payments", "2", "http://10.0.0.8:9000", 60),
    ("payments", "1.0", "http://10.0.0.9:9000", 30),
    ("search", "1.0", "http://10.0.1.1:80/a?b=1&c=2#frag", 86400),
    ("ünïcødé/服务", "v/1", "..", 45),
]
EXPIRED = [
    ("payments", "2", "http://10.0.0.66:9000"),
    ("gone", "1.0", "http://10.0.9.9:1"),
]


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    """A copy of the file keyard 0.2.0 wrote, made with plain file and sqlite3 calls."""
    path = tmp_path / "registry.db"
    shutil.copy(FIXTURE, path)
    with sqlite3.connect(path) as db:  # what the copy holds before the upgrade
        assert db.execute("SELECT count(*) FROM instances").fetchone()[0] == 7
    db.close()
    return path


def expected(service: str, version: str, location: str, ttl: int) -> Instance:
    return Instance(
        namespace="default",
        service_name=service,
        instance_id=derived_instance_id(version, location),
        version=version,
        location=location,
        status="UP",
        status_override=None,
        tags=(),
        metadata={},
        weight=100,
        ttl=ttl,
        registered_at=LIVE_UNTIL - ttl,
        last_heartbeat_at=LIVE_UNTIL - ttl,
        expires_at=LIVE_UNTIL,
    )


def check_upgraded(store: SqliteStore) -> None:
    """Every live 0.2.0 instance intact, field by field; the expired ones absent."""
    now = time.time()
    for service, version, location, ttl in LIVE:
        want = expected(service, version, location, ttl)
        found = store.get(want.key, now)
        assert found is not None, want.key
        for field in Instance._fields:
            assert getattr(found, field) == getattr(want, field), (want.key, field)
        assert type(found.tags) is tuple and type(found.metadata) is dict
        assert found in store.lookup(NS, service, version, now)
    for service, version, location in EXPIRED:
        key = InstanceKey(NS, service, derived_instance_id(version, location))
        assert store.get(key, now) is None
    assert [i.location for i in store.lookup(NS, "payments", None, now)] == [
        "http://10.0.0.9:9000",
        "http://10.0.0.7:9000",
        "http://10.0.0.8:9000",
    ]
    assert store.services(NS, now) == [
        ServiceSummary("payments", 3, 3),
        ServiceSummary("search", 1, 1),
        ServiceSummary("ünïcødé/服务", 1, 1),
    ]
    assert len(store) == len(LIVE), "expired rows are not copied"


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    return found


def test_a_0_2_0_database_is_upgraded_with_every_live_instance_intact(old_db: Path) -> None:
    store = SqliteStore(old_db)
    try:
        assert store.upgraded == len(LIVE)
        check_upgraded(store)
    finally:
        store.close()
    assert tables(old_db) == {TABLE, *CHANGE_TABLES}, "the old table is dropped once converted"


def test_the_upgrade_happens_once(old_db: Path) -> None:
    SqliteStore(old_db).close()
    store = SqliteStore(old_db)
    try:
        assert store.upgraded == 0
        check_upgraded(store)
    finally:
        store.close()


def test_upgraded_instances_take_heartbeats_and_registrations(old_db: Path) -> None:
    store = SqliteStore(old_db)
    try:
        now = time.time()
        key_id = derived_instance_id("2", "http://10.0.0.8:9000")
        beat = make("payments", "2", "http://10.0.0.8:9000", ttl=5, now=now, instance_id=key_id)
        stored, new = store.put(beat, KEEP_ALL)
        assert new is False
        assert (stored.ttl, stored.registered_at) == (60, LIVE_UNTIL - 60)
        assert stored.expires_at == pytest.approx(now + 60)
    finally:
        store.close()


def _open_at_once(path: str, barrier: object, results: multiprocessing.Queue) -> None:
    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    store = SqliteStore(path)
    results.put(store.upgraded)
    store.close()


def test_several_processes_opening_a_0_2_0_database_at_once_convert_it_once(
    old_db: Path,
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_open_at_once, args=(str(old_db), barrier, results))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    upgraded = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert upgraded == [0, 0, 0, len(LIVE)]
    store = SqliteStore(old_db)
    try:
        check_upgraded(store)
    finally:
        store.close()
    assert tables(old_db) == {TABLE, *CHANGE_TABLES}
