"""The sips: policy (RFC 5630): TLS end to end for ordinary calls, never a refusal for an
emergency call (SPEC E-3)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from b2bua_peers import ANSWER, GATEWAY, SDP, FixedRouter, Net, Peer, hop

from gateway.b2bua import sips
from gateway.b2bua.call import NextHop
from gateway.b2bua.decisions import Emergency, Outbound, Queued, RouteRefusal
from gateway.b2bua.sips import apply_sips_policy
from gateway.sip.message import Request
from gateway.sip.transaction import Address

TLS_CALLER = Address("tls", "192.0.2.10", 5061)
UDP_CALLER = Address("udp", "192.0.2.10", 5060)
TLS_GW = Address("tls", "192.0.2.31", 5061)
UDP_GW = Address("udp", "192.0.2.21", 5060)


@dataclass(frozen=True)
class Facts:
    callback: bool = False
    agent: str | None = "alice"


def _request(uri: str) -> Request:
    return Request("INVITE", uri, [("call-id", "Call-ID", "c@x"), ("cseq", "CSeq", "1 INVITE")])


def _hops(*addresses: Address) -> list[NextHop]:
    return [hop(address) for address in addresses]


def test_a_sip_uri_is_left_alone() -> None:
    decision = Outbound(_hops(UDP_GW))
    assert apply_sips_policy(_request("sip:555@gw"), UDP_CALLER, decision) is decision


def test_an_ordinary_sips_call_goes_only_to_tls_hops() -> None:
    decision = apply_sips_policy(
        _request("SIPS:555@gw"), TLS_CALLER, Outbound(_hops(UDP_GW, TLS_GW), "alice", "+1555")
    )
    assert isinstance(decision, Outbound)
    assert [h.address for h in decision.hops] == [TLS_GW]
    assert (decision.agent, decision.caller_id) == ("alice", "+1555")


@pytest.mark.parametrize(
    ("source", "hops", "why"),
    [
        (TLS_CALLER, (UDP_GW,), "no TLS path"),
        (UDP_CALLER, (TLS_GW,), "arrived over a transport that is not TLS"),
    ],
)
def test_an_ordinary_sips_call_without_tls_end_to_end_gets_480_sips_not_allowed(
    source: Address, hops: tuple[Address, ...], why: str
) -> None:
    decision = apply_sips_policy(_request("sips:555@gw"), source, Outbound(_hops(*hops)), "gw1")
    assert isinstance(decision, RouteRefusal) and decision.status == 480
    ((name, value),) = decision.headers
    assert name == "Warning" and value.startswith('380 gw1 "SIPS Not Allowed: ')
    assert why in value


@pytest.mark.parametrize("source", [UDP_CALLER, TLS_CALLER])
def test_a_sips_emergency_call_is_never_refused_and_tries_tls_first(
    source: Address, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in for the module's logger: structlog's own capture misses a logger that an
    # earlier test in the same process had already cached
    lines: list[str] = []

    class Log:
        def error(self, event: str, **fields: object) -> None:
            lines.append(event)

        def warning(self, event: str, **fields: object) -> None:
            lines.append(event)

    monkeypatch.setattr(sips, "log", Log())
    decision = Emergency(Facts(), _hops(UDP_GW, TLS_GW))
    out = apply_sips_policy(_request("sips:911@gw"), source, decision)
    assert isinstance(out, Emergency)
    assert [h.address for h in out.hops] == [TLS_GW, UDP_GW]
    assert "sips_emergency_not_tls" in lines


def test_a_sips_emergency_call_with_no_tls_hop_keeps_every_hop() -> None:
    decision = Emergency(Facts(), _hops(UDP_GW))
    out = apply_sips_policy(_request("sips:911@gw"), UDP_CALLER, decision)
    assert isinstance(out, Emergency) and out.hops == decision.hops


def test_queued_calls_and_callbacks_are_left_alone() -> None:
    queued = Queued("support", 0)
    assert apply_sips_policy(_request("sips:+1555@gw"), UDP_CALLER, queued) is queued
    callback = Emergency(Facts(callback=True), _hops(UDP_GW))
    assert apply_sips_policy(_request("sips:+1555@gw"), UDP_CALLER, callback) is callback


def _sips_invite(net: Net, caller: Peer) -> None:
    """A sips: INVITE from ``caller`` (its own, since Peer.invite writes sip:)."""
    host = caller.address.host
    headers = [
        ("via", "Via", str(caller.via())),
        ("max-forwards", "Max-Forwards", "70"),
        ("from", "From", f"<sips:alice@{host}>;tag={caller.tag}"),
        ("to", "To", f"<sips:15551230000@{GATEWAY.host}>"),
        ("call-id", "Call-ID", caller.ids.call_id(host)),
        ("cseq", "CSeq", "1 INVITE"),
        ("contact", "Contact", f"<sips:alice@{host}:{caller.address.port}>"),
    ]
    request = Request("INVITE", f"sips:15551230000@{GATEWAY.host}", headers)
    request.set_body(SDP, "application/sdp")
    caller.layer.send_request(request, GATEWAY, net.now)
    net.exchange()


def test_the_b_leg_of_a_sips_call_is_sips_on_the_tls_hop() -> None:
    net = Net(FixedRouter(Outbound(_hops(UDP_GW, TLS_GW))))
    caller, trunk = net.peer(TLS_CALLER), net.peer(TLS_GW)
    _sips_invite(net, caller)
    assert net.peer(UDP_GW).requests("INVITE") == []  # the UDP hop is skipped
    (incoming,) = trunk.requests("INVITE")
    assert incoming.request.uri_text == "sips:15551230000@192.0.2.31:5061"
    assert (incoming.request.get("Contact") or "").startswith("<sips:")
    trunk.answer(incoming, 200, ANSWER)
    assert caller.final().status == 200


def test_a_sips_call_from_a_plain_transport_is_refused_on_the_wire() -> None:
    net = Net(FixedRouter(Outbound(_hops(TLS_GW))))
    caller = net.peer(UDP_CALLER)
    _sips_invite(net, caller)
    final = caller.final()
    assert final.status == 480 and "SIPS Not Allowed" in (final.get("Warning") or "")
    assert net.peer(TLS_GW).requests("INVITE") == []
