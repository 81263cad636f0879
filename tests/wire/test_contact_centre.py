"""Agents, presence, queues and the MQTT contract, end to end (SPEC R-1, R-3, R-4, R-5, M-1).

Real peers only: SIPp plays the agents' phones (REGISTER with digest, then answering as a
uas on the registered port) and the carrier (calling a queue DID from 127.0.0.2, the
trunk's inbound_from address); a Mosquitto started here carries presence both ways.
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
from broker import Mosquitto, Recorder
from harness import (
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

DID = "+15555550100"
AGENTS = ("alice", "bob", "carol", "dave")
SCHEMAS = PROJECT_ROOT / "docs" / "schemas"


def dialplan(
    *,
    max_wait: float = 30.0,
    ring_timeout: float = 3.0,
    overflow: str = "{ status: 480 }",
    carrier_gateway: str = "127.0.0.2:5999",
) -> str:
    gw_host, _, gw_port = carrier_gateway.rpartition(":")
    agents = "".join(
        f"  {name}:\n"
        f"    password: {name}-pw\n"
        f'    identity: "+1555555010{i}"\n'
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
        "outbound:\n"
        "  - { name: all, match: '.*', trunk: carrier }\n"
        f"agents:\n{agents}"
        "queues:\n"
        "  support:\n"
        f"    ring_timeout_s: {ring_timeout}\n"
        f"    max_wait_s: {max_wait}\n"
        f"    overflow: {overflow}\n"
        "inbound:\n"
        "  - { name: support-line, match: '^\\+15555550100$', queue: support }\n"
    )


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[Sipp]:
    """SIPp on 127.0.0.2: the carrier's side of inbound calls."""
    factory = Sipp(tmp_path / "carrier", binary=require_tool("sipp"), host="127.0.0.2")
    yield factory
    factory.close()


def start(
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    prefix: str,
    text: str | None = None,
    **env: str,
) -> GatewayProcess:
    return gateway_factory(
        text or dialplan(),
        env={"GATEWAY_MQTT_URL": mosquitto.url, "GATEWAY_MQTT_PREFIX": prefix, **env},
    )


def register(
    sipp: Sipp,
    gw: GatewayProcess,
    agent: str,
    port: int,
    *,
    password: str | None = None,
    expires: int = 3600,
) -> bool:
    """One REGISTER transaction pair (401 then digest) from ``port``; True on 200."""
    result = sipp.uac(
        "agent_register.xml",
        gw.address,
        1,
        1,
        service=agent,
        local_port=port,
        timeout=10,
        extra=["-au", agent, "-ap", password or f"{agent}-pw", "-key", "expires", str(expires)],
    )
    return result.successful_calls == 1


def set_presence(recorder: Recorder, prefix: str, agent: str, status: str) -> None:
    recorder.publish(f"{prefix}/agents/{agent}/presence/set", {"version": 1, "status": status})


def wait_status(recorder: Recorder, prefix: str, agent: str, status: str) -> None:
    topic = f"{prefix}/agents/{agent}/presence"
    recorder.wait_for(
        lambda: any(p.get("status") == status for p in recorder.on(topic)[-1:]),
        f"{agent} {status}",
    )


def queued_call(
    carrier: Sipp, gw: GatewayProcess, *, length: float = 0.2, timeout: float = 30
) -> SippResult:
    return carrier.uac(
        "uac_queued.xml",
        gw.address,
        1,
        1,
        service=DID,
        timeout=timeout,
        call_length=length,
        recv_timeout=timeout,
    )


def agent_phone(sipp: Sipp, port: int, calls: int) -> SippProcess:
    return sipp.uas("uas_basic.xml", port, calls=calls, timeout=90)


# -- registrar -------------------------------------------------------------------------------


