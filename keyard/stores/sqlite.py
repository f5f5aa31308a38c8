"""The SQLite store (``store_type: "sqlite"``): the embedded default, one file on local disk.

Safe for many gunicorn worker processes and threads at once: the database runs
in WAL mode (readers never wait for the writer), each thread of each process has
its own connection, and ``register`` runs in a ``BEGIN IMMEDIATE`` transaction so
its new-or-refreshed answer is atomic across processes. The registry survives a
restart of keyard. The file must be on a local disk: WAL needs shared memory,
which network file systems do not give.
"""

from __future__ import annotations

import contextlib
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

DEFAULT_PATH = "./keyard-data/registry.db"
DEFAULT_TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    service_name TEXT NOT NULL,
    version      TEXT NOT NULL,
    location     TEXT NOT NULL,
    ttl          INTEGER NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (service_name, version, location)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_by_expiry ON instances (expires_at);
"""

_COLUMNS = "service_name, version, location, ttl, expires_at"
# The unary ``+`` keeps the planner on the primary key (service, version, location)
# rather than tempting it to range-scan the expiry index across all services.
_GET = f"""SELECT {_COLUMNS} FROM instances
    WHERE service_name = ? AND version = ? AND location = ? AND +expires_at > ?"""
_LOOKUP_SERVICE = f"""SELECT {_COLUMNS} FROM instances
    WHERE service_name = ? AND +expires_at > ? ORDER BY version, location"""
_LOOKUP_VERSION = f"""SELECT {_COLUMNS} FROM instances
    WHERE service_name = ? AND version = ? AND +expires_at > ? ORDER BY version, location"""
_OLD_EXPIRY = """SELECT expires_at FROM instances
    WHERE service_name = ? AND version = ? AND location = ?"""
_UPSERT = f"INSERT OR REPLACE INTO instances ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM instances WHERE service_name = ? AND version = ? AND location = ?"
# Bounded: at most PURGE_BATCH expired rows per write, found through the expiry index.
_PURGE = """DELETE FROM instances WHERE (service_name, version, location) IN (
    SELECT service_name, version, location FROM instances WHERE expires_at <= ? LIMIT ?)"""

#: How many expired rows one purge deletes at most.
PURGE_BATCH = 500


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
        self._local = threading.local()
        self._connections_lock = threading.Lock()
        # Every open connection, with the process and thread that opened it. Kept
        # referenced so that one inherited through fork() is never closed by the
        # child; the connections of finished threads are closed when a new one opens.
        self._connections: list[tuple[int, threading.Thread, sqlite3.Connection]] = []
        self._next_purge = 0.0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open().close()  # create the file and schema now, so a bad path fails here
        except (OSError, sqlite3.Error) as exc:
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
        now = instance.expires_at - instance.ttl
        key = (instance.service_name, instance.version, instance.location)
        with self._transaction() as db:
            row = db.execute(_OLD_EXPIRY, key).fetchone()
            db.execute(_UPSERT, (*key, instance.ttl, instance.expires_at))
            self._maybe_purge(db, now)
        return row is None or row[0] <= now

    def get(self, service_name: str, version: str, location: str, now: float) -> Instance | None:
        with self._reading() as db:
            row = db.execute(_GET, (service_name, version, location, now)).fetchone()
        return Instance(*row) if row is not None else None

    def deregister(self, service_name: str, version: str, location: str, now: float) -> bool:
        key = (service_name, version, location)
        with self._transaction() as db:
            row = db.execute(_OLD_EXPIRY, key).fetchone()
            if row is not None:
                db.execute(_DELETE, key)
            self._maybe_purge(db, now)
        return row is not None and row[0] > now

    def lookup(self, service_name: str, version: str | None, now: float) -> list[Instance]:
        with self._reading() as db:
            if version is None:
                rows = db.execute(_LOOKUP_SERVICE, (service_name, now)).fetchall()
            else:
                rows = db.execute(_LOOKUP_VERSION, (service_name, version, now)).fetchall()
        return list(map(Instance._make, rows))

    def close(self) -> None:
        """Close every connection this store opened, in any thread."""
        pid = os.getpid()
        with self._connections_lock:
            self._closed = True
            ours = [entry[2] for entry in self._connections if entry[0] == pid]
            self._connections = [entry for entry in self._connections if entry[0] != pid]
        for connection in ours:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def __len__(self) -> int:
        """The number of rows held, expired ones not yet purged included."""
        with self._reading() as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])

    # -- connections, transactions, errors -------------------------------------

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we BEGIN ourselves.
        # check_same_thread=False only so that close() may close it from another
        # thread; each connection is otherwise used by the thread that opened it.
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after a fork or failure)."""
        local = self._local
        connection: sqlite3.Connection | None = getattr(local, "connection", None)
        if connection is not None and local.pid == os.getpid():
            return connection
        # Else there is none yet, or it was inherited through fork(): a connection
        # must never cross a fork, so leave that one alone and open our own.
        if self._closed:
            raise StoreUnavailable("sqlite store: the store has been closed")
        connection = self._open()
        pid, finished = os.getpid(), []
        with self._connections_lock:
            for entry in list(self._connections):
                if entry[0] == pid and not entry[1].is_alive():
                    self._connections.remove(entry)
                    finished.append(entry[2])
            self._connections.append((pid, threading.current_thread(), connection))
        for old in finished:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        local.connection, local.pid = connection, pid
        return connection

    def _discard_connection(self) -> None:
        """Close this thread's connection after a failure; the next call opens a fresh one."""
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            return
        self._local.connection = None
        with self._connections_lock:
            self._connections = [entry for entry in self._connections if entry[2] is not connection]
        with contextlib.suppress(sqlite3.Error):
            connection.close()

    @contextlib.contextmanager
    def _translated_failures(self) -> Iterator[None]:
        try:
            yield
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"text that is not valid Unicode (a lone surrogate?) cannot be stored: {exc}"
            ) from exc
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.InterfaceError):
            raise
        except sqlite3.DatabaseError as exc:  # locked past the timeout, unwritable, corrupt...
            self._discard_connection()
            raise StoreUnavailable(f"sqlite store at {str(self.path)!r}: {exc}") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._translated_failures():
            yield self._connection()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database's write lock from its start."""
        with self._translated_failures():
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        """Delete up to PURGE_BATCH expired rows, if the last purge is old enough."""
        clock = time.monotonic()
        if clock < self._next_purge:
            return
        deleted = db.execute(_PURGE, (now, PURGE_BATCH)).rowcount
        # A full batch means more may be waiting: purge again on the next write.
        self._next_purge = clock if deleted >= PURGE_BATCH else clock + self.purge_interval
