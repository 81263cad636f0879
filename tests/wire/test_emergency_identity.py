"""Who is calling: identity that a phone cannot forge, and every way of dialling 911
(SPEC E-1, E-8, E-13; issue 8 holes 1-3).

SIPp plays alice's registered phone, a second phone (or an attacker) on 127.0.0.5 that
writes alice into From and P-Asserted-Identity, the carrier and the carrier's SBC; a small
UDP user agent written here places two calls from alice's registered port at once, which
one SIPp process cannot do.
"""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from broker import Mosquitto
from harness import LOOPBACK, PROJECT_ROOT, GatewayFactory, Sipp, require_tool
from test_emergency import (  # the fixtures are used by name
    DIDS,
    SCHEMA,
    Site,
    carrier,  # noqa: F401
    dial,
    dialplan,
    invite_to,
    open_site,
)

FORGER_HOST = "127.0.0.5"
SITE_NUMBER = "+15555550180"
OPEN_REGISTRAR = (
    "registrar: { realm: test, algorithms: [MD5], unauthenticated_outbound_from: ['%s'] }"
)
SITE = (
    "sites:\n"
    "  lobby:\n"
    "    networks: ['%s']\n"
    "    location: { street: Main St, house_number: '100', city: Springfield, state: IL,"
    " postcode: '62701', country: US, building: HQ, room: lobby }\n"
    f"    callback_number: '{SITE_NUMBER}'\n"
)


def trusting(text: str, network: str) -> str:
    """The dialplan with ``network`` trusted for unauthenticated phones and a site there."""
    text = text.replace("registrar: { realm: test, algorithms: [MD5] }", OPEN_REGISTRAR % network)
    return text + SITE % network


@pytest.fixture
def forger(tmp_path: Path) -> Iterator[Sipp]:
    """SIPp on 127.0.0.5: a phone that is no registration of alice's."""
    factory = Sipp(tmp_path / "forger", binary=require_tool("sipp"), host=FORGER_HOST)
    yield factory
    factory.close()


