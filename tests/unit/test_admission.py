"""Overload control (SPEC O-4): the admission policy alone, then through the call layer.

The router decides from identity (fake registrar lookups: alice is registered at CALLER),
the admission policy sheds new ordinary calls only; the fake peers and the hand-moved
clock show what the caller, the trunk and the emergency side see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from b2bua_peers import ANSWER, CALLER, GATEWAY, GW1, SDP, Net
from test_b2bua_emergency import SBC, _parts

from gateway.b2bua.admission import Admission, OverloadSignal
from gateway.b2bua.call import Call, Leg, NextHop
from gateway.config.loader import load_dialplan_text
from gateway.config.overload import OverloadSettings
from gateway.sip.message import Response
from gateway.sip.transaction import Address

CARRIER = Address("udp", "192.0.2.21", 5060)  # the trusted trunk of the test dialplan
STRANGER = Address("udp", "192.0.2.66", 5060)


def _call(call_id: str) -> Call:
    leg = Leg("a", call_id, "t", CALLER, None)  # type: ignore[arg-type]
    return Call(id=call_id, a=leg, dialled="1", started_at=0.0)


def _hop() -> NextHop:
    return NextHop("carrier", GW1, "1", frozenset(), 5.0)


# -- the policy alone --------------------------------------------------------------------------


def test_the_defaults_admit_an_idle_gateway() -> None:
    admission = Admission()
    admission.observe(0.001, 10, 1.0)
    assert admission.over_limit() is None
    assert not admission.shed(1.0)
    assert admission.shed_calls == 0


def test_calls_in_setup_are_counted_from_attempt_to_answer_failure_or_end() -> None:
    admission = Admission(OverloadSettings(max_calls_in_setup=2))
    one, two = _call("1"), _call("2")
    admission.attempt_tried(one, _hop())
    assert not admission.shed(1.0)
    admission.attempt_tried(two, _hop())
    assert admission.over_limit() == OverloadSignal.CALLS_IN_SETUP
    assert admission.shed(1.0) and admission.shed(1.0)
    assert admission.shed_calls == 2
    admission.call_answered(one)
    assert not admission.shed(1.1)  # capacity back: admitted at once
    admission.attempt_tried(one, _hop())  # a failover re-counts the same call once
    admission.call_ended(two)
    assert admission.in_setup == {"1"}


def test_loop_lag_is_smoothed_so_one_late_tick_does_not_shed() -> None:
    admission = Admission(OverloadSettings(max_loop_lag_ms=50))
    admission.observe(0.1, 0, 1.0)  # one 100 ms hiccup (a GC pass)
    assert not admission.shed(1.0)
    for step in range(10):  # the loop stays late: the CPU cannot keep up
        admission.observe(0.1, 0, 1.0 + step * 0.02)
    assert admission.over_limit() == OverloadSignal.LOOP_LAG
    assert admission.shed(1.2)
    for step in range(20):
        admission.observe(0.0, 0, 1.3 + step * 0.02)
    assert admission.shedding is None  # recovered: seen at the sample, not at a call
    assert not admission.shed(1.8)


def test_a_read_burst_over_its_limit_sheds_and_the_limit_is_off_by_default() -> None:
    admission = Admission(OverloadSettings(max_read_burst=100))
    admission.observe(0.0, 101, 1.0)
    assert admission.over_limit() == OverloadSignal.READ_BURST
    admission.observe(0.0, 100, 1.02)
    assert admission.over_limit() is None
    default = Admission()
    default.observe(0.0, 1_000_000, 1.0)
    assert default.over_limit() is None


def test_the_thresholds_are_dialplan_data_with_defaults() -> None:
    text = "version: 1\nlisten: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
    assert load_dialplan_text(text, "t.yaml").overload == OverloadSettings()
    tuned = load_dialplan_text(
        text + "overload: { max_calls_in_setup: 3, retry_after_s: 2 }\n", "t.yaml"
    )
    assert tuned.overload.max_calls_in_setup == 3
    assert Admission(tuned.overload).retry_after == (("Retry-After", "2"),)


# -- through the call layer --------------------------------------------------------------------


def _overloaded_net() -> tuple[Net, Admission, list[Coroutine[Any, Any, None]]]:
    """The contact-centre router and the emergency edge; room for one call in set-up."""
    service, router, _presence, _publisher = _parts()
    admission = Admission(OverloadSettings(max_calls_in_setup=1, retry_after_s=7))
    spawned: list[Coroutine[Any, Any, None]] = []
    net = Net(
        router,
        emergency=service,
        observers=[service],
        spawn=lambda coro, name: spawned.append(coro),
        admission=admission,
    )
    return net, admission, spawned


def _final(net: Net, destination: Address) -> Response:
    finals = [
        m
        for s, d, m in net.wire
        if s == GATEWAY and d == destination and isinstance(m, Response) and m.status >= 200
    ]
    assert finals
    return finals[-1]


def test_over_capacity_ordinary_calls_get_503_with_retry_after_and_911_goes_through() -> None:
    net, admission, spawned = _overloaded_net()
    alice, carrier, sbc = net.peer(CALLER), net.peer(CARRIER), net.peer(SBC)
    alice.invite("95551230000")  # admitted: rings at the carrier, stays in set-up
    (ringing,) = carrier.requests("INVITE")
    carrier.answer(ringing, 180)
    assert admission.in_setup
    alice.invite("95551230001")  # a new ordinary call over capacity: shed
    shed = _final(net, CALLER)
    assert shed.status == 503 and shed.get("Retry-After") == "7"
    assert len(carrier.requests("INVITE")) == 1  # no B-leg for the shed call
    # another port of the same host writing alice into From is not alice (E-13): refused
    forged = net.peer(Address("udp", "192.0.2.10", 5070))
    forged.invite("95551230002")
    assert _final(net, forged.address).status == 403  # not alice: unknown source
    assert len(carrier.requests("INVITE")) == 1
    # an ordinary inbound call from the trunk (a queue) is shed too
    carrier.invite("+15555550100")
    assert _final(net, CARRIER).status == 503
    # alice, known by her registration, dials 911: placed while the gateway sheds
    tx = alice.invite("911", SDP)
    (reservation,) = spawned
    asyncio.run(reservation)
    (incoming,) = sbc.requests("INVITE")
    sbc.answer(incoming, 200, ANSWER)
    alice.ack(tx, alice.uac_dialog(tx))
    assert alice.final().status == 200
    assert admission.shed_calls == 2


def test_a_retransmitted_shed_invite_is_answered_by_its_transaction() -> None:
    net, admission, _ = _overloaded_net()
    alice, carrier = net.peer(CALLER), net.peer(CARRIER)
    alice.invite("95551230000")
    carrier.answer(carrier.requests("INVITE")[0], 180)
    lost: list[int] = []

    def lose_the_first_503(source: Address, destination: Address, message: object) -> bool:
        if isinstance(message, Response) and message.status == 503 and not lost:
            lost.append(503)
            return True
        return False

    net.drop = lose_the_first_503
    alice.invite("95551230001")
    assert lost and alice.statuses().count(503) == 0
    net.advance(0.6)  # Timer A: the caller sends the INVITE again
    assert alice.statuses().count(503) == 1
    assert admission.shed_calls == 1  # the retransmission never reached the call layer
    assert len(carrier.requests("INVITE")) == 1


def test_an_admitted_call_keeps_its_in_dialog_requests_while_the_gateway_sheds() -> None:
    net, admission, _ = _overloaded_net()
    alice, carrier = net.peer(CALLER), net.peer(CARRIER)
    tx = alice.invite("95551230000")
    (incoming,) = carrier.requests("INVITE")
    sent = carrier.answer(incoming, 200, ANSWER)
    dialog = alice.uac_dialog(tx)
    alice.ack(tx, dialog)
    for step in range(20):  # the loop falls behind: every new ordinary call is shed
        admission.observe(0.5, 0, net.now + step)
    assert admission.over_limit() == OverloadSignal.LOOP_LAG
    alice.request(dialog, "INVITE", SDP)  # re-INVITE: relayed, answered
    (reinvite,) = [e for e in carrier.requests("INVITE") if e.request.to_tag is not None]
    carrier.answer(reinvite, 200, ANSWER)
    assert alice.final().status == 200
    carrier.request(carrier.uas_dialog(incoming, sent), "BYE")  # the far end hangs up
    assert alice.requests("BYE") and carrier.final("BYE").status == 200
    assert net.b2bua.calls == {}
    assert admission.shed_calls == 0
