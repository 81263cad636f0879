"""Require and Supported (RFC 3261 section 8.2.2.3) through the call layer (issue 15 hole 4).

A required extension we do not support gets 420 Bad Extension with Unsupported, in and
out of a dialog; an emergency INVITE is placed anyway (SPEC E-3) without the Require.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua_peers import ANSWER, CALLER, GATEWAY, GW1, SDP, FixedRouter, Net, hop, outbound

from gateway.b2bua.decisions import Emergency
from gateway.sip.message import Request
from gateway.sip.transaction import ClientTransaction


@dataclass(frozen=True)
class Facts:
    callback: bool = False
    agent: str | None = None


def _invite(net: Net, require: str | None, method: str = "INVITE") -> ClientTransaction:
    """A request from the caller with ``Require: require``."""
    caller = net.peer(CALLER)
    host = CALLER.host
    headers = [
        ("via", "Via", str(caller.via())),
        ("max-forwards", "Max-Forwards", "70"),
        ("from", "From", f"<sip:alice@{host}>;tag={caller.tag}"),
        ("to", "To", f"<sip:911@{GATEWAY.host}>"),
        ("call-id", "Call-ID", caller.ids.call_id(host)),
        ("cseq", "CSeq", f"1 {method}"),
        ("contact", "Contact", f"<sip:alice@{host}:{CALLER.port}>"),
    ]
    request = Request(method, f"sip:911@{GATEWAY.host}", headers)
    if require is not None:
        request.add("Require", require)
    if method == "INVITE":
        request.set_body(SDP, "application/sdp")
    tx = caller.layer.send_request(request, GATEWAY, net.now)
    net.exchange()
    return tx


def test_an_invite_requiring_100rel_gets_420_with_unsupported_and_goes_nowhere() -> None:
    net = Net(outbound(hop(GW1)))
    _invite(net, "100rel, timer")
    final = net.peer(CALLER).final()
    assert final.status == 420
    assert final.get("unsupported") == "100rel"  # timer is supported (RFC 4028)
    assert final.get("supported") == "timer"
    assert net.sent(GATEWAY, GW1, "INVITE") == []
    assert net.b2bua.calls == {}


def test_an_emergency_invite_requiring_100rel_is_placed_without_the_require() -> None:
    net = Net(FixedRouter(Emergency(Facts(), [hop(GW1)])))
    _invite(net, "100rel")
    (b_invite,) = net.sent(GATEWAY, GW1, "INVITE")
    assert b_invite.get("require") is None
    (incoming,) = net.peer(GW1).requests("INVITE")
    net.peer(GW1).answer(incoming, 200, ANSWER)
    assert net.peer(CALLER).final().status == 200


def test_an_out_of_dialog_options_requiring_an_extension_gets_420() -> None:
    net = Net(outbound(hop(GW1)))
    _invite(net, "foo", method="OPTIONS")
    final = net.peer(CALLER).final("OPTIONS")
    assert (final.status, final.get("unsupported")) == (420, "foo")


def test_a_reinvite_requiring_100rel_gets_420_and_the_call_goes_on() -> None:
    net = Net(outbound(hop(GW1)))
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite()
    (incoming,) = callee.requests("INVITE")
    callee.answer(incoming, 200, ANSWER)
    dialog = caller.uac_dialog(tx)
    caller.ack(tx, dialog)
    request = dialog.create_request("INVITE", caller.ids, body=SDP, content_type="application/sdp")
    request.push_via(caller.via())
    request.add("Require", "100rel")
    caller.layer.send_request(request, GATEWAY, net.now)
    net.exchange()
    assert caller.final().status == 420
    assert len(callee.requests("INVITE")) == 1  # not relayed
    (call,) = net.b2bua.calls.values()
    assert not call.ended
