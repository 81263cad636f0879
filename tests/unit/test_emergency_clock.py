"""The emergency edge reads time and randomness only from what it is given (issue 9)."""

from __future__ import annotations

from typing import Any, cast

from gateway.b2bua.call import NextHop
from gateway.config.loader import load_dialplan_text
from gateway.emergency.service import EmergencyCall, EmergencyService
from gateway.events.ports import Topics
from gateway.presence.service import PresenceService
from gateway.sip.address import Address
from gateway.sip.message import Request, parse_message
from gateway.stores.ports import ReservationStore

DIALPLAN = load_dialplan_text(
    """
version: 1
listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]
agents:
  alice:
    password: pw
    location: { street: Main St, house_number: '100', city: Springfield, country: US }
"""
)
#: 2001-09-09T01:46:40Z
CLOCK = 1_000_000_000.0
HOP = NextHop(
    "offer", Address("udp", "192.0.2.9", 5060), "911", frozenset(), 2.0, accepts_location=True
)


class Recording:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.sent.append(payload)


def service(publisher: Recording) -> EmergencyService:
    return EmergencyService(
        DIALPLAN,
        cast(ReservationStore, None),
        cast(PresenceService, None),
        publisher,
        Topics("t", "gw1"),
        lambda agent: [],
        wall_clock=lambda: CLOCK,
        token=lambda nbytes: "ab" * nbytes,
    )


def invite() -> Request:
    text = (
        "INVITE urn:service:sos SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1\r\n"
        "From: <sip:alice@gw.example>;tag=a\r\nTo: <urn:service:sos>\r\nCall-ID: e-1\r\n"
        "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def test_the_location_body_takes_the_injected_clock_and_token() -> None:
    request = invite()
    service(Recording()).decorate_b_invite(
        EmergencyCall(None, "alice", None, False), HOP, request, "gw.example"
    )
    body = request.body.decode()
    assert "2001-09-09T01:46:40Z" in body
    assert "abababababababab" in (request.get("Content-Type") or "")


def test_events_and_lockdown_are_stamped_with_the_injected_clock() -> None:
    publisher = Recording()
    edge = service(publisher)
    call = EmergencyCall(None, "alice", None, False)
    edge.event("e-1", call, "dialled")
    edge.lockdown("alice", "e-1", None)
    assert [payload["timestamp"] for payload in publisher.sent] == ["2001-09-09T01:46:40.000Z"] * 2
