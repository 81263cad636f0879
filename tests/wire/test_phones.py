"""What real phones and carriers trip over in ordinary calls (issue 15), with SIPp peers.

SIPp plays the agents' phones (REGISTER with digest, then answering, refusing or calling
from the registered port) and the carrier (calling a queue DID from 127.0.0.2, the trunk's
inbound_from address, and answering outbound calls). The real softphone (baresip) is in
test_baresip.py, session timers over the wire in test_session_expiry.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Recorder
from harness import (
    SCENARIO_DIR,
    GatewayFactory,
    GatewayProcess,
    Sipp,
    SippProcess,
    free_port,
    require_tool,
)

DID = "+15555550100"
AGENTS = ("alice", "bob")


def dialplan(*, carrier_gateway: str = "127.0.0.2:5999", extra_rules: str = "") -> str:
    gw_host, _, gw_port = carrier_gateway.rpartition(":")
    agents = "".join(
        f"  {name}:\n"
        f"    password: {name}-pw\n"
        f'    identity: "+1555555020{i}"\n'
        "    capacity: 1\n"
        "    queues: [support]\n"
        for i, name in enumerate(AGENTS)
    )
    return (
        "version: 1\n"
        "node: { name: gw1 }\n"
        "listen:\n"
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
        "  - { transport: tcp, host: ${listen_host}, port: ${listen_port} }\n"
        "registrar: { realm: test, algorithms: [MD5], min_expires_s: 1 }\n"
        "trunks:\n"
        "  carrier:\n"
        f"    gateways: [ {{ host: {gw_host}, port: {gw_port} }} ]\n"
        "    inbound_from: ['127.0.0.2']\n"
        "    trusted: true\n"
        "outbound:\n"
        f"{extra_rules}"
        "  - { name: all, match: '.*', trunk: carrier }\n"
        f"agents:\n{agents}"
        "queues:\n"
        "  support: { ring_timeout_s: 5, max_wait_s: 30, refused_rest_s: 30 }\n"
        "inbound:\n"
        "  - { name: support-line, match: '^\\+15555550100$', queue: support }\n"
    )


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[Sipp]:
    """SIPp on 127.0.0.2: the carrier's side of inbound calls."""
    factory = Sipp(tmp_path / "carrier", binary=require_tool("sipp"), host="127.0.0.2")
    yield factory
    factory.close()


def register(sipp: Sipp, gw: GatewayProcess, agent: str, port: int, *, expires: int = 3600) -> None:
    """One REGISTER pair (401, then digest) from ``port``; fails the test unless 200."""
    result = sipp.uac(
        "agent_register.xml",
        gw.address,
        1,
        1,
        service=agent,
        local_port=port,
        timeout=10,
        extra=["-au", agent, "-ap", f"{agent}-pw", "-key", "expires", str(expires)],
    )
    result.assert_calls(1)


def rejecting_phone(sipp: Sipp, port: int, status: int) -> SippProcess:
    """An agent's phone that answers every INVITE with ``status`` (the agent rejects)."""
    template = (SCENARIO_DIR / "uas_reject.xml").read_text()
    path = sipp.workdir / f"uas_reject_{status}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(template.replace("SIP/2.0 503 Service Unavailable", f"SIP/2.0 {status} Nope"))
    return sipp.uas(path, port, calls=1, timeout=40)


def log_events(gw: GatewayProcess, event: str) -> list[dict[str, object]]:
    marker = f'"{event}"'
    return [json.loads(line) for line in gw.log_text().splitlines() if marker in line]


# -- hole 1: a refused queue offer ------------------------------------------------------------


def test_an_agent_rejecting_a_queued_call_leaves_the_caller_waiting_and_the_next_agent_rings(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory
) -> None:
    gw = gateway_factory(dialplan())
    ports = {agent: free_port() for agent in AGENTS}
    for agent in AGENTS:
        register(sipp, gw, agent, ports[agent])
    # equal idle times go by agent id: alice is offered the call first, and rejects it
    alice = rejecting_phone(sipp, ports["alice"], 486)
    bob = sipp.uas("uas_basic.xml", ports["bob"], calls=1, timeout=40)
    caller = carrier.uac("uac_queued.xml", gw.address, 1, 1, service=DID, timeout=30)
    caller.assert_calls(1)
    alice.wait(timeout=20).assert_calls(1)
    bob.wait(timeout=20).assert_calls(1)
    received = caller.files.messages.read_text()
    assert "SIP/2.0 486" not in received, "the agent's refusal reached the caller"
    assert [o["agent"] for o in log_events(gw, "queue_offer")] == ["alice", "bob"]
    (failed,) = log_events(gw, "queue_offer_failed")
    assert failed["status"] == 486 and failed["refused"] is True


# -- hole 8: an explicit un-REGISTER ----------------------------------------------------------


