"""Embedded SQLite adapter of the store ports (SPEC O-2): the single-node default.

Theory of operation
-------------------
All the stores share one database file (``<data_dir>/gateway.sqlite3`` by default) and one
:class:`SqliteDatabase`, which owns a single worker thread
(:class:`concurrent.futures.ThreadPoolExecutor` with ``max_workers=1``) and the only
:class:`sqlite3.Connection`, created *in* that thread. Every store method packages its work
as a plain function of the connection and awaits it with ``loop.run_in_executor``, so the
event loop never blocks on disk, and because there is one worker the operations of this
process run one at a time, in the order they were submitted.

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
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from gateway.stores.ports import (
    Binding,
    CallDirection,
    Cdr,
    ConfirmedLocation,
    DidChooser,
    EmptyPoolError,
    MailDraft,
    OutboxMail,
    OutboxState,
    PresenceRecord,
    Reservation,
    StoreClosedError,
    StoreError,
    Stores,
)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "MIGRATIONS",
    "Migration",
    "SqliteCdrStore",
    "SqliteDatabase",
    "SqliteLocationStore",
    "SqliteOutboxStore",
    "SqlitePresenceStore",
    "SqliteRegistrationStore",
    "SqliteReservationStore",
    "open_sqlite_stores",
]

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a connection waits for another process's write lock before failing."""

