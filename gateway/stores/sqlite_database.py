"""The SQLite database under the stores: one worker thread, one connection, the schema.

Theory of operation
-------------------
All the stores share one database file (``<data_dir>/gateway.sqlite3`` by default) and one
:class:`SqliteDatabase`, which owns a single worker thread
(:class:`_Worker`, with a lane for urgent work) and the only
:class:`sqlite3.Connection`, created *in* that thread. Every store method packages its work
as a plain function of the connection and awaits its future, so the
event loop never blocks on disk, and because there is one worker the operations of this
process run one at a time, in the order they were submitted; an urgent one (an emergency
call's callback DID) goes ahead of those still waiting.

Durability and concurrency:

* ``journal_mode=WAL`` with ``synchronous=NORMAL``: a committed transaction survives the
  process being killed (``kill -9``); only a power loss or OS crash can lose the last few.
* Operations that read then write (``reserve``, ``purge_expired``, migrations) run as one
  ``BEGIN IMMEDIATE`` transaction, which takes the write lock before the first read, so
  they stay atomic even against another process using the same file. ``busy_timeout``
  makes such a process wait for the lock instead of failing.
* A single-statement write runs in autocommit mode, which SQLite already makes atomic.

The schema is described by :data:`MIGRATIONS`, a list of SQL scripts applied in order.
The ``schema_version`` table records each applied script (version, description, time), so
a database file says by itself which schema it holds; a file written by a newer gateway is
refused rather than misread.

If the task awaiting an operation is cancelled, the operation still completes in the
worker thread (a write is not half-done); only its result is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.stores.ports import StoreClosedError, StoreError, StoreUnavailableError

log = structlog.get_logger("gateway")

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "MEMORY",
    "MIGRATIONS",
    "NODE_BUSY_TIMEOUT",
    "Migration",
    "SqliteDatabase",
    "immediate_transaction",
]

T = TypeVar("T")
_Item = tuple[int, int, "Callable[[], Any] | None", "Future[Any] | None"]

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a connection waits for another process's write lock before failing."""

NODE_BUSY_TIMEOUT = 1.0
"""The same for the running node, which owns its file: only a foreign process (a backup, a
shell) can hold the lock, its writes are tried again until they land, and a long wait
would hold the one worker thread, so every other store operation of the node, and its
stop, behind it."""

MEMORY = ":memory:"
"""Path of a private in-memory database (tests); nothing survives :meth:`close`."""