def test_an_unregister_is_published_as_unregistered(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    prefix = "phones-unregister"
    gw = gateway_factory(
        dialplan(), env={"GATEWAY_MQTT_URL": mosquitto.url, "GATEWAY_MQTT_PREFIX": prefix}
    )
    topic = f"{prefix}/agents/alice/presence"
    recorder = Recorder(mosquitto.port, topic)
    try:
        port = free_port()
        register(sipp, gw, "alice", port)
        recorder.wait_for(
            lambda: recorder.on(topic)[-1:] and recorder.on(topic)[-1]["status"] == "Available",
            "alice Available",
        )
        register(sipp, gw, "alice", port, expires=0)
        recorder.wait_for(lambda: recorder.on(topic)[-1]["status"] == "Offline", "alice Offline")
        assert recorder.on(topic)[-1]["reason"] == "unregistered"
    finally:
        recorder.close()


# -- hole 4: Require ----------------------------------------------------------------------------


def test_an_invite_requiring_100rel_is_answered_420_with_unsupported(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    trunk = sipp.uas("uas_basic.xml", calls=1, timeout=20)
    gw = gateway_factory(dialplan(carrier_gateway=trunk.address))
    port = free_port()
    register(sipp, gw, "alice", port)
    result = sipp.uac(
        "uac_require_100rel.xml", gw.address, 1, 1, service="5551234", local_port=port, timeout=10
    )
    result.assert_calls(1)
    assert "SIP/2.0 420 Bad Extension" in result.files.messages.read_text()
    assert trunk.stop(grace=0.5).successful_calls == 0  # nothing reached the carrier


# -- hole 6: the TCP keep-alive ---------------------------------------------------------------


def test_a_crlf_ping_on_tcp_gets_a_single_crlf_pong_and_the_flow_still_carries_sip(
    gateway_factory: GatewayFactory,
) -> None:
    """RFC 5626 section 3.5.1 over plain TCP, as a phone's outbound keep-alive sends it."""
    gw = gateway_factory(dialplan())
    with socket.create_connection((gw.listen_host, gw.listen_port), timeout=5) as flow:
        local_host, local_port = flow.getsockname()[:2]
        flow.sendall(b"\r\n\r\n")
        assert flow.recv(64) == b"\r\n"
        options = (
            f"OPTIONS sip:{gw.address} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {local_host}:{local_port};branch=z9hG4bK-crlf-1\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{local_host}>;tag=crlf\r\n"
            f"To: <sip:{gw.address}>\r\n"
            "Call-ID: crlf-ping-1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        flow.sendall(options.encode())
        answer = flow.recv(4096)
        assert answer.startswith(b"SIP/2.0 200 "), answer[:80]


# -- holes 2 and 3: an agent's outbound call: capacity, presence, caller ID --------------------


def test_an_agent_on_an_outbound_call_is_busy_offered_nothing_and_presents_its_own_number(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """alice calls out from her registered phone (identified by its registration, no
    credentials) with a forged From and P-Asserted-Identity: the carrier sees her own
    E.164 identity in both, she is Busy (capacity 1), and the queued call goes to bob."""
    prefix = "phones-outbound"
    trunk = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    gw = gateway_factory(
        dialplan(carrier_gateway=trunk.address),
        env={"GATEWAY_MQTT_URL": mosquitto.url, "GATEWAY_MQTT_PREFIX": prefix},
    )
    recorder = Recorder(mosquitto.port, f"{prefix}/agents/+/presence")

    def status(agent: str, wanted: str) -> None:
        topic = f"{prefix}/agents/{agent}/presence"
        recorder.wait_for(
            lambda: any(p.get("status") == wanted for p in recorder.on(topic)[-1:]),
            f"{agent} {wanted}",
        )

    try:
        ports = {agent: free_port() for agent in AGENTS}
        for agent in AGENTS:
            register(sipp, gw, agent, ports[agent])
            status(agent, "Available")
        bob = sipp.uas("uas_basic.xml", ports["bob"], calls=1, timeout=40)
        outbound = sipp.start_uac(
            "uac_forged_from.xml",
            gw.address,
            1,
            1,
            service="5551234",
            local_port=ports["alice"],
            timeout=30,
            call_length=4.0,
            extra=["-key", "from_user", "+19995550000"],
        )
        status("alice", "Busy")
        carrier.uac("uac_queued.xml", gw.address, 1, 1, service=DID, timeout=20).assert_calls(1)
        bob.wait(timeout=20).assert_calls(1)
        outbound.wait(timeout=20).assert_calls(1)
        trunk.wait(timeout=20).assert_calls(1)
        status("alice", "Available")
        assert [o["agent"] for o in log_events(gw, "queue_offer")] == ["bob"]
        received = trunk.result().files.messages.read_text()
        invite = received[received.index("INVITE sip:5551234@") :].split("\n\n")[0]
        headers = {
            line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip()
            for line in invite.splitlines()[1:]
            if ":" in line
        }
        assert "<sip:+15555550200@" in headers["from"], invite
        assert "<sip:+15555550200@" in headers["p-asserted-identity"], invite
        assert "+19995550000" not in invite
    finally:
        recorder.close()