MEMORY = ":memory:"
"""Path of a private in-memory database (tests); nothing survives :meth:`close`."""


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
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
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
    with _immediate(conn):
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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
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
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(database._executor, database._open_in_thread)
        except BaseException:
            # Also on cancellation: the open may still finish in the thread, so close after it.
            database._closed = True
            database._executor.submit(database._close_in_thread)
            database._executor.shutdown(wait=False)
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

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation(connection)`` in the worker thread and return its result."""
        if self._closed:
            raise StoreClosedError(f"the store at {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, operation)

    def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreClosedError(f"the store at {self.path} is closed")
        return operation(conn)

    async def close(self) -> None:
        """Finish the queued operations, close the connection and stop the thread."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_in_thread)
        finally:
            # The worker is idle now (or the loop is going away): let the thread end on its own.
            self._executor.shutdown(wait=False)

    def _close_in_thread(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------------------------
# Row mapping.

_BINDING_COLUMNS = (
    "agent_id, contact_uri, expires_at, call_id, cseq, source, user_agent, q, instance"
)
_PRESENCE_COLUMNS = (
    "agent_id, chosen, effective, previous, reason, updated_at, saved_before_emergency"
)
_CDR_COLUMNS = (
    "call_id, direction, caller, callee, queue, agent, route, "
    "started_at, answered_at, ended_at, result"
)
_RESERVATION_COLUMNS = "did, agent_id, reserved_at, expires_at, call_id, test"
_OUTBOX_COLUMNS = (
    "id, call_id, agent_id, recipient, subject, text_body, html_body, test, did, route, "
    "message_id_domain, created_at, give_up_at, next_attempt_at, attempts, "
    "attempt_started_at, state, last_error, finished_at"
)


def _binding(row: tuple[Any, ...]) -> Binding:
    return Binding(
        agent_id=row[0],
        contact_uri=row[1],
        expires_at=float(row[2]),
        call_id=row[3],
        cseq=int(row[4]),
        source=row[5],
        user_agent=row[6],
        q=float(row[7]),
        instance=row[8],
    )


def _presence(row: tuple[Any, ...]) -> PresenceRecord:
    return PresenceRecord(
        agent_id=row[0],
        chosen=row[1],
        effective=row[2],
        previous=row[3],
        reason=row[4],
        updated_at=float(row[5]),
        saved_before_emergency=row[6],
    )


def _cdr(row: tuple[Any, ...]) -> Cdr:
    return Cdr(
        call_id=row[0],
        direction=cast(CallDirection, row[1]),
        caller=row[2],
        callee=row[3],
        queue=row[4],
        agent=row[5],
        route=row[6],
        started_at=float(row[7]),
        answered_at=None if row[8] is None else float(row[8]),
        ended_at=float(row[9]),
        result=row[10],
    )


def _reservation(row: tuple[Any, ...]) -> Reservation:
    return Reservation(
        did=row[0],
        agent_id=row[1],
        reserved_at=float(row[2]),
        expires_at=float(row[3]),
        call_id=row[4],
        test=bool(row[5]),
    )


def _outbox_mail(row: tuple[Any, ...]) -> OutboxMail:
    return OutboxMail(
        id=int(row[0]),
        call_id=row[1],
        agent_id=row[2],
        recipient=row[3],
        subject=row[4],
        text_body=row[5],
        html_body=row[6],
        test=bool(row[7]),
        did=row[8],
        route=row[9],
        message_id_domain=row[10],
        created_at=float(row[11]),
        give_up_at=float(row[12]),
        next_attempt_at=float(row[13]),
        attempts=int(row[14]),
        attempt_started_at=None if row[15] is None else float(row[15]),
        state=cast(OutboxState, row[16]),
        last_error=row[17],
        finished_at=None if row[18] is None else float(row[18]),
    )


# --------------------------------------------------------------------------------------------
# The stores.


class SqliteRegistrationStore:
    """:class:`~gateway.stores.ports.RegistrationStore` on SQLite."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def put(self, binding: Binding) -> None:
        """Insert ``binding``, or replace the one with the same (agent_id, contact_uri)."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO registrations ({_BINDING_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    binding.agent_id,
                    binding.contact_uri,
                    binding.expires_at,
                    binding.call_id,
                    binding.cseq,
                    binding.source,
                    binding.user_agent,
                    binding.q,
                    binding.instance,
                ),
            )

        await self._db.run(operation)

    async def remove(self, agent_id: str, contact_uri: str) -> None:
        """Remove one binding; removing a binding that does not exist is not an error."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM registrations WHERE agent_id = ? AND contact_uri = ?",
                (agent_id, contact_uri),
            )

        await self._db.run(operation)

    async def remove_all(self, agent_id: str) -> None:
        """Remove every binding of ``agent_id``."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM registrations WHERE agent_id = ?", (agent_id,))

        await self._db.run(operation)

    async def bindings(self, agent_id: str, now: float) -> list[Binding]:
        """The unexpired bindings of ``agent_id``, highest ``q`` first."""

        def operation(conn: sqlite3.Connection) -> list[Binding]:
            rows = conn.execute(
                f"SELECT {_BINDING_COLUMNS} FROM registrations "
                "WHERE agent_id = ? AND expires_at > ? ORDER BY q DESC, contact_uri",
                (agent_id, now),
            ).fetchall()
            return [_binding(row) for row in rows]

        return await self._db.run(operation)

    async def all_bindings(self, now: float) -> list[Binding]:
        """Every unexpired binding, ordered by agent then highest ``q`` first."""

        def operation(conn: sqlite3.Connection) -> list[Binding]:
            rows = conn.execute(
                f"SELECT {_BINDING_COLUMNS} FROM registrations "
                "WHERE expires_at > ? ORDER BY agent_id, q DESC, contact_uri",
                (now,),
            ).fetchall()
            return [_binding(row) for row in rows]

        return await self._db.run(operation)

    async def purge_expired(self, now: float) -> list[Binding]:
        """Atomically delete the expired bindings and return them."""

        def operation(conn: sqlite3.Connection) -> list[Binding]:
            with _immediate(conn):
                rows = conn.execute(
                    f"SELECT {_BINDING_COLUMNS} FROM registrations "
                    "WHERE expires_at <= ? ORDER BY agent_id, q DESC, contact_uri",
                    (now,),
                ).fetchall()
                conn.execute("DELETE FROM registrations WHERE expires_at <= ?", (now,))
            return [_binding(row) for row in rows]

        return await self._db.run(operation)


