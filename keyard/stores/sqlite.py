"""The SQLite store (``store_type: "sqlite"``): the embedded default, one file on local disk.

Safe for many gunicorn worker processes and threads at once: the database runs
in WAL mode (readers never wait for the writer); each process has one connection
for reading and one for writing, each used by one thread at a time; and every
write is one statement (an upsert that returns what it replaced), so its
new-or-refreshed answer is atomic across processes. Lookups are answered from the
process's cache of answers while the WAL index header in shared memory says that no
connection of any process has committed since (a read of memory; see
:class:`_WalIndexHeader`). The registry survives a restart of keyard. The
file must be on a local disk: WAL needs shared memory, which network file systems
do not give.

A database written by keyard 0.2.0 (table ``instances``) is upgraded when the
store opens: see :func:`_upgrade_0_2_0`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from keyard.errors import ConfigError, IndexTooOld, InvalidInput, StoreUnavailable
from keyard.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_WEIGHT,
    UP,
    Instance,
    InstanceKey,
    Metadata,
    ServiceSummary,
    derived_instance_id,
)
from keyard.stores import options as opt
from keyard.stores.background import BackgroundThread, Backoff, PerProcess, process_id
from keyard.stores.base import Store, WouldWait, may_wait, wrote
from keyard.stores.changes import FIRST_INDEX, LOG_SECONDS, SWEEP_INTERVAL, Change, Waiters

log = logging.getLogger(__name__)

DEFAULT_PATH = "./keyard-data/registry.db"
DEFAULT_TIMEOUT = 5.0
#: A WAL index (``-shm``) file is at least one 32 KiB region once a connection has used it.
WAL_INDEX_MIN_BYTES = 32768

TABLE = "instance_records"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    namespace         TEXT NOT NULL,
    service_name      TEXT NOT NULL,
    instance_id       TEXT NOT NULL,
    version           TEXT NOT NULL,
    location          TEXT NOT NULL,
    status            TEXT NOT NULL,
    status_override   TEXT,
    tags              TEXT NOT NULL,
    metadata          TEXT NOT NULL,
    weight            INTEGER NOT NULL,
    ttl               INTEGER NOT NULL,
    registered_at     REAL NOT NULL,
    last_heartbeat_at REAL NOT NULL,
    expires_at        REAL NOT NULL,
    replaced_expiry   REAL,
    PRIMARY KEY (namespace, service_name, instance_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {TABLE}_by_expiry ON {TABLE} (expires_at);
CREATE INDEX IF NOT EXISTS {TABLE}_by_version
    ON {TABLE} (namespace, service_name, version, location);
"""

# -- change indexes (keyard.stores.changes), kept by triggers in the write's own statement --

SEQUENCES, SERVICE_INDEXES, CHANGE_LOG = "change_sequences", "service_indexes", "change_log"
_NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
_RECORD_COLUMNS_SQL = """namespace, service_name, instance_id, version, location, status,
    status_override, tags, metadata, weight, ttl, registered_at, last_heartbeat_at, expires_at"""


def _recorded(row: str, kind: str, when: str = "1") -> str:
    """The statements of a trigger that number a change of ``row`` (``new`` or ``old``) in its
    namespace, set its service's index to that number and log it, when ``when`` holds."""
    values = ", ".join(f"{row}.{column.strip()}" for column in _RECORD_COLUMNS_SQL.split(","))
    # No OR IGNORE / OR REPLACE: in a trigger, the firing statement's conflict policy wins.
    service = f"namespace = {row}.namespace AND service_name = {row}.service_name"
    return f"""
    INSERT INTO {SEQUENCES} (namespace, latest, dropped) SELECT {row}.namespace, 1, 0
        WHERE {when} AND NOT EXISTS (SELECT 1 FROM {SEQUENCES} WHERE namespace = {row}.namespace);
    UPDATE {SEQUENCES} SET latest = latest + 1 WHERE namespace = {row}.namespace AND {when};
    UPDATE {SERVICE_INDEXES} SET latest = (SELECT latest FROM {SEQUENCES}
        WHERE namespace = {row}.namespace) WHERE {service} AND {when};
    INSERT INTO {SERVICE_INDEXES} (namespace, service_name, latest)
        SELECT namespace, {row}.service_name, latest FROM {SEQUENCES}
        WHERE namespace = {row}.namespace AND {when}
        AND NOT EXISTS (SELECT 1 FROM {SERVICE_INDEXES} WHERE {service});
    INSERT INTO {CHANGE_LOG} (change_index, kind, logged_at, {_RECORD_COLUMNS_SQL})
        SELECT latest, {kind}, {_NOW_SQL}, {values} FROM {SEQUENCES}
        WHERE namespace = {row}.namespace AND {when};"""


