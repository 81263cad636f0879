"""A node's stores, shared with the other nodes of a cluster when they are in Redis.

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
from prometheus_client import CollectorRegistry, Gauge

from gateway.config.dialplan import Dialplan
from gateway.config.settings import Settings
from gateway.emergency.service import EmergencyService
from gateway.events.ports import Publisher, Topics
from gateway.events.schema import rfc3339
from gateway.stores import Stores, open_stores
from gateway.stores.outage import OutageGuard, StoreHealth, guard_of

__all__ = [
    "ReservationSync",
    "is_shared_store",
    "open_node_stores",
    "start_reservation_sync",
    "store_gauges",
    "store_health_payload",
    "store_suffix",
    "use_dialplan_for_stores",
]

log = structlog.get_logger("gateway")


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
        settings.store, settings.data_dir, timeout=timeout, exclusive=not shared
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
    guarded (shared) store; nothing for the embedded one."""
    guard = guard_of(stores)
    if guard is None:
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
        Gauge(name, text, registry=registry).set_function(read)


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
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

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
