"""The shared store's outages, kept away from calls (issue #12): :class:`OutageGuard`.

Theory of operation
-------------------
A cluster's stores live in Redis; Redis can die, be cut off, or stall. An emergency call
must still get a callback DID and go out at once (SPEC E-3, E-4), and nothing may hang.
The guard wraps the shared :class:`~gateway.stores.ports.Stores` and hands out stores of
the same ports with this behaviour:

=====================  ================================  ==================================
state                  a callback DID (``reserve``)      a write (binding, presence, CDR,
                                                         location)
=====================  ================================  ==================================
up                     the shared pool, in Redis,        to Redis, bounded by ``timeout``
                       bounded by ``timeout``
down                   this node's outage share          kept in an ordered journal
                       (``emergency.callback.            (bounded; the oldest dropped
                       outage_dids``), chosen at once    with a count)
                       by the same policy, in memory
=====================  ================================  ==================================

The first operation that fails (a :class:`StoreUnavailableError` or no answer within
``timeout``) turns the guard *down*: it logs ``store_outage_started``, counts the outage and
tells ``on_change`` (the node publishes it over MQTT). From then on nothing waits for Redis.
A background task probes Redis every ``probe_interval`` seconds; when it answers, the
journal is replayed in order -- the outage reservations are restored (a DID that has a
newer reservation in Redis keeps it), the writes applied -- and only then is the guard *up*
again (``store_outage_ended``). A write that fails during the replay leaves the guard down
and the rest of the journal for the next probe.

Each node's outage share is disjoint from the shared pool and from the other nodes' shares
(the dialplan says so), so a DID lent during an outage can never be lent by another node.
Reads other than reservations pass straight to the shared stores (they run at start-up and
in the CLI, never on a call's path); the mail outbox is node-local and not guarded.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import structlog

from gateway.stores.ports import (
    Binding,
    Cdr,
    ConfirmedLocation,
    DidChooser,
    EmptyPoolError,
    PresenceRecord,
    Reservation,
    StoreError,
    Stores,
    StoreUnavailableError,
)
from gateway.tasks import stop_task

__all__ = ["OutageGuard", "Restorable", "StoreHealth", "guard_of"]

log = structlog.get_logger("gateway.stores")

_T = TypeVar("_T")

#: one journaled write, replayed on the shared stores when they are back
_Write = Callable[[Stores], Awaitable[object]]


@runtime_checkable
class Restorable(Protocol):
    """A reservation store that can take back a reservation made during an outage."""

    async def restore(self, reservation: Reservation) -> bool: ...


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """The shared store as this node sees it (published on ``nodes/<node>/store``)."""

    up: bool
    #: when the current state began (unix seconds)
    since: float
    #: outages since this process started
    outages: int
    #: writes and outage reservations waiting to be reconciled
    pending: int
    #: writes dropped from the full journal since this process started
    dropped: int
    #: what the last failure was (``None`` while up)
    error: str | None = None


class OutageGuard:
    """Guards the shared ``stores`` (see the module docstring); ``guard.stores`` are the
    stores to hand to the rest of the node. Use as an async context manager (it owns the
    probe task)."""

    def __init__(
        self,
        shared: Stores,
        *,
        outage_dids: Sequence[str],
        timeout: float,
        probe_interval: float = 1.0,
        journal_size: int = 10_000,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[StoreHealth], None] | None = None,
    ) -> None:
        self.shared = shared
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.wall_clock = wall_clock
        self.on_change = on_change
        self.outage_dids = tuple(dict.fromkeys(outage_dids))
        self.health = StoreHealth(True, wall_clock(), 0, 0, 0)
        #: the outage reservations this node made (DID -> latest), kept for later choices
        self.local: dict[str, Reservation] = {}
        self._journal: deque[_Write] = deque()
        self._journal_size = journal_size
        self._down = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stores = Stores(
            registrations=_Registrations(self),
            presence=_Presence(self),
            cdrs=_Cdrs(self),
            reservations=_Reservations(self),
            outbox=shared.outbox,
            closer=self.close,
            locations=_Locations(self),
            cluster=shared.cluster,
        )

    # -- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> OutageGuard:
        self._task = asyncio.create_task(self._probe_loop(), name="store-outage-probe")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop probing and close the shared stores (journaled writes not yet replayed are
        lost with the process, and logged)."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(stop_task(task), return_exceptions=True)
        if self._journal:
            log.warning("store_outage_unreconciled", pending=len(self._journal))
        await self.shared.close()

    def use_outage_dids(self, outage_dids: Sequence[str]) -> None:
        """This node's outage share after a dialplan reload."""
        self.outage_dids = tuple(dict.fromkeys(outage_dids))

    # -- the two states ------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.health.up

    def went_down(self, error: BaseException) -> None:
        """An operation failed: stop waiting for the shared store (once per outage)."""
        if not self.health.up:
            return
        text = repr(error) if isinstance(error, StoreError) else "no answer in time"
        log.error("store_outage_started", error=text, timeout_s=self.timeout)
        self._set(up=False, since=self.wall_clock(), outages=self.health.outages + 1, error=text)
        self._down.set()

    def _set(self, **changes: object) -> None:
        changes.setdefault("pending", len(self._journal))
        self.health = replace(self.health, **changes)  # type: ignore[arg-type]
        if self.on_change is not None:
            try:
                self.on_change(self.health)
            except Exception:  # a listener must not break the store
                log.exception("store_health_listener_failed")

    async def bounded(self, operation: Awaitable[_T]) -> _T:
        """``operation`` on the shared store, in at most ``timeout`` seconds."""
        async with asyncio.timeout(self.timeout):
            return await operation

    async def write(self, step: _Write) -> None:
        """A write: to the shared store while it is up, else into the journal."""
        if self.health.up:
            try:
                await self.bounded(step(self.shared))
                return
            except (StoreUnavailableError, TimeoutError) as exc:
                self.went_down(exc)
        self._remember(step)

    def _remember(self, step: _Write) -> None:
        if len(self._journal) >= self._journal_size:
            self._journal.popleft()
            self._set(dropped=self.health.dropped + 1)
            log.warning("store_outage_journal_full", dropped=self.health.dropped)
        self._journal.append(step)
        self.health = replace(self.health, pending=len(self._journal))

    # -- callback DIDs -------------------------------------------------------------------

    def reserve_locally(
        self, agent_id: str, now: float, ttl: float, call_id: str, test: bool, choose: DidChooser
    ) -> tuple[Reservation, bool]:
        """A DID of this node's outage share, chosen by the same policy; journaled."""
        share = self.outage_dids
        if not share:
            raise StoreUnavailableError("the shared store is down and this node has no outage DIDs")
        held = {did: self.local[did] for did in share if did in self.local}
        did, taken_over = choose(agent_id, share, held, now)
        reservation = Reservation(did, agent_id, now, now + ttl, call_id, test)
        self.local[did] = reservation
        log.warning("callback_did_from_outage_share", did=did, call_id=call_id)
        self._remember(lambda shared: _restore(shared, reservation))
        return reservation, taken_over

    # -- the probe -----------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            await self._down.wait()
            await asyncio.sleep(self.probe_interval)
            try:
                await self.bounded(self.shared.reservations.live(self.wall_clock()))
                await self._reconcile()
            except (StoreUnavailableError, TimeoutError) as exc:
                log.debug("store_still_down", error=repr(exc))
                continue
            except Exception:  # the probe must outlive anything: try again later
                log.exception("store_probe_failed")
                continue
            self._down.clear()
            duration = self.wall_clock() - self.health.since
            log.info("store_outage_ended", duration_s=round(duration, 3))
            self._set(up=True, since=self.wall_clock(), error=None, pending=0)

    async def _reconcile(self) -> None:
        """Replay the journal in order; a failure stops it (the rest waits)."""
        replayed = 0
        while self._journal:
            try:
                await self.bounded(self._journal[0](self.shared))
            except (StoreUnavailableError, TimeoutError):
                raise
            except Exception:  # one bad write must not hold back the others forever
                log.exception("store_outage_replay_failed")
            self._journal.popleft()
            replayed += 1
        if replayed:
            log.info("store_outage_reconciled", writes=replayed)


