"""Stopping the call layer (SPEC O-7): drain, then hang up, never an emergency call first.

The B2BUA between fake peers and a hand-moved clock: after ``drain()`` new ordinary calls
get 503 + Retry-After while emergency calls are still placed and in-dialog requests still
served; ``hang_up(now)`` sends BYEs on both legs of the ordinary calls (each ends
``drained``, so the history writes its row) and leaves the emergency ones up, unless told
to end them too (a second stop signal).
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua_peers import ANSWER, CALLER, GW1, GW2, SDP, Net, hop
from test_b2bua_calls import Recorder

from gateway.b2bua.call import EndKind
from gateway.b2bua.decisions import Decision, Emergency, Outbound
from gateway.sip.dialog import Dialog
from gateway.sip.message import Request
from gateway.sip.transaction import Address

PHONE = Address("udp", "192.0.2.11", 5060)


@dataclass(frozen=True)
class Facts:
    callback: bool = False
    agent: str | None = "alice"


class SosRouter:
    """911 goes to GW2 as an emergency call; everything else to GW1."""

    def route(self, request: Request, dialled: str, source: Address) -> Decision:
        if dialled == "911":
            return Emergency(Facts(), [hop(GW2)])
        return Outbound([hop(GW1)])


def _answered(net: Net, caller_address: Address, callee_address: Address, user: str) -> Dialog:
    caller, callee = net.peer(caller_address), net.peer(callee_address)
    tx = caller.invite(user)
    incoming = callee.requests("INVITE")[-1]
    callee.answer(incoming, 200, ANSWER)
    dialog = caller.uac_dialog(tx)
    caller.ack(tx, dialog)
    return dialog


def test_drain_refuses_new_ordinary_calls_and_still_places_emergency_calls() -> None:
    net = Net(SosRouter())
    net.b2bua.drain(retry_after=17)
    caller = net.peer(CALLER)
    caller.invite("5551234")
    refusal = caller.final()
    assert refusal.status == 503
    assert refusal.get("Retry-After") == "17"
    assert net.peer(GW1).requests("INVITE") == []
    _answered(net, PHONE, GW2, "911")  # E-3: never refused, not even while stopping
    assert len(net.b2bua.calls) == 1


def test_hang_up_sends_byes_on_both_legs_of_ordinary_calls_only() -> None:
    recorder = Recorder()
    net = Net(SosRouter(), observers=[recorder])
    ordinary = _answered(net, CALLER, GW1, "5551234")
    sos = _answered(net, PHONE, GW2, "911")
    net.b2bua.drain()
    # an in-dialog request of an admitted call is still served while draining
    net.peer(CALLER).request(ordinary, "INFO")
    (info,) = net.peer(GW1).requests("INFO")
    net.peer(GW1).answer(info, 200)
    assert net.peer(CALLER).final("INFO").status == 200
    assert net.b2bua.ordinary_calls() == 1
    assert net.b2bua.hang_up(net.now) == 1
    net.exchange()
    assert len(net.peer(CALLER).requests("BYE")) == 1
    assert len(net.peer(GW1).requests("BYE")) == 1
    assert net.peer(PHONE).requests("BYE") == [] and net.peer(GW2).requests("BYE") == []
    (ended,) = recorder.ended
    assert ended.outcome is not None and ended.outcome.kind is EndKind.DRAINED
    assert ended.result == "drained"
    # the emergency call is still up, and ends when its caller hangs up
    assert net.b2bua.ordinary_calls() == 0 and len(net.b2bua.calls) == 1
    net.peer(PHONE).request(sos, "BYE")
    (bye,) = net.peer(GW2).requests("BYE")
    net.peer(GW2).answer(bye, 200)
    assert net.b2bua.calls == {}


def test_a_second_signal_hangs_up_emergency_calls_too_and_a_ringing_leg_is_cancelled() -> None:
    net = Net(SosRouter())
    _answered(net, PHONE, GW2, "911")
    caller, callee = net.peer(CALLER), net.peer(GW1)
    caller.invite("5551234", body=SDP)
    (incoming,) = callee.requests("INVITE")
    callee.answer(incoming, 180)
    assert net.b2bua.hang_up(net.now, emergency=True) == 2
    net.exchange()
    assert caller.final().status == 503  # the waiting caller is told, with Retry-After
    assert caller.final().get("Retry-After") == "30"
    assert len(callee.requests("CANCEL")) == 1
    assert len(net.peer(PHONE).requests("BYE")) == 1
    assert len(net.peer(GW2).requests("BYE")) == 1
    assert net.b2bua.calls == {}
