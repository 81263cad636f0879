"""A node's stores, shared with the other nodes of a cluster when they are in Redis.

:class:`ReservationSync` and :class:`ClusterSync` keep a node's caches in step with the
others' writes (issue #12): callback reservations every second; registrations (with the
identity index, E-13) and presence on every announced change, plus a full resync every
``resync_interval`` seconds that heals a missed announcement or a lost subscription.

:func:`open_node_stores` opens ``GATEWAY_STORE``. The embedded SQLite store is handed back
as it is. A shared store (``redis://...``) is wrapped in an
:class:`~gateway.stores.outage.OutageGuard`, so that a Redis outage never holds a call: the
guard's health changes are logged there, published here (retained, on
``<prefix>/nodes/<node>/store``, schema ``docs/schemas/node-store.v1.json``) and read by the
metrics (:func:`store_gauges`).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from gateway.config.dialplan import Dialplan
from gateway.config.settings import Settings
from gateway.emergency.service import EmergencyService
from gateway.events.ports import Publisher, Topics
from gateway.events.schema import rfc3339
from gateway.metrics import level_gauge
from gateway.presence.service import PresenceService
from gateway.registrar.service import RegistrarService
from gateway.stores import Stores, open_stores
from gateway.stores.outage import OutageGuard, StoreHealth, guard_of
from gateway.stores.ports import (
    Binding,
    ChangeSubscription,
    ClusterChange,
    ClusterFeed,
    PresenceRecord,
    StoreError,
)
from gateway.stores.sqlite_reservations import SqliteReservationStore
from gateway.tasks import stop_task

__all__ = [
    "ClusterSync",
    "ReservationSync",
    "is_shared_store",
    "open_node_stores",
    "start_cluster_sync",
    "start_reservation_sync",
    "store_gauges",
    "store_health_payload",
    "store_suffix",
    "use_dialplan_for_stores",
]

log = structlog.get_logger("gateway")

#: agents applied between two turns of the event loop in a full resync
_SLICE = 200


def is_shared_store(url: str) -> bool:
    """Whether ``GATEWAY_STORE`` names the cluster's shared store (Redis)."""
    return url.split(":", 1)[0].lower() in ("redis", "rediss", "unix", "redis+sentinel")


def store_suffix(node: str) -> str:
    """``nodes/<node>/store``: the shared store as this node sees it (retained)."""
    return f"nodes/{node}/store"


def store_health_payload(node: str, health: StoreHealth) -> dict[str, Any]:
    """Payload of ``nodes/<node>/store`` (schema ``node-store.v1.json``)."""
    payload: dict[str, Any] = {
        "version": 1,
        "node": node,
        "store": "redis",
        "state": "up" if health.up else "down",
        "since": rfc3339(datetime.fromtimestamp(health.since, UTC)),
        "outages": health.outages,
        "pending": health.pending,
        "dropped": health.dropped,
    }
    if health.error is not None:
        payload["error"] = health.error
    return payload


async def open_node_stores(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    dialplan: Dialplan,
    publisher: Publisher,
    topics: Topics,
) -> Stores:
    """The node's stores, closed by ``stack``; a shared store behind its outage guard."""
    timeout = settings.store_timeout_s
    shared = is_shared_store(settings.store)
    stores = await open_stores(
        settings.store,
        settings.data_dir,
        timeout=timeout,
        exclusive=not shared,
        node=dialplan.node.name,
    )
    if not shared:
        stack.push_async_callback(stores.close)
        return stores
    if settings.nonce_secret_bytes() is None:
        log.warning(  # a nonce from one node would be refused by the others
            "nonce_secret_not_shared", hint="set GATEWAY_NONCE_SECRET on every node"
        )
    node = dialplan.node.name
    suffix = store_suffix(node)

    def publish(health: StoreHealth) -> None:
        publisher.publish(suffix, store_health_payload(node, health), retain=True)

    guard = OutageGuard(
        stores,
        outage_dids=dialplan.emergency.callback.outage_dids,
        timeout=timeout,
        on_change=publish,
    )
    await stack.enter_async_context(guard)
    publish(guard.health)
    return guard.stores


def store_gauges(registry: CollectorRegistry, stores: Stores) -> None:
    """``gateway_store_up``, ``gateway_store_outages`` and ``gateway_store_pending`` for a
    guarded (shared) store; for the embedded one, ``gateway_store_pending``: callback
    reservations whose write has not landed yet (tried again until it does)."""
    guard = guard_of(stores)
    if guard is None:
        embedded = stores.reservations
        if isinstance(embedded, SqliteReservationStore):
            level_gauge(
                registry,
                "gateway_store_pending",
                "Callback reservations not yet written to the embedded store",
                lambda: float(embedded.unwritten),
            )
        return
    for name, text, read in (
        ("gateway_store_up", "1 while the shared store answers", lambda: float(guard.up)),
        (
            "gateway_store_outages",
            "Shared store outages since start",
            lambda: float(guard.health.outages),
        ),
        (
            "gateway_store_pending",
            "Writes and outage reservations waiting to reach the shared store",
            lambda: float(guard.health.pending),
        ),
    ):
        level_gauge(registry, name, text, read)