def guard_of(stores: Stores) -> OutageGuard | None:
    """The guard behind ``stores``, if they are guarded ones."""
    reservations = stores.reservations
    return reservations.guard if isinstance(reservations, _Reservations) else None


async def _restore(shared: Stores, reservation: Reservation) -> None:
    store = shared.reservations
    if not isinstance(store, Restorable):
        return
    if not await store.restore(reservation):
        log.warning("outage_reservation_superseded", did=reservation.did)


# ------------------------------------------------------------------------------------------
# The guarded ports.


class _Registrations:
    def __init__(self, guard: OutageGuard) -> None:
        self._guard = guard

    async def put(self, binding: Binding) -> None:
        await self._guard.write(lambda s: s.registrations.put(binding))

    async def remove(self, agent_id: str, contact_uri: str) -> None:
        await self._guard.write(lambda s: s.registrations.remove(agent_id, contact_uri))

    async def remove_all(self, agent_id: str) -> None:
        await self._guard.write(lambda s: s.registrations.remove_all(agent_id))

    async def bindings(self, agent_id: str, now: float) -> list[Binding]:
        return await self._guard.shared.registrations.bindings(agent_id, now)

    async def all_bindings(self, now: float) -> list[Binding]:
        return await self._guard.shared.registrations.all_bindings(now)

    async def purge_expired(self, now: float) -> list[Binding]:
        if not self._guard.up:  # expiry is applied from the node's cache meanwhile
            raise StoreUnavailableError("the shared store is down")
        return await self._guard.shared.registrations.purge_expired(now)