class SqlitePresenceStore:
    """:class:`~gateway.stores.ports.PresenceStore` on SQLite."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def get(self, agent_id: str) -> PresenceRecord | None:
        """The record of ``agent_id``, or ``None`` if it has never been stored."""

        def operation(conn: sqlite3.Connection) -> PresenceRecord | None:
            row = conn.execute(
                f"SELECT {_PRESENCE_COLUMNS} FROM presence WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            return None if row is None else _presence(row)

        return await self._db.run(operation)

    async def put(self, record: PresenceRecord) -> None:
        """Insert or replace the record of ``record.agent_id``."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO presence ({_PRESENCE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.agent_id,
                    record.chosen,
                    record.effective,
                    record.previous,
                    record.reason,
                    record.updated_at,
                    record.saved_before_emergency,
                ),
            )

        await self._db.run(operation)

    async def all(self) -> list[PresenceRecord]:
        """Every stored record, ordered by agent id."""

        def operation(conn: sqlite3.Connection) -> list[PresenceRecord]:
            rows = conn.execute(
                f"SELECT {_PRESENCE_COLUMNS} FROM presence ORDER BY agent_id"
            ).fetchall()
            return [_presence(row) for row in rows]

        return await self._db.run(operation)


class SqliteCdrStore:
    """:class:`~gateway.stores.ports.CdrStore` on SQLite."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def add(self, cdr: Cdr) -> None:
        """Append one record."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO cdrs ({_CDR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cdr.call_id,
                    cdr.direction,
                    cdr.caller,
                    cdr.callee,
                    cdr.queue,
                    cdr.agent,
                    cdr.route,
                    cdr.started_at,
                    cdr.answered_at,
                    cdr.ended_at,
                    cdr.result,
                ),
            )

        await self._db.run(operation)

    async def recent(self, limit: int) -> list[Cdr]:
        """Up to ``limit`` records, most recently added first."""
        if limit <= 0:
            return []

        def operation(conn: sqlite3.Connection) -> list[Cdr]:
            rows = conn.execute(
                f"SELECT {_CDR_COLUMNS} FROM cdrs ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [_cdr(row) for row in rows]

        return await self._db.run(operation)


class SqliteReservationStore:
    """:class:`~gateway.stores.ports.ReservationStore` on SQLite."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def reserve(
        self,
        agent_id: str,
        pool: Sequence[str],
        now: float,
        ttl: float,
        call_id: str,
        test: bool,
        *,
        choose: DidChooser,
    ) -> tuple[Reservation, bool]:
        """Atomically give ``agent_id`` a callback DID from ``pool`` for ``ttl`` seconds.

        One ``BEGIN IMMEDIATE`` transaction reads the pool's rows, runs ``choose`` and
        writes, so no other task or process can choose between the read and the write.
        """
        unique_pool = tuple(dict.fromkeys(pool))
        if not unique_pool:
            raise EmptyPoolError("the callback DID pool is empty")
        if ttl <= 0:
            raise ValueError(f"reservation ttl must be positive, not {ttl!r}")

        def operation(conn: sqlite3.Connection) -> tuple[Reservation, bool]:
            with _immediate(conn):
                # The table holds one row per DID ever reserved, so reading it whole is cheap
                # and avoids a statement with one parameter per pool DID.
                rows = conn.execute(f"SELECT {_RESERVATION_COLUMNS} FROM reservations")
                pool_set = set(unique_pool)
                held = {r.did: r for r in map(_reservation, rows) if r.did in pool_set}
                did, taken_over = choose(agent_id, unique_pool, held, now)
                reservation = Reservation(
                    did=did,
                    agent_id=agent_id,
                    reserved_at=now,
                    expires_at=now + ttl,
                    call_id=call_id,
                    test=test,
                )
                conn.execute(
                    f"INSERT OR REPLACE INTO reservations ({_RESERVATION_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (did, agent_id, now, now + ttl, call_id, int(test)),
                )
            return reservation, taken_over

        return await self._db.run(operation)

    async def lookup(self, did: str, now: float) -> Reservation | None:
        """The unexpired reservation of ``did``, or ``None``."""

        def operation(conn: sqlite3.Connection) -> Reservation | None:
            row = conn.execute(
                f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE did = ? AND expires_at > ?",
                (did, now),
            ).fetchone()
            return None if row is None else _reservation(row)

        return await self._db.run(operation)

    async def live(self, now: float) -> list[Reservation]:
        """Every unexpired reservation, ordered by DID."""

        def operation(conn: sqlite3.Connection) -> list[Reservation]:
            rows = conn.execute(
                f"SELECT {_RESERVATION_COLUMNS} FROM reservations "
                "WHERE expires_at > ? ORDER BY did",
                (now,),
            ).fetchall()
            return [_reservation(row) for row in rows]

        return await self._db.run(operation)


class SqliteOutboxStore:
    """:class:`~gateway.stores.ports.OutboxStore` on SQLite.

    Every state change is one autocommitted statement, so it is on disk (WAL) when the
    awaiting coroutine resumes: :meth:`mark_sent` returning means a restart will not send
    the mail again.
    """

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def add(self, drafts: Sequence[MailDraft], now: float) -> list[OutboxMail]:
        """Write ``drafts`` in one transaction as pending rows due at ``now``."""
        drafts = list(drafts)
        if not drafts:
            return []

        def operation(conn: sqlite3.Connection) -> list[OutboxMail]:
            ids: list[int] = []
            with _immediate(conn):
                for draft in drafts:
                    cursor = conn.execute(
                        "INSERT INTO outbox (call_id, agent_id, recipient, subject, text_body, "
                        "html_body, test, did, route, message_id_domain, created_at, "
                        "give_up_at, next_attempt_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            draft.call_id,
                            draft.agent_id,
                            draft.recipient,
                            draft.subject,
                            draft.text_body,
                            draft.html_body,
                            int(draft.test),
                            draft.did,
                            draft.route,
                            draft.message_id_domain,
                            now,
                            draft.give_up_at,
                            now,
                        ),
                    )
                    assert cursor.lastrowid is not None
                    ids.append(cursor.lastrowid)
            return [
                OutboxMail(
                    id=mail_id,
                    call_id=draft.call_id,
                    agent_id=draft.agent_id,
                    recipient=draft.recipient,
                    subject=draft.subject,
                    text_body=draft.text_body,
                    html_body=draft.html_body,
                    test=draft.test,
                    did=draft.did,
                    route=draft.route,
                    message_id_domain=draft.message_id_domain,
                    created_at=now,
                    give_up_at=draft.give_up_at,
                    next_attempt_at=now,
                    attempts=0,
                    attempt_started_at=None,
                    state="pending",
                    last_error=None,
                    finished_at=None,
                )
                for mail_id, draft in zip(ids, drafts, strict=True)
            ]

        return await self._db.run(operation)

    async def get(self, mail_id: int) -> OutboxMail | None:
        """The row ``mail_id``, or ``None``."""

        def operation(conn: sqlite3.Connection) -> OutboxMail | None:
            row = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (mail_id,)
            ).fetchone()
            return None if row is None else _outbox_mail(row)

        return await self._db.run(operation)

    async def pending(self) -> list[OutboxMail]:
        """Every pending row, earliest ``next_attempt_at`` first, then by id."""

        def operation(conn: sqlite3.Connection) -> list[OutboxMail]:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' "
                "ORDER BY next_attempt_at, id"
            ).fetchall()
            return [_outbox_mail(row) for row in rows]

        return await self._db.run(operation)

    async def begin_attempt(self, mail_id: int, now: float) -> bool:
        """Count an attempt and mark it in flight; ``False`` if the row is not pending."""

        def operation(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, attempt_started_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (now, mail_id),
            )
            return cursor.rowcount == 1

        return await self._db.run(operation)

    async def retry_at(self, mail_id: int, next_attempt_at: float, error: str) -> None:
        """The attempt failed and will be retried at ``next_attempt_at``."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, last_error = ?, "
                "attempt_started_at = NULL WHERE id = ? AND state = 'pending'",
                (next_attempt_at, error, mail_id),
            )

        await self._db.run(operation)

    async def mark_sent(self, mail_id: int, now: float) -> None:
        """The server accepted the mail: it must never be sent again."""
        await self._finish(mail_id, "sent", now, None)

    async def mark_failed(self, mail_id: int, now: float, error: str) -> None:
        """Delivery was abandoned (permanent refusal, or given up)."""
        await self._finish(mail_id, "failed", now, error)

    async def _finish(
        self, mail_id: int, state: OutboxState, now: float, error: str | None
    ) -> None:
        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET state = ?, finished_at = ?, attempt_started_at = NULL, "
                "last_error = coalesce(?, last_error) WHERE id = ? AND state = 'pending'",
                (state, now, error, mail_id),
            )

        await self._db.run(operation)

    async def purge_finished(self, before: float) -> int:
        """Delete sent and failed rows finished before ``before``; return how many."""

        def operation(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND finished_at < ?", (before,)
            )
            return cursor.rowcount

        return await self._db.run(operation)


