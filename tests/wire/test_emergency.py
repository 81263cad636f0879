"""Emergency calls and callbacks end to end (SPEC E-1..E-12, C-1..C-4).

SIPp plays the agent's phone (registered, dialling from its registered port), the
carrier's SBC gateways, the direct-offer service and the emergency-services side calling
back; a Mosquitto started here carries the presence and the emergency events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from broker import OPEN_RECORDERS, Mosquitto, Recorder
from harness import (
    LOOPBACK,
    PROJECT_ROOT,
    SCENARIO_DIR,
    GatewayFactory,
    GatewayProcess,
    Sipp,
    SippProcess,
    SippResult,
    free_port,
    require_tool,
)

DIDS = ("+15555550190", "+15555550191")
SCHEMA = json.loads((PROJECT_ROOT / "docs" / "schemas" / "emergency-event.v1.json").read_text())


def dialplan(
    *, sbc: tuple[str, ...] = (), offer: tuple[str, ...] = (), window: float = 3600
) -> str:
    """alice (US) behind the gateway; ``sbc`` gateways with a 911/933 rule; ``offer``."""

    def gateways(addresses: tuple[str, ...]) -> str:
        return ", ".join(
            f"{{ host: {a.rpartition(':')[0]}, port: {a.rpartition(':')[2]} }}" for a in addresses
        )

    lines = [
        "version: 1",
        "node: { name: gw1 }",
        "listen:",
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }",
        "registrar: { realm: test, algorithms: [MD5] }",
        "trunks:",
        "  carrier:",
        "    gateways: [ { host: 127.0.0.2, port: 5999 } ]",
        "    inbound_from: ['127.0.0.2']",
        "    trusted: true",
    ]
    if sbc:
        lines += [
            "  carrier-sbc:",
            f"    gateways: [ {gateways(sbc)} ]",
            "    trusted: true",
        ]
    lines += [
        "outbound:",
        "  - { name: nine, match: '^9(\\d+)$', rewrite: '\\1', trunk: carrier }",
        "emergency:",
        "  provisional_timeout_s: 2",
        "  callback_ring_timeout_s: 3",
    ]
    if sbc:
        lines += [
            "  direct_routing:",
            "    - { name: sbc-911, match: '^(911|933)$', trunk: carrier-sbc }",
        ]
    if offer:
        lines += [f"  direct_offer: {{ enabled: true, gateways: [ {gateways(offer)} ] }}"]
    lines += [
        f"  callback: {{ dids: [{', '.join(repr(d) for d in DIDS)}], window_s: {window} }}",
        "agents:",
        "  alice:",
        "    password: alice-pw",
        '    identity: "+15555550101"',
        "    display_name: Alice Agent",
        "    emergency_contacts: 'sup@example.com; security@example.com'",
        "    queues: [support]",
        "    location: { street: Main St, house_number: '100', city: Springfield, state: IL,"
        " postcode: '62701', country: US, floor: '2', room: '210' }",
        "    callback_fallback: ${fallback}",
        "queues:",
        "  support: {}",
        "inbound:",
        "  - { name: line, match: '^\\+15555550100$', queue: support }",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[Sipp]:
    factory = Sipp(tmp_path / "carrier", binary=require_tool("sipp"), host="127.0.0.2")
    yield factory
    factory.close()


class Site:
    """A gateway, an MQTT recorder, and alice's phone registered on ``port``."""

    def __init__(self, gw: GatewayProcess, recorder: Recorder, prefix: str, port: int):
        self.gw, self.recorder, self.prefix, self.port = gw, recorder, prefix, port

    def events(self) -> list[dict[str, object]]:
        with self.recorder._lock:
            return [m.payload for m in self.recorder.messages if "/emergency/" in m.topic]

    def names(self) -> list[str]:
        return [str(e["event"]) for e in self.events()]

    def presence(self) -> list[str]:
        return [str(p["status"]) for p in self.recorder.on(f"{self.prefix}/agents/alice/presence")]


def open_site(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    text: str,
    *,
    fallback: str = "sip:security@127.0.0.1:5999",
    register: bool = True,
) -> Site:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    text = text.replace("${fallback}", f"'{fallback}'")
    gw = gateway_factory(
        text, env={"GATEWAY_MQTT_URL": mosquitto.url, "GATEWAY_MQTT_PREFIX": prefix}
    )
    recorder = Recorder(mosquitto.port, f"{prefix}/#")
    OPEN_RECORDERS.append(recorder)
    port = free_port()
    site = Site(gw, recorder, prefix, port)
    if register:
        result = sipp.uac(
            "agent_register.xml",
            gw.address,
            1,
            1,
            service="alice",
            local_port=port,
            timeout=10,
            extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
        )
        result.assert_calls(1)
        recorder.wait_for(lambda: site.presence()[-1:] == ["Available"], "alice Available")
    return site


