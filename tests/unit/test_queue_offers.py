"""Queue offers through the call layer: an agent's refusal keeps the caller waiting (issue 15).

The B2BUA is driven by fake peers (tests/unit/b2bua_peers.py); a small queue port stands
in for the dispatcher and offers the call to the agents given, one after the other.
"""

from __future__ import annotations

from b2bua_peers import ANSWER, CALLER, GW1, GW2, FixedRouter, Net

from gateway.b2bua.b2bua import B2BUA
from gateway.b2bua.call import Call, NextHop
from gateway.b2bua.decisions import Queued
from gateway.sip.transaction import Address


class Dispatcher:
    """Offers a queued call to ``agents`` in turn; records every failed offer."""

    def __init__(self, b2bua: B2BUA, agents: list[Address]) -> None:
        self.b2bua = b2bua
        self.agents = agents
        self.failed: list[tuple[int, bool]] = []

    def _next(self, call: Call) -> None:
        if self.agents:
            address = self.agents.pop(0)
            hop = NextHop("agent:x", address, "x", frozenset(), 5.0, ring_timeout=5.0, agent="x")
            self.b2bua.offer(call, hop)

    def enqueue(self, call: Call, queue: str, priority: int) -> None:
        call.queue = queue
        self._next(call)

    def offer_failed(self, call: Call, status: int, *, refused: bool = False) -> None:
        self.failed.append((status, refused))
        self._next(call)


def _queued_net(agents: list[Address]) -> tuple[Net, Dispatcher]:
    net = Net(FixedRouter(Queued("support", 0, "carrier")))
    dispatcher = Dispatcher(net.b2bua, agents)
    net.b2bua.queues = dispatcher
    return net, dispatcher


def test_an_agent_refusing_an_offer_leaves_the_caller_waiting_for_the_next_agent() -> None:
    net, dispatcher = _queued_net([GW1, GW2])
    caller, first, second = net.peer(CALLER), net.peer(GW1), net.peer(GW2)
    caller.invite()
    (offer,) = first.requests("INVITE")
    first.answer(offer, 180)
    first.answer(offer, 486)  # the agent pressed "reject"
    assert dispatcher.failed == [(486, True)]
    assert all(status < 200 for status in caller.statuses()), caller.statuses()
    assert 182 in caller.statuses()  # still queued, in early dialog
    (offer,) = second.requests("INVITE")
    second.answer(offer, 200, ANSWER)
    assert caller.final().status == 200


def test_a_decline_is_a_refusal_too_and_the_caller_is_not_hung_up() -> None:
    net, dispatcher = _queued_net([GW1])
    caller, agent = net.peer(CALLER), net.peer(GW1)
    caller.invite()
    (offer,) = agent.requests("INVITE")
    agent.answer(offer, 603)
    assert dispatcher.failed == [(603, True)]
    assert all(status < 200 for status in caller.statuses())
    (call,) = net.b2bua.calls.values()
    assert not call.ended and call.b is None