class SqliteLocationStore:
    """:class:`~gateway.stores.ports.LocationStore` on SQLite."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def put(self, record: ConfirmedLocation) -> None:
        """Insert or replace the location of ``record.agent_id``."""
        civic = json.dumps(record.civic, ensure_ascii=False, sort_keys=True)

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO agent_locations (agent_id, civic, confirmed_at) "
                "VALUES (?, ?, ?)",
                (record.agent_id, civic, record.confirmed_at),
            )

        await self._db.run(operation)

    async def remove(self, agent_id: str) -> None:
        """Withdraw the agent's location (no error when there is none)."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM agent_locations WHERE agent_id = ?", (agent_id,))

        await self._db.run(operation)

    async def all(self) -> list[ConfirmedLocation]:
        """Every stored location, ordered by agent id."""

        def operation(conn: sqlite3.Connection) -> list[ConfirmedLocation]:
            rows = conn.execute(
                "SELECT agent_id, civic, confirmed_at FROM agent_locations ORDER BY agent_id"
            ).fetchall()
            return [
                ConfirmedLocation(str(agent), dict(json.loads(civic)), float(at))
                for agent, civic, at in rows
            ]

        return await self._db.run(operation)


async def open_sqlite_stores(
    path: Path | str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> Stores:
    """Open the SQLite file at ``path`` (or ``":memory:"``) and return its stores.

    The e-mail outbox lives in a file of its own beside it (``<name>-outbox<suffix>``), with
    its own worker thread: mail traffic (a slow SMTP server means many outbox writes in
    flight) must never queue in front of a callback DID reservation on the emergency call's
    path (SPEC E-6: sending never delays the call).
    """
    database = await SqliteDatabase.open(path, busy_timeout=busy_timeout)
    text = str(path)
    if text == ":memory:" or text.startswith("file::memory:"):
        outbox_path: Path | str = ":memory:"
    else:
        main = Path(path)
        outbox_path = main.with_name(f"{main.stem}-outbox{main.suffix}")
    try:
        outbox_db = await SqliteDatabase.open(outbox_path, busy_timeout=busy_timeout)
    except BaseException:
        await database.close()
        raise

    async def close_both() -> None:
        try:
            await outbox_db.close()
        finally:
            await database.close()

    return Stores(
        registrations=SqliteRegistrationStore(database),
        presence=SqlitePresenceStore(database),
        cdrs=SqliteCdrStore(database),
        reservations=SqliteReservationStore(database),
        outbox=SqliteOutboxStore(outbox_db),
        closer=close_both,
        locations=SqliteLocationStore(database),
    )
