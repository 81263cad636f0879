"""Session timers (RFC 4028) on both legs, two-ended (issue 15 hole 5).

A call whose far end vanished is torn down with BYE on both legs and the outcome
``session_expired``; an emergency call is kept while one leg is alive.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from b2bua_peers import ANSWER, CALLER, GATEWAY, GW1, SDP, FixedRouter, Net, Peer, hop, outbound

from gateway.b2bua.call import Call, EndKind
from gateway.b2bua.decisions import Emergency
from gateway.b2bua.sessions import parse_session_expires
from gateway.config.loader import DialplanError, load_dialplan_text
from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.transaction import ClientTransaction, RequestReceived


@dataclass(frozen=True)
class Facts:
    callback: bool = False
    agent: str | None = "alice"


def _invite(net: Net, *headers: tuple[str, str], user: str = "15551230000") -> ClientTransaction:
    """The caller's INVITE with extra ``headers`` (Session-Expires, Supported...)."""
    caller = net.peer(CALLER)
    host = CALLER.host
    request = Request(
        "INVITE",
        f"sip:{user}@{GATEWAY.host}",
        [
            ("via", "Via", str(caller.via())),
            ("max-forwards", "Max-Forwards", "70"),
            ("from", "From", f"<sip:alice@{host}>;tag={caller.tag}"),
            ("to", "To", f"<sip:{user}@{GATEWAY.host}>"),
            ("call-id", "Call-ID", caller.ids.call_id(host)),
            ("cseq", "CSeq", "1 INVITE"),
            ("contact", "Contact", f"<sip:alice@{host}:{CALLER.port}>"),
        ],
    )
    for name, value in headers:
        request.add(name, value)
    request.set_body(SDP, "application/sdp")
    tx = caller.layer.send_request(request, GATEWAY, net.now)
    net.exchange()
    return tx


def _answer(peer: Peer, ev: RequestReceived, *headers: tuple[str, str], body: bytes = b"") -> None:
    contact = ("Contact", f"<sip:peer@{peer.address.host}:{peer.address.port}>")
    response = make_response(ev.request, 200, to_tag=peer.tag, extra=(contact, *headers))
    if body:
        response.set_body(body, "application/sdp")
    peer.layer.send_response(ev.transaction, response, peer.net.now)
    peer.net.exchange()


def _connect(
    net: Net, *a_headers: tuple[str, str], b_headers: tuple[tuple[str, str], ...] = ()
) -> tuple[ClientTransaction, Call]:
    """A call up: the caller's INVITE (with ``a_headers``), B's 200 (``b_headers``), ACK."""
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = _invite(net, *a_headers)
    (incoming,) = callee.requests("INVITE")
    _answer(callee, incoming, *b_headers, body=ANSWER)
    caller.ack(tx, caller.uac_dialog(tx))
    (call,) = net.b2bua.calls.values()
    return tx, call


def _ended(net: Net, call: Call) -> EndKind | None:
    return call.outcome.kind if call.outcome is not None else None


def _byes(net: Net, peer: Peer) -> int:
    """How many BYE transactions the gateway sent ``peer`` (retransmissions counted once)."""
    return len({bye.get("via") for bye in net.sent(GATEWAY, peer.address, "BYE")})


def test_the_b_leg_offers_timer_and_the_caller_gets_our_interval_with_us_refreshing() -> None:
    net = Net(outbound(hop(GW1)))
    _connect(net, ("Supported", "timer"))
    (b_invite,) = net.sent(GATEWAY, GW1, "INVITE")
    assert b_invite.get("supported") == "timer"
    assert b_invite.get("session-expires") is None  # no 422 can come back from a carrier
    ok = net.peer(CALLER).final()
    assert ok.get("session-expires") == "1800;refresher=uas"
    assert ok.get("require") is None


def test_a_callee_that_vanishes_is_found_by_our_refresh_and_both_legs_get_bye() -> None:
    net = Net(outbound(hop(GW1)))
    _, call = _connect(net)
    net.drop = lambda source, dest, message: dest == GW1 or source == GW1  # B is gone
    net.advance(899)
    assert not call.ended
    net.advance(2)  # half the interval: re-INVITE (B never allowed UPDATE) with our SDP
    refresh = net.sent(GATEWAY, GW1, "INVITE")[-1]
    assert refresh.body == SDP
    assert refresh.get("session-expires") == "1800;refresher=uac"  # ours: B named none
    net.advance(40)  # Timer B: no answer
    assert _ended(net, call) is EndKind.SESSION_EXPIRED
    assert call.result == "session_expired"
    assert _byes(net, net.peer(CALLER)) == 1
    assert _byes(net, net.peer(GW1)) == 1


