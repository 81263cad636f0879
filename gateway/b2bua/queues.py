"""Inbound queues: calls wait in early dialog and are offered to agents (SPEC R-3).

Theory of operation
-------------------
A call from a trunk whose DID matches an inbound rule is *queued*: the caller gets
``182 Queued`` and stays in early dialog. The dispatcher then pairs waiting calls with
agents:

* calls are taken in queue order: higher ``priority`` first, then arrival;
* an agent is eligible for a call when it serves the call's queue, its presence says it can
  take a queue call (Available and under capacity), it is not ringing for another call, has
  a live registration, and has not already let this call ring out;
* among eligible agents the one idle longest (earliest ``idle_since``) is chosen.

Offering a call places its B-leg at the agent's most recent registration with the queue's
``ring_timeout_s`` as Timer C. When the agent answers, the call leaves the queue; when the
agent refuses or the ring times out, the agent is remembered as tried and the call waits
for the next one (when every agent has been tried, the set is cleared so they get another
turn). An agent who *refused* (486 Busy Here, 603 Decline...) also rests: it is not offered
that call again for the queue's ``refused_rest_s``, even when it is the only one left.
The dispatcher runs again after every event that can free an agent or a call: enqueue,
presence change, call end, refusal, the end of a rest. After ``max_wait_s`` the call
overflows to another queue (keeping its priority), to a fixed destination, or gets the
final status.

The dispatcher never sends SIP itself: it asks the B2BUA through the :class:`CallPlacer`
port.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from gateway.b2bua.call import Call, NextHop
from gateway.b2bua.decisions import CallObserverBase
from gateway.config.dialplan import Dialplan
from gateway.presence.service import PresenceService
from gateway.presence.state import PresenceChanged
from gateway.sip.address import Address
from gateway.sip.errors import SipError
from gateway.sip.headers import NameAddr
from gateway.sip.routing import resolve_next_hop
from gateway.stores.ports import Binding

__all__ = ["CallPlacer", "QueueManager", "QueuedCall", "best_binding", "binding_address"]

log = structlog.get_logger("gateway.queues")


class CallPlacer(Protocol):
    """What the dispatcher needs from the B2BUA."""

    def offer(self, call: Call, hop: NextHop) -> None: ...

    def abandon_offer(self, call: Call) -> None: ...

    def overflow_to(self, call: Call, hops: list[NextHop]) -> None: ...

    def fail_caller(self, call: Call, status: int, reason: str | None) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...


@dataclass(slots=True)
class QueuedCall:
    """A call waiting in a queue."""

    call: Call
    queue: str
    priority: int
    seq: int
    tried: set[str] = field(default_factory=set)
    #: agents who refused this call and are not offered it again yet
    resting: set[str] = field(default_factory=set)
    ringing: str | None = None
    wait_timer: object | None = None

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


def best_binding(bindings: list[Binding]) -> Binding | None:
    """The registration to ring: highest q, then the one that lives longest."""
    return max(bindings, key=lambda b: (b.q, b.expires_at)) if bindings else None


def binding_address(binding: Binding) -> Address:
    """Where requests to a registered contact go: the first hop of its Path (RFC 3327: the
    proxy it registered through, a cluster's front), else the flow the REGISTER came over."""
    if binding.path:
        try:
            return resolve_next_hop(NameAddr.parse(binding.path[0]))
        except (SipError, ValueError):
            log.warning("binding_path_unusable", agent=binding.agent_id, path=binding.path[0])
    transport, _, rest = binding.source.partition(":")
    host, _, port = rest.rpartition(":")
    return Address(transport or "udp", host.strip("[]"), int(port))


class QueueManager(CallObserverBase):
    """All queues of one node."""

    def __init__(
        self,
        dialplan: Dialplan,
        presence: PresenceService,
        contacts: Callable[[str], list[Binding]],
        placer: CallPlacer,
    ):
        self.dialplan = dialplan
        self.presence = presence
        self.contacts = contacts
        self.placer = placer
        self.waiting: dict[str, QueuedCall] = {}  # call id -> queued call
        self.ringing: dict[str, QueuedCall] = {}  # agent id -> call ringing it
        self._seq = itertools.count()
        self._dispatching = False
        self._again = False
        presence.listeners.append(self._on_presence)

    # -- events ----------------------------------------------------------------------------

    def enqueue(self, call: Call, queue: str, priority: int) -> None:
        """A new inbound call waits in ``queue``."""
        queued = QueuedCall(call, queue, priority, next(self._seq))
        self.waiting[call.id] = queued
        call.queue = queue
        call.history_queue = call.history_queue or queue
        self._arm_wait_timer(queued)
        log.info(
            "call_queued",
            call_id=call.id,
            queue=queue,
            priority=priority,
            waiting=len(self.waiting),
        )
        self.dispatch()

    def answered(self, call: Call) -> None:
        """The agent ringing for ``call`` answered: the call leaves the queue."""
        queued = self.waiting.pop(call.id, None)
        if queued is None:
            return
        self._cancel_wait_timer(queued)
        agent = queued.ringing
        if agent is not None:
            self.ringing.pop(agent, None)
            call.agent = agent
            self.presence.call_started(agent)
            log.info("queue_call_answered", call_id=call.id, queue=queued.queue, agent=agent)

    def call_answered(self, call: Call) -> None:
        """A call answered (observer): a queued one leaves its queue."""
        if call.queue is not None:
            self.answered(call)

    def offer_failed(self, call: Call, status: int, *, refused: bool = False) -> None:
        """The agent ringing for ``call`` did not answer in time, or ``refused`` it with a
        final ``status``: the call waits for the next agent; a refusing agent rests."""
        queued = self.waiting.get(call.id)
        if queued is None:
            return
        agent = queued.ringing
        if agent is not None:
            self.ringing.pop(agent, None)
            queued.tried.add(agent)
            queued.ringing = None
            log.info(
                "queue_offer_failed", call_id=call.id, agent=agent, status=status, refused=refused
            )
            if refused:
                self._rest(queued, agent)
        self.dispatch()

    def _rest(self, queued: QueuedCall, agent: str) -> None:
        """``agent`` refused ``queued``: not offered it again for ``refused_rest_s``."""
        rest = self.dialplan.queues[queued.queue].refused_rest_s
        if rest <= 0:
            return
        queued.resting.add(agent)

        def wake() -> None:
            queued.resting.discard(agent)
            if self.waiting.get(queued.call.id) is queued:
                self.dispatch()

        self.placer.call_later(rest, wake)

    def call_ended(self, call: Call) -> None:
        """Any call ended: a waiting one leaves the queue; an agent's call frees the agent."""
        queued = self.waiting.pop(call.id, None)
        if queued is not None:
            self._cancel_wait_timer(queued)
            if queued.ringing is not None:
                self.ringing.pop(queued.ringing, None)
        if call.agent is not None:
            self.presence.call_ended(call.agent)  # dispatches through the listener
        elif queued is not None:
            self.dispatch()

    def _on_presence(self, change: PresenceChanged) -> None:
        self.dispatch()

    def call_started(self, call: Call) -> None:
        """An outbound call of an agent counts against its capacity (SPEC R-3, R-4)."""
        if call.direction == "outbound" and call.agent is not None:
            self.presence.call_started(call.agent)

    # -- dispatching -----------------------------------------------------------------------

    def dispatch(self) -> None:
        """Pair waiting calls with eligible agents (re-entrant calls are folded)."""
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        try:
            while True:
                self._again = False
                self._dispatch_once()
                if not self._again:
                    break
        finally:
            self._dispatching = False

    def _dispatch_once(self) -> None:
        # The free agents are found once per pass (O(agents)); when none is free - the
        # usual state of a busy contact centre - the waiting calls are not even sorted.
        free = self._free_agents()
        if not free or not self.waiting:
            return
        for queued in sorted(self.waiting.values(), key=lambda q: q.order):
            if not free:
                return
            if queued.ringing is not None or queued.call.ended:
                continue
            agent = self._choose_agent(queued, free)
            if agent is None:
                continue
            binding = self._best_binding(agent)
            free.discard(agent)
            if binding is None:
                continue
            self._offer(queued, agent, binding)

    def _free_agents(self) -> set[str]:
        """Agents that could take a queue call now (SPEC R-3)."""
        states = self.presence.agents
        return {
            agent_id
            for agent_id in self.dialplan.agents
            if agent_id not in self.ringing
            and (state := states.get(agent_id)) is not None
            and state.can_take_queue_call
        }

    def _choose_agent(self, queued: QueuedCall, free: set[str]) -> str | None:
        agents = self.dialplan.agents
        serving = [a for a in free if queued.queue in agents[a].queues and a not in queued.resting]
        candidates = [a for a in serving if a not in queued.tried]
        if not candidates and serving and queued.tried:
            # every eligible agent let it ring out: give them another turn
            queued.tried.clear()
            candidates = serving
        if not candidates:
            return None
        states = self.presence.agents
        return min(candidates, key=lambda a: (states[a].idle_since, a))

    def _best_binding(self, agent_id: str) -> Binding | None:
        return best_binding(self.contacts(agent_id))

    def _offer(self, queued: QueuedCall, agent_id: str, binding: Binding) -> None:
        queue = self.dialplan.queues[queued.queue]
        agent = self.dialplan.agents[agent_id]
        queued.ringing = agent_id
        self.ringing[agent_id] = queued
        log.info("queue_offer", call_id=queued.call.id, queue=queued.queue, agent=agent_id)
        hop = NextHop(
            trunk=f"agent:{agent_id}",
            address=binding_address(binding),
            user=agent.username or agent_id,
            failover_codes=frozenset(),
            provisional_timeout=queue.ring_timeout_s,
            request_uri=binding.contact_uri,
            ring_timeout=queue.ring_timeout_s,
            agent=agent_id,
            route=binding.path,
        )
        self.placer.offer(queued.call, hop)

    # -- waiting time and overflow -----------------------------------------------------------

    def _arm_wait_timer(self, queued: QueuedCall) -> None:
        queue = self.dialplan.queues[queued.queue]
        queued.wait_timer = self.placer.call_later(
            queue.max_wait_s, lambda: self._on_max_wait(queued)
        )

    def _cancel_wait_timer(self, queued: QueuedCall) -> None:
        timer = queued.wait_timer
        cancel = getattr(timer, "cancel", None)
        if cancel is not None:
            cancel()
        queued.wait_timer = None

    def _on_max_wait(self, queued: QueuedCall) -> None:
        if self.waiting.get(queued.call.id) is not queued:
            return
        overflow = self.dialplan.queues[queued.queue].overflow
        log.info(
            "queue_overflow",
            call_id=queued.call.id,
            queue=queued.queue,
            to=overflow.queue or overflow.destination or overflow.status,
        )
        if queued.ringing is not None:
            self.ringing.pop(queued.ringing, None)
            queued.ringing = None
            self.placer.abandon_offer(queued.call)
        if overflow.queue is not None:
            queued.queue = overflow.queue
            queued.tried.clear()
            self._arm_wait_timer(queued)
            queued.call.queue = overflow.queue
            self.dispatch()
            return
        del self.waiting[queued.call.id]
        queued.call.queue = None
        if overflow.destination is not None:
            try:
                address = resolve_next_hop(overflow.destination)
            except ValueError:
                self.placer.fail_caller(queued.call, 480, None)
                return
            hop = NextHop(
                trunk="overflow",
                address=address,
                user=queued.call.dialled,
                failover_codes=frozenset(),
                provisional_timeout=10.0,
                request_uri=overflow.destination,
            )
            self.placer.overflow_to(queued.call, [hop])
            return
        self.placer.fail_caller(queued.call, overflow.status or 480, None)
