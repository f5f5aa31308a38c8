"""The SQLite store (``store_type: "sqlite"``): the embedded default, one file on local disk.

Safe for many gunicorn worker processes and threads at once: the database runs
in WAL mode (readers never wait for the writer); each process has one connection
for reading and one for writing, each used by one thread at a time; and every
write is one statement (an upsert that returns what it replaced), so its
new-or-refreshed answer is atomic across processes. Lookups are answered from the
process's cache of answers while ``PRAGMA data_version`` says that no connection
has changed the database since. The registry survives a restart of keyard. The
file must be on a local disk: WAL needs shared memory, which network file systems
do not give.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from keyard.errors import ConfigError, InvalidInput, StoreUnavailable
from keyard.stores import options as opt
from keyard.stores.base import Instance, Store

log = logging.getLogger(__name__)

DEFAULT_PATH = "./keyard-data/registry.db"
DEFAULT_TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    service_name TEXT NOT NULL,
    version      TEXT NOT NULL,
    location     TEXT NOT NULL,
    ttl          INTEGER NOT NULL,
    expires_at   REAL NOT NULL,
    replaced_expiry REAL,
    PRIMARY KEY (service_name, version, location)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_by_expiry ON instances (expires_at);
"""
# ``replaced_expiry``: the expiry a write replaced (NULL for a row inserted anew), so
# that one statement both writes a row and tells whether a live one was there. A
# database made before the column existed gets it at start-up.
_ADD_REPLACED_EXPIRY = "ALTER TABLE instances ADD COLUMN replaced_expiry REAL"

_COLUMNS = "service_name, version, location, ttl, expires_at"
# The unary ``+`` keeps the planner on the primary key (service, version, location)
# rather than tempting it to range-scan the expiry index across all services.
_GET = f"""SELECT {_COLUMNS} FROM instances
    WHERE service_name = ? AND version = ? AND location = ? AND +expires_at > ?"""
_LOOKUP_SERVICE = f"""SELECT {_COLUMNS} FROM instances
    WHERE service_name = ? AND +expires_at > ? ORDER BY version, location"""
_LOOKUP_VERSION = f"""SELECT {_COLUMNS} FROM instances
    WHERE service_name = ? AND version = ? AND +expires_at > ? ORDER BY version, location"""
# A write is one statement, so the database's write lock is held only inside one call
# into SQLite, never while this thread waits for Python's GIL between statements (with
# several threads and processes writing, that wait held up every other writer). In the
# update, ``expires_at`` and ``ttl`` are the row's values before the write.
_UPSERT = f"""INSERT INTO instances ({_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (service_name, version, location) DO UPDATE SET
        ttl = excluded.ttl, expires_at = excluded.expires_at, replaced_expiry = expires_at
    RETURNING ttl, expires_at, replaced_expiry"""
# The health check: a live row keeps its ttl and is extended by it from now (?6).
_REFRESH = f"""INSERT INTO instances ({_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (service_name, version, location) DO UPDATE SET
        ttl = CASE WHEN expires_at > ?6 THEN ttl ELSE excluded.ttl END,
        expires_at = CASE WHEN expires_at > ?6 THEN ?6 + ttl ELSE excluded.expires_at END,
        replaced_expiry = expires_at
    RETURNING ttl, expires_at, replaced_expiry"""
_DELETE = """DELETE FROM instances WHERE service_name = ? AND version = ? AND location = ?
    RETURNING expires_at"""
_DATA_VERSION = "PRAGMA data_version"
# Proves at start-up that the file can be written to (a read-only file opens and reads
# fine); always rolled back. The empty key is one the registry never stores.
_WRITE_PROBE = f"INSERT OR REPLACE INTO instances ({_COLUMNS}) VALUES ('', '', '', 0, 0)"
# Bounded: at most PURGE_BATCH expired rows per write, found through the expiry index.
_PURGE = """DELETE FROM instances WHERE (service_name, version, location) IN (
    SELECT service_name, version, location FROM instances WHERE expires_at <= ? LIMIT ?)"""

#: How many expired rows one purge deletes at most.
PURGE_BATCH = 500
#: How many lookup answers a process's cache holds at most (then it starts again).
CACHED_ANSWERS = 4096


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


class _Checkpointer:
    """A daemon thread that checkpoints the log every CHECKPOINT_INTERVAL, in one process.

    PASSIVE checkpoints never wait for readers or writers; the copying and the
    ``fsync`` happen in SQLite with Python's GIL let go, beside the requests.
    """

    def __init__(self, store: SqliteStore) -> None:
        self.pid = os.getpid()
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