class _Worker:
    """The one worker thread: runs submitted work one item at a time, urgent items first,
    each lane in the order it was submitted."""

    _STOP = 2

    def __init__(self, name: str) -> None:
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], *, urgent: bool = False) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((0 if urgent else 1, next(self._seq), fn, future))
        return future

    def shutdown(self) -> None:
        """Let the thread end once the work queued before this is done."""
        self._queue.put((self._STOP, next(self._seq), None, None))

    def _serve(self) -> None:
        while True:
            _lane, _seq, work, future = self._queue.get()
            if work is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as error:  # handed to the awaiting task
                future.set_exception(error)


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: version ``n`` is ``MIGRATIONS[n - 1]``."""

    description: str
    script: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        description="initial schema: registrations, presence, cdrs, reservations",
        script="""
        CREATE TABLE registrations (
            agent_id    TEXT    NOT NULL,
            contact_uri TEXT    NOT NULL,
            expires_at  REAL    NOT NULL,   -- unix seconds
            call_id     TEXT    NOT NULL,
            cseq        INTEGER NOT NULL,
            source      TEXT    NOT NULL,   -- "transport:host:port"
            user_agent  TEXT    NOT NULL,
            q           REAL    NOT NULL,
            instance    TEXT,               -- +sip.instance (RFC 5626)
            PRIMARY KEY (agent_id, contact_uri)
        ) WITHOUT ROWID;
        CREATE INDEX registrations_expires_at ON registrations (expires_at);

        CREATE TABLE presence (
            agent_id               TEXT PRIMARY KEY,
            chosen                 TEXT NOT NULL,
            effective              TEXT NOT NULL,
            previous               TEXT,
            reason                 TEXT NOT NULL,
            updated_at             REAL NOT NULL,
            saved_before_emergency TEXT
        ) WITHOUT ROWID;

        CREATE TABLE cdrs (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order
            call_id     TEXT NOT NULL,
            direction   TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
            caller      TEXT NOT NULL,
            callee      TEXT NOT NULL,
            queue       TEXT,
            agent       TEXT,
            route       TEXT,
            started_at  REAL NOT NULL,
            answered_at REAL,
            ended_at    REAL NOT NULL,
            result      TEXT NOT NULL
        );
        CREATE INDEX cdrs_call_id ON cdrs (call_id);

        -- One row per DID ever reserved; expired rows are kept because their reserved_at
        -- orders the next choice (least recently reserved first).
        CREATE TABLE reservations (
            did         TEXT    PRIMARY KEY,
            agent_id    TEXT    NOT NULL,
            reserved_at REAL    NOT NULL,
            expires_at  REAL    NOT NULL,
            call_id     TEXT    NOT NULL,
            test        INTEGER NOT NULL CHECK (test IN (0, 1))
        ) WITHOUT ROWID;
        CREATE INDEX reservations_agent_id ON reservations (agent_id);
        CREATE INDEX reservations_expires_at ON reservations (expires_at);
        """,
    ),
    Migration(
        description="notification outbox (SPEC E-6)",
        script="""
        -- One row per notification e-mail and recipient, written before the first attempt.
        -- AUTOINCREMENT: an id is never reused, even after purging, because the Message-ID
        -- is derived from it.
        CREATE TABLE outbox (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            call_id            TEXT    NOT NULL,
            agent_id           TEXT    NOT NULL,
            recipient          TEXT    NOT NULL,
            subject            TEXT    NOT NULL,
            text_body          TEXT    NOT NULL,
            html_body          TEXT    NOT NULL,
            test               INTEGER NOT NULL CHECK (test IN (0, 1)),
            did                TEXT,
            route              TEXT,
            message_id_domain  TEXT    NOT NULL,
            created_at         REAL    NOT NULL,   -- unix seconds
            give_up_at         REAL    NOT NULL,
            next_attempt_at    REAL    NOT NULL,
            attempts           INTEGER NOT NULL DEFAULT 0,
            attempt_started_at REAL,               -- set while an attempt is in flight
            state              TEXT    NOT NULL DEFAULT 'pending'
                                       CHECK (state IN ('pending', 'sent', 'failed')),
            last_error         TEXT,
            finished_at        REAL
        );
        CREATE INDEX outbox_state_next_attempt_at ON outbox (state, next_attempt_at);
        CREATE INDEX outbox_call_id ON outbox (call_id);
        """,
    ),
    Migration(
        description="desktop-confirmed agent locations (SPEC E-10)",
        script="""
        -- One row per agent whose desktop confirmed a civic address; deleted on withdrawal.
        CREATE TABLE agent_locations (
            agent_id     TEXT PRIMARY KEY,
            civic        TEXT NOT NULL,   -- JSON object: civic field -> value
            confirmed_at REAL NOT NULL    -- unix seconds
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        description="cdrs: both SIP Call-IDs and the final SIP code; index for ranges and purge",
        script="""
        -- Rows written before this version keep NULL here (nothing to recover them from).
        ALTER TABLE cdrs ADD COLUMN a_call_id TEXT;   -- the caller's leg's SIP Call-ID
        ALTER TABLE cdrs ADD COLUMN b_call_id TEXT;   -- the last B-leg's SIP Call-ID
        ALTER TABLE cdrs ADD COLUMN sip_code INTEGER; -- final SIP status of the call's setup
        CREATE INDEX cdrs_ended_at ON cdrs (ended_at);
        """,
    ),
    Migration(
        description="registrations: the REGISTER's Path (RFC 3327), the route set to the contact",
        script="""
        -- JSON array of name-addrs, nearest proxy first; '[]' for a phone registered directly
        -- (and for every binding written before this version).
        ALTER TABLE registrations ADD COLUMN path TEXT NOT NULL DEFAULT '[]';
        """,
    ),
)

_SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  REAL NOT NULL
)
"""


# --------------------------------------------------------------------------------------------
# Helpers run in the worker thread.


def _split_statements(script: str) -> Iterator[str]:
    """Split an SQL script into statements, keeping ``;`` inside trigger bodies and strings.

    ``Connection.executescript`` would commit the enclosing transaction first, so migrations
    run their statements one by one instead.
    """
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise StoreError(f"incomplete SQL statement in migration: {pending.strip()[:80]!r}")


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the body as one ``BEGIN IMMEDIATE`` transaction: commit on success, else roll back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Bring the schema up to ``len(migrations)``; return the resulting version."""
    with immediate_transaction(conn):
        conn.execute(_SCHEMA_VERSION_TABLE)
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(row[0])
        if current > len(migrations):
            raise StoreError(
                f"database schema version {current} is newer than this gateway supports "
                f"({len(migrations)}); upgrade the gateway or use another data directory"
            )
        for version in range(current + 1, len(migrations) + 1):
            migration = migrations[version - 1]
            for statement in _split_statements(migration.script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_at) "
                "VALUES (?, ?, (julianday('now') - 2440587.5) * 86400.0)",
                (version, migration.description),
            )
    return len(migrations)


