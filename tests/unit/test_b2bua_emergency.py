"""The router and the emergency hooks through the call layer, with fake registrar lookups.

ContactCentreRouter decides (fake ``contacts``/``agent_at`` instead of the registrar), the
EmergencyService observes and decorates (a recording publisher, an in-memory reservation
store, a presence double), the B2BUA places the legs between fake peers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, cast

from b2bua_peers import CALLER, GATEWAY, SDP, Net

from gateway.b2bua.decisions import Emergency, Outbound, Queued, RouteRefusal
from gateway.b2bua.router import ContactCentreRouter
from gateway.config.loader import load_dialplan_text
from gateway.emergency.service import EmergencyCall, EmergencyService
from gateway.events.ports import Topics
from gateway.presence.service import PresenceService
from gateway.sip.message import Request, parse_message
from gateway.sip.transaction import Address
from gateway.stores.ports import Binding, DidChooser, Reservation

SBC = Address("udp", "192.0.2.31", 5060)
DID = "+15555550199"
DIALPLAN = load_dialplan_text(
    f"""
version: 1
node: {{ name: gw1 }}
listen: [ {{ transport: udp, host: 192.0.2.1, port: 5060 }} ]
trunks:
  carrier:
    gateways: [ {{ host: 192.0.2.21, port: 5060 }} ]
    inbound_from: ['192.0.2.21']
    trusted: true
  carrier-sbc:
    gateways: [ {{ host: {SBC.host}, port: {SBC.port} }} ]
    trusted: true
outbound:
  - {{ name: nine, match: '^9(\\d+)$', rewrite: '\\1', trunk: carrier }}
emergency:
  direct_routing:
    - {{ name: sbc-911, match: '^911$', trunk: carrier-sbc }}
  callback: {{ dids: ['{DID}'], window_s: 3600 }}
agents:
  alice:
    password: pw
    identity: "+15555550101"
    queues: [support]
    location: {{ street: Main St, house_number: '100', city: Springfield, country: US }}
queues:
  support: {{}}
inbound:
  - {{ name: line, match: '^\\+15555550100$', queue: support }}
""",
    "t.yaml",
)


class Recording:
    def __init__(self) -> None:
        self.events: list[str] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        if "event" in payload:
            self.events.append(str(payload["event"]))


class Reservations:
    """Runs the emergency package's DID choice over an empty store."""

    async def reserve(
        self,
        agent_id: str,
        pool: Sequence[str],
        now: float,
        ttl: float,
        call_id: str,
        test: bool,
        *,
        choose: DidChooser,
    ) -> tuple[Reservation, bool]:
        did, reused = choose(agent_id, pool, {}, now)
        return Reservation(did, agent_id, now, now + ttl, call_id, test), reused


class Presence:
    def __init__(self) -> None:
        self.dnd: list[str] = []

    def emergency_started(self, agent: str) -> None:
        self.dnd.append(f"on {agent}")

    def emergency_ended(self, agent: str) -> None:
        self.dnd.append(f"off {agent}")


def _binding() -> Binding:
    return Binding("alice", "sip:alice@192.0.2.10:5060", 2e9, "c", 1, "udp:192.0.2.10:5060", "UA")


def _parts() -> tuple[EmergencyService, ContactCentreRouter, Presence, Recording]:
    presence, publisher = Presence(), Recording()
    service = EmergencyService(
        DIALPLAN,
        cast(Any, Reservations()),
        cast(PresenceService, presence),
        publisher,
        Topics("t", "gw1"),
        lambda agent: [_binding()],
        wall_clock=lambda: 1.0e9,
    )
    router = ContactCentreRouter(
        DIALPLAN,
        None,
        service,
        lambda agent: [_binding()],
        lambda source: "alice" if source == CALLER else None,
    )
    return service, router, presence, publisher


