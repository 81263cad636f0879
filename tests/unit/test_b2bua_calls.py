"""The call layer driven by fake peers and a hand-moved clock (no sockets, milliseconds).

Each test plays one scenario of RFC 3261 through the gateway's transaction layer and
B2BUA, with a caller and trunk gateways that each run their own transaction layer.
"""

from __future__ import annotations

from b2bua_peers import ANSWER, CALLER, GATEWAY, GW1, GW2, SDP, Message, Net, hop, outbound

from gateway.b2bua.call import Call, CallState, EndKind, FailureKind, LegFailure, NextHop
from gateway.b2bua.decisions import CallObserverBase
from gateway.sip.dialog import Dialog
from gateway.sip.message import Response
from gateway.sip.transaction import Address


class Recorder(CallObserverBase):
    """Records the neutral call events, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.failures: list[LegFailure] = []
        self.ended: list[Call] = []

    def call_started(self, call: Call) -> None:
        self.events.append("started")

    def attempt_tried(self, call: Call, hop: NextHop) -> None:
        self.events.append(f"tried {hop.address.host}")

    def attempt_failed(self, call: Call, failure: LegFailure) -> None:
        self.events.append(f"failed {failure.kind.value}")
        self.failures.append(failure)

    def call_answered(self, call: Call) -> None:
        self.events.append("answered")

    def call_ended(self, call: Call) -> None:
        self.events.append("ended")
        self.ended.append(call)


def _connected(net: Net, body: bytes = SDP) -> tuple[Net, Dialog, Dialog]:
    """A call from the caller answered by GW1; returns (net, caller dialog, callee dialog)."""
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite(body=body)
    (incoming,) = callee.requests("INVITE")
    callee.answer(incoming, 180)
    sent = callee.answer(incoming, 200, ANSWER if body else SDP)
    a_dialog = caller.uac_dialog(tx)
    caller.ack(tx, a_dialog, b"" if body else ANSWER)
    return net, a_dialog, callee.uas_dialog(incoming, sent)


def test_a_call_is_relayed_end_to_end_and_ends_with_a_bye_from_the_caller() -> None:
    recorder = Recorder()
    net = Net(outbound(hop(GW1)), observers=[recorder])
    _, a_dialog, _ = _connected(net)
    caller, callee = net.peer(CALLER), net.peer(GW1)
    assert caller.statuses() == [100, 180, 200]
    (b_invite,) = callee.requests("INVITE")
    assert b_invite.request.body == SDP
    assert b_invite.request.call_id != net.sent(CALLER, GATEWAY, "INVITE")[0].call_id
    assert len(net.sent(GATEWAY, GW1, "ACK")) == 1  # the offer was in the INVITE: ACK at once
    (call,) = net.b2bua.calls.values()
    assert call.state is CallState.CONFIRMED
    assert call.a.dialog is not None and call.a.dialog.state == "confirmed"
    caller.request(a_dialog, "BYE")
    assert caller.final("BYE").status == 200
    (bye,) = callee.requests("BYE")
    callee.answer(bye, 200)
    assert net.b2bua.calls == {} and net.b2bua.legs == {}
    assert recorder.events == ["started", f"tried {GW1.host}", "answered", "ended"]
    assert recorder.ended[0].outcome is not None
    assert recorder.ended[0].outcome.kind is EndKind.COMPLETED


def test_the_callee_hangs_up() -> None:
    net, _, b_dialog = _connected(Net(outbound(hop(GW1))))
    callee, caller = net.peer(GW1), net.peer(CALLER)
    callee.request(b_dialog, "BYE")
    assert callee.final("BYE").status == 200
    (bye,) = caller.requests("BYE")
    caller.answer(bye, 200)
    assert net.b2bua.completed == 1 and net.b2bua.calls == {}


def test_an_early_cancel_waits_for_the_first_provisional_of_the_b_leg() -> None:
    """RFC 3261 section 9.1: no CANCEL before a provisional; 487 to the caller at once."""
    net = Net(outbound(hop(GW1)))
    net.drop = lambda s, d, m: s == GW1 and isinstance(m, Response) and m.status == 100
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite()
    caller.cancel(tx)
    assert caller.final("CANCEL").status == 200
    assert caller.final().status == 487
    assert net.sent(GATEWAY, GW1, "CANCEL") == []
    net.drop = lambda s, d, m: False
    (incoming,) = callee.requests("INVITE")
    callee.answer(incoming, 180)
    assert len(net.sent(GATEWAY, GW1, "CANCEL")) == 1
    (cancel,) = callee.requests("CANCEL")
    callee.answer(cancel, 200)
    callee.answer(incoming, 487)
    assert net.b2bua.calls == {}
    assert net.b2bua.completed == 1  # a cancelled call is not a failure


def test_a_lost_100_is_recovered_by_the_invite_retransmission() -> None:
    net = Net(outbound(hop(GW1)))
    lost: list[Message] = []

    def lose_first_100(s: Address, d: Address, m: Message) -> bool:
        if s == GW1 and isinstance(m, Response) and m.status == 100 and not lost:
            lost.append(m)
            return True
        return False

    net.drop = lose_first_100
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite()
    assert len(net.sent(GATEWAY, GW1, "INVITE")) == 1
    net.advance(0.5)  # Timer A (T1): the INVITE again; the callee's layer resends its 100
    assert len(net.sent(GATEWAY, GW1, "INVITE")) == 2
    assert len(callee.requests("INVITE")) == 1  # the retransmission was absorbed
    (incoming,) = callee.requests("INVITE")
    callee.answer(incoming, 200, ANSWER)
    caller.ack(tx, caller.uac_dialog(tx))
    net.advance(2.0)
    assert len(net.sent(GATEWAY, GW1, "INVITE")) == 2  # no more retransmissions
    assert caller.final().status == 200


def test_a_503_fails_over_to_the_next_gateway() -> None:
    recorder = Recorder()
    net = Net(outbound(hop(GW1), hop(GW2)), observers=[recorder])
    caller, first, second = net.peer(CALLER), net.peer(GW1), net.peer(GW2)
    caller.invite()
    (incoming,) = first.requests("INVITE")
    first.answer(incoming, 503)
    assert len(net.sent(GATEWAY, GW1, "ACK")) == 1  # the layer ACKs the 503 (17.1.1.3)
    (incoming2,) = second.requests("INVITE")
    second.answer(incoming2, 200, ANSWER)
    assert caller.statuses() == [100, 200]  # the caller never sees the 503
    assert [f.code for f in recorder.failures] == [503]
    (call,) = net.b2bua.calls.values()
    assert call.attempts == ["carrier:192.0.2.21:5060", "carrier:192.0.2.22:5060"]


def test_a_final_error_without_failover_goes_to_the_caller() -> None:
    net = Net(outbound(hop(GW1, codes=()), hop(GW2)))
    caller, first = net.peer(CALLER), net.peer(GW1)
    caller.invite()
    (incoming,) = first.requests("INVITE")
    first.answer(incoming, 486)
    assert caller.final().status == 486
    assert net.sent(GATEWAY, GW2, "INVITE") == []
    assert net.b2bua.failed == 1


def test_a_100_then_silence_fails_over_after_the_setup_timeout() -> None:
    """SPEC E-2: on a hop with a setup timeout, a 100 alone is no progress."""
    recorder = Recorder()
    net = Net(outbound(hop(GW1, setup_timeout=2.0), hop(GW2)), observers=[recorder])
    caller, first, second = net.peer(CALLER), net.peer(GW1), net.peer(GW2)
    caller.invite()
    assert first.requests("INVITE") and not second.requests("INVITE")
    net.advance(1.9)
    assert net.sent(GATEWAY, GW2, "INVITE") == []
    net.advance(0.2)
    assert len(net.sent(GATEWAY, GW1, "CANCEL")) == 1  # the stuck leg is CANCELled
    assert len(second.requests("INVITE")) == 1
    assert [f.kind for f in recorder.failures] == [FailureKind.SETUP_TIMEOUT]
    # the stuck gateway answers 200 after all: ACKed and BYEd, never connected
    (incoming,) = first.requests("INVITE")
    first.answer(incoming, 200, ANSWER)
    assert len(net.sent(GATEWAY, GW1, "BYE")) == 1
    assert caller.statuses() == [100]


def test_no_provisional_in_time_moves_on_without_a_cancel() -> None:
    net = Net(outbound(hop(GW1), hop(GW2)))
    net.drop = lambda s, d, m: s == GW1  # the first gateway is silent
    caller = net.peer(CALLER)
    caller.invite()
    net.advance(5.0)
    assert net.sent(GATEWAY, GW1, "CANCEL") == []
    assert len(net.sent(GATEWAY, GW2, "INVITE")) == 1


def test_a_reinvite_is_relayed_and_acked_on_the_other_leg() -> None:
    net, a_dialog, _ = _connected(Net(outbound(hop(GW1))))
    caller, callee = net.peer(CALLER), net.peer(GW1)
    re_tx = caller.request(a_dialog, "INVITE", SDP)
    reinvites = callee.requests("INVITE")
    assert len(reinvites) == 2 and reinvites[1].request.to_tag is not None
    callee.answer(reinvites[1], 200, ANSWER)
    assert caller.final().status == 200 and caller.final().body == ANSWER
    acks_to_b = net.sent(GATEWAY, GW1, "ACK")
    assert len(acks_to_b) == 2  # the re-INVITE carried the offer: its 2xx ACKed at once
    caller.ack(re_tx, a_dialog)
    assert len(net.sent(GATEWAY, GW1, "ACK")) == 2  # the caller's ACK goes no further


def test_a_delayed_offer_acks_the_callee_with_the_callers_answer() -> None:
    """A's INVITE without SDP: B's 2xx carries the offer, A's ACK the answer, to B."""
    net = Net(outbound(hop(GW1)))
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite(body=b"")
    (incoming,) = callee.requests("INVITE")
    assert incoming.request.body == b""
    callee.answer(incoming, 200, SDP)
    assert net.sent(GATEWAY, GW1, "ACK") == []  # the ACK waits for the caller's
    caller.ack(tx, caller.uac_dialog(tx), ANSWER)
    (ack,) = net.sent(GATEWAY, GW1, "ACK")
    assert ack.body == ANSWER


def test_an_unanswered_ring_ends_with_timer_c() -> None:
    net = Net(outbound(hop(GW1, ring_timeout=30.0)))
    caller, callee = net.peer(CALLER), net.peer(GW1)
    caller.invite()
    (incoming,) = callee.requests("INVITE")
    callee.answer(incoming, 180)
    net.advance(29.0)
    assert net.sent(GATEWAY, GW1, "CANCEL") == []
    net.advance(1.2)  # Timer C fired at 30 s; the CANCEL's own retransmission is at 30.5 s
    assert len(net.sent(GATEWAY, GW1, "CANCEL")) == 1
    assert caller.final().status == 408
