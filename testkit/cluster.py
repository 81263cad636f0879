"""A cluster node's shared-state part in one process, for tests and benchmarks (issue #12).

:func:`cluster_node` builds what ``gateway.app`` builds on a shared store, without SIP: the
node's own Redis client (``open_stores`` with the node's name), its outage guard, its
presence and registrar services and its :class:`~gateway.cluster.ClusterSync`; several of
them on one redis-server behave as the nodes of a cluster.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cluster import ClusterSync
from gateway.config.loader import load_dialplan_text
from gateway.events.ports import Topics
from gateway.presence.service import PresenceService
from gateway.registrar.service import RegistrarService
from gateway.stores import open_stores
from gateway.stores.outage import OutageGuard

__all__ = ["ClusterNode", "RecordingPublisher", "cluster_node"]


class RecordingPublisher:
    """A node's MQTT publisher that keeps what it published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.published.append((topic_suffix, payload))

    def statuses(self, agent: str) -> list[str]:
        """The statuses published on ``agents/<agent>/presence``, in order."""
        suffix = f"agents/{agent}/presence"
        return [str(p["status"]) for t, p in self.published if t == suffix]


@dataclass
class ClusterNode:
    name: str
    guard: OutageGuard
    presence: PresenceService
    registrar: RegistrarService
    sync: ClusterSync
    publisher: RecordingPublisher


def _dialplan_text(agents: Sequence[str]) -> str:
    lines = [f"  {agent}: {{ password: pw }}" for agent in agents]
    return (
        "version: 1\nlisten: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
        "agents:\n" + "\n".join(lines) + "\n"
    )


@contextlib.asynccontextmanager
async def cluster_node(
    store_url: str,
    workdir: Path,
    name: str,
    agents: Sequence[str],
    *,
    timeout: float = 0.3,
    resync_interval: float = 0.5,
    node_lost_s: float = 5.0,
) -> AsyncIterator[ClusterNode]:
    """Node ``name`` on the shared store ``store_url`` with ``agents``, synced and running
    until the block ends (its heartbeat then stops, as a crashed node's would)."""
    dialplan = load_dialplan_text(_dialplan_text(agents), "cluster.yaml")
    async with contextlib.AsyncExitStack() as stack:
        shared = await open_stores(store_url, workdir / name, timeout=timeout, node=name)
        guard = OutageGuard(shared, outage_dids=[], timeout=timeout, probe_interval=0.1)
        await stack.enter_async_context(guard)
        publisher = RecordingPublisher()
        presence = PresenceService(
            dict.fromkeys(agents, 1), guard.stores.presence, publisher, Topics("t", name), name
        )
        await presence.start()
        stack.push_async_callback(presence.close)
        registrar = RegistrarService(
            dialplan,
            None,  # type: ignore[arg-type]  # no REGISTER is handled here: no transactions
            guard.stores.registrations,
            presence,
            loop_clock=time.monotonic,
            claim_expiry=True,
        )
        await registrar.start()
        stack.push_async_callback(registrar.close)
        presence.announce()  # as gateway.app does once the registrations are loaded
        publisher.published.clear()
        assert shared.cluster is not None
        sync = ClusterSync(
            shared.cluster,
            guard,
            registrar,
            presence,
            resync_interval=resync_interval,
            heartbeat_s=0.2,
            node_lost_s=node_lost_s,
            retry_s=0.1,
        )
        await stack.enter_async_context(sync)
        yield ClusterNode(name, guard, presence, registrar, sync, publisher)