#: An update changes what lookups answer unless it only extended a live lease.
_CHANGED = " OR ".join(
    f"old.{column} IS NOT new.{column}"
    for column in ("version", "location", "status", "status_override", "tags", "metadata",
                   "weight", "registered_at")
)
_WAS_EXPIRED = "old.expires_at <= new.last_heartbeat_at"
_CHANGE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {SEQUENCES} (
    namespace TEXT PRIMARY KEY,
    latest    INTEGER NOT NULL,
    dropped   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {SERVICE_INDEXES} (
    namespace    TEXT NOT NULL,
    service_name TEXT NOT NULL,
    latest       INTEGER NOT NULL,
    PRIMARY KEY (namespace, service_name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {CHANGE_LOG} (
    namespace         TEXT NOT NULL,
    change_index      INTEGER NOT NULL,
    kind              TEXT NOT NULL,
    logged_at         REAL NOT NULL,
    service_name      TEXT NOT NULL,
    instance_id       TEXT NOT NULL,
    version           TEXT NOT NULL,
    location          TEXT NOT NULL,
    status            TEXT NOT NULL,
    status_override   TEXT,
    tags              TEXT NOT NULL,
    metadata          TEXT NOT NULL,
    weight            INTEGER NOT NULL,
    ttl               INTEGER NOT NULL,
    registered_at     REAL NOT NULL,
    last_heartbeat_at REAL NOT NULL,
    expires_at        REAL NOT NULL,
    PRIMARY KEY (namespace, change_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {CHANGE_LOG}_by_time ON {CHANGE_LOG} (logged_at);
CREATE TRIGGER IF NOT EXISTS {TABLE}_inserted AFTER INSERT ON {TABLE} BEGIN
    {_recorded("new", "'put'")}
END;
CREATE TRIGGER IF NOT EXISTS {TABLE}_updated AFTER UPDATE ON {TABLE}
    WHEN {_WAS_EXPIRED} OR {_CHANGED} BEGIN
    {_recorded("old", "'expired'", _WAS_EXPIRED)}
    {_recorded("new", "'put'")}
END;
CREATE TRIGGER IF NOT EXISTS {TABLE}_deleted AFTER DELETE ON {TABLE} BEGIN
    {_recorded("old", f"CASE WHEN old.expires_at <= {_NOW_SQL} THEN 'expired' ELSE 'removed' END")}
END;
"""
# Every write to the records table is numbered by its triggers, in the same statement and
# so the same transaction: every process on the file sees one sequence per namespace. A
# namespace's ``latest`` is its catalog index, a service's ``latest`` its index (1, the
# first index, before any change); ``dropped`` is the highest number trimmed from the log.
_CATALOG_INDEX = f"SELECT latest FROM {SEQUENCES} WHERE namespace = :namespace"
_SERVICE_INDEX = f"""SELECT latest FROM {SERVICE_INDEXES}
    WHERE namespace = :namespace AND service_name = :service_name"""
_SEQUENCE = f"SELECT latest, dropped FROM {SEQUENCES} WHERE namespace = :namespace"
_CHANGES_SINCE = f"""SELECT change_index, kind, {_RECORD_COLUMNS_SQL} FROM {CHANGE_LOG}
    WHERE namespace = :namespace AND change_index > :index ORDER BY change_index"""
_ANY_EXPIRED = f"SELECT 1 FROM {TABLE} WHERE expires_at <= :now LIMIT 1"
_MARK_TRIMMED = f"""UPDATE {SEQUENCES} SET dropped = coalesce((SELECT max(change_index)
        FROM {CHANGE_LOG} WHERE {CHANGE_LOG}.namespace = {SEQUENCES}.namespace
        AND logged_at < :cutoff), dropped)"""
_TRIM = f"DELETE FROM {CHANGE_LOG} WHERE logged_at < :cutoff"
#: Seconds between two looks of a process's watch thread for another commit.
WATCH_POLL = 0.01
#: Seconds between two trims of the change log by a process's watch thread.
TRIM_INTERVAL = 5.0

# ``tags`` is a JSON array of strings, ``metadata`` a JSON object of strings; times are
# Unix seconds. ``replaced_expiry``: the expiry a write replaced (NULL for a row
# inserted anew), so that one statement both writes a row and tells whether a live one
# was there. The secondary index of a WITHOUT ROWID table ends with the primary key's
# other columns, so ``_by_version`` is ordered by (version, location, instance_id)
# within a service: lookups read it in their answer's order.

#: The columns a record is written and read as, in the order :func:`_record` names them.
_COLUMNS = (
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
)
_FIELDS = ", ".join(_COLUMNS)
_KEY = "namespace = :namespace AND service_name = :service_name AND instance_id = :instance_id"
# The unary ``+`` keeps the planner off the expiry index, which would range-scan every
# service's rows.
_GET = f"SELECT {_FIELDS} FROM {TABLE} WHERE {_KEY} AND +expires_at > :now"
_LOOKUP_SERVICE = f"""SELECT {_FIELDS} FROM {TABLE} INDEXED BY {TABLE}_by_version
    WHERE namespace = :namespace AND service_name = :service_name AND +expires_at > :now
    ORDER BY version, location, instance_id"""
_LOOKUP_VERSION = f"""SELECT {_FIELDS} FROM {TABLE} INDEXED BY {TABLE}_by_version
    WHERE namespace = :namespace AND service_name = :service_name AND version = :version
        AND +expires_at > :now
    ORDER BY version, location, instance_id"""
_SERVICES = f"""SELECT service_name, count(*) AS instances,
        sum(coalesce(status_override, status) = '{UP}') AS up
    FROM {TABLE} WHERE namespace = :namespace AND +expires_at > :now
    GROUP BY service_name ORDER BY service_name"""
# A write is one statement, so the database's write lock is held only inside one call
# into SQLite, never while this thread waits for Python's GIL between statements (with
# several threads and processes writing, that wait held up every other writer). On the
# right of the update's SET, bare column names are the row's values before the write;
# the row is live when its expiry is after the new heartbeat (the write's "now").
_LIVE = "expires_at > excluded.last_heartbeat_at"
_PUT = f"""INSERT INTO {TABLE} ({_FIELDS}) VALUES ({", ".join(":" + c for c in _COLUMNS)})
    ON CONFLICT (namespace, service_name, instance_id) DO UPDATE SET
        version = excluded.version,
        location = excluded.location,
        status = CASE WHEN {_LIVE} AND :keep_status THEN status ELSE excluded.status END,
        status_override = CASE WHEN {_LIVE} THEN status_override
            ELSE excluded.status_override END,
        tags = CASE WHEN {_LIVE} AND :keep_tags THEN tags ELSE excluded.tags END,
        metadata = CASE WHEN {_LIVE} AND :keep_metadata THEN metadata
            ELSE excluded.metadata END,
        weight = CASE WHEN {_LIVE} AND :keep_weight THEN weight ELSE excluded.weight END,
        ttl = CASE WHEN {_LIVE} AND :keep_ttl THEN ttl ELSE excluded.ttl END,
        registered_at = CASE WHEN {_LIVE} THEN registered_at ELSE excluded.registered_at END,
        last_heartbeat_at = excluded.last_heartbeat_at,
        expires_at = CASE WHEN {_LIVE} AND :keep_ttl THEN excluded.last_heartbeat_at + ttl
            ELSE excluded.expires_at END,
        replaced_expiry = expires_at
    RETURNING status, status_override, tags, metadata, weight, ttl, registered_at,
        expires_at, replaced_expiry"""
# A health check that only extends a live lease (every other field kept, the same version
# and location): the same result as _PUT, without rewriting the columns of the lookup
# index (SQLite rewrites an index whose columns are in SET, whether or not they change).
# When it matches no row, _PUT follows.
_EXTEND = f"""UPDATE {TABLE} SET last_heartbeat_at = :last_heartbeat_at,
        expires_at = :last_heartbeat_at + ttl, replaced_expiry = expires_at
    WHERE {_KEY} AND version = :version AND location = :location
        AND +expires_at > :last_heartbeat_at
    RETURNING status, status_override, tags, metadata, weight, ttl, registered_at,
        expires_at, replaced_expiry"""
#: The ``keep`` of a health check that may take _EXTEND.
_LEASE_ONLY = frozenset({"ttl", "status", "tags", "metadata", "weight"})
_DELETE = f"DELETE FROM {TABLE} WHERE {_KEY} RETURNING {_FIELDS}"
_SET_OVERRIDE = f"""UPDATE {TABLE} SET status_override = :status_override
    WHERE {_KEY} AND +expires_at > :now RETURNING {_FIELDS}"""
_DATA_VERSION = "PRAGMA data_version"
# Proves at start-up that the file can be written to (a read-only file opens and reads
# fine); always rolled back. The empty key is one the registry never stores.
_WRITE_PROBE = f"""INSERT OR REPLACE INTO {TABLE} (namespace, service_name, instance_id,
        version, location, status, tags, metadata, weight, ttl, registered_at,
        last_heartbeat_at, expires_at)
    VALUES ('', '', '', '', '', '', '[]', '{{}}', 0, 0, 0, 0, 0)"""
# Bounded: at most PURGE_BATCH expired rows per write, found through the expiry index.
_PURGE = f"""DELETE FROM {TABLE} WHERE (namespace, service_name, instance_id) IN (
    SELECT namespace, service_name, instance_id FROM {TABLE}
    WHERE expires_at <= :now LIMIT :batch)"""

# -- keyard 0.2.0's table, read once by the upgrade ----------------------------------

OLD_TABLE = "instances"
_HAS_OLD_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"
# 0.2.0 kept (service_name, version, location, ttl, expires_at); its live rows become
# records with the defaults of an instance registered without the new fields.
_COPY_OLD_ROWS = f"""INSERT INTO {TABLE} (namespace, service_name, instance_id, version,
        location, status, status_override, tags, metadata, weight, ttl, registered_at,
        last_heartbeat_at, expires_at)
    SELECT :namespace, service_name, keyard_derived_instance_id(version, location), version,
        location, :status, NULL, '[]', '{{}}', :weight, ttl, expires_at - ttl,
        expires_at - ttl, expires_at
    FROM {OLD_TABLE} WHERE expires_at > :now
    ON CONFLICT (namespace, service_name, instance_id) DO NOTHING"""
_DROP_OLD_TABLE = f"DROP TABLE {OLD_TABLE}"
#: How long, at least, an opening store waits for another process's write lock to
#: upgrade the database (another keyard process may be upgrading it at that moment).
UPGRADE_WAIT = 30.0

#: How many expired rows one purge deletes at most.
PURGE_BATCH = 500
#: How many lookup answers a process's cache holds at most (then it starts again).
CACHED_ANSWERS = 4096
#: How many distinct tags and metadata texts a process keeps decoded (then it starts again).
DECODED_TEXTS = 4096
#: Seconds between two looks (one ``stat``) by a process's reads at whether its database
#: file is still the one it opened; every write looks first.
FILE_CHECK_INTERVAL = 0.25


#: The writing connection's page cache at most, in KiB: health checks touch pages
#: across the whole table and its expiry index, and SQLite's default of 2 MiB made a
#: health check 1.4x slower at 1M instances than at 1k (256 MiB: 1.07x). It fills only
#: as far as the database is large (about 200 bytes an instance); one per process.
WRITER_CACHE_KIB = 256 * 1024


#: Seconds between two checkpoints of the write-ahead log by a process's background
#: thread: at a million instances, checkpoints done by health checks themselves (SQLite's
#: default, every 1,000 pages) copied about 3 scattered pages into the database file per
#: health check, and a health check cost 1.3x what it cost at a thousand.
CHECKPOINT_INTERVAL = 1.0
#: The log's length in pages past which a write checkpoints it itself: the safety net,
#: should the background thread fall behind (10,000 pages: about 40 MiB).
WRITER_CHECKPOINT_PAGES = 10_000


# -- tags and metadata as JSON text ---------------------------------------------------

_NO_TAGS = "[]"
_NO_METADATA = "{}"
_decoded_tags: dict[str, tuple[str, ...]] = {}
_decoded_metadata: dict[str, Metadata] = {}


def _tags_text(tags: tuple[str, ...]) -> str:
    return json.dumps(tags, ensure_ascii=False, separators=(",", ":")) if tags else _NO_TAGS


def _metadata_text(metadata: Metadata) -> str:
    if not metadata:
        return _NO_METADATA
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))


def _tags(text: str) -> tuple[str, ...]:
    """The tags of a row's text; the same text decodes to the same (immutable) tuple."""
    if text == _NO_TAGS:
        return ()
    tags = _decoded_tags.get(text)
    if tags is None:
        if len(_decoded_tags) >= DECODED_TEXTS:
            _decoded_tags.clear()
        tags = _decoded_tags[text] = tuple(json.loads(text))
    return tags


def _metadata(text: str) -> Metadata:
    """The metadata of a row's text; records share it, as a record's metadata is never mutated."""
    if text == _NO_METADATA:
        return {}
    metadata = _decoded_metadata.get(text)
    if metadata is None:
        if len(_decoded_metadata) >= DECODED_TEXTS:
            _decoded_metadata.clear()
        metadata = _decoded_metadata[text] = json.loads(text)
    return metadata


def _record(row: tuple[Any, ...]) -> Instance:
    """The record of a row selected as ``_FIELDS``, each column bound to its field by name."""
    (
        namespace,
        service_name,
        instance_id,
        version,
        location,
        status,
        status_override,
        tags,
        metadata,
        weight,
        ttl,
        registered_at,
        last_heartbeat_at,
        expires_at,
    ) = row
    return Instance(
        namespace=namespace,
        service_name=service_name,
        instance_id=instance_id,
        version=version,
        location=location,
        status=status,
        status_override=status_override,
        tags=_tags(tags),
        metadata=_metadata(metadata),
        weight=weight,
        ttl=ttl,
        registered_at=registered_at,
        last_heartbeat_at=last_heartbeat_at,
        expires_at=expires_at,
    )


def _key_parameters(key: InstanceKey, now: float) -> dict[str, Any]:
    return {
        "namespace": key.namespace,
        "service_name": key.service_name,
        "instance_id": key.instance_id,
        "now": now,
    }


def _upgrade_0_2_0(connection: sqlite3.Connection, now: float, wait: float) -> int:
    """Move the live rows of keyard 0.2.0's table into the records table; how many were moved.

    In one write transaction (``BEGIN IMMEDIATE``): the first process to take the
    write lock copies the rows live at ``now`` and drops the old table; any other
    process opening the store at the same time waits for the lock (up to ``wait``
    seconds), then finds no old table and moves nothing. Expired rows are dropped
    with the table. A database without the old table costs one read.
    """
    if connection.execute(_HAS_OLD_TABLE, {"name": OLD_TABLE}).fetchone() is None:
        return 0
    connection.create_function(
        "keyard_derived_instance_id", 2, derived_instance_id, deterministic=True
    )
    previous_wait = connection.execute("PRAGMA busy_timeout").fetchone()[0]
    connection.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
    try:
        connection.execute("BEGIN IMMEDIATE")
    finally:
        connection.execute(f"PRAGMA busy_timeout = {int(previous_wait)}")
    try:
        if connection.execute(_HAS_OLD_TABLE, {"name": OLD_TABLE}).fetchone() is None:
            moved = 0  # another process upgraded it meanwhile
        else:
            moved = connection.execute(
                _COPY_OLD_ROWS,
                {"namespace": DEFAULT_NAMESPACE, "status": UP, "weight": DEFAULT_WEIGHT,
                 "now": now},
            ).rowcount
            connection.execute(_DROP_OLD_TABLE)
        connection.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    if moved:
        log.info("sqlite store: upgraded %d live instance(s) of keyard 0.2.0's table", moved)
    return moved


def _why_unopenable(path: Path) -> str | None:
    """What in the file system keeps ``path`` from holding a database, if anything visible.

    SQLite says only "unable to open database file"; this names the part of the
    path to change.
    """
    for ancestor in path.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                return (
                    f"{str(ancestor)!r} is a file, not a directory; choose another path "
                    "or move that file away"
                )
            break
    parent = path.parent
    if path.is_dir():
        return f"{str(path)!r} is a directory; name a file in it, such as registry.db"
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        return (
            f"permission denied: keyard cannot create files in the directory {str(parent)!r} "
            "(the database and its -wal and -shm files live there); make it writable by "
            "the user keyard runs as, or choose another path"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return (
            f"permission denied: keyard cannot read and write the file {str(path)!r}; make "
            "it readable and writable by the user keyard runs as"
        )
    return None


def _why_not_made(directory: Path) -> str | None:
    """Why ``directory`` cannot be made: the nearest existing ancestor is not writable."""
    for ancestor in directory.parents:
        if ancestor.is_dir():
            if not os.access(ancestor, os.W_OK | os.X_OK):
                return (
                    f"permission denied: keyard cannot create the directory {str(directory)!r} "
                    f"in {str(ancestor)!r}; make it writable by the user keyard runs as, "
                    "create the directory beforehand, or choose another path"
                )
            return None
    return None


class _Checkpointer:
    """A daemon thread that checkpoints the log every CHECKPOINT_INTERVAL, in one process.

    PASSIVE checkpoints never wait for readers or writers; the copying and the
    ``fsync`` happen in SQLite with Python's GIL let go, beside the requests.
    """

    def __init__(self, store: SqliteStore) -> None:
        self.pid = process_id()
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="keyard-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        identity = (0, 0)
        while not self._stop.wait(CHECKPOINT_INTERVAL):
            try:
                if connection is None:
                    connection, identity = self._store._open()
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except (sqlite3.Error, OSError) as exc:  # next time, on a new connection
                log.debug("sqlite store: a checkpoint failed: %s", exc)
                if connection is not None:
                    self._store._close_connection(connection, identity)
                connection = None
        if connection is not None:
            self._store._close_connection(connection, identity)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


_AnswerKey = tuple[str, str, "str | None"]  # (namespace, service_name, version)


class _Answers:
    """The reading connection's cached lookup answers, good while the database is unchanged.

    ``stamp`` is the WAL index header (or, where it is not mapped, that
    connection's ``PRAGMA data_version``) when they were read (``None`` before the
    first read), ``latest_read`` the latest ``now`` they were read at. A new
    reading connection starts a new cache: its data_version values are its own.
    """

    __slots__ = ("stamp", "latest_read", "answers")

    def __init__(self) -> None:
        self.stamp: int | bytes | None = None
        self.latest_read = float("-inf")
        self.answers: dict[_AnswerKey, list[Instance]] = {}

    def reset(self, stamp: int | bytes) -> None:
        self.stamp, self.latest_read, self.answers = stamp, float("-inf"), {}

    def keep(self, key: _AnswerKey, found: list[Instance], now: float) -> None:
        if len(self.answers) >= CACHED_ANSWERS:
            self.answers = {}
        self.answers[key] = found
        self.latest_read = max(self.latest_read, now)


class _WalIndexHeader:
    """The header of the database's WAL index, read in shared memory: a commit's mark.

    In WAL mode every connection of every process maps the ``-shm`` file, whose
    first 48 bytes (https://sqlite.org/walformat.html, "the WAL-index header") a
    commit rewrites (a transaction counter, the last commit frame, checksums)
    before it returns; nothing else but a checkpoint that restarts the WAL
    changes them. So comparing them tells whether any connection of any process
    has committed since: a read of memory, no system call, no lock.

    Made and closed by :class:`_WalIndexMaps` only, which keeps the file's
    descriptor; read only while a connection of the process has the file open
    (which keeps it mapped, and its size, in every process).
    """

    SIZE = 48

    def __init__(self, descriptor: int) -> None:
        self.map = mmap.mmap(descriptor, self.SIZE, prot=mmap.PROT_READ)

    def read(self) -> bytes | None:
        """The header's bytes, or None once closed (by another thread, meanwhile)."""
        try:
            return self.map[: self.SIZE]
        except ValueError:
            return None

    def close(self) -> None:
        self.map.close()


class _MappedFile:
    """One database file's entry in :class:`_WalIndexMaps`."""

    __slots__ = ("connections", "descriptor", "header", "shm")

    def __init__(self) -> None:
        self.connections = 0
        self.descriptor: int | None = None
        self.header: _WalIndexHeader | None = None
        self.shm: tuple[int, int] | None = None  # (device, inode) of the file mapped

    def drop_map(self) -> None:
        """Close the map and its descriptor: only once no connection holds the file."""
        if self.header is not None:
            self.header.close()
        if self.descriptor is not None:
            os.close(self.descriptor)
        self.descriptor = self.header = self.shm = None


class _WalIndexMaps:
    """The process's maps of WAL-index headers, one per database file, closed with
    the last of the process's connections to that file.

    POSIX drops every lock a process holds on a file when the process closes any
    one of its descriptors of it (https://sqlite.org/howtocorrupt.html, 2.2), and
    SQLite's connections hold theirs on ``-shm``: the one that tells a process
    opening the database that its index is in use, the WAL's write lock, the
    readers' marks. A map's descriptor (or mmap's own copy of it) closed while
    one of them is open would let another process rebuild the index under this
    one's readers, or write beside this one's writer: seen as a worker killed by
    SIGBUS under health checks from two processes. So the descriptor is opened
    once per file and process, and closed only after the last connection of the
    process to the file, with connections opened and closed under one lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pid = process_id()
        self._files: dict[tuple[int, int], _MappedFile] = {}

    def _entries(self) -> dict[tuple[int, int], _MappedFile]:
        # A child of fork() holds no lock of its parent's, and must never close the
        # parent's descriptors once its own connections hold locks on the file.
        if self._pid != process_id():
            self._pid, self._files = process_id(), {}
        return self._files

    def opened(self, identity: tuple[int, int]) -> None:
        """Count a connection to the file ``identity`` just opened (under :attr:`lock`)."""
        self._entries().setdefault(identity, _MappedFile()).connections += 1

    def close(self, connection: sqlite3.Connection, identity: tuple[int, int]) -> None:
        """Close ``connection``, and after it the file's map if it was the last one."""
        with self.lock:
            entry = self._entries().get(identity)
            last = entry is not None and entry.connections <= 1
            if entry is not None and last:
                del self._files[identity]
                if entry.header is not None:
                    entry.header.close()  # before the connection: no read after this
            elif entry is not None:
                entry.connections -= 1
            with contextlib.suppress(sqlite3.Error):
                connection.close()
            if entry is not None and last:
                entry.drop_map()  # no connection of this process is left

    def header(self, identity: tuple[int, int], database: Path) -> _WalIndexHeader | None:
        """The file's map, made on first call while a connection to it is open."""
        with self.lock:
            entry = self._entries().get(identity)
            if entry is None:
                return None
            shm = f"{database}-shm"
            status = os.stat(shm)
            if entry.shm != (status.st_dev, status.st_ino):
                # Not mapped yet; or mapped for a file whose connections were dropped
                # unclosed (garbage-collected) and whose inode a new file now has:
                # no connection holds the old one, so its descriptor may be closed.
                entry.drop_map()
                if status.st_size < WAL_INDEX_MIN_BYTES:
                    raise OSError(f"{shm} is not an initialised WAL index")
                entry.descriptor = os.open(shm, os.O_RDONLY)  # kept: see above
                entry.shm = (status.st_dev, status.st_ino)
                entry.header = _WalIndexHeader(entry.descriptor)
            return entry.header


_WAL_INDEX_MAPS = _WalIndexMaps()


#: Seconds of the writing connection's first sleep while another process holds the
#: database's write lock, doubled at each retry up to BUSY_LONGEST_WAIT. SQLite's own
#: busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms: a write lock is held for tens
#: of microseconds, and while one thread sleeps, holding the process's turn to write,
#: the process writes nothing. Under granian (2 workers x 4 threads) health checks
#: waited 111 ms at p90, 495 ms at p99, on a machine where bare falcon answered in 2 ms.
BUSY_FIRST_WAIT = 0.00002
BUSY_LONGEST_WAIT = 0.0005
#: Seconds a write tried on an event loop waits for another process's write lock
#: before it is handed to a thread (WouldWait): a few of its usual holds.
BUSY_PATIENCE_ON_LOOP = 0.001


def _busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


class _Writer:
    """The writing connection, whose statements wait for another process's write lock
    in short sleeps (see BUSY_FIRST_WAIT), up to the store's timeout, then raise.

    A statement that SQLite answers SQLITE_BUSY did nothing (an autocommit write, or a
    ``BEGIN IMMEDIATE``, that did not get the lock; in WAL mode a transaction that
    holds the lock is never busy), so trying it again is safe. Where it may not wait
    (:func:`~keyard.stores.base.without_waiting`, on an event loop), it tries again for
    BUSY_PATIENCE_ON_LOOP seconds only, then raises WouldWait: the caller's statements
    before it in the same turn wrote nothing, or the caller catches it (a purge).
    """

    __slots__ = ("connection", "timeout")

    def __init__(self, connection: sqlite3.Connection, timeout: float) -> None:
        self.connection, self.timeout = connection, timeout

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        try:
            return self.connection.execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        if may_wait():
            return self._again(sql, parameters, self.timeout)
        try:
            return self._again(sql, parameters, BUSY_PATIENCE_ON_LOOP)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            raise WouldWait("sqlite store: another process holds the write lock") from None

    def _again(self, sql: str, parameters: Any, patience: float) -> sqlite3.Cursor:
        """The busy statement, tried again after short sleeps, for ``patience`` seconds."""
        deadline = time.monotonic() + patience
        wait = BUSY_FIRST_WAIT
        while True:
            time.sleep(wait)
            try:
                return self.connection.execute(sql, parameters)
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            wait = min(wait * 2, BUSY_LONGEST_WAIT)


class _Slot:
    """One connection of this process (the reading one, or the writing one).

    Used under its lock (see :meth:`SqliteStore._turn`), so by one thread at a
    time. ``pid`` is the process that opened it: a connection never crosses a fork.
    ``wal_index``: the reading connection's map of the WAL index header, if made.
    """

    __slots__ = ("connection", "pid", "identity", "wal_index")

    def __init__(self) -> None:
        self.connection: sqlite3.Connection | None = None
        self.pid = 0
        self.identity = (0, 0)  # (device, inode) of the file it opened
        self.wal_index: _WalIndexHeader | None = None


class SqliteStore(Store):
    """Records in one SQLite table keyed by (namespace, service_name, instance_id).

    Lookups read the range of one service (or service and version) of the index
    on (namespace, service_name, version, location), in their answer's order;
    expired rows are skipped by the queries and deleted through the index on
    ``expires_at`` by writes, at most every ``purge_interval`` seconds and
    ``PURGE_BATCH`` rows at a time (sooner while a backlog remains).
    """

    waiters: Waiters  # always kept

    name = "sqlite"
    OPTIONS = ("path", "timeout")
    shared_across_processes = True
    watchable = True
    reads_are_local = True
    writes_are_local = True  # under without_waiting, WouldWait where they would wait

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        purge_interval: float = 1.0,
    ) -> None:
        """Open (creating if needed) the database at ``path`` and its parent directory.

        Upgrades a database of keyard 0.2.0 (see :func:`_upgrade_0_2_0`).
        ``timeout`` is how long a write waits for another writer's lock before
        :class:`StoreUnavailable`. Raises :class:`ConfigError` when the path cannot
        hold a database, saying which part of it to change.
        """
        self.path = Path(path).expanduser().absolute()
        self.timeout = timeout
        self.purge_interval = purge_interval
        self._reader, self._writer = _Slot(), _Slot()
        self._answers = _Answers()  # the reading connection's; used under the read lock
        self._read_lock = threading.Lock()  # see _turn
        self._write_lock = threading.Lock()
        self._connections_lock = threading.Lock()
        # Every open connection, with the process that opened it. Kept referenced so
        # that one inherited through fork() is never closed by the child.
        self._connections: list[tuple[int, sqlite3.Connection, tuple[int, int]]] = []
        # Connections to a file that another database has replaced: never closed.
        self._kept_open: list[sqlite3.Connection] = []
        # The process that found its database file deleted or replaced, if any.
        self._lost_in_pid: int | None = None
        self._next_file_check = 0.0  # time.monotonic() of the reads' next look at the file
        self._next_purge = 0.0
        self._closed = False
        self._checkpointer: _Checkpointer | None = None
        #: How many live instances of keyard 0.2.0's table this opening upgraded.
        self.upgraded = 0
        # The change API: this process's waiters, woken by its watch thread (started by
        # the first use of the API in the process), which also sweeps and trims.
        # Woken within WATCH_POLL of a commit of any process (PRAGMA data_version).
        self.waiters = Waiters(recheck=2.0)
        self._watcher: PerProcess[BackgroundThread] = PerProcess()
        #: Seconds of changes the log keeps (tests shorten it).
        self.log_seconds = LOG_SECONDS
        try:
            self._make_parent_directory()
            # Create the file and schema now, and try a write, so a bad path fails here.
            connection, identity = self._open()
            try:
                self.upgraded = _upgrade_0_2_0(
                    connection, time.time(), max(self.timeout, UPGRADE_WAIT)
                )
                self._probe_writable(connection)
            finally:
                self._close_connection(connection, identity)
        except (OSError, ValueError, sqlite3.Error) as exc:
            why = _why_unopenable(self.path) if isinstance(exc, (OSError, sqlite3.Error)) else None
            said = str(exc) if why is None or why in str(exc) else f"{exc}: {why}"
            raise ConfigError(
                f"sqlite store: option path {str(path)!r} cannot hold a database: {said}"
            ) from exc

    def _make_parent_directory(self) -> None:
        """Make the directories of ``path``; an OSError that names the part to change if not."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a part of the path is a file, or may not be written to
            why = _why_unopenable(self.path) or _why_not_made(self.path.parent)
            if why is None:
                raise
            raise OSError(why) from exc

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SqliteStore:
        """Options: ``path`` (default ``./keyard-data/registry.db``), ``timeout`` (seconds, 5)."""
        cls.check_options(options)
        path = opt.text("sqlite", "path", options.get("path", DEFAULT_PATH))
        if path == ":memory:" or path.startswith("file:"):
            raise ConfigError(
                f"sqlite store: option path must name a file, got {path!r} "
                "(for a registry inside one process use store_type 'simple')"
            )
        timeout = opt.seconds(
            "sqlite", "timeout", options.get("timeout", DEFAULT_TIMEOUT), zero_ok=True, maximum=600
        )
        return cls(path, timeout=timeout)

    # -- the Store interface ---------------------------------------------------

    def put(self, instance: Instance, keep: frozenset[str] = frozenset()) -> tuple[Instance, bool]:
        """Atomic: one statement, merging in SQL as :func:`~keyard.stores.base.merged` does
        (a health check that only extends a live lease tries the narrower _EXTEND first)."""
        now = instance.last_heartbeat_at
        tags, metadata = _tags_text(instance.tags), _metadata_text(instance.metadata)
        parameters = {
            "namespace": instance.namespace,
            "service_name": instance.service_name,
            "instance_id": instance.instance_id,
            "version": instance.version,
            "location": instance.location,
            "status": instance.status,
            "status_override": instance.status_override,
            "tags": tags,
            "metadata": metadata,
            "weight": instance.weight,
            "ttl": instance.ttl,
            "registered_at": instance.registered_at,
            "last_heartbeat_at": now,
            "expires_at": instance.expires_at,
            "keep_ttl": "ttl" in keep,
            "keep_status": "status" in keep,
            "keep_tags": "tags" in keep,
            "keep_metadata": "metadata" in keep,
            "keep_weight": "weight" in keep,
        }
        with self._writing() as db:
            rows = db.execute(_EXTEND, parameters).fetchall() if keep >= _LEASE_ONLY else None
            if not rows:
                rows = db.execute(_PUT, parameters).fetchall()  # all: the statement completes
            self._maybe_purge(db, now)
        (
            status,
            status_override,
            stored_tags,
            stored_metadata,
            weight,
            ttl,
            registered_at,
            expires_at,
            replaced_expiry,
        ) = rows[0]
        if replaced_expiry is None or replaced_expiry <= now:
            return instance, True
        return instance._replace(
            status=status,
            status_override=status_override,
            tags=instance.tags if stored_tags == tags else _tags(stored_tags),
            metadata=instance.metadata if stored_metadata == metadata else _metadata(
                stored_metadata
            ),
            weight=weight,
            ttl=ttl,
            registered_at=registered_at,
            expires_at=expires_at,
        ), False

    def get(self, key: InstanceKey, now: float) -> Instance | None:
        with self._reading() as db:
            rows = db.execute(_GET, _key_parameters(key, now)).fetchall()
        return _record(rows[0]) if rows else None

    def deregister(self, key: InstanceKey, now: float) -> Instance | None:
        with self._writing() as db:
            rows = db.execute(_DELETE, _key_parameters(key, now)).fetchall()
            self._maybe_purge(db, now)
        if not rows:
            return None
        removed = _record(rows[0])
        return removed if removed.expires_at > now else None

    def set_override(self, key: InstanceKey, status: str | None, now: float) -> Instance | None:
        """Atomic: one statement, which changes nothing but the override."""
        parameters = _key_parameters(key, now)
        parameters["status_override"] = status
        with self._writing() as db:
            rows = db.execute(_SET_OVERRIDE, parameters).fetchall()
        return _record(rows[0]) if rows else None

    def change_stamp(self, namespace: str, service_name: str) -> bytes | None:
        """The WAL index header (see :class:`_WalIndexHeader`): it changes with every
        commit of every process, to any service. ``None`` while the reading
        connection is not open in this process, or when its look at the file is due
        (so that the lookup that follows makes it)."""
        slot = self._reader
        header = slot.wal_index
        if (
            header is None
            or slot.pid != process_id()
            or self._lost_in_pid is not None
            or time.monotonic() >= self._next_file_check
        ):
            return None
        try:  # header.read(), inlined: every kept answer asks it
            return header.map[: _WalIndexHeader.SIZE]
        except ValueError:  # closed by another thread meanwhile
            return None

    def lookup(
        self, namespace: str, service_name: str, version: str | None, now: float
    ) -> list[Instance]:
        """Served from the process's cache of answers while the database is unchanged.

        The WAL index header (:meth:`change_stamp`), or where it cannot be read
        ``PRAGMA data_version`` on the reading connection, tells whether any
        connection, the writing one of this process included, has committed since
        the cache was filled. A cached answer holds the instances live when it was
        read, so it is filtered by ``now``.
        """
        with self._reading() as db:
            cache = self._answers
            header = self._reader.wal_index
            stamp = header.read() if header is not None else None
            if stamp is None:
                stamp = db.execute(_DATA_VERSION).fetchone()[0]
            # An answer read at a later ``now`` may lack rows still live at this one.
            if stamp != cache.stamp or now < cache.latest_read:
                cache.reset(stamp)
            key = (namespace, service_name, version)
            found = cache.answers.get(key)
            if found is None:
                parameters = {"namespace": namespace, "service_name": service_name, "now": now}
                if version is None:
                    rows = db.execute(_LOOKUP_SERVICE, parameters).fetchall()
                else:
                    parameters["version"] = version
                    rows = db.execute(_LOOKUP_VERSION, parameters).fetchall()
                found = list(map(_record, rows))
                cache.keep(key, found, now)
                return found
        return [instance for instance in found if instance.expires_at > now]

    def services(self, namespace: str, now: float) -> list[ServiceSummary]:
        """One grouped read of the namespace's range of the primary key."""
        with self._reading() as db:
            rows = db.execute(_SERVICES, {"namespace": namespace, "now": now}).fetchall()
        return [
            ServiceSummary(service_name=service_name, instances=instances, up=up)
            for service_name, instances, up in rows
        ]

    def change_index(self, namespace: str, service_name: str | None) -> int:
        """One read of the index the triggers keep (see ``_CHANGE_SCHEMA``)."""
        self._start_watching()
        with self._reading() as db:
            if service_name is None:
                row = db.execute(_CATALOG_INDEX, {"namespace": namespace}).fetchone()
            else:
                parameters = {"namespace": namespace, "service_name": service_name}
                row = db.execute(_SERVICE_INDEX, parameters).fetchone()
        return int(row[0]) if row is not None else FIRST_INDEX

    def changes_since(self, namespace: str, index: int) -> list[Change]:
        """One read transaction: the namespace's sequence, then its log above ``index``."""
        self._start_watching()
        with self._reading() as db:
            db.execute("BEGIN")
            try:
                row = db.execute(_SEQUENCE, {"namespace": namespace}).fetchone()
                latest, dropped = row if row is not None else (FIRST_INDEX, 0)
                if index < dropped or index > latest:
                    raise IndexTooOld(
                        f"index {index} is older than the change log of namespace "
                        f"{namespace!r} keeps (or newer than its latest, {latest}): "
                        "read everything"
                    )
                rows = db.execute(
                    _CHANGES_SINCE, {"namespace": namespace, "index": index}
                ).fetchall()
            finally:
                db.execute("COMMIT")
        return [Change(row[0], row[1], _record(row[2:])) for row in rows]

    def _start_watching(self) -> None:
        if self._watcher.here() is None and not self._closed:
            self._watcher.get(self._make_watcher)

    def _make_watcher(self) -> BackgroundThread:
        thread = BackgroundThread(lambda: self._watch(thread), "keyard-sqlite-watch")
        thread.start()
        return thread

    def _watch(self, thread: BackgroundThread) -> None:
        """Wake the waiters at every commit; make expiries into changes; trim the log."""
        connection: sqlite3.Connection | None = None
        identity = (0, 0)
        seen = None
        next_sweep = next_trim = 0.0
        backoff = Backoff(0.1, 2.0)
        pause = WATCH_POLL
        while not thread.wait(pause):
            try:
                if connection is None:
                    connection, identity = self._open()
                version = connection.execute(_DATA_VERSION).fetchone()[0]
                if version != seen:
                    seen = version
                    self.waiters.notify()
                clock = time.monotonic()
                if clock >= next_sweep:
                    next_sweep = clock + SWEEP_INTERVAL
                    now = time.time()
                    if connection.execute(_ANY_EXPIRED, {"now": now}).fetchone() is not None:
                        with self._writing() as db:
                            db.execute(_PURGE, {"now": now, "batch": PURGE_BATCH})
                if clock >= next_trim:
                    next_trim = clock + TRIM_INTERVAL
                    self._trim_log(time.time() - self.log_seconds)
                backoff.reset()
                pause = WATCH_POLL
            except (sqlite3.Error, OSError, StoreUnavailable) as exc:
                pause = backoff.next()
                if backoff.failures == 1:
                    log.warning("sqlite store: watching for changes failed: %s", exc)
                if connection is not None:
                    self._close_connection(connection, identity)
                connection = None
                self.waiters.notify()  # the waiters read again, and see the failure
        if connection is not None:
            self._close_connection(connection, identity)

    def _trim_log(self, cutoff: float) -> None:
        """Drop the changes logged before ``cutoff``, remembering the highest dropped."""
        with self._writing() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(_MARK_TRIMMED, {"cutoff": cutoff})
                db.execute(_TRIM, {"cutoff": cutoff})
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this store opened in this process."""
        watcher = self._watcher.pop()
        if watcher is not None:
            watcher.stop(wait=2.0)
        pid = process_id()
        with self._connections_lock:
            self._closed = True
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None and checkpointer.pid == pid:
            checkpointer.stop()
        with self._connections_lock:
            ours = [entry for entry in self._connections if entry[0] == pid]
            self._connections = [entry for entry in self._connections if entry[0] != pid]
        if self._reader.pid == pid:
            self._reader.wal_index = None  # the map is closed with the last connection
        for _, connection, identity in ours:
            self._close_connection(connection, identity)

    def __len__(self) -> int:
        """The number of rows held, expired ones not yet purged included."""
        with self._reading() as db:
            return int(db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    # -- connections, transactions, errors -------------------------------------

    def _open(self, cache_kib: int | None = None) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """A new connection, and the identity (device, inode) of the file it opened."""
        # Under the lock that closes the process's map of the file (see _WalIndexMaps).
        with _WAL_INDEX_MAPS.lock:
            # isolation_level=None: no implicit transactions; each statement commits.
            # check_same_thread=False: the threads of the process take turns with it.
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                self._use_wal(connection)
                connection.execute("PRAGMA synchronous = NORMAL")
                if cache_kib is not None:
                    connection.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
                connection.executescript(_SCHEMA)
                connection.executescript(_CHANGE_SCHEMA)
                identity = self._file_identity()
            except BaseException:
                connection.close()
                raise
            _WAL_INDEX_MAPS.opened(identity)
        return connection, identity

    def _use_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the database to WAL, waiting (up to the timeout) for other processes.

        Changing a database's journal mode needs it to itself, and SQLite answers
        "database is locked" at once, without its busy wait, while another process
        holds it: several keyard processes opening a file that is not in WAL yet (a
        new one, or one an upgrade is converting) would otherwise fail to start.
        """
        deadline = time.monotonic() + max(self.timeout, 0.1)
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL").fetchall()
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _file_identity(self) -> tuple[int, int]:
        status = os.stat(self.path)
        return status.st_dev, status.st_ino

    @staticmethod
    def _probe_writable(connection: sqlite3.Connection) -> None:
        """Raise the sqlite3 error a write would meet; a busy database is not one."""
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return  # another process is writing: so writing works
            raise
        try:
            connection.execute(_WRITE_PROBE)
        finally:
            connection.execute("ROLLBACK")

    def _path_identity(self) -> tuple[int, int] | None:
        """The identity of the file now at ``path``; None when there is none."""
        try:
            return self._file_identity()
        except OSError:
            return None

    def _check_file_kept(self, identity: tuple[int, int]) -> None:
        """StoreUnavailable, from now on, once ``path`` is not the file opened as ``identity``.

        A connection keeps using a file that was deleted or replaced under it:
        its writes would answer 200 and vanish with the file, and its reads would
        answer from a registry no other process sees. Nor can it move to the new
        file: closing it would make SQLite delete the new database's ``-wal`` and
        ``-shm`` files by name, under the processes using them.
        """
        if self._lost_in_pid != process_id() and self._path_identity() != identity:
            self._lost_in_pid = process_id()
            log.error("%s", self._lost_message)
        if self._lost_in_pid == process_id():
            raise StoreUnavailable(self._lost_message)

    @property
    def _lost_message(self) -> str:
        return (
            f"sqlite store: the database file {str(self.path)!r} was deleted or replaced "
            "while keyard was running, and writes to it would be lost; restart keyard "
            "(services register again at their next health check)"
        )

    def _close_connection(self, connection: sqlite3.Connection, identity: tuple[int, int]) -> None:
        """Close a connection, unless another database has replaced its file (see above)."""
        if self._path_identity() not in (identity, None):
            self._kept_open.append(connection)
            return
        _WAL_INDEX_MAPS.close(connection, identity)

    def _connection(self, slot: _Slot, write: bool = False) -> sqlite3.Connection:
        """The slot's connection, opened on first use (and again after a fork or failure).

        Makes sure, with one ``stat``, that the file at ``path`` is still the one
        the connection opened (see :meth:`_check_file_kept`): before every
        ``write``, and before a read at most every FILE_CHECK_INTERVAL seconds (a
        read of a file deleted since loses nothing; one process's reads refuse
        at once once any of its calls has found the file gone).
        """
        pid = process_id()
        connection = slot.connection
        if connection is not None and slot.pid == pid:
            if write:
                self._check_file_kept(slot.identity)
            elif self._lost_in_pid == pid:
                raise StoreUnavailable(self._lost_message)
            else:
                clock = time.monotonic()
                if clock >= self._next_file_check:
                    self._check_file_kept(slot.identity)
                    self._next_file_check = clock + FILE_CHECK_INTERVAL
            return connection
        # Else there is none yet, or it was inherited through fork(): a connection
        # must never cross a fork, so leave that one alone and open our own.
        if self._closed:
            raise StoreUnavailable("sqlite store: the store has been closed")
        if self._lost_in_pid == pid:
            raise StoreUnavailable(self._lost_message)
        if not may_wait():  # opening may wait for another process (the WAL switch)
            raise WouldWait("sqlite store: this process's connection is not open yet")
        connection, identity = self._open(WRITER_CACHE_KIB if write else None)
        if write:
            connection.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
            connection.execute("PRAGMA busy_timeout = 0")  # _Writer waits itself
        with self._connections_lock:
            self._connections.append((pid, connection, identity))
            checkpointer = self._checkpointer
            if write and (checkpointer is None or checkpointer.pid != pid):
                # Started by the process that writes: a thread never crosses a fork.
                self._checkpointer = _Checkpointer(self)
        slot.connection, slot.pid, slot.identity = connection, pid, identity
        if slot is self._reader:
            slot.wal_index = self._map_wal_index(connection, identity)
            self._answers = _Answers()
            self._next_file_check = time.monotonic() + FILE_CHECK_INTERVAL
        return connection

    def _map_wal_index(
        self, connection: sqlite3.Connection, identity: tuple[int, int]
    ) -> _WalIndexHeader | None:
        """The map of the WAL index header (see :class:`_WalIndexHeader`) for the newly
        opened reading ``connection``; None where it cannot be (lookups then ask
        ``PRAGMA data_version``)."""
        try:
            connection.execute(f"SELECT 1 FROM {TABLE} LIMIT 0").fetchall()  # opens the index
            return _WAL_INDEX_MAPS.header(identity, self.path)
        except (OSError, ValueError, sqlite3.Error) as exc:
            log.info("sqlite store: lookups ask data_version (no WAL index map: %s)", exc)
            return None

    def _discard_connection(self, slot: _Slot) -> None:
        """Close the slot's connection after a failure; the next call opens a fresh one."""
        connection = slot.connection
        if connection is None or slot.pid != process_id():
            return
        slot.connection = None
        slot.wal_index = None  # the map is closed with the process's last connection
        with self._connections_lock:
            self._connections = [entry for entry in self._connections if entry[1] is not connection]
        self._close_connection(connection, slot.identity)

    @contextlib.contextmanager
    def _translated_failures(self, slot: _Slot) -> Iterator[None]:
        try:
            yield
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"text that is not valid Unicode (a lone surrogate?) cannot be stored: {exc}"
            ) from exc
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.InterfaceError):
            raise
        except (sqlite3.DatabaseError, OSError) as exc:  # locked past the timeout, unwritable...
            self._discard_connection(slot)
            why = _why_unopenable(self.path) if "unable to open" in str(exc) else None
            raise StoreUnavailable(
                f"sqlite store at {str(self.path)!r}: {exc}" + (f": {why}" if why else "")
            ) from exc

    @contextlib.contextmanager
    def _turn(self, lock: threading.Lock, what: str) -> Iterator[None]:
        """Take this process's turn to ``what``, within the store's timeout.

        The threads of one process read one at a time, and write one at a time,
        each on the process's one connection for it: the sqlite3 driver lets go
        of Python's GIL at every step of a statement, and threads that fight over
        it at each step run several times slower together than in turn
        (``bench/``: 4 threads did 7,200 lookups/s at once, 16,500/s in turn).
        Reads and writes have a lock each, so a write waiting on another
        process's lock never holds up lookups. Under
        :func:`~keyard.stores.base.without_waiting`, a turn that another thread
        holds raises WouldWait.
        """
        if not may_wait():
            if not lock.acquire(blocking=False):
                raise WouldWait(f"sqlite store: another thread has this process's turn to {what}")
        elif not lock.acquire(timeout=self.timeout if self.timeout > 0 else -1):
            raise StoreUnavailable(
                f"sqlite store at {str(self.path)!r}: no turn to {what} within "
                f"{self.timeout:g} s; the database is busy"
            )
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's turn on the reading connection."""
        with self._translated_failures(self._reader), self._turn(self._read_lock, "read"):
            yield self._connection(self._reader)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[_Writer]:
        """This thread's turn on the writing connection: statements that each commit.

        The reading connection's ``data_version`` counts these commits, as it
        does those of every other connection. A turn that ends without an error
        has written (:func:`~keyard.stores.base.wrote`).
        """
        with self._translated_failures(self._writer), self._turn(self._write_lock, "write"):
            yield _Writer(self._connection(self._writer, write=True), self.timeout)
        wrote()

    def _maybe_purge(self, db: _Writer, now: float) -> None:
        """Delete up to PURGE_BATCH expired rows, if the last purge is old enough."""
        clock = time.monotonic()
        if clock < self._next_purge:
            return
        try:
            deleted = db.execute(_PURGE, {"now": now, "batch": PURGE_BATCH}).rowcount
        except WouldWait:
            return  # the write it follows was made: purge at the next one
        # A full batch means more may be waiting: purge again on the next write.
        self._next_purge = clock if deleted >= PURGE_BATCH else clock + self.purge_interval
