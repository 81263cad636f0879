"""The presence service: the state machines of every agent, persisted and published.

Sits at the edge: the decisions are :class:`~gateway.presence.state.AgentPresence`'s; this
class feeds it, writes each change to the store (in order, without blocking the caller)
and publishes it on the agent's retained MQTT topic (SPEC R-4, M-1). Listeners (the queue
dispatcher) are told synchronously after each change.

In a cluster (issue #12) another node's change reaches this one as the shared record
(:meth:`PresenceService.apply_remote`): the agent's chosen status and an emergency call up
on that node are taken in *silently* -- listeners are told, nothing is published or
written, since the node that handled the change published it once. A record read while a
change of this node is being written (or was made after the read began) is not applied:
this node's write is the newer one, and its own announcement follows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.events.ports import Publisher, Topics
from gateway.events.schema import PresenceReason, check_note, presence_payload
from gateway.presence.state import CHOOSABLE, AgentPresence, PresenceChanged, Status
from gateway.stores.ports import PresenceRecord, PresenceStore, StoreUnavailableError
from gateway.tasks import WriteBehind

__all__ = ["PresenceService", "payload_of"]

log = structlog.get_logger("gateway.presence")

Listener = Callable[[PresenceChanged], None]


def payload_of(change: PresenceChanged, node: str) -> dict[str, Any]:
    """The retained ``.../agents/<id>/presence`` payload (schema presence.v1)."""
    return presence_payload(
        agent=change.agent_id,
        status=str(change.status),
        previous=str(change.previous),
        reason=change.reason,
        node=node,
        timestamp=datetime.fromtimestamp(change.at, UTC),
        note=change.note,
    )


def _write_failed(record: PresenceRecord) -> None:
    log.exception("presence_store_failed", agent=record.agent_id)


class PresenceService:
    """Presence of every configured agent."""

    def __init__(
        self,
        capacities: dict[str, int],
        store: PresenceStore,
        publisher: Publisher,
        topics: Topics,
        node: str,
        *,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.agents: dict[str, AgentPresence] = {
            agent_id: AgentPresence(agent_id, capacity=capacity)
            for agent_id, capacity in capacities.items()
        }
        self.store = store
        self.publisher = publisher
        self.topics = topics
        self.node = node
        self.wall_clock = wall_clock
        self.listeners: list[Listener] = []
        self._writes: WriteBehind[PresenceRecord] = WriteBehind(
            "presence-writer", self._write, _write_failed, transient=StoreUnavailableError
        )
        #: per agent: local changes made (a remote record read before one is stale) and
        #: writes not yet done (a remote record read meanwhile may predate them)
        self._generation: dict[str, int] = {}
        self._pending: dict[str, int] = {}

    async def start(self, group: asyncio.TaskGroup | None = None) -> None:
        """Load the chosen statuses from the store and start the ordered writer (in
        ``group`` when given)."""
        lost: list[AgentPresence] = []
        for record in await self.store.all():
            agent = self.agents.get(record.agent_id)
            if agent is None:
                continue
            try:
                chosen = Status(record.chosen)
            except ValueError:
                continue
            if chosen in CHOOSABLE:
                agent.chosen = chosen
            # the emergency flag is never restored: a crash cannot leave DND behind (E-5)
            if record.emergency_node == self.node:
                lost.append(agent)  # a call of this node's previous life: say it is over
        self._writes.start(group)
        for agent in lost:
            self._after(agent, None, persist=True)

    def restore_registered(self, agent_id: str) -> None:
        """At start-up: the agent has live registrations from before (no event)."""
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.registered = True

    def announce(self) -> None:
        """Publish every agent's status once the restored state is complete."""
        now = self.wall_clock()
        for agent in self.agents.values():
            self._publish_state(agent, PresenceReason.GATEWAY_STARTED, now)

    async def close(self) -> None:
        """Write what is queued, then stop the writer."""
        await self._writes.close()

    # -- inputs ----------------------------------------------------------------------------

    def choose(
        self,
        agent_id: str,
        status: Status,
        reason: PresenceReason = PresenceReason.DESKTOP,
        note: str | None = None,
    ) -> bool:
        """An agent's desktop asks for ``status``, with ``note`` its own words (at most
        ``MAX_NOTE_LENGTH`` characters, no control characters); False when the agent,
        status or note is not acceptable."""
        agent = self.agents.get(agent_id)
        if agent is None or status not in CHOOSABLE:
            return False
        try:
            note = check_note(note)
        except ValueError:
            return False
        change = agent.choose(status, self.wall_clock(), reason, note)
        self._after(agent, change, persist=True)
        return True

    def set_registered(
        self, agent_id: str, registered: bool, *, removed: bool = False, silent: bool = False
    ) -> None:
        """The agent has a live registration or not; ``removed``: its phone unregistered.
        ``silent``: another node handled it (it published the change; listeners only)."""
        agent = self.agents.get(agent_id)
        if agent is not None and agent.registered != registered:
            change = agent.set_registered(registered, self.wall_clock(), removed=removed)
            if silent:
                self._tell(agent, change)
            else:
                self._after(agent, change)

    def call_started(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is not None:
            self._after(agent, agent.call_started(self.wall_clock()))

    def call_ended(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is not None:
            self._after(agent, agent.call_ended(self.wall_clock()), notify_always=True)

    def emergency_started(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is not None:
            self._after(agent, agent.emergency_started(self.wall_clock()), persist=True)

    def emergency_ended(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is not None:
            self._after(agent, agent.emergency_ended(self.wall_clock()), persist=True)

    # -- the other nodes of a cluster (issue #12) ------------------------------------------

    def mark(self, agent_id: str) -> int:
        """Take before reading the shared record; hand to :meth:`apply_remote`."""
        return self._generation.get(agent_id, 0)

    def apply_remote(
        self, record: PresenceRecord, mark: int, live: Callable[[str], bool] = lambda _: True
    ) -> bool:
        """Take in the shared ``record`` (another node's change), silently: the chosen
        status, and an emergency call up on a node for which ``live(node)`` holds. Not
        applied (``False``) when this node changed the agent since ``mark`` or still has
        a write of it on its way."""
        agent = self.agents.get(record.agent_id)
        if agent is None:
            return False
        if self._generation.get(record.agent_id, 0) != mark or self._pending.get(record.agent_id):
            return False
        try:
            chosen = Status(record.chosen)
        except ValueError:
            chosen = agent.chosen
        if chosen in CHOOSABLE:
            agent.chosen = chosen
        elsewhere = record.emergency_node
        if elsewhere == self.node or (elsewhere is not None and not live(elsewhere)):
            elsewhere = None  # ours is counted here; a dead node's call is over (E-5)
        if elsewhere != agent.emergency_elsewhere:
            reason = PresenceReason.EMERGENCY_CALL if elsewhere else PresenceReason.EMERGENCY_ENDED
        else:
            reason = PresenceReason.DESKTOP
        agent.emergency_elsewhere = elsewhere
        new = agent.derive()
        if new is not agent.effective:
            now = self.wall_clock()
            change = PresenceChanged(agent.agent_id, new, agent.effective, reason, now)
            agent.effective = new
            log.info(
                "presence_synced",
                agent=agent.agent_id,
                status=str(new),
                previous=str(change.previous),
            )
            self._tell(agent, change)
        return True

    def lost_emergency(self, record: PresenceRecord, live: Callable[[str], bool]) -> bool:
        """Does ``record`` name an emergency call on another node that is no longer alive
        (its status then needs saying once, by one node: :meth:`recover`)?"""
        node = record.emergency_node
        return node is not None and node != self.node and not live(node)

    def recover(self, agent_id: str) -> None:
        """Another node died with this agent's emergency call up, and this node was chosen
        to say so: publish her status now (E-5: no DND left behind) and write the record
        without the lost call. Nothing when another change of hers came first."""
        agent = self.agents.get(agent_id)
        if agent is None or agent.emergency_elsewhere is not None:
            return
        now = self.wall_clock()
        change = PresenceChanged(
            agent_id, agent.effective, Status.DND, PresenceReason.EMERGENCY_ENDED, now
        )
        self._after(agent, change, persist=True)

    def emergency_elsewhere(self, agent_id: str) -> str | None:
        """The other live cluster node on which the agent's emergency call is up, if any."""
        agent = self.agents.get(agent_id)
        return None if agent is None else agent.emergency_elsewhere

    def status(self, agent_id: str) -> Status | None:
        agent = self.agents.get(agent_id)
        return None if agent is None else agent.effective

    # -- outputs ---------------------------------------------------------------------------

    def _after(
        self,
        agent: AgentPresence,
        change: PresenceChanged | None,
        *,
        persist: bool = False,
        notify_always: bool = False,
    ) -> None:
        if change is not None:
            log.info(
                "presence_changed",
                agent=agent.agent_id,
                status=str(change.status),
                previous=str(change.previous),
                reason=change.reason,
            )
            self.publisher.publish(
                self.topics.presence_suffix(agent.agent_id),
                payload_of(change, self.node),
                retain=True,
            )
        if change is not None or persist:
            agent_id = agent.agent_id
            self._generation[agent_id] = self._generation.get(agent_id, 0) + 1
            self._pending[agent_id] = self._pending.get(agent_id, 0) + 1
            self._writes.put(self._record(agent, change))
        if change is not None or notify_always:
            self._tell(agent, change)

    async def _write(self, record: PresenceRecord) -> None:
        try:
            await self.store.put(record)
        finally:
            left = self._pending.get(record.agent_id, 1) - 1
            if left > 0:
                self._pending[record.agent_id] = left
            else:
                self._pending.pop(record.agent_id, None)

    def _tell(self, agent: AgentPresence, change: PresenceChanged | None) -> None:
        """The listeners (the queue dispatcher): after a change, or a call's end."""
        event = change or PresenceChanged(
            agent.agent_id,
            agent.effective,
            agent.effective,
            PresenceReason.CALL_ENDED,
            self.wall_clock(),
        )
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("presence_listener_failed")

    def _publish_state(self, agent: AgentPresence, reason: PresenceReason, now: float) -> None:
        agent.effective = agent.derive()
        change = PresenceChanged(agent.agent_id, agent.effective, agent.effective, reason, now)
        self.publisher.publish(
            self.topics.presence_suffix(agent.agent_id),
            payload_of(change, self.node),
            retain=True,
        )

    def _record(self, agent: AgentPresence, change: PresenceChanged | None) -> PresenceRecord:
        emergency_node = self.node if agent.emergency_calls else agent.emergency_elsewhere
        return PresenceRecord(
            agent_id=agent.agent_id,
            chosen=str(agent.chosen),
            effective=str(agent.effective),
            previous=str(change.previous) if change is not None else None,
            reason=change.reason if change is not None else "",
            updated_at=self.wall_clock(),
            saved_before_emergency=str(agent.chosen) if emergency_node is not None else None,
            emergency_node=emergency_node,
        )