class _Presence:
    def __init__(self, guard: OutageGuard) -> None:
        self._guard = guard

    async def get(self, agent_id: str) -> PresenceRecord | None:
        return await self._guard.shared.presence.get(agent_id)

    async def put(self, record: PresenceRecord) -> None:
        await self._guard.write(lambda s: s.presence.put(record))

    async def all(self) -> list[PresenceRecord]:
        return await self._guard.shared.presence.all()


class _Cdrs:
    def __init__(self, guard: OutageGuard) -> None:
        self._guard = guard

    async def add(self, *cdrs: Cdr) -> None:
        await self._guard.write(lambda s: s.cdrs.add(*cdrs))

    async def recent(
        self, limit: int, *, since: float | None = None, until: float | None = None
    ) -> list[Cdr]:
        return await self._guard.shared.cdrs.recent(limit, since=since, until=until)

    async def purge(self, before: float) -> int:
        return await self._guard.shared.cdrs.purge(before)


class _Locations:
    def __init__(self, guard: OutageGuard) -> None:
        self._guard = guard

    async def put(self, record: ConfirmedLocation) -> None:
        await self._guard.write(lambda s: s.locations.put(record))

    async def remove(self, agent_id: str) -> None:
        await self._guard.write(lambda s: s.locations.remove(agent_id))

    async def all(self) -> list[ConfirmedLocation]:
        return await self._guard.shared.locations.all()


class _Reservations:
    def __init__(self, guard: OutageGuard) -> None:
        self._guard = guard

    @property
    def guard(self) -> OutageGuard:
        return self._guard

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
        """The shared pool while the store is up; else, at once, this node's outage share."""
        guard = self._guard
        if guard.up:
            try:
                shared = guard.shared.reservations
                return await guard.bounded(
                    shared.reserve(agent_id, pool, now, ttl, call_id, test, choose=choose)
                )
            except EmptyPoolError:
                raise
            except (StoreUnavailableError, TimeoutError) as exc:
                guard.went_down(exc)
            except StoreError as exc:  # contended beyond reason: this call must not wait
                log.error("callback_reservation_contended", error=repr(exc), call_id=call_id)
        if ttl <= 0:
            raise ValueError(f"reservation ttl must be positive, not {ttl!r}")
        return guard.reserve_locally(agent_id, now, ttl, call_id, test, choose)

    async def lookup(self, did: str, now: float) -> Reservation | None:
        guard = self._guard
        local = guard.local.get(did)
        if local is not None and local.expires_at > now:
            return local
        if guard.up:
            try:
                return await guard.bounded(guard.shared.reservations.lookup(did, now))
            except (StoreUnavailableError, TimeoutError) as exc:
                guard.went_down(exc)
        return None

    async def live(self, now: float) -> list[Reservation]:
        guard = self._guard
        found: dict[str, Reservation] = {}
        if guard.up:
            try:
                found = {r.did: r for r in await guard.bounded(guard.shared.reservations.live(now))}
            except (StoreUnavailableError, TimeoutError) as exc:
                guard.went_down(exc)
        for did, reservation in guard.local.items():
            if reservation.expires_at > now and did not in found:
                found[did] = reservation
        return [found[did] for did in sorted(found)]