class _Answers:
    """The reading connection's cached lookup answers, good while the database is unchanged.

    ``stamp`` is that connection's ``PRAGMA data_version`` when they were read
    (``None`` before the first read), ``latest_read`` the latest ``now`` they were
    read at. A new reading connection starts a new cache: its data_version
    values are its own.
    """

    __slots__ = ("stamp", "latest_read", "answers")

    def __init__(self) -> None:
        self.stamp: int | None = None
        self.latest_read = float("-inf")
        self.answers: dict[tuple[str, str | None], list[Instance]] = {}

    def reset(self, stamp: int) -> None:
        self.stamp, self.latest_read, self.answers = stamp, float("-inf"), {}

    def keep(self, key: tuple[str, str | None], found: list[Instance], now: float) -> None:
        if len(self.answers) >= CACHED_ANSWERS:
            self.answers = {}
        self.answers[key] = found
        self.latest_read = max(self.latest_read, now)


class _Slot:
    """One connection of this process (the reading one, or the writing one).

    Used under its lock (see :meth:`SqliteStore._turn`), so by one thread at a
    time. ``pid`` is the process that opened it: a connection never crosses a fork.
    """

    __slots__ = ("connection", "pid", "identity")

    def __init__(self) -> None:
        self.connection: sqlite3.Connection | None = None
        self.pid = 0
        self.identity = (0, 0)  # (device, inode) of the file it opened