def test_a_callee_that_answers_the_refresh_keeps_the_call_and_update_is_used() -> None:
    net = Net(outbound(hop(GW1)))
    _, call = _connect(net, b_headers=(("Allow", "INVITE, ACK, BYE, UPDATE"),))
    callee = net.peer(GW1)
    for _ in range(3):
        net.advance(901)
        update = callee.requests("UPDATE")[-1]
        assert update.request.body == b""
        _answer(callee, update, ("Session-Expires", "1800;refresher=uac"))
    assert not call.ended
    assert len(callee.requests("UPDATE")) == 3
    assert net.sent(GATEWAY, GW1, "INVITE")[1:] == []  # no re-INVITE


def test_a_phone_refresher_that_stops_refreshing_is_hung_up_before_the_interval() -> None:
    net = Net(outbound(hop(GW1)))
    _, call = _connect(
        net, ("Supported", "timer"), ("Session-Expires", "120;refresher=uac"), ("Min-SE", "90")
    )
    ok = net.peer(CALLER).final()
    assert ok.get("session-expires") == "120;refresher=uac"
    assert ok.get("require") == "timer"  # RFC 4028 section 9
    net.advance(87)
    assert not call.ended
    net.advance(2)  # 120 - min(32, 120/3)
    assert _ended(net, call) is EndKind.SESSION_EXPIRED
    assert _byes(net, net.peer(CALLER)) == 1
    assert _byes(net, net.peer(GW1)) == 1


def test_a_phone_refresh_by_update_is_answered_here_and_keeps_the_call() -> None:
    net = Net(outbound(hop(GW1)))
    caller = net.peer(CALLER)
    tx, call = _connect(net, ("Supported", "timer"), ("Session-Expires", "120;refresher=uac"))
    dialog = caller.uac_dialog(tx)
    for _ in range(3):
        net.advance(60)
        refresh = (("Supported", "timer"), ("Session-Expires", "120;refresher=uac"))
        update = dialog.create_request("UPDATE", caller.ids, extra_headers=refresh)
        update.push_via(caller.via())
        caller.layer.send_request(update, GATEWAY, net.now)
        net.exchange()
        ok = caller.final("UPDATE")
        assert (ok.status, ok.get("session-expires")) == (200, "120;refresher=uac")
    assert not call.ended
    assert net.sent(GATEWAY, GW1, "UPDATE") == []  # a refresh is not relayed


def test_a_relayed_reinvite_refreshes_both_legs() -> None:
    net = Net(outbound(hop(GW1)))
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx, call = _connect(net, ("Supported", "timer"), ("Session-Expires", "120;refresher=uac"))
    net.advance(80)
    dialog = caller.uac_dialog(tx)
    reinvite = caller.request(dialog, "INVITE", SDP)
    relayed = callee.requests("INVITE")[-1]
    assert relayed.request.get("supported") == "timer"
    _answer(callee, relayed, body=ANSWER)
    ok = caller.final()
    assert ok.cseq.number == reinvite.request.cseq.number
    assert ok.get("session-expires") == "120;refresher=uac"
    caller.ack(reinvite, dialog)
    net.advance(80)  # past the first expiry: the re-INVITE refreshed A's session
    assert not call.ended


def test_a_session_expires_below_min_se_gets_422_and_no_b_leg() -> None:
    net = Net(outbound(hop(GW1)))
    _invite(net, ("Supported", "timer"), ("Session-Expires", "60"))
    final = net.peer(CALLER).final()
    assert (final.status, final.get("min-se")) == (422, "90")
    assert net.sent(GATEWAY, GW1, "INVITE") == []
    assert net.b2bua.calls == {}


def test_an_emergency_call_with_a_tiny_session_expires_is_placed_and_we_refresh() -> None:
    net = Net(FixedRouter(Emergency(Facts(), [hop(GW1)])))
    _invite(net, ("Supported", "timer"), ("Session-Expires", "60;refresher=uac"), user="911")
    (incoming,) = net.peer(GW1).requests("INVITE")
    _answer(net.peer(GW1), incoming, body=ANSWER)
    assert net.peer(CALLER).final().get("session-expires") == "90;refresher=uas"