# --------------------------------------------------------------------------------------------
# The database: one file, one thread, one connection.


def _log_failed_write(future: Future[Any]) -> None:
    error = None if future.cancelled() else future.exception()
    if error is not None:
        log.error("store_write_failed", error=repr(error))


#: SQLite's primary result codes for a condition that passes (the database is busy or
#: locked by another connection, out of memory, read-only, an I/O error, the disk full,
#: the file cannot be opened, a lock protocol error): the operation may succeed later
_TRANSIENT_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def _transient(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _TRANSIENT_CODES


class SqliteDatabase:
    """One SQLite file served by one dedicated worker thread.

    Create with :meth:`open`; pass to the store classes; :meth:`close` when done.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = path if path == MEMORY else Path(path)
        self._busy_timeout = busy_timeout
        self._migrations = tuple(migrations)
        self._executor = _Worker("gateway-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.journal_mode = ""
        """The journal mode SQLite accepted (``"wal"`` for a file, ``"memory"`` in memory)."""
        self.schema_version = 0
        """The schema version after migration."""

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> SqliteDatabase:
        """Open (creating its directory if needed) and migrate the database at ``path``."""
        database = cls(path, busy_timeout=busy_timeout, migrations=migrations)
        try:
            await asyncio.wrap_future(database._executor.submit(database._open_in_thread))
        except BaseException:
            # Also on cancellation: the open may still finish in the thread, so close after it.
            database._closed = True
            database._executor.submit(database._close_in_thread)
            database._executor.shutdown()
            raise
        return database

    def _open_in_thread(self) -> None:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit; transactions are explicit BEGIN IMMEDIATE
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            self.journal_mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            conn.execute("PRAGMA synchronous = NORMAL")
            self.schema_version = _migrate(conn, self._migrations)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def run(self, operation: Callable[[sqlite3.Connection], T], *, urgent: bool = False) -> T:
        """Run ``operation(connection)`` in the worker thread and return its result.

        ``urgent`` operations (an emergency call's callback DID) go ahead of every queued
        one that is not: under load the history and presence writes queue up in the one
        thread, and an emergency call must not wait behind them.
        """
        if self._closed:
            raise StoreClosedError(f"the store at {self.path} is closed")
        work = functools.partial(self._call, operation)
        return await asyncio.wrap_future(self._executor.submit(work, urgent=urgent))

    def submit(
        self,
        operation: Callable[[sqlite3.Connection], object],
        *,
        urgent: bool,
        on_done: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        """Queue ``operation(connection)`` without waiting for it (a write behind a decision
        already made in memory). :meth:`close` still waits for it. Its outcome goes to
        ``on_done(error or None)``, called in this event loop; without it a failure is
        logged (``store_write_failed``)."""
        if self._closed:
            raise StoreClosedError(f"the store at {self.path} is closed")
        future = self._executor.submit(functools.partial(self._call, operation), urgent=urgent)
        if on_done is None:
            future.add_done_callback(_log_failed_write)
            return
        loop = asyncio.get_running_loop()

        def done(future: Future[Any]) -> None:  # in the worker thread
            error = None if future.cancelled() else future.exception()
            try:
                loop.call_soon_threadsafe(on_done, error)
            except RuntimeError:  # the loop is gone (the process is ending)
                _log_failed_write(future)

        future.add_done_callback(done)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun."""
        return self._closed

    def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreClosedError(f"the store at {self.path} is closed")
        try:
            return operation(conn)
        except sqlite3.Error as exc:
            if _transient(exc):  # the caller may try again (a lock held elsewhere, disk full)
                name = getattr(exc, "sqlite_errorname", "")
                raise StoreUnavailableError(f"sqlite: {name}: {exc}") from exc
            raise

    async def close(self) -> None:
        """Finish the queued operations, close the connection and stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wrap_future(self._executor.submit(self._close_in_thread))
        finally:
            # The worker is idle now (or the loop is going away): let the thread end on its own.
            self._executor.shutdown()

    def _close_in_thread(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