def dial(
    sipp: Sipp,
    site: Site,
    number: str,
    scenario: str = "uac_basic.xml",
    *,
    call_length: float | None = None,
) -> SippResult:
    return sipp.uac(
        scenario,
        site.gw.address,
        1,
        1,
        service=number,
        local_port=site.port,
        timeout=20,
        call_length=call_length,
    )


def assert_no_cdr(gw: GatewayProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "cdr", "--json"],
        capture_output=True,
        text=True,
        env={"GATEWAY_DATA_DIR": str(gw.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "", out.stdout  # SPEC E-9


def invite_to(uas: SippProcess) -> str:
    text = uas.result().files.messages.read_text()
    start = text.index("INVITE ")
    return text[start : text.index("\n\n", start) + 2000]


# -- routes ----------------------------------------------------------------------------------------


def test_911_goes_to_the_sbc_with_the_callback_did(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    # an outside-line rule 9(\d+) exists, and still 911 is never turned into 11 (E-1)
    dial(sipp, site, "911", call_length=0.5).assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    invite = invite_to(sbc)
    assert invite.startswith("INVITE sip:911@")
    assert f"From: <sip:{DIDS[0]}@" in invite  # E-4
    assert f"P-Asserted-Identity: <sip:{DIDS[0]}@" in invite
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    # no mail server in this test: the contacts' notification fails, and says so (E-6)
    assert site.names() == [
        "dialled",
        "route_chosen",
        "callback_reserved",
        "trying",
        "notification_failed",
        "answered",
        "ended",
    ]
    for event in site.events():
        jsonschema.validate(event, SCHEMA)
        assert event["agent"] == "alice" and event["test"] is False
    site.recorder.wait_for(lambda: site.presence()[-1] == "Available", "presence restored")
    assert site.presence()[-3:] == ["Available", "DoNotDisturb", "Available"]  # E-5
    assert_no_cdr(site.gw)


def test_without_a_rule_911_goes_to_direct_offer_with_location(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(offer=(offer.address,)))
    dial(sipp, site, "911").assert_calls(1)
    offer.wait(timeout=20).assert_calls(1)
    invite = invite_to(offer)
    assert invite.startswith("INVITE urn:service:sos SIP/2.0")
    assert "Content-Type: multipart/mixed" in invite
    assert "application/pidf+xml" in invite and "<ca:A3>Springfield</ca:A3>" in invite
    assert "Geolocation: <cid:" in invite  # E-10, RFC 6442


def test_sbc_failover_then_direct_offer(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    template = (SCENARIO_DIR / "uas_reject.xml").read_text()
    first = sipp.uas("uas_reject.xml", calls=1, timeout=30)  # 503
    second_path = sipp.workdir / "uas_reject_504.xml"
    second_path.parent.mkdir(parents=True, exist_ok=True)
    second_path.write_text(
        template.replace("SIP/2.0 503 Service Unavailable", "SIP/2.0 504 Timeout")
    )
    second = sipp.uas(second_path, calls=1, timeout=30)
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(
        sipp,
        gateway_factory,
        mosquitto,
        dialplan(sbc=(first.address, second.address), offer=(offer.address,)),
    )
    dial(sipp, site, "911").assert_calls(1)
    first.wait(timeout=20).assert_calls(1)
    second.wait(timeout=20).assert_calls(1)
    offer.wait(timeout=20).assert_calls(1)
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    names = site.names()
    assert names.count("trying") == 3 and names.count("failover") == 2, names
    routes = [e["route"] for e in site.events() if e["event"] == "trying"]
    assert routes == [
        "direct-routing:carrier-sbc",
        "direct-routing:carrier-sbc",
        "direct-offer",
    ]


def test_no_path_gives_503_with_warning_and_events(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    site = open_site(sipp, gateway_factory, mosquitto, dialplan())
    result = dial(sipp, site, "911", scenario="uac_expect_503.xml")
    result.assert_calls(1)
    assert "Warning: 399" in result.files.messages.read_text()
    site.recorder.wait_for(lambda: "failed" in site.names(), "the failed event")
    assert site.names()[:2] == ["dialled", "route_chosen"]
    site.recorder.wait_for(lambda: site.presence()[-1] == "Available", "presence restored")
    assert "DoNotDisturb" in site.presence()


def test_far_end_hangs_up_and_presence_comes_back(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_hangup.xml", calls=1, timeout=30, call_length=0.5)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    dial(sipp, site, "911", scenario="uac_callee_hangup.xml").assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    site.recorder.wait_for(lambda: site.presence()[-1] == "Available", "presence restored")
    assert site.presence()[-3:] == ["Available", "DoNotDisturb", "Available"]


def test_a_911_invite_without_contact_is_placed_and_the_sbc_hangup_reaches_the_phone(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A broken phone's INVITE has no Contact (RFC 3261 8.1.1.8: it MUST; an ordinary call
    gets 400, see the unit tests), but its 911 is placed (E-3), and the BYE of the
    emergency side reaches the phone at the INVITE's source."""
    text = (SCENARIO_DIR / "uac_callee_hangup.xml").read_text()
    invite_contact = "      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>\n"
    assert text.count(invite_contact) >= 1
    first = text.index(invite_contact)
    no_contact = tmp_path / "uac_no_contact_callee_hangup.xml"
    no_contact.write_text(text[:first] + text[first + len(invite_contact) :])
    sbc = sipp.uas("uas_hangup.xml", calls=1, timeout=30, call_length=0.5)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    # the phone's scenario succeeds only when the SBC's BYE, relayed, reaches it
    dial(sipp, site, "911", scenario=str(no_contact)).assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    assert f"From: <sip:{DIDS[0]}@" in invite_to(sbc)  # the whole treatment (E-4)
    assert "emergency_call_without_contact" in site.gw.log_text()
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")


def test_933_is_a_test_call_without_dnd(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    dial(sipp, site, "933").assert_calls(1)
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    assert all(e["test"] is True for e in site.events())  # E-12
    assert "DoNotDisturb" not in site.presence()


# -- callbacks -------------------------------------------------------------------------------------


def test_callback_rings_the_agent_in_dnd_ahead_of_routing(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    dial(sipp, site, "911").assert_calls(1)
    site.recorder.publish(f"{site.prefix}/agents/alice/presence/set", {"status": "DoNotDisturb"})
    site.recorder.wait_for(lambda: site.presence()[-1] == "DoNotDisturb", "alice DND")
    phone = sipp.uas("uas_basic.xml", site.port, calls=1, timeout=30)
    carrier.uac(
        "uac_psap_callback.xml", site.gw.address, 1, 1, service=DIDS[0], timeout=20
    ).assert_calls(1)
    phone.wait(timeout=20).assert_calls(1)
    rung = invite_to(phone)
    assert "Priority: psap-callback" in rung  # kept: the carrier trunk is trusted (C-2)
    site.recorder.wait_for(lambda: "callback_answered" in site.names(), "callback answered")
    assert_no_cdr(site.gw)  # C-4 / E-9


def test_callback_goes_to_the_fallback_when_the_agent_is_unreachable(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    security = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(
        sipp,
        gateway_factory,
        mosquitto,
        dialplan(sbc=(sbc.address,)),
        fallback=f"sip:security@{security.address}",
    )
    dial(sipp, site, "911").assert_calls(1)
    # alice's phone is gone (nothing listens on its registered port): ring, give up, fallback
    carrier.uac(
        "uac_psap_callback.xml", site.gw.address, 1, 1, service=DIDS[0], timeout=30
    ).assert_calls(1)
    security.wait(timeout=20).assert_calls(1)


def test_untrusted_source_gets_no_priority_and_no_bypass(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    dial(sipp, site, "911").assert_calls(1)
    # the same callback from an agent-side address: not a trunk, no bypass, stripped
    result = sipp.uac("uac_psap_callback.xml", site.gw.address, 1, 1, service=DIDS[0], timeout=15)
    assert result.successful_calls == 0
    assert "priority_stripped" in site.gw.log_text()
    assert "callback_ringing" not in site.names()


def test_killed_gateway_keeps_the_callback_and_leaves_no_dnd(
    sipp: Sipp,
    carrier: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    text = dialplan(sbc=(sbc.address,)).replace("${fallback}", "'sip:security@127.0.0.1:5999'")
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    env = {
        "GATEWAY_MQTT_URL": mosquitto.url,
        "GATEWAY_MQTT_PREFIX": prefix,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
    }
    listen = free_port()
    gw = gateway_factory(text, listen_port=listen, env=env)
    recorder = Recorder(mosquitto.port, f"{prefix}/#")
    site = Site(gw, recorder, prefix, free_port())
    try:
        sipp.uac(
            "agent_register.xml",
            gw.address,
            1,
            1,
            service="alice",
            local_port=site.port,
            timeout=10,
            extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
        ).assert_calls(1)
        # the emergency call is up (long) when the gateway dies
        caller = sipp.start_uac(
            "uac_basic.xml",
            gw.address,
            1,
            1,
            service="911",
            local_port=site.port,
            timeout=30,
            call_length=20,
        )
        recorder.wait_for(lambda: site.presence()[-1:] == ["DoNotDisturb"], "alice DND")
        recorder.wait_for(lambda: "callback_reserved" in site.names(), "the reservation")
        time.sleep(0.5)
        gw.kill9()
        caller.stop(grace=1)
        gw2 = gateway_factory(text, listen_port=listen, env=env)
        site.gw = gw2
        recorder.wait_for(
            lambda: (
                (recorder.on(f"{prefix}/agents/alice/presence") or [{}])[-1].get("reason")
                == "gateway_started"
            ),
            "presence after the restart",
        )
        assert site.presence()[-1] == "Available"  # not stuck in DND (E-5)
        phone = sipp.uas("uas_basic.xml", site.port, calls=1, timeout=30)
        carrier.uac(
            "uac_psap_callback.xml", gw2.address, 1, 1, service=DIDS[0], timeout=20
        ).assert_calls(1)
        phone.wait(timeout=20).assert_calls(1)  # the reservation survived (E-4)
    finally:
        recorder.close()


def test_ordinary_call_beside_them_has_its_cdr(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    dial(sipp, site, "911").assert_calls(1)
    phone = sipp.uas("uas_basic.xml", site.port, calls=1, timeout=30)
    carrier.uac(
        "uac_queued.xml", site.gw.address, 1, 1, service="+15555550100", timeout=20
    ).assert_calls(1)
    phone.wait(timeout=20).assert_calls(1)
    time.sleep(0.5)
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "cdr", "--json"],
        capture_output=True,
        text=True,
        env={"GATEWAY_DATA_DIR": str(site.gw.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["callee"] for r in rows] == ["+15555550100"]  # the 911 call left none


_ = LOOPBACK


def test_agent_cannot_put_an_emergency_call_on_hold(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """SPEC E-8: during the emergency call the agent side can only end it."""
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    call = dial(sipp, site, "911", scenario="uac_hold_refused.xml", call_length=2.0)
    call.assert_calls(1)  # the hold re-INVITE got 403 + Warning, then BYE ended it
    sbc.wait(timeout=20).assert_calls(1)
    received = sbc.result().files.messages.read_text()
    assert received.count("INVITE sip:") == 1  # the hold never reached the SBC


def test_emergency_contacts_get_a_mail_even_when_the_server_comes_up_late(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """SPEC E-6: one mail per contact, after the INVITE is out, never delaying the call."""
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self) -> None:
            self.mails: list[tuple[list[str], str]] = []

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            content = envelope.content  # type: ignore[attr-defined]
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
            self.mails.append((list(envelope.rcpt_tos), text))  # type: ignore[attr-defined]
            return "250 OK"

    smtp_port = free_port("tcp")
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    text = dialplan(sbc=(sbc.address,)).replace("${fallback}", "'sip:security@127.0.0.1:5999'")
    gw = gateway_factory(
        text,
        env={
            "GATEWAY_MQTT_URL": mosquitto.url,
            "GATEWAY_MQTT_PREFIX": prefix,
            "GATEWAY_SMTP_HOST": "127.0.0.1",
            "GATEWAY_SMTP_PORT": str(smtp_port),
            "GATEWAY_SMTP_SECURITY": "none",
            "GATEWAY_NOTIFY_RETRY_BASE_S": "0.5",
            "GATEWAY_NOTIFY_RETRY_MAX_S": "1",
        },
    )
    recorder = Recorder(mosquitto.port, f"{prefix}/#")
    site = Site(gw, recorder, prefix, free_port())
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    try:
        sipp.uac(
            "agent_register.xml",
            gw.address,
            1,
            1,
            service="alice",
            local_port=site.port,
            timeout=10,
            extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
        ).assert_calls(1)
        # the mail server is down: the call still connects at once
        started = time.monotonic()
        dial(sipp, site, "911").assert_calls(1)
        assert time.monotonic() - started < 5
        controller.start()  # now it comes up: the outbox delivers
        deadline = time.monotonic() + 20
        while len(inbox.mails) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        recipients = sorted(r for rcpts, _ in inbox.mails for r in rcpts)
        assert recipients == ["security@example.com", "sup@example.com"], inbox.mails
        body = inbox.mails[0][1]
        for fact in ("911", "Alice Agent", DIDS[0], "Springfield", "direct-routing"):
            assert fact in body, (fact, body[:2000])
        recorder.wait_for(lambda: "notification_sent" in site.names(), "notification_sent")
    finally:
        if controller.server is not None:
            controller.stop()
        recorder.close()


def test_callback_after_the_window_is_an_ordinary_inbound_call(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """SPEC C-1: after the window the DID is an ordinary number (here: no inbound rule)."""
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,), window=1.5))
    dial(sipp, site, "911").assert_calls(1)
    time.sleep(2.0)
    scenario = site.gw.workdir / "uac_expect_404.xml"
    scenario.write_text(
        (SCENARIO_DIR / "uac_expect_503.xml")
        .read_text()
        .replace('response="503"', 'response="404"')
    )
    carrier.uac(scenario, site.gw.address, 1, 1, service=DIDS[0], timeout=15).assert_calls(1)
    assert "callback_ringing" not in site.names()


def test_refer_from_the_emergency_side_is_honoured(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """SPEC E-8 (RFC 6881 SP-37/38): the emergency side may transfer; the REFER reaches
    the agent's phone with its Refer-To, and the phone's 202 goes back."""
    sbc = sipp.uas("uas_refer.xml", calls=1, timeout=40, call_length=0.5)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    dial(sipp, site, "911", scenario="uac_refer_target.xml").assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    refer = sipp_received(sbc, "SIP/2.0 202")
    assert refer, "the SBC got no 202 for its REFER"


def sipp_received(process: SippProcess, start: str) -> bool:
    text = process.result().files.messages.read_text()
    return any(block.lstrip().startswith(start) for block in text.split("\n\n"))


def test_callback_rings_an_agent_on_another_call_ahead_of_a_waiting_queue(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """SPEC C-1: the callback bypasses queues, capacity and presence (DND included)."""
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)))
    dial(sipp, site, "911").assert_calls(1)
    site.recorder.wait_for(lambda: site.presence()[-1] == "Available", "after the 911 call")
    # alice's phone takes a long queued call (capacity 1: Busy), then the callback
    phone = sipp.uas("uas_basic.xml", site.port, calls=2, timeout=60)
    busy_call = carrier.start_uac(
        "uac_queued.xml",
        site.gw.address,
        1,
        1,
        service="+15555550100",
        timeout=40,
        call_length=8,
    )
    site.recorder.wait_for(lambda: site.presence()[-1] == "Busy", "alice Busy")
    site.recorder.publish(f"{site.prefix}/agents/alice/presence/set", {"status": "DoNotDisturb"})
    site.recorder.wait_for(lambda: site.presence()[-1] == "DoNotDisturb", "alice DND")
    # a second caller now waits in the queue: no agent can take it
    waiting = carrier.start_uac(
        "uac_queued.xml", site.gw.address, 1, 1, service="+15555550100", timeout=40
    )
    time.sleep(0.5)
    assert waiting.running
    callback = carrier.uac(
        "uac_psap_callback.xml", site.gw.address, 1, 1, service=DIDS[0], timeout=20
    )
    callback.assert_calls(1)  # rang and answered while the queue caller still waits
    assert waiting.running
    busy_call.wait(timeout=30).assert_calls(1)
    phone.wait(timeout=30).assert_calls(2)
    waiting.stop(grace=1)


def test_a_path_the_phone_wrote_itself_does_not_steer_its_callback(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    # alice registers straight to the node (no front configured) with a Path naming a host
    # of her choosing: kept, it would route every call to her, the PSAP's callback first,
    # through that host (RFC 3327 lets only a trusted proxy add Path: the node's fronts)
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)), register=False)
    elsewhere = f"{LOOPBACK}:{free_port()}"
    registered = sipp.uac(
        "agent_register_path.xml",
        site.gw.address,
        1,
        1,
        service="alice",
        local_port=site.port,
        timeout=10,
        extra=[
            *("-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"),
            *("-key", "path_host", elsewhere),
        ],
    )
    registered.assert_calls(1)
    trace = registered.files.messages.read_text()
    ok = trace[trace.index("SIP/2.0 200") :]
    assert "\nPath:" not in ok[: ok.index("\n\n")], ok[:1500]  # no route set stored
    site.recorder.wait_for(lambda: site.presence()[-1:] == ["Available"], "alice Available")
    assert '"event": "register_path_ignored"' in site.gw.log_text()
    dial(sipp, site, "911").assert_calls(1)
    phone = sipp.uas("uas_basic.xml", site.port, calls=1, timeout=30)
    carrier.uac(
        "uac_psap_callback.xml", site.gw.address, 1, 1, service=DIDS[0], timeout=20
    ).assert_calls(1)
    phone.wait(timeout=20).assert_calls(1)  # rung at her Contact, not through `elsewhere`
    assert "Route:" not in invite_to(phone)
