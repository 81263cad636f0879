"""The location choice at the edge (SPEC E-10): EmergencyService.decorate_b_invite for agents
and site calls, and AgentLocations (desktop commands, acks, state, unmapped-network warning)
with an in-memory store and a recording publisher.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from gateway.b2bua.call import NextHop
from gateway.config.dialplan import Location
from gateway.config.loader import load_dialplan_text
from gateway.emergency.service import EmergencyCall, EmergencyService
from gateway.events.ports import Topics
from gateway.location.service import AgentLocations
from gateway.presence.service import PresenceService
from gateway.sip.message import Request, parse_message
from gateway.sip.transaction import Address
from gateway.stores.ports import Binding, MemoryLocationStore, ReservationStore

DIALPLAN = load_dialplan_text(
    """
version: 1
listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]
agents:
  alice:
    password: pw
    location: { street: Main St, house_number: '100', city: Springfield, country: US }
sites:
  hq:
    networks: ['10.1.0.0/16']
    location: { street: Market St, house_number: '1', city: Chicago, country: US }
  lobby:
    networks: ['10.1.9.0/24']
    location: { street: Market St, house_number: '1', city: Chicago, room: L, country: US }
"""
)
HOME = Location(street="Elm St", city="Shelbyville", country="US")
HOP = NextHop(
    "offer", Address("udp", "192.0.2.9", 5060), "911", frozenset(), 2.0, accepts_location=True
)


class Recording:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bool]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.sent.append((topic_suffix, payload, retain))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [payload for topic, payload, _ in self.sent if topic == suffix]


def _binding(host: str, expires_at: float) -> Binding:
    return Binding("alice", f"sip:alice@{host}", expires_at, "c", 1, f"udp:{host}:5060", "UA")


def _service(bindings: list[Binding], desktop: Location | None = None) -> EmergencyService:
    return EmergencyService(
        DIALPLAN,
        cast(ReservationStore, None),
        cast(PresenceService, None),
        Recording(),
        Topics("t", "gw1"),
        lambda agent: bindings,
        desktop_location=lambda agent: desktop,
        wall_clock=lambda: 0.0,
    )


def _invite(*extra: str) -> Request:
    lines = [
        "INVITE urn:service:sos SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
        "From: <sip:alice@gw.example>;tag=a",
        "To: <urn:service:sos>",
        "Call-ID: e-1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def _decorate(service: EmergencyService, call: EmergencyCall, *extra: str) -> str:
    invite = _invite(*extra)
    service.decorate_b_invite(call, HOP, invite, "gw.example")
    return invite.body.decode()


def _agent_call() -> EmergencyCall:
    return EmergencyCall(None, "alice", None, False)


def test_a_site_call_carries_the_sites_address() -> None:
    call = EmergencyCall(None, None, None, False, site="lobby")
    body = _decorate(_service([]), call)
    assert "<ca:ROOM>L</ca:ROOM>" in body and "<gp:method>Wiremap</gp:method>" in body
    assert 'entity="pres:site-lobby@' in body
    assert call.location_source == "site"


def test_the_longest_prefix_of_the_latest_registration_wins() -> None:
    old, new = _binding("192.0.2.50", 100.0), _binding("10.1.9.7", 200.0)
    call = _agent_call()
    body = _decorate(_service([old, new]), call)
    assert "<ca:ROOM>L</ca:ROOM>" in body and call.location_source == "network_map"


def test_desktop_beats_the_network_map_and_static_is_last() -> None:
    call = _agent_call()
    body = _decorate(_service([_binding("10.1.2.3", 100.0)], desktop=HOME), call)
    assert "Shelbyville" in body and call.location_source == "desktop"
    call = _agent_call()
    body = _decorate(_service([_binding("192.0.2.50", 100.0)]), call)
    assert "Springfield" in body and call.location_source == "static"


def test_the_phones_geolocation_is_left_alone() -> None:
    call = _agent_call()
    body = _decorate(_service([], desktop=HOME), call, "Geolocation: <https://lis.example/x>")
    assert body == "" and call.location_source == "phone"


def test_a_path_without_location_gets_none() -> None:
    call = _agent_call()
    invite = _invite()
    service = _service([], desktop=HOME)
    service.decorate_b_invite(
        call, NextHop("sbc", HOP.address, "911", frozenset(), 2.0), invite, "gw.example"
    )
    assert invite.body == b"" and call.location_source == "none"


# -- AgentLocations --------------------------------------------------------------------------


async def _locations() -> tuple[AgentLocations, Recording, MemoryLocationStore]:
    publisher, store = Recording(), MemoryLocationStore()
    locations = AgentLocations(
        DIALPLAN, store, publisher, Topics("t", "gw1"), wall_clock=lambda: 1_700_000_000.0
    )
    await locations.start({"alice": "udp:192.0.2.50:5060"})
    return locations, publisher, store


async def test_commands_are_stored_then_acknowledged_and_published() -> None:
    locations, publisher, store = await _locations()
    try:
        first = publisher.on("agents/alice/location")[-1]
        assert first["source"] == "static" and first["warning"] is not None
        civic = {"street": "Elm St", "city": "Shelbyville", "country": "US"}
        locations.command("alice", {"id": "r1", "location": civic})
        assert locations.desktop("alice") == HOME  # in use at once
        assert publisher.on("agents/alice/location/ack") == []  # acked once stored
        await locations._writes.drain()
        ack = publisher.on("agents/alice/location/ack")[-1]
        assert (ack["id"], ack["accepted"], ack["reason"]) == ("r1", True, None)
        assert [r.civic for r in await store.all()] == [civic]
        state = publisher.on("agents/alice/location")[-1]
        assert (state["source"], state["warning"]) == ("desktop", None)
    finally:
        await locations.close()


class _BrokenStore(MemoryLocationStore):
    async def put(self, record: Any) -> None:
        raise OSError("disk full")


async def test_a_store_failure_is_acknowledged_in_use_but_not_stored() -> None:
    publisher = Recording()
    locations = AgentLocations(DIALPLAN, _BrokenStore(), publisher, Topics("t", "gw1"))
    await locations.start({})
    civic = {"street": "Elm St", "city": "Shelbyville", "country": "US"}
    locations.command("alice", {"id": "r9", "location": civic})
    locations.command("alice", {"id": "r10", "location": None})  # the writer goes on
    await locations.close()  # drains the writes, then stops and awaits the writer task
    acks = publisher.on("agents/alice/location/ack")
    assert [(a["id"], a["accepted"]) for a in acks] == [("r9", True), ("r10", True)]
    assert "not stored (disk full)" in acks[0]["reason"] and acks[1]["reason"] is None
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "location-writer"]
    locations.command("alice", {"id": "r11", "location": civic})  # closed: refused, not queued
    refused = publisher.on("agents/alice/location/ack")[-1]
    assert (refused["id"], refused["accepted"]) == ("r11", False)


async def test_refusals_change_nothing_and_say_why() -> None:
    locations, publisher, store = await _locations()
    try:
        locations.command("alice", "payload is not JSON: Expecting value")
        locations.command("alice", {"id": "r2", "location": {"country": "USA"}})
        locations.command("mallory", {"location": None})
        acks = publisher.on("agents/alice/location/ack")
        assert [a["accepted"] for a in acks] == [False, False]
        assert "not JSON" in acks[0]["reason"] and "ISO 3166" in acks[1]["reason"]
        assert "no agent 'mallory'" in publisher.on("agents/mallory/location/ack")[0]["reason"]
        assert locations.desktop("alice") is None and await store.all() == []
    finally:
        await locations.close()


async def test_the_warning_is_logged_once_and_follows_the_address() -> None:
    locations, publisher, _ = await _locations()
    try:
        count = len(publisher.on("agents/alice/location"))
        locations.registered("alice", "udp:192.0.2.50:5060")  # a refresh: nothing new
        assert len(publisher.on("agents/alice/location")) == count
        locations.registered("alice", "tcp:10.1.2.3:40000")  # into hq
        state = publisher.on("agents/alice/location")[-1]
        assert (state["source"], state["site"], state["warning"]) == ("network_map", "hq", None)
        locations.registered("alice", "udp:[2001:db8::1]:5060")  # out again
        state = publisher.on("agents/alice/location")[-1]
        assert state["registered_from"] == "2001:db8::1" and "no site covers" in state["warning"]
    finally:
        await locations.close()
