"""Embedded SQLite adapter of the store ports (SPEC O-2): the single-node default.

The stores of the ports on one :class:`~gateway.stores.sqlite_database.SqliteDatabase`
(the worker thread, durability and the schema migrations are described there; the e-mail
outbox store is in :mod:`gateway.stores.sqlite_outbox`, on a database file of its own), and
:func:`open_sqlite_stores`, which opens both files and hands back the :class:`Stores`.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, cast

from gateway.stores.ports import (
    Binding,
    CallDirection,
    Cdr,
    ConfirmedLocation,
    PresenceRecord,
    StoreError,
    Stores,
)
from gateway.stores.sqlite_database import (
    DEFAULT_BUSY_TIMEOUT,
    MIGRATIONS,
    NODE_BUSY_TIMEOUT,
    Migration,
    SqliteDatabase,
    immediate_transaction,
)
from gateway.stores.sqlite_outbox import SqliteOutboxStore
from gateway.stores.sqlite_reservations import SqliteReservationStore

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

# --------------------------------------------------------------------------------------------
# Row mapping.

_BINDING_COLUMNS = (
    "agent_id, contact_uri, expires_at, call_id, cseq, source, user_agent, q, instance, path"
)
_PRESENCE_COLUMNS = (
    "agent_id, chosen, effective, previous, reason, updated_at, saved_before_emergency"
)
_CDR_COLUMNS = (
    "call_id, direction, caller, callee, queue, agent, route, "
    "started_at, answered_at, ended_at, result, a_call_id, b_call_id, sip_code"
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
        path=tuple(json.loads(row[9])),
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
        a_call_id=row[11],
        b_call_id=row[12],
        sip_code=None if row[13] is None else int(row[13]),
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
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    json.dumps(list(binding.path)),
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
            with immediate_transaction(conn):
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


def _cdr_row(cdr: Cdr) -> tuple[object, ...]:
    """The values of ``_CDR_COLUMNS`` for ``cdr``, in order."""
    return (
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
        cdr.a_call_id,
        cdr.b_call_id,
        cdr.sip_code,
    )


class SqliteCdrStore:
    """:class:`~gateway.stores.ports.CdrStore` on SQLite."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def add(self, *cdrs: Cdr) -> None:
        """Append records in one transaction (a batch costs one commit)."""
        if not cdrs:
            return

        def operation(conn: sqlite3.Connection) -> None:
            with immediate_transaction(conn):
                conn.executemany(
                    f"INSERT INTO cdrs ({_CDR_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                    [_cdr_row(cdr) for cdr in cdrs],
                )

        await self._db.run(operation)

    async def recent(
        self, limit: int, *, since: float | None = None, until: float | None = None
    ) -> list[Cdr]:
        """Up to ``limit`` records, most recently added first, ended in [since, until)."""
        if limit <= 0:
            return []
        low = float("-inf") if since is None else since
        high = float("inf") if until is None else until

        def operation(conn: sqlite3.Connection) -> list[Cdr]:
            rows = conn.execute(
                f"SELECT {_CDR_COLUMNS} FROM cdrs WHERE ended_at >= ? AND ended_at < ? "
                "ORDER BY id DESC LIMIT ?",
                (low, high, limit),
            ).fetchall()
            return [_cdr(row) for row in rows]

        return await self._db.run(operation)

    async def purge(self, before: float) -> int:
        """Delete the records of calls that ended before ``before`` (retention)."""

        def operation(conn: sqlite3.Connection) -> int:
            with immediate_transaction(conn):
                return conn.execute("DELETE FROM cdrs WHERE ended_at < ?", (before,)).rowcount

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


def lock_store_file(path: Path | str) -> int | None:
    """Take the exclusive lock of the SQLite file at ``path`` (``<path>.lock``) for this
    process, or raise :class:`StoreError` naming the process that holds it. None for an
    in-memory database. The lock ends with the process, however it ends."""
    if _in_memory(path):
        return None
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(
            f"{path} is in use by another gateway process (pid {holder}): one node, one "
            "store file (a cluster shares a Redis store, docs/cluster.md)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _in_memory(path: Path | str) -> bool:
    text = str(path)
    return text == ":memory:" or text.startswith("file::memory:")


def _outbox_path(path: Path | str) -> Path | str:
    """The mail outbox's file beside the main one (``<name>-outbox<suffix>``)."""
    if _in_memory(path):
        return ":memory:"
    main = Path(path)
    return main.with_name(f"{main.stem}-outbox{main.suffix}")


async def open_sqlite_stores(
    path: Path | str, *, busy_timeout: float | None = None, exclusive: bool = False
) -> Stores:
    """Open the SQLite file at ``path`` (or ``":memory:"``) and return its stores.

    The e-mail outbox lives in a file of its own beside it (``<name>-outbox<suffix>``), with
    its own worker thread: mail traffic (a slow SMTP server means many outbox writes in
    flight) must never queue in front of a callback DID reservation on the emergency call's
    path (SPEC E-6: sending never delays the call).

    ``exclusive``: the running node's stores. The file is locked for this process (a second
    node on the same file is refused) and callback DIDs are chosen in memory
    (:class:`SqliteReservationStore`). The command-line tools open it without.
    ``busy_timeout`` defaults to ``NODE_BUSY_TIMEOUT`` when exclusive, else
    ``DEFAULT_BUSY_TIMEOUT``.
    """
    if busy_timeout is None:
        busy_timeout = NODE_BUSY_TIMEOUT if exclusive else DEFAULT_BUSY_TIMEOUT
    lock = lock_store_file(path) if exclusive else None
    try:
        database = await SqliteDatabase.open(path, busy_timeout=busy_timeout)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    try:
        outbox_db = await SqliteDatabase.open(_outbox_path(path), busy_timeout=busy_timeout)
    except BaseException:
        await database.close()
        raise

    reservations = SqliteReservationStore(database)

    async def close_both() -> None:
        try:
            await outbox_db.close()
        finally:
            await reservations.flush()  # a last try for writes that failed (then: logged)
            await database.close()
            if lock is not None:
                os.close(lock)

    if exclusive:
        try:
            await reservations.own()
        except BaseException:
            await close_both()
            raise
    return Stores(
        registrations=SqliteRegistrationStore(database),
        presence=SqlitePresenceStore(database),
        cdrs=SqliteCdrStore(database),
        reservations=reservations,
        outbox=SqliteOutboxStore(outbox_db),
        closer=close_both,
        locations=SqliteLocationStore(database),
    )