class SqliteStore(Store):
    """Instances in one SQLite table keyed by (service_name, version, location).

    Lookups read the primary-key b-tree range of one service (or service and
    version); expired rows are skipped by the query and deleted through the index
    on ``expires_at`` by writes, at most every ``purge_interval`` seconds and
    ``PURGE_BATCH`` rows at a time (sooner while a backlog remains).
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        purge_interval: float = 1.0,
    ) -> None:
        """Open (creating if needed) the database at ``path`` and its parent directory.

        ``timeout`` is how long a write waits for another writer's lock before
        :class:`StoreUnavailable`. Raises :class:`ConfigError` when the path cannot
        hold a database.
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
        self._next_purge = 0.0
        self._closed = False
        self._checkpointer: _Checkpointer | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create the file and schema now, and try a write, so a bad path fails here.
            connection, _ = self._open()
            try:
                self._probe_writable(connection)
            finally:
                connection.close()
        except (OSError, ValueError, sqlite3.Error) as exc:
            raise ConfigError(
                f"sqlite store: option path {str(path)!r} cannot hold a database: {exc}"
            ) from exc

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SqliteStore:
        """Options: ``path`` (default ``./keyard-data/registry.db``), ``timeout`` (seconds, 5)."""
        opt.reject_unknown("sqlite", options, ("path", "timeout"))
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

    def register(self, instance: Instance) -> bool:
        return self._put(instance, keep_ttl=False)[1]

    def refresh(self, instance: Instance) -> tuple[Instance, bool]:
        """Atomic: one write transaction."""
        return self._put(instance, keep_ttl=True)

    def _put(self, instance: Instance, keep_ttl: bool) -> tuple[Instance, bool]:
        """Store ``instance`` (with the live row's ttl if ``keep_ttl``); (stored, new)."""
        now = instance.expires_at - instance.ttl
        with self._writing() as db:
            if keep_ttl:
                rows = db.execute(_REFRESH, (*instance, now)).fetchall()
            else:
                rows = db.execute(_UPSERT, instance).fetchall()
            self._maybe_purge(db, now)
        ttl, expires_at, replaced_expiry = rows[0]
        if keep_ttl:
            instance = instance._replace(ttl=ttl, expires_at=expires_at)
        return instance, replaced_expiry is None or replaced_expiry <= now

    def get(self, service_name: str, version: str, location: str, now: float) -> Instance | None:
        with self._reading() as db:
            row = db.execute(_GET, (service_name, version, location, now)).fetchone()
        return Instance(*row) if row is not None else None

    def deregister(self, service_name: str, version: str, location: str, now: float) -> bool:
        with self._writing() as db:
            rows = db.execute(_DELETE, (service_name, version, location)).fetchall()
            self._maybe_purge(db, now)
        return bool(rows) and rows[0][0] > now

    def lookup(self, service_name: str, version: str | None, now: float) -> list[Instance]:
        """Served from the process's cache of answers while the database is unchanged.

        ``PRAGMA data_version`` on the reading connection (one step, no table
        read) tells whether any other connection, the writing one of this process
        included, has committed since the cache was filled. A cached answer holds
        the instances live when it was read, so it is filtered by ``now``.
        """
        with self._reading() as db:
            cache = self._answers
            stamp = db.execute(_DATA_VERSION).fetchone()[0]
            # An answer read at a later ``now`` may lack rows still live at this one.
            if stamp != cache.stamp or now < cache.latest_read:
                cache.reset(stamp)
            key = (service_name, version)
            found = cache.answers.get(key)
            if found is None:
                if version is None:
                    rows = db.execute(_LOOKUP_SERVICE, (service_name, now)).fetchall()
                else:
                    rows = db.execute(_LOOKUP_VERSION, (service_name, version, now)).fetchall()
                found = list(map(Instance._make, rows))
                cache.keep(key, found, now)
                return found
        return [instance for instance in found if instance.expires_at > now]

    def close(self) -> None:
        """Close every connection this store opened in this process."""
        pid = os.getpid()
        with self._connections_lock:
            self._closed = True
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None and checkpointer.pid == pid:
            checkpointer.stop()
        with self._connections_lock:
            ours = [entry for entry in self._connections if entry[0] == pid]
            self._connections = [entry for entry in self._connections if entry[0] != pid]
        for _, connection, identity in ours:
            self._close_connection(connection, identity)

    def __len__(self) -> int:
        """The number of rows held, expired ones not yet purged included."""
        with self._reading() as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])

    # -- connections, transactions, errors -------------------------------------

    def _open(self, cache_kib: int | None = None) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """A new connection, and the identity (device, inode) of the file it opened."""
        # isolation_level=None: no implicit transactions; each statement commits.
        # check_same_thread=False: the threads of the process take turns with it.
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            if cache_kib is not None:
                connection.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
            connection.executescript(_SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(instances)")}
            if "replaced_expiry" not in columns:
                try:
                    connection.execute(_ADD_REPLACED_EXPIRY)
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise
            identity = self._file_identity()
        except BaseException:
            connection.close()
            raise
        return connection, identity

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
        its writes would answer 200 and vanish with the file. Nor can it move to
        the new file: closing it would make SQLite delete the new database's
        ``-wal`` and ``-shm`` files by name, under the processes using them.
        """
        if self._lost_in_pid != os.getpid() and self._path_identity() != identity:
            self._lost_in_pid = os.getpid()
            log.error("%s", self._lost_message)
        if self._lost_in_pid == os.getpid():
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
        with contextlib.suppress(sqlite3.Error):
            connection.close()

    def _connection(self, slot: _Slot, write: bool = False) -> sqlite3.Connection:
        """The slot's connection, opened on first use (and again after a fork or failure).

        Before a ``write``, a look at the file (one ``stat``) makes sure it is still
        the one the connection opened (see :meth:`_check_file_kept`); reads skip
        the look, as a read of a deleted file loses nothing, and fail once a
        write has found it gone.
        """
        pid = os.getpid()
        connection = slot.connection
        if connection is not None and slot.pid == pid:
            if write:
                self._check_file_kept(slot.identity)
            elif self._lost_in_pid == pid:
                raise StoreUnavailable(self._lost_message)
            return connection
        # Else there is none yet, or it was inherited through fork(): a connection
        # must never cross a fork, so leave that one alone and open our own.
        if self._closed:
            raise StoreUnavailable("sqlite store: the store has been closed")
        if self._lost_in_pid == pid:
            raise StoreUnavailable(self._lost_message)
        connection, identity = self._open(WRITER_CACHE_KIB if write else None)
        if write:
            connection.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
        with self._connections_lock:
            self._connections.append((pid, connection, identity))
            checkpointer = self._checkpointer
            if write and (checkpointer is None or checkpointer.pid != pid):
                # Started by the process that writes: a thread never crosses a fork.
                self._checkpointer = _Checkpointer(self)
        slot.connection, slot.pid, slot.identity = connection, pid, identity
        if slot is self._reader:
            self._answers = _Answers()
        return connection

    def _discard_connection(self, slot: _Slot) -> None:
        """Close the slot's connection after a failure; the next call opens a fresh one."""
        connection = slot.connection
        if connection is None or slot.pid != os.getpid():
            return
        slot.connection = None
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
            raise StoreUnavailable(f"sqlite store at {str(self.path)!r}: {exc}") from exc

    @contextlib.contextmanager
    def _turn(self, lock: threading.Lock, what: str) -> Iterator[None]:
        """Take this process's turn to ``what``, within the store's timeout.

        The threads of one process read one at a time, and write one at a time,
        each on the process's one connection for it: the sqlite3 driver lets go
        of Python's GIL at every step of a statement, and threads that fight over
        it at each step run several times slower together than in turn
        (``bench/``: 4 threads did 7,200 lookups/s at once, 16,500/s in turn).
        Reads and writes have a lock each, so a write waiting on another
        process's lock never holds up lookups.
        """
        if not lock.acquire(timeout=self.timeout if self.timeout > 0 else -1):
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
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """This thread's turn on the writing connection: statements that each commit.

        The reading connection's ``data_version`` counts these commits, as it
        does those of every other connection.
        """
        with self._translated_failures(self._writer), self._turn(self._write_lock, "write"):
            yield self._connection(self._writer, write=True)

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        """Delete up to PURGE_BATCH expired rows, if the last purge is old enough."""
        clock = time.monotonic()
        if clock < self._next_purge:
            return
        deleted = db.execute(_PURGE, (now, PURGE_BATCH)).rowcount
        # A full batch means more may be waiting: purge again on the next write.
        self._next_purge = clock if deleted >= PURGE_BATCH else clock + self.purge_interval