def test_register_with_digest_and_wrong_password(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    gw = start(gateway_factory, mosquitto, prefix)
    recorder = Recorder(mosquitto.port, f"{prefix}/agents/+/presence")
    try:
        assert not register(sipp, gw, "alice", free_port(), password="wrong")
        assert '"registered"' not in gw.log_text()
        assert register(sipp, gw, "alice", free_port())
        wait_status(recorder, prefix, "alice", "Available")
        # bob's credentials cannot register alice's address of record
        result = sipp.uac(
            "agent_register.xml",
            gw.address,
            1,
            1,
            service="alice",
            local_port=free_port(),
            timeout=10,
            extra=["-au", "bob", "-ap", "bob-pw", "-key", "expires", "60"],
        )
        assert result.successful_calls == 0
        assert "403" in result.files.messages.read_text()
    finally:
        recorder.close()


# -- queues ----------------------------------------------------------------------------------


def test_queue_skips_dnd_and_busy_agents_and_prefers_longest_idle(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    gw = start(gateway_factory, mosquitto, prefix)
    recorder = Recorder(mosquitto.port, f"{prefix}/agents/+/presence")
    try:
        ports = {agent: free_port() for agent in AGENTS}
        for agent in AGENTS:
            assert register(sipp, gw, agent, ports[agent]), agent
            wait_status(recorder, prefix, agent, "Available")
        set_presence(recorder, prefix, "carol", "DoNotDisturb")
        wait_status(recorder, prefix, "carol", "DoNotDisturb")
        expected = {"alice": 1, "bob": 2, "carol": 0, "dave": 1}
        phones = {a: agent_phone(sipp, ports[a], max(n, 1)) for a, n in expected.items()}

        # A: a long call; ties in idle time go by agent id, so alice takes it and is Busy
        long_call = carrier.start_uac(
            "uac_queued.xml", gw.address, 1, 1, service=DID, timeout=30, call_length=6.0
        )
        wait_status(recorder, prefix, "alice", "Busy")
        # B: alice is at capacity, carol is DND -> bob (then idle since now)
        queued_call(carrier, gw).assert_calls(1)
        # C: dave has been idle longest (never had a call) -> dave
        queued_call(carrier, gw).assert_calls(1)
        # D: bob has been idle longer than dave -> bob
        queued_call(carrier, gw).assert_calls(1)
        long_call.wait(timeout=30).assert_calls(1)
        for agent, count in expected.items():
            if count:
                phones[agent].wait(timeout=20).assert_calls(count)
            else:
                result = phones[agent].stop(grace=1)
                assert result.successful_calls == 0, result.describe()
        offers = [
            json.loads(line) for line in gw.log_text().splitlines() if '"queue_offer"' in line
        ]
        assert [o["agent"] for o in offers] == ["alice", "bob", "dave", "bob"]
    finally:
        recorder.close()


def test_call_waits_until_an_agent_becomes_available(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    gw = start(gateway_factory, mosquitto, prefix)
    recorder = Recorder(mosquitto.port, f"{prefix}/agents/+/presence")
    try:
        port = free_port()
        assert register(sipp, gw, "alice", port)
        set_presence(recorder, prefix, "alice", "Away")
        wait_status(recorder, prefix, "alice", "Away")
        phone = agent_phone(sipp, port, 1)
        caller = carrier.start_uac("uac_queued.xml", gw.address, 1, 1, service=DID, timeout=30)
        time.sleep(2.0)
        assert caller.running, "the call must still be waiting in the queue"
        assert '"queue_offer"' not in gw.log_text()
        set_presence(recorder, prefix, "alice", "Available")
        caller.wait(timeout=20).assert_calls(1)
        phone.wait(timeout=20).assert_calls(1)
        sent = caller.result().files.messages.read_text()
        assert "SIP/2.0 182 Queued" in sent
    finally:
        recorder.close()


def test_overflow_after_max_wait(
    carrier: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    prefix: str,
    tmp_path: Path,
) -> None:
    gw = start(gateway_factory, mosquitto, prefix, dialplan(max_wait=1.0))
    scenario = tmp_path / "uac_expect_480.xml"
    scenario.write_text(
        (SCENARIO_DIR / "uac_expect_503.xml")
        .read_text()
        .replace('response="503"', 'response="480"')
    )
    started = time.monotonic()
    result = carrier.uac(scenario, gw.address, 1, 1, service=DID, timeout=15)
    result.assert_calls(1)
    assert time.monotonic() - started >= 1.0
    assert '"queue_overflow"' in gw.log_text()


# -- presence over MQTT ------------------------------------------------------------------------


def test_presence_changes_in_order_on_the_retained_topic(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    gw = start(gateway_factory, mosquitto, prefix)
    topic = f"{prefix}/agents/alice/presence"
    recorder = Recorder(mosquitto.port, topic)
    schema = json.loads((SCHEMAS / "presence.v1.json").read_text())
    try:
        recorder.wait_for(lambda: recorder.on(topic), "the retained start-up presence")
        port = free_port()
        assert register(sipp, gw, "alice", port)
        wait_status(recorder, prefix, "alice", "Available")
        for status in ("Away", "DoNotDisturb", "Available"):
            set_presence(recorder, prefix, "alice", status)
            wait_status(recorder, prefix, "alice", status)
        set_presence(recorder, prefix, "alice", "Busy")  # derived: refused, no change
        assert register(sipp, gw, "alice", port, expires=0)
        wait_status(recorder, prefix, "alice", "Offline")
        statuses = [p["status"] for p in recorder.on(topic)]
        assert statuses == ["Offline", "Available", "Away", "DoNotDisturb", "Available", "Offline"]
        previous = [p["previous"] for p in recorder.on(topic)[1:]]
        assert previous == ["Offline", "Available", "Away", "DoNotDisturb", "Available"]
        for payload in recorder.on(topic):
            jsonschema.validate(payload, schema)
        # a new subscriber gets the last status at once: the topic is retained
        late = Recorder(mosquitto.port, topic)
        try:
            late.wait_for(lambda: late.on(topic), "the retained presence")
            assert late.on(topic)[-1]["status"] == "Offline"
        finally:
            late.close()
    finally:
        recorder.close()


def test_node_status_goes_offline_when_the_gateway_is_killed(
    gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    gw = start(gateway_factory, mosquitto, prefix)
    topic = f"{prefix}/nodes/gw1/status"
    recorder = Recorder(mosquitto.port, topic)
    try:
        recorder.wait_for(
            lambda: any(p["status"] == "online" for p in recorder.on(topic)), "online"
        )
        gw.kill9()
        recorder.wait_for(lambda: recorder.on(topic)[-1]["status"] == "offline", "the last will")
    finally:
        recorder.close()


def test_calls_complete_while_the_broker_is_down_and_events_arrive_after(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    gw = start(gateway_factory, mosquitto, prefix)
    topic = f"{prefix}/agents/alice/presence"
    port = free_port()
    # let the start-up presence reach the broker first, so that what arrives after the
    # outage is exactly what was raised during it
    before = Recorder(mosquitto.port, topic)
    try:
        before.wait_for(lambda: before.on(topic), "the start-up presence")
        delivered_before = {p["timestamp"] for p in before.on(topic)}
    finally:
        before.close()
    mosquitto.stop()
    # while the broker is down: alice registers, takes a queued call, goes Away
    assert register(sipp, gw, "alice", port)
    phone = agent_phone(sipp, port, 1)
    queued_call(carrier, gw).assert_calls(1)
    phone.wait(timeout=20).assert_calls(1)
    time.sleep(0.5)
    mosquitto.start()
    recorder = Recorder(mosquitto.port, topic)
    try:
        # the publisher reconnects with a jittered backoff capped at 30 s
        recorder.wait_for(
            lambda: len(recorder.on(topic)) >= 3, "the buffered presence events", timeout=70
        )
        time.sleep(0.5)
        # QoS 1 is at-least-once: a batch cut by the outage may come twice (same timestamp),
        # the start-up presence included when the broker stopped before its PUBACK left
        seen: set[str] = set(delivered_before)
        statuses = []
        for p in recorder.on(topic):
            if p["timestamp"] not in seen:
                seen.add(p["timestamp"])
                statuses.append((p["status"], p["reason"]))
        # raised while the broker was down: registered, the call, its end - in order
        assert statuses == [
            ("Available", "registered"),
            ("Busy", "call_started"),
            ("Available", "call_ended"),
        ], statuses
    finally:
        recorder.close()


# -- persistence and history -----------------------------------------------------------------------


def test_restart_keeps_registrations_presence_and_history(
    sipp: Sipp,
    carrier: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    prefix: str,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "shared-data"
    listen = free_port()
    env = {"GATEWAY_DATA_DIR": str(data_dir)}
    text = dialplan()
    gw = gateway_factory(
        text,
        listen_port=listen,
        env={"GATEWAY_MQTT_URL": mosquitto.url, "GATEWAY_MQTT_PREFIX": prefix, **env},
    )
    recorder = Recorder(mosquitto.port, f"{prefix}/agents/+/presence")
    try:
        ports = {"alice": free_port(), "bob": free_port()}
        for agent, port in ports.items():
            assert register(sipp, gw, agent, port)
        set_presence(recorder, prefix, "alice", "Away")
        wait_status(recorder, prefix, "alice", "Away")
        time.sleep(0.5)  # the store writer runs behind the event loop
        gw.kill9()
        gw2 = gateway_factory(
            text,
            listen_port=listen,
            env={"GATEWAY_MQTT_URL": mosquitto.url, "GATEWAY_MQTT_PREFIX": prefix, **env},
        )
        # presence came back from the store: alice Away, bob Available (still registered)
        recorder.wait_for(
            lambda: (
                (recorder.on(f"{prefix}/agents/alice/presence") or [{}])[-1].get("reason")
                == "gateway_started"
            ),
            "presence republished after the restart",
        )
        assert recorder.on(f"{prefix}/agents/alice/presence")[-1]["status"] == "Away"
        assert recorder.on(f"{prefix}/agents/bob/presence")[-1]["status"] == "Available"
        # bob's registration survived: a queued call reaches his phone without a new REGISTER
        phone = agent_phone(sipp, ports["bob"], 1)
        queued_call(carrier, gw2).assert_calls(1)
        phone.wait(timeout=20).assert_calls(1)
        gw2.stop()
    finally:
        recorder.close()
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "cdr", "--json"],
        capture_output=True,
        text=True,
        env={"GATEWAY_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1, out.stdout
    row = rows[0]
    assert row["direction"] == "inbound" and row["queue"] == "support" and row["agent"] == "bob"
    assert row["callee"] == DID and row["result"] == "completed" and row["answered_at"]


def test_agent_outbound_call_is_challenged_and_counts_against_capacity(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    """An agent's INVITE gets 407; with the right digest it reaches the trunk (R-1, R-4)."""
    trunk = carrier.uas("uas_basic.xml", calls=1, timeout=40)
    gw = start(gateway_factory, mosquitto, prefix, dialplan(carrier_gateway=trunk.address))
    recorder = Recorder(mosquitto.port, f"{prefix}/agents/+/presence")
    try:
        assert register(sipp, gw, "alice", free_port())
        wait_status(recorder, prefix, "alice", "Available")
        wrong = sipp.uac(
            "agent_uac_auth.xml",
            gw.address,
            1,
            1,
            service="5551234",
            timeout=10,
            extra=["-au", "alice", "-ap", "wrong"],
        )
        assert wrong.successful_calls == 0
        assert wrong.files.messages.read_text().count("SIP/2.0 407") == 2
        right = sipp.start_uac(
            "agent_uac_auth.xml",
            gw.address,
            1,
            1,
            service="5551234",
            timeout=15,
            call_length=1.5,
            extra=["-au", "alice", "-ap", "alice-pw"],
        )
        wait_status(recorder, prefix, "alice", "Busy")  # capacity 1: her own call
        right.wait(timeout=15).assert_calls(1)
        trunk.wait(timeout=15).assert_calls(1)
        wait_status(recorder, prefix, "alice", "Available")
        # the trunk saw one INVITE, the authenticated one, without the agent's credentials
        received = trunk.result().files.messages.read_text()
        assert received.count("INVITE sip:5551234@") == 1
        assert "Proxy-Authorization" not in received
    finally:
        recorder.close()


def test_registration_expiry_turns_the_agent_offline(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, prefix: str
) -> None:
    gw = start(gateway_factory, mosquitto, prefix)
    topic = f"{prefix}/agents/alice/presence"
    recorder = Recorder(mosquitto.port, topic)
    try:
        assert register(sipp, gw, "alice", free_port(), expires=2)
        wait_status(recorder, prefix, "alice", "Available")
        wait_status(recorder, prefix, "alice", "Offline")
        assert recorder.on(topic)[-1]["reason"] == "registration_expired"
    finally:
        recorder.close()