def use_dialplan_for_stores(stores: Stores, dialplan: Dialplan) -> None:
    """A reloaded dialplan: the node's outage share follows it."""
    guard = guard_of(stores)
    if guard is not None:
        guard.use_outage_dids(dialplan.emergency.callback.outage_dids)


class ReservationSync:
    """Every ``interval`` seconds, the emergency service takes in the callback reservations
    other nodes made (:meth:`EmergencyService.refresh_reservations`), so that a PSAP's
    callback is recognised on whichever node the front hands it to. An async context
    manager: it owns its task."""

    def __init__(self, emergency: EmergencyService, interval: float = 1.0) -> None:
        self.emergency = emergency
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReservationSync:
        self._task = asyncio.create_task(self._run(), name="reservation-sync")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(stop_task(task), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.emergency.refresh_reservations()
            except Exception as exc:  # the store is down: the guard says so; try again
                log.debug("reservation_sync_failed", error=repr(exc))


async def start_reservation_sync(
    stack: contextlib.AsyncExitStack, stores: Stores, emergency: EmergencyService
) -> None:
    """On a shared store, keep the node's callback reservations in step with the others'."""
    if guard_of(stores) is not None:
        await stack.enter_async_context(ReservationSync(emergency))


class ClusterSync:
    """The other nodes' registrations and presence, taken into this node's caches, silently
    (issue #12). An async context manager owning three named tasks:

    ``cluster-changes``
        subscribes to the store's announcements; for each one of another node, reads that
        agent's bindings or presence record and applies it
        (:meth:`RegistrarService.apply_remote`, :meth:`PresenceService.apply_remote`).
        A lost subscription is opened again after ``retry_s``, followed by a full resync.
    ``cluster-resync``
        every ``resync_interval`` seconds, every binding and presence record: what an
        announcement missed is healed here.
    ``cluster-heartbeat``
        every ``heartbeat_s`` seconds, this node's heartbeat; an emergency call up on a
        node silent for ``node_lost_s`` is over (a crashed node leaves no DND behind, E-5),
        and the node that claims it first in the store (``SET NX``) publishes the agent's
        status and rewrites her record.

    Nothing here is on a call's path: while the guard says the store is down, the tasks
    wait (no read is tried) and resync once it is up again. Every read is bounded by the
    guard's timeout.
    """

    def __init__(
        self,
        feed: ClusterFeed,
        guard: OutageGuard,
        registrar: RegistrarService,
        presence: PresenceService,
        *,
        resync_interval: float = 5.0,
        heartbeat_s: float = 1.0,
        node_lost_s: float = 5.0,
        retry_s: float = 1.0,
    ) -> None:
        self.feed = feed
        self.guard = guard
        self.registrar = registrar
        self.presence = presence
        self.resync_interval = resync_interval
        self.heartbeat_s = heartbeat_s
        self.node_lost_s = node_lost_s
        self.retry_s = retry_s
        self.node = feed.node
        #: other nodes' heartbeats as last read (node -> unix seconds)
        self.seen: dict[str, float] = {}
        self._seen_at = 0.0
        #: changes applied from announcements and full resyncs done (tests, logs)
        self.applied = 0
        self.resyncs = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ClusterSync:
        for coroutine, name in (
            (self._changes(), "cluster-changes"),
            (self._resync_loop(), "cluster-resync"),
            (self._heartbeat_loop(), "cluster-heartbeat"),
        ):
            self._tasks.append(asyncio.create_task(coroutine, name=name))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*(stop_task(task) for task in tasks), return_exceptions=True)

    def alive(self, node: str) -> bool:
        """Had ``node`` beaten within ``node_lost_s`` when the beats were last read (each
        full resync)? This node always."""
        if node == self.node:
            return True
        beat = self.seen.get(node)
        # the beat's age when it was read (not now: the heartbeats are read once a resync)
        return beat is not None and self._seen_at - beat < self.node_lost_s

    async def _store_up(self) -> None:
        while not self.guard.up:
            await asyncio.sleep(self.retry_s)

    # -- announcements ---------------------------------------------------------------------

    async def _changes(self) -> None:
        while True:
            await self._store_up()
            subscription: ChangeSubscription | None = None
            try:
                subscription = await self.guard.bounded(self.feed.subscribe())
                log.info("cluster_subscribed", node=self.node)
                await self.resync()  # what was written before the subscription took
                while True:
                    change = await subscription.next(timeout=1.0)
                    if change is not None and change.node != self.node:
                        await self.apply(change)
            except asyncio.CancelledError:
                raise
            except (StoreError, TimeoutError) as exc:  # the store went away: wait for it
                log.warning("cluster_subscription_lost", error=repr(exc))
                self.guard.went_down(exc)
            except Exception:  # anything else: subscribe again
                log.exception("cluster_subscription_failed")
            finally:
                if subscription is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.guard.timeout):
                            await subscription.close()
            await asyncio.sleep(self.retry_s)

    async def apply(self, change: ClusterChange) -> None:
        """Read what ``change`` names from the shared store and apply it."""
        shared = self.guard.shared
        agent = change.agent_id
        try:
            if change.kind == "registration":
                mark = self.registrar.mark(agent)
                now = self.guard.wall_clock()
                bindings = await self.guard.bounded(shared.registrations.bindings(agent, now))
                applied = self.registrar.apply_remote(agent, bindings, mark)
            else:
                mark = self.presence.mark(agent)
                record = await self.guard.bounded(shared.presence.get(agent))
                node = record.emergency_node if record is not None else None
                if node is not None and not self.alive(node):
                    await self._read_heartbeats()  # a node started since the last read?
                applied = record is not None and self.presence.apply_remote(
                    record, mark, self.alive
                )
        except (StoreError, TimeoutError) as exc:
            self.guard.went_down(exc)
            return
        if applied:
            self.applied += 1

    async def _read_heartbeats(self) -> None:
        self.seen = await self.guard.bounded(self.feed.nodes_seen())
        self._seen_at = self.guard.wall_clock()

    # -- full resync -----------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            if not self.guard.up:
                continue
            try:
                await self.resync()
            except Exception:  # the next round tries again
                log.exception("cluster_resync_failed")

    async def resync(self) -> None:
        """Every agent's bindings and presence, as the shared store has them now."""
        shared = self.guard.shared
        registrar, presence = self.registrar, self.presence
        binding_marks = {agent: registrar.mark(agent) for agent in registrar.bindings}
        presence_marks = {agent: presence.mark(agent) for agent in presence.agents}
        now = self.guard.wall_clock()
        try:
            await self._read_heartbeats()
            bindings = await self.guard.bounded(shared.registrations.all_bindings(now))
            records = await self.guard.bounded(shared.presence.all())
        except (StoreError, TimeoutError) as exc:
            self.guard.went_down(exc)
            return
        by_agent: dict[str, list[Binding]] = {agent: [] for agent in binding_marks}
        for binding in bindings:
            if binding.agent_id in by_agent:
                by_agent[binding.agent_id].append(binding)
        # in slices, so that the calls on this node never wait for a whole resync
        for count, (agent, found) in enumerate(by_agent.items(), 1):
            registrar.apply_remote(agent, found, binding_marks[agent], batch=True)
            if count % _SLICE == 0:
                await asyncio.sleep(0)
        registrar.reindex()
        lost = []
        for count, record in enumerate(records, 1):
            mark = presence_marks.get(record.agent_id)
            if mark is not None:
                presence.apply_remote(record, mark, self.alive)
                if presence.lost_emergency(record, self.alive):
                    lost.append(record)
            if count % _SLICE == 0:
                await asyncio.sleep(0)
        self.resyncs += 1
        for record in lost:
            await self._recover(record)

    async def _recover(self, record: PresenceRecord) -> None:
        """A dead node's emergency call: one node (the claim's winner) says it is over."""
        key = f"lost:{record.emergency_node}:{record.agent_id}:{record.updated_at!r}"
        try:
            won = await self.guard.bounded(self.feed.claim(key, 60.0))
        except (StoreError, TimeoutError) as exc:
            self.guard.went_down(exc)
            return
        if won:
            log.warning(
                "emergency_node_lost",
                agent=record.agent_id,
                node=record.emergency_node,
                detail="its emergency call is over: DND lifted and published by this node",
            )
            self.presence.recover(record.agent_id)

    # -- heartbeat -------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            if self.guard.up:
                try:
                    await self.guard.bounded(self.feed.heartbeat(self.guard.wall_clock()))
                except (StoreError, TimeoutError) as exc:
                    self.guard.went_down(exc)
            await asyncio.sleep(self.heartbeat_s)


async def start_cluster_sync(
    stack: contextlib.AsyncExitStack,
    stores: Stores,
    registrar: RegistrarService,
    presence: PresenceService,
) -> ClusterSync | None:
    """On a shared store, keep the node's registrations and presence in step with the
    other nodes' (issue #12); nothing on the embedded store (one node)."""
    guard = guard_of(stores)
    if guard is None or stores.cluster is None:
        return None
    return await stack.enter_async_context(ClusterSync(stores.cluster, guard, registrar, presence))