def reservations(site: Site) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "reservations"],
        capture_output=True,
        text=True,
        env={"GATEWAY_DATA_DIR": str(site.gw.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
        check=True,
    )
    return out.stdout


# -- hole 1: a forged From -------------------------------------------------------------------------


def test_forged_from_on_an_untrusted_network_is_challenged_and_borrows_nothing(
    sipp: Sipp, forger: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    # the production setting: no network is trusted for unauthenticated phones
    for user in ("alice", "mallory"):
        forged = forger.uac(
            "uac_forged_from_407.xml",
            site.gw.address,
            1,
            1,
            service="911",
            timeout=10,
            extra=["-key", "from_user", user],
        )
        forged.assert_calls(1)  # 407, with a digest challenge: not a refusal (E-3)
    # a wrong password is challenged again, and still borrows nothing
    wrong = forger.uac(
        "agent_uac_auth.xml",
        site.gw.address,
        1,
        1,
        service="911",
        timeout=10,
        extra=["-au", "alice", "-ap", "wrong"],
    )
    assert wrong.successful_calls == 0
    assert wrong.files.messages.read_text().count("SIP/2.0 407") == 2
    assert site.events() == []  # no DID, no DND, no location sent, no mail
    assert "agent=" not in reservations(site)
    assert site.presence()[-1] == "Available"
    # with alice's credentials, from the same place, it is alice's emergency call
    right = forger.uac(
        "agent_uac_auth.xml",
        site.gw.address,
        1,
        1,
        service="911",
        timeout=20,
        extra=["-au", "alice", "-ap", "alice-pw"],
    )
    right.assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    invite = invite_to(sbc)
    assert f"P-Asserted-Identity: <sip:{DIDS[0]}@" in invite
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    dialled = next(e for e in site.events() if e["event"] == "dialled")
    assert dialled["agent"] == "alice" and dialled["identified_by"] == "credentials"
    for event in site.events():
        jsonschema.validate(event, SCHEMA)


def test_forged_from_on_a_trusted_network_is_the_sites_call(
    sipp: Sipp, forger: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    text = trusting(dialplan(sbc=(sbc.address,)), f"{FORGER_HOST}/32")
    site = open_site(sipp, gateway_factory, mosquitto, text)
    forger.uac(
        "uac_forged_from.xml",
        site.gw.address,
        1,
        1,
        service="911",
        timeout=20,
        call_length=0.3,
        extra=["-key", "from_user", "alice"],
    ).assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    invite = invite_to(sbc)
    # E-13: the desk phone's site presents its own number; alice lends nothing
    assert f"From: <sip:{SITE_NUMBER}@" in invite
    assert f"P-Asserted-Identity: <sip:{SITE_NUMBER}@" in invite
    assert "alice" not in invite
    assert not any(did in invite for did in DIDS)
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    events = site.events()
    assert "callback_reserved" not in site.names()
    dialled = next(e for e in events if e["event"] == "dialled")
    assert dialled["agent"] is None
    assert dialled["site"] == "lobby"
    assert str(dialled["unidentified_source"]).startswith(f"udp:{FORGER_HOST}:")
    for event in events:
        jsonschema.validate(event, SCHEMA)
        assert event["agent"] is None and event["did"] == SITE_NUMBER
    assert "DoNotDisturb" not in site.presence()  # alice was never put in DND
    assert "agent=" not in reservations(site)


# -- hole 2: the lock-down keys on the registration ------------------------------------------------


class Phone:
    """A minimal UDP user agent on a fixed port: INVITE, ACK, BYE, nothing more."""

    def __init__(self, port: int, gateway: str):
        host, _, gw_port = gateway.rpartition(":")
        self.gateway = (host, int(gw_port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.port = port
        self.backlog: list[str] = []

    def close(self) -> None:
        self.sock.close()

    def _send(self, text: str) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), self.gateway)

    def _wait(self, call_id: str, method: str, timeout: float = 10.0) -> str:
        """The next final response to ``method`` in call ``call_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.backlog):
                if f"Call-ID: {call_id}" in message and re.search(
                    rf"^CSeq: \d+ {method}", message, re.M | re.I
                ):
                    self.backlog.remove(message)
                    if not message.startswith("SIP/2.0 1"):
                        return message
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65535).decode("utf-8", "replace")
            except TimeoutError:
                break
            if data.startswith("SIP/2.0 "):
                self.backlog.append(data.replace("\r\n", "\n"))
            else:  # a request to the phone (a retransmission, a BYE): answer 200
                self._answer(data.replace("\r\n", "\n"))
        raise AssertionError(f"no final response to {method} {call_id}")

    def _answer(self, request: str) -> None:
        head = request.split("\n\n", 1)[0].split("\n")
        keep = [
            h
            for h in head[1:]
            if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
        ]
        self._send("SIP/2.0 200 OK\n" + "\n".join(keep) + "\nContent-Length: 0\n\n")

    def invite(self, number: str) -> tuple[str, str, str]:
        """Place a call; return (Call-ID, final response, From tag)."""
        call_id, tag, branch = secrets.token_hex(8), secrets.token_hex(4), secrets.token_hex(6)
        host, port = self.gateway
        sdp = (
            f"v=0\no=phone 1 1 IN IP4 {LOOPBACK}\ns=-\nc=IN IP4 {LOOPBACK}\nt=0 0\n"
            "m=audio 40000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
        ).replace("\n", "\r\n")
        self._send(
            f"INVITE sip:{number}@{host}:{port} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{branch};rport\n"
            "Max-Forwards: 70\n"
            f"From: <sip:phone@{LOOPBACK}>;tag={tag}\n"
            f"To: <sip:{number}@{host}>\n"
            f"Call-ID: {call_id}\n"
            "CSeq: 1 INVITE\n"
            f"Contact: <sip:phone@{LOOPBACK}:{self.port}>\n"
            "Content-Type: application/sdp\n"
            f"Content-Length: {len(sdp)}\n\n" + sdp.replace("\r\n", "\n")
        )
        final = self._wait(call_id, "INVITE")
        to = re.search(r"^To: (.*)$", final, re.M | re.I)
        assert to is not None
        status = int(final.split(" ", 2)[1])
        ack_branch = branch if status >= 300 else secrets.token_hex(6)
        self._send(
            f"ACK sip:{number}@{host}:{port} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{ack_branch};rport\n"
            "Max-Forwards: 70\n"
            f"From: <sip:phone@{LOOPBACK}>;tag={tag}\n"
            f"To: {to.group(1)}\n"
            f"Call-ID: {call_id}\n"
            "CSeq: 1 ACK\nContent-Length: 0\n\n"
        )
        return call_id, final, tag

    def bye(self, number: str, call_id: str, tag: str, final: str) -> str:
        to = re.search(r"^To: (.*)$", final, re.M | re.I)
        assert to is not None
        host, port = self.gateway
        self._send(
            f"BYE sip:{number}@{host}:{port} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport\n"
            "Max-Forwards: 70\n"
            f"From: <sip:phone@{LOOPBACK}>;tag={tag}\n"
            f"To: {to.group(1)}\n"
            f"Call-ID: {call_id}\n"
            "CSeq: 2 BYE\nContent-Length: 0\n\n"
        )
        return self._wait(call_id, "BYE")


def test_registered_phone_on_a_trusted_network_is_alice_and_locked_down(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """The shipped example's setting: 127.0.0.1 needs no credentials. A call from alice's
    registered port is alice's, so while her 911 call is up her phone places no other."""
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    trunk = carrier.uas("uas_basic.xml", calls=1, timeout=60)
    text = trusting(dialplan(sbc=(sbc.address,)), f"{LOOPBACK}/32").replace(
        "gateways: [ { host: 127.0.0.2, port: 5999 } ]",
        f"gateways: [ {{ host: 127.0.0.2, port: {trunk.address.rpartition(':')[2]} }} ]",
    )
    site = open_site(sipp, gateway_factory, mosquitto, text)
    phone = Phone(site.port, site.gw.address)
    try:
        call_id, answer, tag = phone.invite("911")
        assert answer.startswith("SIP/2.0 200"), answer
        site.recorder.wait_for(lambda: "answered" in site.names(), "the 911 call answered")
        dialled = next(e for e in site.events() if e["event"] == "dialled")
        assert dialled["agent"] == "alice" and dialled["identified_by"] == "registration"
        # E-8: a new outbound call from the same phone during the 911 call is refused
        _, refused, _ = phone.invite("95551234567")
        assert refused.startswith("SIP/2.0 403"), refused
        assert "emergency call" in refused
        assert phone.bye("911", call_id, tag, answer).startswith("SIP/2.0 200")
        site.recorder.wait_for(lambda: "ended" in site.names(), "the 911 call ended")
        # and once it has ended, the phone calls out again (outside line: 9)
        other, answer2, tag2 = phone.invite("95551234567")
        assert answer2.startswith("SIP/2.0 200"), answer2
        assert phone.bye("95551234567", other, tag2, answer2).startswith("SIP/2.0 200")
    finally:
        phone.close()
    trunk.wait(timeout=20).assert_calls(1)  # only the call after the emergency reached it
    sbc.wait(timeout=20).assert_calls(1)


# -- hole 3: 9 + 911 -------------------------------------------------------------------------------


def test_9911_through_an_outside_line_rule_is_an_emergency_call(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    text = dialplan(sbc=(sbc.address,)).replace(
        "trunk: carrier-sbc }", "trunk: carrier-sbc, accepts_location: true }"
    )
    assert "'^9(\\d+)$', rewrite: '\\1', trunk: carrier" in text  # the outside-line rule
    site = open_site(sipp, gateway_factory, mosquitto, text)
    dial(sipp, site, "9911", call_length=0.3).assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    invite = invite_to(sbc)
    assert invite.startswith("INVITE sip:911@")  # to the SBC, not the ordinary carrier
    assert f"From: <sip:{DIDS[0]}@" in invite  # E-4
    assert f"P-Asserted-Identity: <sip:{DIDS[0]}@" in invite
    assert "Geolocation: <cid:" in invite and "application/pidf+xml" in invite  # E-10
    assert "Springfield" in invite
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    names = site.names()
    for name in ("dialled", "route_chosen", "callback_reserved", "trying", "answered", "ended"):
        assert name in names, names
    dialled = next(e for e in site.events() if e["event"] == "dialled")
    assert dialled["dialled"] == "911" and dialled["dialled_as"] == "9911"
    for event in site.events():
        jsonschema.validate(event, SCHEMA)
    site.recorder.wait_for(lambda: site.presence()[-1] == "Available", "presence restored")
    assert site.presence()[-3:] == ["Available", "DoNotDisturb", "Available"]  # E-5
