"""Unit tests of the RFC 3261 section 17 transaction layer (sans-I/O, fake clock by hand).

Requests come from tests/data/sip/tx_*.sip (``{name}`` fields filled per test); responses
are built the way the peer would, with ``make_response`` on the parsed request, and go
through the parser again so that every message crossed a "wire".
"""

from __future__ import annotations

import random
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.transaction import (
    AckReceived,
    AckTimeout,
    Address,
    ClientTransaction,
    IdGenerator,
    Outgoing,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayAck,
    StrayResponse,
    TimerConfig,
    TransactionLayer,
    TransactionTimeout,
    TransportFailure,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "sip"

GW = "198.51.100.1"  # this gateway
UDP_PEER = Address("udp", "192.0.2.10", 5060)
TCP_PEER = Address("tcp", "192.0.2.10", 40123)
CARRIER = Address("udp", "203.0.113.7", 5060)
CARRIER_TCP = Address("tcp", "203.0.113.7", 5060)

DEFAULTS: dict[str, Any] = {
    "transport": "UDP",
    "via_host": "192.0.2.10",
    "via_port": 5060,
    "via_params": ";branch=z9hG4bKcaller1",
    "from_tag": "ftag1",
    "to_params": "",
    "call_id": "call-1@192.0.2.10",
    "cseq": 1,
    "method": "INVITE",
}


def load(name: str, **fields: Any) -> Request:
    """A request from tests/data/sip/<name>.sip, through the parser."""
    text = (DATA / f"{name}.sip").read_text()
    raw = text.format(**{**DEFAULTS, **fields}).replace("\r\n", "\n").replace("\n", "\r\n")
    message = parse_message(raw.encode())
    assert isinstance(message, Request)
    return message


def wire(message: Request | Response) -> Any:
    """The message as the other end parses it."""
    return parse_message(message.to_bytes())


def peer_response(data: bytes, status: int, to_tag: str | None = "peer1") -> Response:
    """What the peer answers to the request it received as ``data``."""
    request = parse_message(data)
    assert isinstance(request, Request)
    response = wire(make_response(request, status, to_tag=to_tag))
    assert isinstance(response, Response)
    return response


def new_layer(**timers: Any) -> TransactionLayer:
    return TransactionLayer(TimerConfig(**timers), IdGenerator(random.Random(7)))


def outgoing(layer: TransactionLayer) -> list[Outgoing]:
    out = []
    while (o := layer.next_outgoing()) is not None:
        out.append(o)
    return out


def events(layer: TransactionLayer) -> list[Any]:
    evs = []
    while (e := layer.next_event()) is not None:
        evs.append(e)
    return evs


def advance(layer: TransactionLayer, until: float) -> list[tuple[float, Outgoing]]:
    """Fire timers one deadline at a time up to ``until``; (deadline, sent) pairs."""
    sent: list[tuple[float, Outgoing]] = []
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        sent.extend((deadline, o) for o in outgoing(layer))
    return sent


def our_request(name: str = "tx_invite", branch: str = "z9hG4bKgw1", **fields: Any) -> Request:
    """A request this gateway sends (our Via on top)."""
    defaults = {
        "via_host": GW,
        "via_params": f";branch={branch};rport",
        "call_id": "b-leg-1@gw",
        "from_tag": "gwtag",
    }
    return load(name, **{**defaults, **fields})


def start_client(
    layer: TransactionLayer, request: Request | None = None, dest: Address = CARRIER
) -> tuple[ClientTransaction, bytes]:
    tx = layer.send_request(request or our_request(), dest, 0.0)
    (sent,) = outgoing(layer)
    assert sent.destination == dest
    return tx, sent.data


def start_server(
    layer: TransactionLayer, request: Request | None = None, source: Address = UDP_PEER
) -> ServerTransaction:
    layer.receive(request or load("tx_invite"), source, 0.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived)
    outgoing(layer)  # 100 Trying
    return ev.transaction


def respond(layer: TransactionLayer, tx: ServerTransaction, status: int, now: float = 0.0) -> bytes:
    layer.send_response(tx, make_response(tx.request, status, to_tag="gwtag"), now)
    (sent,) = outgoing(layer)
    return sent.data


def assert_idle(layer: TransactionLayer) -> None:
    assert layer.client_count == 0
    assert layer.server_count == 0
    assert layer.get_timer() is None
    assert layer._ack_waiters == {}
    assert layer._server_aliases == {}


# -- client INVITE: Timers A, B, D, M ------------------------------------------------------


def test_timer_a_doubles_and_timer_b_times_out() -> None:
    layer = new_layer()
    tx, data = start_client(layer)
    assert tx.state == "calling"
    sent = advance(layer, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(o.data is data and o.destination == CARRIER for _, o in sent)  # same bytes
    (ev,) = events(layer)
    assert ev == TransactionTimeout(tx)
    assert tx.state == "terminated"
    assert_idle(layer)


def test_timer_b_fires_at_64_t1_and_honours_config() -> None:
    layer = new_layer()
    start_client(layer)
    advance(layer, 31.99)
    assert events(layer) == []
    advance(layer, 32.0)
    assert isinstance(events(layer)[0], TransactionTimeout)

    layer = new_layer(timer_b=4.0)
    start_client(layer)
    sent = advance(layer, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5]
    assert isinstance(events(layer)[0], TransactionTimeout)
    assert_idle(layer)


def test_reliable_invite_never_retransmits() -> None:
    layer = new_layer()
    start_client(layer, dest=CARRIER_TCP)
    assert layer.get_timer() == 32.0  # Timer B only
    assert advance(layer, 100.0) == []
    assert isinstance(events(layer)[0], TransactionTimeout)
    assert_idle(layer)


def test_provisional_stops_timers_a_and_b() -> None:
    layer = new_layer()
    tx, data = start_client(layer)
    ringing = peer_response(data, 180)
    layer.receive(ringing, CARRIER, 0.2)
    assert events(layer) == [ResponseReceived(tx, ringing, CARRIER)]
    assert tx.state == "proceeding"
    assert tx.last_response is ringing
    assert layer.get_timer() is None
    assert advance(layer, 1000.0) == []
    assert layer.client_count == 1  # the TU owns the ringing timeout (or sends CANCEL)


def test_non_2xx_final_gets_ack_built_by_the_transaction() -> None:
    layer = new_layer()
    invite = our_request()
    invite.add("Route", "<sip:proxy1.example.net;lr>")
    invite.add("Route", "<sip:proxy2.example.net;lr>")
    tx, data = start_client(layer, invite)
    busy = peer_response(data, 486, to_tag="busytag")
    layer.receive(busy, CARRIER, 1.0)
    assert events(layer) == [ResponseReceived(tx, busy, CARRIER)]
    assert tx.state == "completed"
    (ack_out,) = outgoing(layer)
    assert ack_out.destination == CARRIER
    ack = parse_message(ack_out.data)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri_text == invite.uri_text
    assert ack.call_id == invite.call_id
    assert ack.get("from") == invite.get("from")
    assert ack.to_tag == "busytag"
    assert str(ack.cseq) == "1 ACK"
    assert [str(v) for v in ack.vias] == [str(invite.top_via)]
    assert ack.top_via.branch == "z9hG4bKgw1"  # same branch as the INVITE
    assert ack.get_all("route") == invite.get_all("route")
    assert ack.max_forwards == 70
    assert ack.body == b""

    # retransmitted final responses are absorbed: the same ACK bytes again, no event
    layer.receive(peer_response(data, 486, to_tag="busytag"), CARRIER, 2.0)
    assert events(layer) == []
    (again,) = outgoing(layer)
    assert again.data is ack_out.data

    # Timer D: 32 s over UDP
    advance(layer, 32.9)
    assert layer.client_count == 1
    advance(layer, 33.0)
    assert events(layer) == []
    assert_idle(layer)


def test_timer_d_is_zero_on_reliable_transports() -> None:
    layer = new_layer()
    tx, data = start_client(layer, our_request(transport="TCP"), dest=CARRIER_TCP)
    layer.receive(peer_response(data, 503), CARRIER_TCP, 1.0)
    assert [type(e) for e in events(layer)] == [ResponseReceived]
    assert len(outgoing(layer)) == 1  # the ACK
    assert tx.state == "terminated"
    assert_idle(layer)


def test_2xx_retransmissions_go_to_the_tu_until_an_ack_is_registered() -> None:
    layer = new_layer()
    tx, data = start_client(layer)
    layer.receive(peer_response(data, 180), CARRIER, 0.1)
    ok = peer_response(data, 200, to_tag="uas1")
    layer.receive(ok, CARRIER, 1.0)
    assert events(layer)[-1] == ResponseReceived(tx, ok, CARRIER)
    assert tx.state == "accepted"
    assert outgoing(layer) == []  # the ACK for a 2xx is the TU's

    # a retransmission before the TU ACKed: to the TU again
    layer.receive(peer_response(data, 200, to_tag="uas1"), CARRIER, 1.5)
    assert [type(e) for e in events(layer)] == [ResponseReceived]

    ack = load(
        "tx_ack",
        via_host=GW,
        via_params=";branch=z9hG4bKack1",
        to_params=";tag=uas1",
        call_id="b-leg-1@gw",
        from_tag="gwtag",
    )
    layer.send_ack(tx, ack, CARRIER, 1.6)
    (ack_out,) = outgoing(layer)
    assert ack_out == Outgoing(ack.to_bytes(), CARRIER)

    # later 2xx retransmissions are answered with the same ACK bytes, no event
    layer.receive(peer_response(data, 200, to_tag="uas1"), CARRIER, 2.0)
    assert events(layer) == []
    (again,) = outgoing(layer)
    assert again.data is ack_out.data

    # a 2xx from another fork still goes to the TU
    fork = peer_response(data, 200, to_tag="uas2")
    layer.receive(fork, CARRIER, 2.5)
    assert events(layer) == [ResponseReceived(tx, fork, CARRIER)]
    assert outgoing(layer) == []


def test_timer_m_ends_the_accepted_client_invite() -> None:
    layer = new_layer()
    tx, data = start_client(layer)
    layer.receive(peer_response(data, 200), CARRIER, 1.0)
    events(layer)
    assert layer.get_timer() == 33.0  # Timer M = 64*T1, whatever the transport
    advance(layer, 32.9)
    assert tx.state == "accepted"
    advance(layer, 33.0)
    assert events(layer) == []
    assert_idle(layer)
    # a 2xx after Timer M matches nothing
    late = peer_response(data, 200)
    layer.receive(late, CARRIER, 40.0)
    assert events(layer) == [StrayResponse(late, CARRIER)]


def test_stray_response() -> None:
    layer = new_layer()
    stray = peer_response(our_request(branch="z9hG4bKnobody").to_bytes(), 200)
    layer.receive(stray, CARRIER, 0.0)
    assert events(layer) == [StrayResponse(stray, CARRIER)]


def test_late_1xx_and_other_finals_are_ignored_after_completion() -> None:
    layer = new_layer()
    tx, data = start_client(layer)
    layer.receive(peer_response(data, 404), CARRIER, 0.1)
    events(layer)
    outgoing(layer)
    layer.receive(peer_response(data, 180), CARRIER, 0.2)
    layer.receive(peer_response(data, 200), CARRIER, 0.3)
    assert events(layer) == []
    assert outgoing(layer) == []
    assert tx.state == "completed"


# -- client non-INVITE: Timers E, F, K -----------------------------------------------------


def test_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    layer = new_layer()
    tx, data = start_client(layer, our_request("tx_bye"))
    assert tx.state == "trying"
    sent = advance(layer, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(o.data is data for _, o in sent)
    assert events(layer) == [TransactionTimeout(tx)]
    assert_idle(layer)


def test_timer_e_in_proceeding_retransmits_every_t2() -> None:
    layer = new_layer()
    tx, data = start_client(layer, our_request("tx_bye"))
    assert [t for t, _ in advance(layer, 0.6)] == [0.5]
    layer.receive(peer_response(data, 100), CARRIER, 0.7)
    assert tx.state == "proceeding"
    assert [type(e) for e in events(layer)] == [ResponseReceived]
    sent = advance(layer, 20.0)
    assert [t for t, _ in sent] == [1.5, 5.5, 9.5, 13.5, 17.5]


def test_timer_k_absorbs_retransmitted_finals() -> None:
    layer = new_layer()
    tx, data = start_client(layer, our_request("tx_bye"))
    ok = peer_response(data, 200)
    layer.receive(ok, CARRIER, 0.2)
    assert events(layer) == [ResponseReceived(tx, ok, CARRIER)]
    assert tx.state == "completed"
    layer.receive(peer_response(data, 200), CARRIER, 0.6)
    assert events(layer) == []
    assert layer.get_timer() == pytest.approx(5.2)  # Timer K = T4
    assert advance(layer, 100.0) == []  # no retransmission after the final response
    assert_idle(layer)


def test_reliable_non_invite_has_no_timer_e_and_k_zero() -> None:
    layer = new_layer()
    tx, data = start_client(layer, our_request("tx_bye", transport="TCP"), dest=CARRIER_TCP)
    assert layer.get_timer() == 32.0  # Timer F only
    layer.receive(peer_response(data, 200), CARRIER_TCP, 0.2)
    assert tx.state == "terminated"
    assert_idle(layer)


def test_timer_f_config() -> None:
    layer = new_layer(timer_f=2.0)
    start_client(layer, our_request("tx_bye"))
    assert [t for t, _ in advance(layer, 10.0)] == [0.5, 1.5]
    assert isinstance(events(layer)[0], TransactionTimeout)


# -- server INVITE: 100 Trying, Timers G, H, I, L ------------------------------------------


def test_new_invite_gets_request_received_and_100_trying() -> None:
    layer = new_layer()
    invite = load("tx_invite")
    layer.receive(invite, UDP_PEER, 0.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived)
    assert ev.request is invite and ev.source == UDP_PEER and ev.cancelled is None
    tx = ev.transaction
    assert tx.state == "proceeding"
    assert layer.find_server(load("tx_invite")) is tx
    (trying,) = outgoing(layer)
    assert trying.destination == UDP_PEER
    response = parse_message(trying.data)
    assert isinstance(response, Response)
    assert response.status == 100
    assert response.to_tag is None
    assert response.call_id == invite.call_id
    assert layer.get_timer() is None  # nothing runs until the TU answers


def test_send_trying_immediately_off() -> None:
    layer = new_layer(send_trying_immediately=False)
    layer.receive(load("tx_invite"), UDP_PEER, 0.0)
    assert len(events(layer)) == 1
    assert outgoing(layer) == []
    layer.receive(load("tx_invite"), UDP_PEER, 0.5)  # retransmission, nothing to resend yet
    assert events(layer) == []
    assert outgoing(layer) == []


def test_retransmitted_invite_resends_the_last_response_without_event() -> None:
    layer = new_layer()
    layer.receive(load("tx_invite"), UDP_PEER, 0.0)
    (ev,) = events(layer)
    (trying,) = outgoing(layer)
    layer.receive(load("tx_invite"), UDP_PEER, 0.5)
    assert events(layer) == []
    assert outgoing(layer) == [trying]
    ringing = respond(layer, ev.transaction, 180)
    layer.receive(load("tx_invite"), UDP_PEER, 1.0)
    assert events(layer) == []
    assert [o.data for o in outgoing(layer)] == [ringing]


def test_timer_g_and_timer_h() -> None:
    layer = new_layer()
    tx = start_server(layer)
    data = respond(layer, tx, 486)
    assert tx.state == "completed"
    sent = advance(layer, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(o.data is data and o.destination == UDP_PEER for _, o in sent)
    assert events(layer) == [TransactionTimeout(tx)]
    assert_idle(layer)


def test_timer_g_not_on_reliable_but_timer_h_is() -> None:
    layer = new_layer()
    tx = start_server(layer, load("tx_invite", transport="TCP"), source=TCP_PEER)
    respond(layer, tx, 486)
    assert layer.get_timer() == 32.0
    assert advance(layer, 100.0) == []
    assert events(layer) == [TransactionTimeout(tx)]


def test_ack_confirms_and_timer_i() -> None:
    layer = new_layer()
    tx = start_server(layer)
    final = respond(layer, tx, 486, now=0.0)
    layer.receive(load("tx_invite"), UDP_PEER, 0.2)  # retransmitted INVITE: resend the 486
    assert [o.data for o in outgoing(layer)] == [final]
    layer.receive(load("tx_ack", to_params=";tag=gwtag"), UDP_PEER, 0.3)
    assert tx.state == "confirmed"
    assert events(layer) == []  # the ACK for a non-2xx stays in the transaction
    layer.receive(load("tx_ack", to_params=";tag=gwtag"), UDP_PEER, 0.4)  # absorbed
    layer.receive(load("tx_invite"), UDP_PEER, 0.5)  # absorbed in Confirmed
    assert outgoing(layer) == [] and events(layer) == []
    assert layer.get_timer() == pytest.approx(5.3)  # Timer I = T4
    assert advance(layer, 100.0) == []  # no more Timer G
    assert events(layer) == []
    assert_idle(layer)


def test_ack_on_reliable_terminates_at_once() -> None:
    layer = new_layer()
    tx = start_server(layer, load("tx_invite", transport="TCP"), source=TCP_PEER)
    respond(layer, tx, 486)
    layer.receive(load("tx_ack", transport="TCP", to_params=";tag=gwtag"), TCP_PEER, 0.3)
    assert tx.state == "terminated"
    assert_idle(layer)


def test_2xx_is_retransmitted_until_the_ack_and_ack_is_matched_by_dialog() -> None:
    layer = new_layer()
    tx = start_server(layer)
    ok = respond(layer, tx, 200)
    assert tx.state == "accepted"
    sent = advance(layer, 7.6)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5]
    assert all(o.data is ok for _, o in sent)
    # the ACK for a 2xx has its own branch
    ack = load("tx_ack", via_params=";branch=z9hG4bKackX", to_params=";tag=gwtag")
    layer.receive(ack, UDP_PEER, 8.0)
    assert events(layer) == [AckReceived(tx, ack, UDP_PEER)]
    assert tx.ack_received
    assert advance(layer, 31.9) == []  # retransmissions stopped
    # a retransmitted ACK is absorbed; so is a late INVITE retransmission
    layer.receive(
        load("tx_ack", via_params=";branch=z9hG4bKackX", to_params=";tag=gwtag"), UDP_PEER, 9.0
    )
    layer.receive(load("tx_invite"), UDP_PEER, 9.5)
    assert events(layer) == [] and outgoing(layer) == []
    assert tx.state == "accepted"
    assert advance(layer, 100.0) == []  # Timer L ends it quietly: the ACK came
    assert events(layer) == []
    assert_idle(layer)


def test_retransmitted_invite_while_accepted_resends_the_2xx() -> None:
    layer = new_layer()
    tx = start_server(layer)
    ok = respond(layer, tx, 200)
    layer.receive(load("tx_invite"), UDP_PEER, 0.2)
    assert [o.data for o in outgoing(layer)] == [ok]
    assert events(layer) == []


def test_timer_l_ack_timeout() -> None:
    layer = new_layer()
    tx = start_server(layer)
    respond(layer, tx, 200)
    sent = advance(layer, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events(layer) == [AckTimeout(tx)]
    assert_idle(layer)


def test_2xx_on_reliable_is_not_retransmitted() -> None:
    layer = new_layer()
    tx = start_server(layer, load("tx_invite", transport="TCP"), source=TCP_PEER)
    respond(layer, tx, 200)
    assert layer.get_timer() == 32.0  # Timer L only
    assert advance(layer, 100.0) == []
    assert events(layer) == [AckTimeout(tx)]


def test_stray_ack() -> None:
    layer = new_layer()
    ack = load("tx_ack", via_params=";branch=z9hG4bKlost", to_params=";tag=x")
    layer.receive(ack, UDP_PEER, 0.0)
    assert events(layer) == [StrayAck(ack, UDP_PEER)]
    assert outgoing(layer) == []
    assert layer.find_server(ack) is None


def test_responses_the_transaction_cannot_send_are_ignored() -> None:
    layer = new_layer()
    tx = start_server(layer)
    respond(layer, tx, 486)
    layer.send_response(tx, make_response(tx.request, 200, to_tag="gwtag"), 0.1)
    layer.send_response(tx, make_response(tx.request, 180, to_tag="gwtag"), 0.1)
    assert outgoing(layer) == []
    assert tx.state == "completed"


# -- server non-INVITE: Timer J ------------------------------------------------------------


def test_server_non_invite_absorbs_then_resends_and_timer_j() -> None:
    layer = new_layer()
    bye = load("tx_bye", to_params=";tag=gwtag", via_params=";branch=z9hG4bKbye1")
    layer.receive(bye, UDP_PEER, 0.0)
    (ev,) = events(layer)
    tx = ev.transaction
    assert tx.state == "trying"
    assert outgoing(layer) == []  # no 100 Trying for a non-INVITE
    layer.receive(
        load("tx_bye", to_params=";tag=gwtag", via_params=";branch=z9hG4bKbye1"), UDP_PEER, 0.5
    )
    assert events(layer) == [] and outgoing(layer) == []  # absorbed while Trying
    ok = respond(layer, tx, 200, now=1.0)
    assert tx.state == "completed"
    layer.receive(
        load("tx_bye", to_params=";tag=gwtag", via_params=";branch=z9hG4bKbye1"), UDP_PEER, 2.0
    )
    assert [o.data for o in outgoing(layer)] == [ok]
    assert events(layer) == []
    assert layer.get_timer() == 33.0  # Timer J = 64*T1 from the final response
    assert advance(layer, 100.0) == []
    assert_idle(layer)


def test_server_non_invite_provisional_then_final_on_reliable() -> None:
    layer = new_layer()
    bye = load("tx_bye", transport="TCP", to_params=";tag=gwtag")
    tx = start_server(layer, bye, source=TCP_PEER)
    trying = respond(layer, tx, 100)
    assert tx.state == "proceeding"
    layer.receive(load("tx_bye", transport="TCP", to_params=";tag=gwtag"), TCP_PEER, 0.1)
    assert [o.data for o in outgoing(layer)] == [trying]
    respond(layer, tx, 200)
    assert tx.state == "terminated"  # Timer J = 0 on reliable transports
    assert_idle(layer)


# -- CANCEL ----------------------------------------------------------------------------------


def test_cancel_matches_the_invite_server_transaction() -> None:
    layer = new_layer()
    invite_tx = start_server(layer)
    respond(layer, invite_tx, 180)
    cancel = load("tx_cancel")
    layer.receive(cancel, UDP_PEER, 1.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived)
    assert ev.request is cancel and ev.cancelled is invite_tx
    cancel_tx = ev.transaction
    assert cancel_tx is not invite_tx
    assert cancel_tx.state == "trying"
    assert layer.server_count == 2
    respond(layer, cancel_tx, 200, now=1.0)
    respond(layer, invite_tx, 487, now=1.0)
    layer.receive(load("tx_ack", to_params=";tag=gwtag"), UDP_PEER, 1.1)
    assert invite_tx.state == "confirmed"
    advance(layer, 100.0)
    assert events(layer) == []
    assert_idle(layer)


def test_cancel_matching_nothing_or_a_finished_invite() -> None:
    layer = new_layer()
    layer.receive(load("tx_cancel", via_params=";branch=z9hG4bKother"), UDP_PEER, 0.0)
    (ev,) = events(layer)
    assert ev.cancelled is None

    invite_tx = start_server(layer)
    respond(layer, invite_tx, 200)
    layer.receive(load("tx_cancel"), UDP_PEER, 0.5)
    (ev,) = events(layer)
    assert ev.cancelled is None  # too late: a final response went out


def test_cancel_request_is_built_per_section_9_1() -> None:
    layer = new_layer()
    invite = our_request(via_params=";branch=z9hG4bKgw1;rport", to_params="")
    invite.add("Route", "<sip:edge.example.net;lr>")
    invite.set("Max-Forwards", "12")
    tx, _ = start_client(layer, invite)
    cancel = layer.cancel_request(tx)
    assert cancel.method == "CANCEL"
    assert cancel.uri_text == invite.uri_text
    assert cancel.call_id == invite.call_id
    assert cancel.get("from") == invite.get("from")
    assert cancel.get("to") == invite.get("to")
    assert str(cancel.cseq) == "1 CANCEL"
    assert cancel.get_all("via") == [str(invite.top_via)]
    assert cancel.get_all("route") == ["<sip:edge.example.net;lr>"]
    assert cancel.max_forwards == 70
    reparsed = wire(cancel)  # well formed
    assert reparsed.top_via.branch == "z9hG4bKgw1"
    bye_tx = layer.send_request(our_request("tx_bye", branch="z9hG4bKb"), CARRIER, 0)
    with pytest.raises(ValueError):
        layer.cancel_request(bye_tx)


def test_cancel_client_transaction_and_timer_b_guard() -> None:
    layer = new_layer()
    tx, data = start_client(layer)
    layer.receive(peer_response(data, 180), CARRIER, 0.3)
    events(layer)
    assert layer.get_timer() is None
    cancel_tx = layer.send_request(layer.cancel_request(tx), CARRIER, 10.0)
    (cancel_out,) = outgoing(layer)
    assert cancel_tx.key == ("z9hG4bKgw1", "CANCEL") and cancel_tx is not tx
    assert tx.cancel_sent
    # the CANCEL is answered, the INVITE never is: Timer B fires 64*T1 after the CANCEL
    layer.receive(peer_response(cancel_out.data, 200), CARRIER, 10.1)
    assert events(layer)[0].transaction is cancel_tx
    advance(layer, 41.9)
    assert tx.state == "proceeding"
    advance(layer, 42.0)
    assert events(layer) == [TransactionTimeout(tx)]
    advance(layer, 100.0)
    assert_idle(layer)


def test_cancel_then_487_gets_acked() -> None:
    layer = new_layer()
    tx, data = start_client(layer)
    layer.receive(peer_response(data, 180), CARRIER, 0.3)
    layer.send_request(layer.cancel_request(tx), CARRIER, 1.0)
    outgoing(layer)
    layer.receive(peer_response(data, 487), CARRIER, 1.2)
    (ack_out,) = outgoing(layer)
    assert parse_message(ack_out.data).top_via.branch == "z9hG4bKgw1"
    assert tx.state == "completed"
    assert "B" not in tx.armed


# -- Via handling on receive and response routing ------------------------------------------


def test_received_added_when_sent_by_differs() -> None:
    layer = new_layer()
    invite = load("tx_invite", via_host="pbx.example.org")
    layer.receive(invite, UDP_PEER, 0.0)
    via = invite.top_via
    assert via.params["received"] == "192.0.2.10"
    assert "rport" not in via.params
    assert "received=192.0.2.10" in invite.get_all("via")[0]
    assert outgoing(layer)[0].destination == Address("udp", "192.0.2.10", 5060)


def test_no_received_when_sent_by_matches() -> None:
    layer = new_layer()
    invite = load("tx_invite")
    before = invite.get("via")
    layer.receive(invite, UDP_PEER, 0.0)
    assert invite.get("via") == before


def test_empty_rport_is_filled_and_responses_go_to_source_port() -> None:
    layer = new_layer()
    invite = load(
        "tx_invite", via_host="10.0.0.5", via_port=5060, via_params=";branch=z9hG4bKnat;rport"
    )
    nat = Address("udp", "203.0.113.50", 61000)
    layer.receive(invite, nat, 0.0)
    via = invite.top_via
    assert via.params["rport"] == "61000"
    assert via.params["received"] == "203.0.113.50"
    (trying,) = outgoing(layer)
    assert trying.destination == nat
    response = parse_message(trying.data)
    assert response.top_via.params["rport"] == "61000"  # the response carries them


def test_rport_received_even_when_host_matches() -> None:
    layer = new_layer()
    invite = load("tx_invite", via_params=";branch=z9hG4bKr;rport")
    layer.receive(invite, Address("udp", "192.0.2.10", 5070), 0.0)
    assert invite.top_via.params["rport"] == "5070"
    assert invite.top_via.params["received"] == "192.0.2.10"


@pytest.mark.parametrize(
    ("via_host", "via_port", "via_params", "source", "expected"),
    [
        # UDP, no rport: received (or sent-by) host, Via port
        (
            "pbx.example.org",
            5070,
            ";branch=z9hG4bK1",
            Address("udp", "192.0.2.99", 41000),
            Address("udp", "192.0.2.99", 5070),
        ),
        (
            "192.0.2.10",
            5080,
            ";branch=z9hG4bK1",
            Address("udp", "192.0.2.10", 41000),
            Address("udp", "192.0.2.10", 5080),
        ),
        # UDP, rport with a value already: (received or source host, rport)
        (
            "pbx.example.org",
            5060,
            ";branch=z9hG4bK1;rport=5999",
            Address("udp", "192.0.2.99", 41000),
            Address("udp", "192.0.2.99", 5999),
        ),
        # maddr
        (
            "pbx.example.org",
            5062,
            ";branch=z9hG4bK1;maddr=239.1.1.1",
            Address("udp", "192.0.2.99", 41000),
            Address("udp", "239.1.1.1", 5062),
        ),
        # reliable: back on the connection it came from
        (
            "pbx.example.org",
            5060,
            ";branch=z9hG4bK1;rport",
            Address("tcp", "192.0.2.99", 41000),
            Address("tcp", "192.0.2.99", 41000),
        ),
    ],
)
def test_response_destination(
    via_host: str, via_port: int, via_params: str, source: Address, expected: Address
) -> None:
    layer = new_layer()
    transport = "UDP" if source.transport == "udp" else "TCP"
    invite = load(
        "tx_invite",
        transport=transport,
        via_host=via_host,
        via_port=via_port,
        via_params=via_params,
    )
    layer.receive(invite, source, 0.0)
    tx = events(layer)[0].transaction
    assert tx.reply_to == expected
    assert outgoing(layer)[0].destination == expected


def test_default_via_port_is_5060() -> None:
    layer = new_layer()
    raw = load("tx_invite").to_bytes().replace(b"192.0.2.10:5060;", b"pbx.example.org;", 1)
    invite = parse_message(raw)
    layer.receive(invite, Address("udp", "192.0.2.99", 40000), 0.0)
    assert outgoing(layer)[0].destination == Address("udp", "192.0.2.99", 5060)


# -- transport errors ------------------------------------------------------------------------


def test_transport_error_fails_every_transaction_to_that_address() -> None:
    layer = new_layer()
    a, _ = start_client(layer)
    b, _ = start_client(layer, our_request("tx_bye", branch="z9hG4bKgw2"))
    other, _ = start_client(
        layer, our_request(branch="z9hG4bKgw3"), dest=Address("udp", "203.0.113.99", 5060)
    )
    server = start_server(
        layer, load("tx_invite", via_host="203.0.113.7"), source=Address("udp", "203.0.113.7", 5060)
    )
    layer.transport_error(CARRIER, 1.0)
    evs = events(layer)
    assert evs == [TransportFailure(a), TransportFailure(b), TransportFailure(server)]
    assert a.state == b.state == server.state == "terminated"
    assert other.state == "calling"
    assert layer.client_count == 1 and layer.server_count == 0
    # their timers are gone too: only the other transaction's remain
    sent = advance(layer, 100.0)
    assert {o.destination for _, o in sent} == {Address("udp", "203.0.113.99", 5060)}
    assert events(layer) == [TransactionTimeout(other)]
    assert_idle(layer)


# -- RFC 2543 fallback -----------------------------------------------------------------------


def test_rfc2543_requests_get_transactions_by_the_old_rule() -> None:
    layer = new_layer()
    invite = load("tx_invite_rfc2543")
    layer.receive(invite, UDP_PEER, 0.0)
    (ev,) = events(layer)
    tx = ev.transaction
    assert tx.key[0] == "rfc2543"
    outgoing(layer)
    layer.receive(load("tx_invite_rfc2543"), UDP_PEER, 0.5)  # retransmission
    assert events(layer) == [] and len(outgoing(layer)) == 1
    layer.receive(load("tx_invite_rfc2543", method="CANCEL"), UDP_PEER, 0.6)
    (cancel_ev,) = events(layer)
    assert cancel_ev.cancelled is tx
    respond(layer, cancel_ev.transaction, 200)
    respond(layer, tx, 487)
    # the ACK carries the To tag of our 487: matched through the alias key
    layer.receive(load("tx_invite_rfc2543", method="ACK", to_params=";tag=gwtag"), UDP_PEER, 0.7)
    assert events(layer) == []
    assert tx.state == "confirmed"
    advance(layer, 100.0)
    assert_idle(layer)


def test_bad_branch_value_uses_the_rfc2543_rule() -> None:
    layer = new_layer()
    layer.receive(load("tx_invite", via_params=";branch=1234"), UDP_PEER, 0.0)
    (ev,) = events(layer)
    assert ev.transaction.key[0] == "rfc2543"


# -- malformed input and misuse ----------------------------------------------------------------


def test_request_missing_cseq_gets_a_stateless_400() -> None:
    layer = new_layer()
    invite = load("tx_invite")
    invite.remove("CSeq")
    layer.receive(invite, UDP_PEER, 0.0)
    assert events(layer) == []
    (out,) = outgoing(layer)
    response = parse_message(out.data + b"") if b"CSeq" in out.data else None
    assert out.data.startswith(b"SIP/2.0 400 ")
    assert out.destination == UDP_PEER
    assert response is None  # no CSeq to copy
    assert layer.server_count == 0


def test_request_with_mismatched_cseq_method_gets_400() -> None:
    layer = new_layer()
    invite = Request("INVITE", "sip:911@gw.example.net", list(load("tx_invite").headers))
    invite.set("CSeq", "1 BYE")
    layer.receive(invite, UDP_PEER, 0.0)
    (out,) = outgoing(layer)
    assert out.data.startswith(b"SIP/2.0 400 ")
    assert events(layer) == []


def test_bad_ack_and_bad_response_are_dropped_silently() -> None:
    layer = new_layer()
    ack = load("tx_ack")
    ack.remove("Call-ID")
    layer.receive(ack, UDP_PEER, 0.0)
    response = Response(200, headers=[("cseq", "CSeq", "1 INVITE")])
    layer.receive(response, CARRIER, 0.0)
    assert outgoing(layer) == [] and events(layer) == []


def test_request_without_via_is_answered_to_its_source() -> None:
    layer = new_layer()
    invite = load("tx_invite")
    invite.remove("Via")
    layer.receive(invite, UDP_PEER, 0.0)
    (out,) = outgoing(layer)
    assert out.destination == UDP_PEER and out.data.startswith(b"SIP/2.0 400 ")


def test_send_request_adds_a_branch_and_refuses_ack_and_duplicates() -> None:
    layer = new_layer()
    request = our_request(via_params=";rport")
    tx = layer.send_request(request, CARRIER, 0.0)
    assert tx.branch.startswith("z9hG4bK") and tx.branch == request.top_via.branch
    assert parse_message(outgoing(layer)[0].data).top_via.branch == tx.branch
    with pytest.raises(ValueError):
        layer.send_request(load("tx_ack"), CARRIER, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(our_request(via_params=f";branch={tx.branch}"), CARRIER, 0.0)


def test_timer_config_is_checked() -> None:
    with pytest.raises(ValueError):
        TimerConfig(t1=0)
    with pytest.raises(ValueError):
        TimerConfig(t1=1.0, t2=0.5)


# -- a whole call through both sides: no leaks ------------------------------------------------


def test_a_complete_call_leaves_no_transaction_behind() -> None:
    layer = new_layer()
    # A leg: INVITE in
    a_tx = start_server(layer)
    # B leg: INVITE out
    b_tx, b_data = start_client(layer)
    layer.receive(peer_response(b_data, 180), CARRIER, 0.1)
    layer.receive(peer_response(b_data, 200, to_tag="callee"), CARRIER, 2.0)
    assert [type(e) for e in events(layer)] == [ResponseReceived, ResponseReceived]
    ack = load(
        "tx_ack",
        via_host=GW,
        via_params=";branch=z9hG4bKbAck",
        call_id="b-leg-1@gw",
        from_tag="gwtag",
        to_params=";tag=callee",
    )
    layer.send_ack(b_tx, ack, CARRIER, 2.0)
    assert len(outgoing(layer)) == 1
    respond(layer, a_tx, 200, now=2.0)
    layer.receive(
        load("tx_ack", via_params=";branch=z9hG4bKaAck", to_params=";tag=gwtag"), UDP_PEER, 2.1
    )
    assert [type(e) for e in events(layer)] == [AckReceived]
    # caller hangs up: BYE in, BYE out
    bye_in = load("tx_bye", via_params=";branch=z9hG4bKbye", to_params=";tag=gwtag", cseq=2)
    layer.receive(bye_in, UDP_PEER, 60.0)
    (bye_ev,) = events(layer)
    respond(layer, bye_ev.transaction, 200, now=60.0)
    _, bye_out = start_client(
        layer, our_request("tx_bye", branch="z9hG4bKgwbye", to_params=";tag=callee", cseq=2)
    )
    layer.receive(peer_response(bye_out, 200), CARRIER, 60.1)
    assert [type(e) for e in events(layer)] == [ResponseReceived]
    assert layer.client_count + layer.server_count > 0
    advance(layer, 1000.0)
    assert events(layer) == []
    assert_idle(layer)
    assert layer._heap == []


# -- fuzz: random messages, TU calls and timer firings never raise ----------------------------

_BRANCHES = [";branch=z9hG4bKf1", ";branch=z9hG4bKf2", ";branch=z9hG4bKf1;rport", "", ";branch=x"]
_STATUSES = [100, 180, 183, 200, 202, 302, 404, 486, 487, 503, 603]

_action = st.one_of(
    st.tuples(
        st.just("request"),
        st.sampled_from(["tx_invite", "tx_ack", "tx_cancel", "tx_bye"]),
        st.sampled_from(_BRANCHES),
        st.sampled_from(["", ";tag=gwtag", ";tag=t2"]),
        st.integers(1, 2),
        st.sampled_from(["udp", "tcp"]),
    ),
    st.tuples(
        st.just("response"),
        st.integers(0, 5),
        st.sampled_from(_STATUSES),
        st.sampled_from(["peer1", "peer2", None]),
    ),
    st.tuples(
        st.just("send"),
        st.sampled_from(["tx_invite", "tx_bye"]),
        st.integers(0, 3),
        st.sampled_from(["udp", "tcp"]),
    ),
    st.tuples(st.just("respond"), st.integers(0, 5), st.sampled_from(_STATUSES)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("ack"), st.integers(0, 5), st.sampled_from(["peer1", "peer2"])),
    st.tuples(st.just("transport_error"), st.sampled_from(["udp", "tcp"])),
    st.tuples(st.just("time"), st.floats(0.0, 40.0)),
    st.tuples(st.just("garbage"), st.sampled_from(["no-via", "no-cseq", "bad-via", "no-from"])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_action, max_size=40))
def test_fuzz_never_raises_and_never_leaks(actions: list[tuple[Any, ...]]) -> None:
    layer = new_layer()
    now = 0.0
    clients: list[ClientTransaction] = []
    servers: list[ServerTransaction] = []
    # the TU's own copy of each request: a finished transaction keeps none (issue 10)
    received: dict[int, Request] = {}
    sent_requests: list[bytes] = []
    peers = {"udp": UDP_PEER, "tcp": TCP_PEER}
    carriers = {"udp": CARRIER, "tcp": CARRIER_TCP}

    def drain() -> None:
        for out in outgoing(layer):
            assert isinstance(out.data, bytes)
        for ev in events(layer):
            if isinstance(ev, RequestReceived):
                servers.append(ev.transaction)
                received[id(ev.transaction)] = ev.request

    for action in actions:
        kind = action[0]
        if kind == "request":
            _, name, branch, to_params, cseq, transport = action
            layer.receive(
                load(
                    name,
                    via_params=branch,
                    to_params=to_params,
                    cseq=cseq,
                    transport=transport.upper(),
                ),
                peers[transport],
                now,
            )
        elif kind == "response" and sent_requests:
            _, index, status, tag = action
            data = sent_requests[index % len(sent_requests)]
            layer.receive(peer_response(data, status, to_tag=tag), CARRIER, now)
        elif kind == "send":
            _, name, n, transport = action
            try:
                tx = layer.send_request(
                    our_request(name, branch=f"z9hG4bKc{n}"), carriers[transport], now
                )
            except ValueError:
                continue  # that branch is in use
            clients.append(tx)
            sent_requests.append(tx.request.to_bytes())
        elif kind == "respond" and servers:
            _, index, status = action
            stx = servers[index % len(servers)]
            response = make_response(received[id(stx)], status, to_tag="gwtag")
            layer.send_response(stx, response, now)
        elif kind == "cancel" and clients:
            tx = clients[action[1] % len(clients)]
            if tx.is_invite and tx.state == "proceeding":
                with suppress(ValueError):  # already cancelled
                    layer.send_request(layer.cancel_request(tx), tx.destination, now)
        elif kind == "ack" and clients:
            _, index, tag = action
            tx = clients[index % len(clients)]
            if tx.is_invite:
                layer.send_ack(tx, load("tx_ack", to_params=f";tag={tag}"), tx.destination, now)
        elif kind == "transport_error":
            layer.transport_error(carriers[action[1]], now)
        elif kind == "time":
            now += action[1]
            layer.handle_timer(now)
        elif kind == "garbage":
            request = load("tx_invite")
            what = action[1]
            if what == "no-via":
                request.remove("Via")
            elif what == "no-cseq":
                request.remove("CSeq")
            elif what == "bad-via":
                request.set("Via", "garbage here")
            else:
                request.remove("From")
            layer.receive(request, UDP_PEER, now)
        drain()

    # wind down: answer every open server transaction, cancel every ringing INVITE
    for stx in servers:
        if stx.state in ("trying", "proceeding"):
            layer.send_response(stx, make_response(stx.request, 500, to_tag="gwtag"), now)
    for tx in clients:
        if tx.is_invite and tx.state == "proceeding" and not tx.cancel_sent:
            layer.send_request(layer.cancel_request(tx), tx.destination, now)
    drain()
    while (deadline := layer.get_timer()) is not None:
        assert deadline >= now
        now = deadline
        layer.handle_timer(now)
        drain()
    assert_idle(layer)


def test_a_cancelled_timer_lets_go_of_its_transaction() -> None:
    """Timer F of an answered BYE is cancelled, but its heap entry stays until its own
    deadline (lazy deletion): once Timer K ends the transaction, nothing in the timer heap
    refers to it any more (issue 10: a BYE's transaction used to live 64*T1, not T4)."""
    layer = new_layer()
    tx, data = start_client(layer, our_request("tx_bye", branch="z9hG4bKbye1", cseq=2))
    assert set(tx.armed) == {"E", "F"} and layer.timer_count == 2
    layer.receive(peer_response(data, 200), CARRIER, 0.1)
    assert tx.armed == ("K",) and layer.timer_count == 1
    # E and F stay in the heap until popped, but hold no transaction
    assert sorted(e[3] for e in layer._heap) == ["E", "F", "K"]
    assert [e[3] for e in layer._heap if e[2] is tx] == ["K"]
    advance(layer, 6.0)  # past Timer K (T4 = 5 s)
    assert tx.state == "terminated" and not tx.armed and layer.timer_count == 0
    assert layer.get_timer() is None and layer._heap == []  # stale entries dropped