def test_an_emergency_call_outlives_its_vanished_phone_while_the_psap_answers() -> None:
    net = Net(FixedRouter(Emergency(Facts(), [hop(GW1)])))
    psap = net.peer(GW1)
    _, call = _connect_emergency(net, psap)
    phone_gone = True
    net.drop = lambda source, dest, message: phone_gone and CALLER in (source, dest)
    for _ in range(4):  # an hour: the phone's refreshes time out, the PSAP's are answered
        net.advance(901)
        _answer(psap, psap.requests("UPDATE")[-1])
    assert not call.ended
    assert net.sent(GATEWAY, GW1, "BYE") == []
    assert call.a.session is not None and call.a.session.dead
    # the phone comes back: it answers our next probe and is alive again
    phone_gone = False
    net.advance(901)
    _answer(psap, psap.requests("UPDATE")[-1])
    _answer(net.peer(CALLER), net.peer(CALLER).requests("INVITE")[-1], body=SDP)
    assert call.a.session is not None and not call.a.session.dead
    # now both vanish: only then does the timer end the emergency call
    phone_gone = True
    net.drop = lambda source, dest, message: True
    net.advance(1000)
    assert _ended(net, call) is EndKind.SESSION_EXPIRED


def _connect_emergency(net: Net, psap: Peer) -> tuple[ClientTransaction, Call]:
    caller = net.peer(CALLER)
    tx = _invite(net, ("Supported", "timer"), user="911")
    (incoming,) = psap.requests("INVITE")
    allow = ("Allow", "INVITE, ACK, BYE, UPDATE")
    _answer(psap, incoming, allow, ("Session-Expires", "1800;refresher=uac"), body=ANSWER)
    caller.ack(tx, caller.uac_dialog(tx))
    (call,) = net.b2bua.calls.values()
    return tx, call


def test_an_emergency_call_is_kept_when_the_psap_stops_refreshing_but_the_phone_answers() -> None:
    net = Net(FixedRouter(Emergency(Facts(), [hop(GW1)])))
    psap = net.peer(GW1)
    caller = net.peer(CALLER)
    tx = _invite(net, ("Supported", "timer"), user="911")
    (incoming,) = psap.requests("INVITE")
    _answer(psap, incoming, ("Session-Expires", "300;refresher=uas"), body=ANSWER)
    caller.ack(tx, caller.uac_dialog(tx))
    (call,) = net.b2bua.calls.values()
    net.advance(300)  # the PSAP refreshes nothing: its leg expires at 268 s
    assert call.b is not None and call.b.session is not None and call.b.session.dead
    assert not call.ended
    assert net.sent(GATEWAY, CALLER, "BYE") == []


def test_parse_session_expires_reads_the_compact_form_and_refuses_junk() -> None:
    raw = (
        b"INVITE sip:x@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKa\r\n"
        b"From: <sip:a@192.0.2.9>;tag=1\r\nTo: <sip:x@192.0.2.1>\r\nCall-ID: c\r\n"
        b"CSeq: 1 INVITE\r\nx: 300 ; refresher=UAS\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(raw)
    assert isinstance(message, Request)
    got = parse_session_expires(message)
    assert got is not None and (got.interval, got.refresher) == (300, "uas")
    junk = Response(200, "OK", [("session-expires", "Session-Expires", "soon")])
    assert parse_session_expires(junk) is None


def test_a_422_to_our_refresh_raises_the_interval_to_its_min_se() -> None:
    net = Net(outbound(hop(GW1)))
    _, call = _connect(net, b_headers=(("Allow", "INVITE, ACK, BYE, UPDATE"),))
    callee = net.peer(GW1)
    net.advance(901)
    update = callee.requests("UPDATE")[-1]
    contact = ("Contact", f"<sip:peer@{GW1.host}:{GW1.port}>")
    too_small = make_response(update.request, 422, to_tag=callee.tag, extra=(contact,))
    too_small.add("Min-SE", "3600")
    callee.layer.send_response(update.transaction, too_small, net.now)
    net.exchange()
    assert call.b is not None and call.b.session is not None
    assert call.b.session.interval == 3600 and not call.ended
    net.advance(1801)
    assert callee.requests("UPDATE")[-1].request.get("session-expires") == "3600;refresher=uac"


def test_the_dialplan_refuses_an_interval_below_its_min_se() -> None:
    text = (
        "version: 1\n"
        "listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
        "sip: { min_se_s: 120, session_expires_s: 100 }\n"
    )
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "dialplan.yaml")
    assert "session_expires_s" in str(caught.value)