def _request(uri: str) -> Request:
    lines = [
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1",
        "From: <sip:alice@192.0.2.10>;tag=a",
        f"To: <{uri}>",
        "Call-ID: r-1",
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@192.0.2.10>",
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def test_the_router_routes_outbound_inbound_and_refuses_what_matches_nothing() -> None:
    _, router, _, _ = _parts()
    outbound = router.route(_request("sip:95551234@gw"), "95551234", CALLER)
    assert isinstance(outbound, Outbound) and outbound.hops[0].user == "5551234"
    trunk = Address("udp", "192.0.2.21", 5060)
    queued = router.route(_request("sip:+15555550100@gw"), "+15555550100", trunk)
    assert queued == Queued("support", 0, "carrier")
    refused = router.route(_request("sip:12345@gw"), "12345", CALLER)
    assert isinstance(refused, RouteRefusal) and refused.status == 404


def test_the_router_detects_911_before_the_outbound_rules() -> None:
    _, router, _, _ = _parts()
    decision = router.route(_request("sip:911@gw"), "911", CALLER)
    assert isinstance(decision, Emergency)
    assert isinstance(decision.call, EmergencyCall) and decision.call.agent == "alice"
    assert [hop.address for hop in decision.hops] == [SBC]
    again = router.route(_request("sip:9911@gw"), "9911", CALLER)  # 9 + 911: still emergency
    assert isinstance(again, Emergency)


def test_an_emergency_call_gets_the_did_dnd_and_the_lockdown() -> None:
    service, router, presence, publisher = _parts()
    spawned: list[Coroutine[Any, Any, None]] = []
    net = Net(
        router,
        emergency=service,
        observers=[service],
        spawn=lambda coro, name: spawned.append(coro),
    )
    caller, sbc = net.peer(CALLER), net.peer(SBC)
    tx = caller.invite("911", SDP)
    assert presence.dnd == ["on alice"]  # E-5: DND at once
    assert sbc.requests("INVITE") == []  # the B-leg waits for the callback DID...
    (reservation,) = spawned
    asyncio.run(reservation)  # ...and leaves as soon as it is there
    (incoming,) = sbc.requests("INVITE")
    invite = incoming.request
    assert f"<sip:{DID}@" in (invite.get("From") or "")  # E-4: the DID is the calling number
    assert f"<sip:{DID}@" in (invite.get("P-Asserted-Identity") or "")
    assert invite.get("Priority") == "emergency"
    sent = sbc.answer(incoming, 200, SDP)
    dialog = caller.uac_dialog(tx)
    caller.ack(tx, dialog)
    # E-8: the agent may not transfer the emergency call away...
    caller.request(dialog, "REFER")
    refused = caller.final("REFER")
    assert refused.status == 403 and refused.get("Warning") is not None
    assert net.sent(GATEWAY, SBC, "REFER") == []
    # ...the emergency side may
    sbc.request(sbc.uas_dialog(incoming, sent), "REFER")
    assert len(caller.requests("REFER")) == 1
    caller.request(dialog, "BYE")
    assert presence.dnd == ["on alice", "off alice"]  # E-5: restored when it ends
    assert publisher.events[:2] == ["dialled", "route_chosen"]
    assert "callback_reserved" in publisher.events and "answered" in publisher.events
    assert publisher.events[-1] == "ended"
    assert net.b2bua.calls == {}


def test_an_emergency_invite_without_contact_is_placed_and_the_caller_stays_reachable() -> None:
    """RFC 3261 8.1.1.8 says an INVITE MUST carry a Contact, and an ordinary call without
    one gets 400; a broken phone's 911 is placed anyway (E-3), the INVITE's source taking
    the Contact's place, so the emergency side's BYE still reaches the caller."""
    service, router, _, _ = _parts()
    spawned: list[Coroutine[Any, Any, None]] = []
    net = Net(router, emergency=service, spawn=lambda coro, name: spawned.append(coro))
    caller, sbc = net.peer(CALLER), net.peer(SBC)
    ordinary = caller.invite("95551234", SDP, contact=False)
    refused = caller.final()
    assert (refused.status, refused.reason) == (400, "Missing Contact"), refused
    assert net.sent(GATEWAY, Address("udp", "192.0.2.21", 5060), "INVITE") == []
    assert ordinary is not None and net.b2bua.calls == {}

    tx = caller.invite("911", SDP, contact=False)
    for coro in spawned:
        asyncio.run(coro)
    (incoming,) = sbc.requests("INVITE")
    sent = sbc.answer(incoming, 200, SDP)
    assert caller.final().status == 200
    caller.ack(tx, caller.uac_dialog(tx))
    sbc.request(sbc.uas_dialog(incoming, sent), "BYE")  # the PSAP hangs up
    (bye,) = net.sent(GATEWAY, CALLER, "BYE")
    assert str(bye.uri) == f"sip:{CALLER.host}:{CALLER.port}", bye.uri
    assert net.b2bua.calls == {}


def test_an_emergency_invite_with_a_garbled_max_forwards_is_placed_with_70() -> None:
    """RFC 3261 20.22: a malformed Max-Forwards makes an ordinary INVITE a 400; a broken
    phone's 911 is placed anyway (E-3), and the B-leg starts again from 70."""
    service, router, _, _ = _parts()
    spawned: list[Coroutine[Any, Any, None]] = []
    net = Net(router, emergency=service, spawn=lambda coro, name: spawned.append(coro))
    caller, sbc = net.peer(CALLER), net.peer(SBC)
    caller.invite("95551234", SDP, max_forwards="seventy")
    refused = caller.final()
    assert refused.status == 400 and "Max-Forwards" in (refused.get("Warning") or ""), refused
    assert net.b2bua.calls == {}
    caller.invite("911", SDP, max_forwards="seventy")
    for coro in spawned:
        asyncio.run(coro)
    (incoming,) = sbc.requests("INVITE")
    assert incoming.request.get("Max-Forwards") == "70"
    sbc.answer(incoming, 200, SDP)
    assert caller.final().status == 200


def test_a_garbled_max_forwards_outside_a_dialog_gets_400_inside_one_it_is_let_be() -> None:
    """Out of a dialog an OPTIONS (as any request but an emergency INVITE) with a garbled
    Max-Forwards gets 400; in the dialog of an emergency call the phone's BYE is honoured
    (the call must be able to end)."""
    service, router, _, _ = _parts()
    spawned: list[Coroutine[Any, Any, None]] = []
    net = Net(router, emergency=service, spawn=lambda coro, name: spawned.append(coro))
    caller, sbc = net.peer(CALLER), net.peer(SBC)
    headers = [
        ("via", "Via", str(caller.via())),
        ("max-forwards", "Max-Forwards", "lots"),
        ("from", "From", f"<sip:alice@{CALLER.host}>;tag=o1"),
        ("to", "To", f"<sip:gw@{GATEWAY.host}>"),
        ("call-id", "Call-ID", "options-1"),
        ("cseq", "CSeq", "1 OPTIONS"),
    ]
    caller.layer.send_request(Request("OPTIONS", f"sip:{GATEWAY.host}", headers), GATEWAY, net.now)
    net.exchange()
    assert caller.final("OPTIONS").status == 400
    tx = caller.invite("911", SDP)
    for coro in spawned:
        asyncio.run(coro)
    (incoming,) = sbc.requests("INVITE")
    sbc.answer(incoming, 200, SDP)
    dialog = caller.uac_dialog(tx)
    caller.ack(tx, dialog)
    bye = dialog.create_request("BYE", caller.ids)
    bye.push_via(caller.via())
    bye.set("Max-Forwards", "lots")
    caller.layer.send_request(bye, GATEWAY, net.now)
    net.exchange()
    assert caller.final("BYE").status == 200
    assert len(sbc.requests("BYE")) == 1 and net.b2bua.calls == {}
