"""Callback DID reservations on SQLite (SPEC E-4): :class:`SqliteReservationStore`.

Theory of operation
-------------------
Two ways to be atomic, described on the class. The node that owns the file chooses in
memory and writes behind; this module also makes that write one that lands. A write can
fail for a while without anything being wrong with the reservation: another process holds
the database's write lock longer than ``busy_timeout`` (a backup tool, an operator's
``sqlite3`` shell in a transaction), the disk is full, an I/O error. The reservation is
already in use (the emergency call went out with its DID), and SPEC E-4 says it survives a
restart, so the write is tried again, with the store writers' backoff
(:func:`gateway.tasks.retry_delay`: 0.5 s doubling to 30 s), until it
lands (``reservation_write_failed`` says each failure, ``reservation_write_recovered`` the
end). Each try writes the DID's *latest* reservation, never a stale one: an older
reservation retried after a newer one was written would hand the PSAP's callback to the
wrong agent after a restart. :meth:`SqliteReservationStore.flush` (at close) makes one last
try for what is still unwritten and logs ``reservation_not_written`` for what fails.
Failures that are not transient (a bug: a constraint, bad SQL) are logged once, as before.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

import structlog

from gateway.stores.ports import DidChooser, EmptyPoolError, Reservation, StoreUnavailableError
from gateway.stores.sqlite_database import SqliteDatabase, immediate_transaction
from gateway.tasks import retry_delay

log = structlog.get_logger("gateway")

__all__ = ["SqliteReservationStore"]

_RESERVATION_COLUMNS = "did, agent_id, reserved_at, expires_at, call_id, test"


def _reservation(row: tuple[Any, ...]) -> Reservation:
    return Reservation(
        did=row[0],
        agent_id=row[1],
        reserved_at=float(row[2]),
        expires_at=float(row[3]),
        call_id=row[4],
        test=bool(row[5]),
    )


def _write_reservation(reservation: Reservation, conn: sqlite3.Connection) -> None:
    r = reservation
    conn.execute(
        f"INSERT OR REPLACE INTO reservations ({_RESERVATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (r.did, r.agent_id, r.reserved_at, r.expires_at, r.call_id, int(r.test)),
    )


class SqliteReservationStore:
    """:class:`~gateway.stores.ports.ReservationStore` on SQLite.

    Two ways to be atomic. By default each ``reserve`` is one ``BEGIN IMMEDIATE``
    transaction in the worker thread, so two processes sharing the file never hand out one
    DID twice. A node that *owns* the file (:func:`open_sqlite_stores` with
    ``exclusive=True``: an exclusive lock, so no other gateway process can use it) keeps
    the latest reservation of every DID in memory and chooses there, in the event loop, and
    the write follows in the worker's urgent lane without the call waiting for it.

    Why the owner does not wait: under a saturated event loop the worker thread can starve
    for the GIL. uvloop releases and retakes the GIL on every loop turn, so a waiting thread
    rarely sees the "no switch for 5 ms" condition that makes CPython hand it over; measured
    here, a reservation that takes 0.1 ms in the thread sometimes took 2-13 **seconds** to
    come back while the loop was busy. An emergency call waits on its DID (it goes in From
    and P-Asserted-Identity), so the DID must not depend on another thread getting the GIL.
    The cost: a crash in the milliseconds between the choice and the write loses that
    reservation (a clean stop writes it: :meth:`flush`, then :meth:`SqliteDatabase.close`
    drains the queue). A write that fails is tried again until it lands (module docstring).
    """

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database
        #: DID -> its latest reservation (expired ones too: they decide who gets it next);
        #: None unless this process owns the file
        self._latest: dict[str, Reservation] | None = None
        #: DIDs whose latest reservation is not known to be on disk; consecutive failures
        self._unwritten: set[str] = set()
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None

    async def own(self) -> None:
        """Load every DID's latest reservation and choose in memory from now on (only for
        a process that holds the file's exclusive lock)."""

        def operation(conn: sqlite3.Connection) -> list[Reservation]:
            rows = conn.execute(f"SELECT {_RESERVATION_COLUMNS} FROM reservations")
            return [_reservation(row) for row in rows]

        self._latest = {r.did: r for r in await self._db.run(operation)}

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

        Not owning the file: one ``BEGIN IMMEDIATE`` transaction reads the pool's rows, runs
        ``choose`` and writes, so no other task or process can choose between the read and
        the write. Owning it: ``choose`` runs on the in-memory rows with no await between
        the read and the update, and the row is written behind.
        """
        unique_pool = tuple(dict.fromkeys(pool))
        if not unique_pool:
            raise EmptyPoolError("the callback DID pool is empty")
        if ttl <= 0:
            raise ValueError(f"reservation ttl must be positive, not {ttl!r}")
        latest = self._latest
        if latest is not None:
            held = {did: latest[did] for did in unique_pool if did in latest}
            did, taken_over = choose(agent_id, unique_pool, held, now)
            reservation = Reservation(did, agent_id, now, now + ttl, call_id, test)
            latest[did] = reservation
            self._persist(did)
            return reservation, taken_over

        def operation(conn: sqlite3.Connection) -> tuple[Reservation, bool]:
            with immediate_transaction(conn):
                # The table holds one row per DID ever reserved, so reading it whole is cheap
                # and avoids a statement with one parameter per pool DID.
                rows = conn.execute(f"SELECT {_RESERVATION_COLUMNS} FROM reservations")
                pool_set = set(unique_pool)
                held = {r.did: r for r in map(_reservation, rows) if r.did in pool_set}
                did, taken_over = choose(agent_id, unique_pool, held, now)
                reservation = Reservation(did, agent_id, now, now + ttl, call_id, test)
                _write_reservation(reservation, conn)
            return reservation, taken_over

        return await self._db.run(operation, urgent=True)  # the emergency call waits on it

    async def lookup(self, did: str, now: float) -> Reservation | None:
        """The unexpired reservation of ``did``, or ``None`` (from memory when owned)."""
        if self._latest is not None:
            found = self._latest.get(did)
            return found if found is not None and found.expires_at > now else None

        def operation(conn: sqlite3.Connection) -> Reservation | None:
            row = conn.execute(
                f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE did = ? AND expires_at > ?",
                (did, now),
            ).fetchone()
            return None if row is None else _reservation(row)

        return await self._db.run(operation)

    async def live(self, now: float) -> list[Reservation]:
        """Every unexpired reservation, ordered by DID (from memory when owned)."""
        if self._latest is not None:
            return sorted(
                (r for r in self._latest.values() if r.expires_at > now), key=lambda r: r.did
            )

        def operation(conn: sqlite3.Connection) -> list[Reservation]:
            rows = conn.execute(
                f"SELECT {_RESERVATION_COLUMNS} FROM reservations "
                "WHERE expires_at > ? ORDER BY did",
                (now,),
            ).fetchall()
            return [_reservation(row) for row in rows]

        return await self._db.run(operation)

    # -- the write behind, until it lands -----------------------------------------------------

    @property
    def unwritten(self) -> int:
        """DIDs whose latest reservation is not known to be written yet."""
        return len(self._unwritten)

    def _persist(self, did: str) -> None:
        """Write ``did``'s latest reservation in the urgent lane; on a transient failure,
        the whole unwritten set is tried again after the backoff."""
        latest = self._latest
        if latest is None or did not in latest:
            return
        self._unwritten.add(did)
        reservation = latest[did]
        self._db.submit(
            functools.partial(_write_reservation, reservation),
            urgent=True,
            on_done=functools.partial(self._written, reservation),
        )

    def _written(self, reservation: Reservation, error: BaseException | None) -> None:
        """In the event loop, once a write is done."""
        did = reservation.did
        current = self._latest.get(did) if self._latest is not None else None
        if error is None:
            if current == reservation:
                self._unwritten.discard(did)
            if self._failures and not self._unwritten:
                log.warning("reservation_write_recovered", after_failures=self._failures)
                self._failures = 0
            return
        if not isinstance(error, StoreUnavailableError):
            if current == reservation:  # a newer one still counts for itself
                self._unwritten.discard(did)
            log.error("reservation_write_failed", did=did, error=repr(error), retry=False)
            return
        if current is not None:
            self._unwritten.add(did)  # its latest value is written at the next try
        self._failures += 1
        delay = retry_delay(self._failures)
        log.error(
            "reservation_write_failed",
            did=did,
            agent=reservation.agent_id,
            error=repr(error),
            retry_in_s=delay,
            unwritten=len(self._unwritten),
        )
        if self._retry is None and not self._db.closed:
            self._retry = asyncio.get_running_loop().call_later(delay, self._retry_all)

    def _retry_all(self) -> None:
        self._retry = None
        if self._db.closed:
            return
        for did in sorted(self._unwritten):
            self._persist(did)

    async def flush(self) -> None:
        """One last try for every unwritten reservation (the node is stopping); what
        fails is logged as lost to a restart (``reservation_not_written``)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        latest = self._latest
        if latest is None or self._db.closed:
            return
        error: Exception | None = None
        for did in sorted(self._unwritten):
            reservation = latest[did]
            if error is None:  # after one failure, no more tries: each may wait busy_timeout
                try:
                    write = functools.partial(_write_reservation, reservation)
                    await self._db.run(write, urgent=True)
                except Exception as exc:
                    error = exc
                else:
                    self._unwritten.discard(did)
                    continue
            log.error(
                "reservation_not_written",
                did=did,
                agent=reservation.agent_id,
                expires_at=reservation.expires_at,
                error=repr(error),
            )
