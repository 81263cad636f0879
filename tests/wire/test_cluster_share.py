"""Registrations and presence shared by the nodes of a cluster, end to end (issue #12).

Two gateway nodes share a real redis-server and a Mosquitto; one real Kamailio front on
``deploy/kamailio/cluster.cfg`` dispatches to them by Call-ID hash, as deployed: the
phones and the carrier (127.0.0.2, its ``inbound_from``) all send to the front, which the
nodes name in ``node.fronts`` and whose ``X-Gateway-Source`` tells them who sent what.
SIPp plays alice's phone, the carrier's SBC and the PSAP calling back.

alice registers through the front (one node takes it); her 911 call is handled by one
node; the PSAP's callback, dispatched to the *other* node, rings alice ahead of any queue
(C-1) -- that node learnt her registration from the shared store. Then the node of the
911 call is killed (SIGKILL): a callback whose Call-ID hashes to it still rings alice
(the front fails over to the survivor), and her next call goes to the survivor. On the
way: her DND during the 911 call shows on both nodes, and the status her desktop asks for
meanwhile is the one restored, published once (E-5, E-7).

Without fronts: a desktop command reaches both nodes' broker subscriptions and is acted on
and published once; a Redis outage (SIGSTOP) holds no call, and what one node took
meanwhile reaches the other once Redis is back.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import OPEN_RECORDERS, Mosquitto, Recorder
from harness import (
    PROJECT_ROOT,
    GatewayFactory,
    GatewayProcess,
    HarnessError,
    Sipp,
    free_port,
    require_tool,
    sip_options,
)
from test_emergency import DIDS, dialplan

from gateway.control import ask
from testkit.redisserver import RedisServer

FRONT_CONFIG = PROJECT_ROOT / "deploy" / "kamailio" / "cluster.cfg"
SECRET = "a nonce key both nodes share"
PHONES_IP, CARRIER_IP = "127.0.0.1", "127.0.0.2"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path / "redis")
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[Sipp]:
    factory = Sipp(tmp_path / "carrier", binary=require_tool("sipp"), host=CARRIER_IP)
    yield factory
    factory.close()


class Front:
    """A Kamailio front on ``ip:port`` before the nodes (``cluster.cfg``)."""

    def __init__(self, workdir: Path, ip: str, nodes: list[str], port: int | None = None) -> None:
        binary = require_tool("kamailio")
        self.ip, self.port = ip, port or free_port(host=ip)
        workdir.mkdir(parents=True, exist_ok=True)
        dispatcher = workdir / "dispatcher.list"
        dispatcher.write_text("".join(f"1 sip:{node} 0 0\n" for node in nodes))
        defines = [
            "-A", f"FRONT_IP={ip}", "-A", f"FRONT_PORT={self.port}",
            "-A", f'DISPATCHER_LIST="{dispatcher}"',
        ]  # fmt: skip
        check = subprocess.run(
            [binary, "-c", "-f", str(FRONT_CONFIG), *defines],
            cwd=workdir, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert check.returncode == 0, f"kamailio -c refused cluster.cfg:\n{check.stderr}"
        self.log_path = workdir / "kamailio.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, "-DD", "-E", "-f", str(FRONT_CONFIG), *defines, "-w", str(workdir),
                 "-Y", str(workdir), "-P", str(workdir / "kamailio.pid"), "-m", "32", "-M", "8"],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answer = sip_options(ip, self.port, timeout=0.2, local_host=ip)
            if answer is not None and answer.startswith("SIP/2.0 200"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        pytest.fail(f"the front did not answer OPTIONS on {ip}:{self.port}:\n{tail}", False)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def node_for(self, call_id: str) -> str | None:
        """The ``Server`` of the node the front hands an OPTIONS with ``call_id`` to (the
        hash that an INVITE with the same Call-ID meets too)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.ip, 0))
            sock.settimeout(5)
            port = sock.getsockname()[1]
            branch = uuid.uuid4().hex
            request = (
                f"OPTIONS sip:probe@{self.address} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.ip}:{port};branch=z9hG4bK{branch};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:probe@{self.ip}>;tag={branch[:8]}\r\n"
                f"To: <sip:probe@{self.address}>\r\nCall-ID: {call_id}\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            sock.sendto(request, (self.ip, self.port))
            try:
                while True:
                    text = sock.recv(65535).decode(errors="replace")
                    if text.startswith("SIP/2.0 200"):
                        found = re.search(r"^Server: (\S+)", text, re.M)
                        return found.group(1) if found else None
            except TimeoutError:
                return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def call_id_for(front: Front, node: str, tag: str) -> str:
    """A SIPp ``-cid_str`` whose first call's Call-ID the front hands to ``node``."""
    for attempt in range(40):
        pattern = f"{tag}-{attempt}-{uuid.uuid4().hex[:8]}-%u"
        if front.node_for(pattern.replace("%u", "1")) == f"gateway-{node}":
            return pattern
    raise AssertionError(f"no Call-ID in 40 that the front hands to {node}")


def node_text(name: str, sbc: str | None = None, front: str | None = None) -> str:
    """The node ``name``'s dialplan; ``front``: the cluster's front (``ip:port``)."""
    fronts = f", fronts: ['{front}']" if front is not None else ""
    text = dialplan(sbc=(sbc,) if sbc is not None else ()).replace(
        "node: { name: gw1 }", f"node: {{ name: {name}{fronts} }}"
    )
    text = text.replace("${fallback}", "'sip:security@127.0.0.1:5999'")  # nothing there
    # the carrier is known by the source the front names, 127.0.0.2
    assert "inbound_from: ['127.0.0.2']" in text
    return text + f"sip: {{ user_agent: gateway-{name} }}\n"


def presence_of(recorder: Recorder, prefix: str) -> list[dict[str, Any]]:
    return recorder.on(f"{prefix}/agents/alice/presence")


def handled(node: GatewayProcess, call_id: str) -> bool:
    return call_id in node.log_text()


def test_a_callback_on_the_other_node_rings_alice_and_survives_a_killed_node(
    sipp: Sipp,
    carrier: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=2, timeout=120)
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    env = {
        "GATEWAY_STORE": redis_server.url,
        "GATEWAY_NONCE_SECRET": SECRET,
        "GATEWAY_MQTT_URL": mosquitto.url,
        "GATEWAY_MQTT_PREFIX": prefix,
    }
    front_port = free_port(host=PHONES_IP)
    via = f"{PHONES_IP}:{front_port}"
    nodes = {
        name: gateway_factory(node_text(name, sbc.address, via), env=env) for name in ("gw1", "gw2")
    }
    recorder = Recorder(mosquitto.port, f"{prefix}/#")
    OPEN_RECORDERS.append(recorder)
    addresses = [node.address for node in nodes.values()]
    front = Front(tmp_path / "front", PHONES_IP, addresses, front_port)  # for everyone
    alice = free_port()
    try:
        # alice registers through the front: one node takes it and publishes it, once
        sipp.uac(
            "agent_register.xml", front.address, 1, 1, service="alice", local_port=alice,
            timeout=10, extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
        ).assert_calls(1)  # fmt: skip
        recorder.wait_for(
            lambda: any(p["reason"] == "registered" for p in presence_of(recorder, prefix)),
            "alice registered",
        )
        registered = [p for p in presence_of(recorder, prefix) if p["reason"] != "gateway_started"]
        assert [(p["status"], p["reason"]) for p in registered] == [("Available", "registered")]
        took = str(registered[0]["node"])
        other = next(name for name in nodes if name != took)
        # the other node knows her registration (and so her identity) within a second
        deadline = time.monotonic() + 1.0
        while not ask(nodes[other].data_dir, "registrations"):
            assert time.monotonic() < deadline, f"{other} never learnt alice's registration"
            time.sleep(0.02)
        agents = {row["agent"]: row for row in ask(nodes[other].data_dir, "presence")}
        assert (agents["alice"]["status"], agents["alice"]["registered"]) == ("Available", True)

        # her 911 call, through the front: whichever node takes it knows her
        call = sipp.start_uac(
            "uac_basic.xml", front.address, 1, 1, service="911", local_port=alice,
            timeout=30, call_length=3.0,
        )  # fmt: skip
        recorder.wait_for(
            lambda: any(p["status"] == "DoNotDisturb" for p in presence_of(recorder, prefix)),
            "alice in DND",
        )
        dnd = [p for p in presence_of(recorder, prefix) if p["status"] == "DoNotDisturb"]
        emergency_node = str(dnd[0]["node"])
        survivor = next(name for name in nodes if name != emergency_node)
        # both nodes show her DND (E-5) and lock her other calls (E-8), wherever the call is
        deadline = time.monotonic() + 1.0
        while {row["agent"]: row for row in ask(nodes[survivor].data_dir, "presence")}["alice"][
            "status"
        ] != "DoNotDisturb":
            assert time.monotonic() < deadline, f"{survivor} never showed alice's DND"
            time.sleep(0.02)
        # meanwhile her desktop asks for Away: one node takes it, DND stays (E-5)
        recorder.publish(f"{prefix}/agents/alice/presence/set", {"status": "Away"})
        call.wait(timeout=30).assert_calls(1)
        recorder.wait_for(lambda: presence_of(recorder, prefix)[-1]["status"] == "Away", "DND over")
        skip = ("gateway_started", "registered")
        after = [p for p in presence_of(recorder, prefix) if p["reason"] not in skip]
        # published once each, by the node of the call; the status restored is the one she
        # asked for during the call (E-5), whichever node took the command
        assert [(p["status"], p["reason"], p["node"]) for p in after] == [
            ("DoNotDisturb", "emergency_call", emergency_node),
            ("Away", "emergency_ended", emergency_node),
        ], after
        assert f"From: <sip:{DIDS[0]}@" in sbc.files.messages.read_text()  # E-4

        # the PSAP calls back; the front hands it to the node that did NOT handle the 911
        to_survivor = call_id_for(front, survivor, "cb1")
        to_victim = call_id_for(front, emergency_node, "cb2")
        phone = sipp.uas("uas_basic.xml", alice, calls=2, timeout=90)
        carrier.uac(
            "uac_psap_callback.xml", front.address, 1, 1, service=DIDS[0], timeout=20,
            extra=["-cid_str", to_survivor],
        ).assert_calls(1)  # fmt: skip
        first_callback = to_survivor.replace("%u", "1")
        assert handled(nodes[survivor], first_callback)
        assert not handled(nodes[emergency_node], first_callback)
        # it rang alice (ahead of every queue), not her fallback
        deadline = time.monotonic() + 5
        while "Priority: psap-callback" not in _read(phone.files.messages):
            assert time.monotonic() < deadline, "the callback never reached alice's phone"
            time.sleep(0.05)

        # the node of the 911 call dies; a callback hashed to it still rings alice
        nodes[emergency_node].kill9()
        carrier.uac(
            "uac_psap_callback.xml", front.address, 1, 1, service=DIDS[0], timeout=30,
            extra=["-cid_str", to_victim],
        ).assert_calls(1)  # fmt: skip
        assert handled(nodes[survivor], to_victim.replace("%u", "1"))
        phone.wait(timeout=30).assert_calls(2)
        assert "security@" not in _read(phone.files.messages)

        # and alice's next call goes to the survivor
        sipp.uac(
            "uac_basic.xml", front.address, 1, 1, service="911", local_port=alice,
            timeout=30, call_length=0.3, extra=["-cid_str", "alice-again-%u"],
        ).assert_calls(1)  # fmt: skip
        sbc.wait(timeout=30).assert_calls(2)
        assert handled(nodes[survivor], "alice-again-1")
    finally:
        front.stop()


def test_a_desktop_command_is_taken_by_one_node_published_once_and_seen_by_both(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    redis_server: RedisServer,
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    env = {
        "GATEWAY_STORE": redis_server.url,
        "GATEWAY_NONCE_SECRET": SECRET,
        "GATEWAY_MQTT_URL": mosquitto.url,
        "GATEWAY_MQTT_PREFIX": prefix,
    }
    nodes = [gateway_factory(node_text(name), env=env) for name in ("gw1", "gw2")]
    recorder = Recorder(mosquitto.port, f"{prefix}/#")
    OPEN_RECORDERS.append(recorder)
    sipp.uac(
        "agent_register.xml", nodes[0].address, 1, 1, service="alice", local_port=free_port(),
        timeout=10, extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
    ).assert_calls(1)  # fmt: skip

    def seen(status: str) -> bool:
        rows = [{r["agent"]: r for r in ask(node.data_dir, "presence")} for node in nodes]
        return all(row["alice"]["status"] == status for row in rows)

    deadline = time.monotonic() + 5
    while not seen("Available"):
        assert time.monotonic() < deadline, "alice never Available on both nodes"
        time.sleep(0.02)
    # both nodes hear the broker; the command must be acted on, and published, once
    recorder.publish(f"{prefix}/agents/alice/presence/set", {"status": "Away"})
    deadline = time.monotonic() + 5
    while not seen("Away"):
        assert time.monotonic() < deadline, "alice never Away on both nodes"
        time.sleep(0.02)
    time.sleep(1.0)  # a second publication would be here by now
    away = [p for p in presence_of(recorder, prefix) if p["status"] == "Away"]
    assert [(p["reason"], p["previous"]) for p in away] == [("desktop", "Available")]
    registered = [p for p in presence_of(recorder, prefix) if p["reason"] == "registered"]
    assert [p["node"] for p in registered] == ["gw1"]  # the node that took the REGISTER


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def test_a_redis_outage_pauses_the_sharing_and_holds_no_call(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    redis_server: RedisServer,
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    env = {
        "GATEWAY_STORE": redis_server.url,
        "GATEWAY_NONCE_SECRET": SECRET,
        "GATEWAY_MQTT_URL": mosquitto.url,
        "GATEWAY_MQTT_PREFIX": prefix,
    }
    nodes = [gateway_factory(node_text(name, sbc.address), env=env) for name in ("gw1", "gw2")]
    recorder = Recorder(mosquitto.port, f"{prefix}/#")
    OPEN_RECORDERS.append(recorder)
    alice = free_port()
    sipp.uac(
        "agent_register.xml", nodes[0].address, 1, 1, service="alice", local_port=alice,
        timeout=10, extra=["-au", "alice", "-ap", "alice-pw", "-key", "expires", "3600"],
    ).assert_calls(1)  # fmt: skip

    def seen(status: str) -> bool:
        rows = [{r["agent"]: r for r in ask(node.data_dir, "presence")} for node in nodes]
        return all(row["alice"]["status"] == status for row in rows)

    def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    wait("alice Available on both nodes", lambda: seen("Available"), 5)
    redis_server.pause()  # Redis accepts and never answers
    try:
        # her 911 call through gw2, which knows her from gw1's registration: not held
        started = time.monotonic()
        sipp.uac(
            "uac_basic.xml", nodes[1].address, 1, 1, service="911", local_port=alice,
            timeout=20, call_length=0.3,
        ).assert_calls(1)  # fmt: skip
        assert time.monotonic() - started < 5
        sbc.wait(timeout=20).assert_calls(1)
        store = [f"{prefix}/nodes/{name}/store" for name in ("gw1", "gw2")]
        recorder.wait_for(
            lambda: all((recorder.on(t) or [{}])[-1].get("state") == "down" for t in store),
            "both nodes see the outage",
            timeout=15,
        )
        recorder.wait_for(
            lambda: presence_of(recorder, prefix)[-1]["status"] == "Available", "call over"
        )
        # a desktop command meanwhile: one node takes it, the other cannot hear of it yet
        recorder.publish(f"{prefix}/agents/alice/presence/set", {"status": "Away"})
        recorder.wait_for(
            lambda: presence_of(recorder, prefix)[-1]["status"] == "Away", "Away published"
        )
        taker = str(presence_of(recorder, prefix)[-1]["node"])
        other = nodes[0] if taker == "gw2" else nodes[1]
        row = {r["agent"]: r for r in ask(other.data_dir, "presence")}["alice"]
        assert row["status"] == "Available"
    finally:
        redis_server.resume()
    recorder.wait_for(
        lambda: all((recorder.on(t) or [{}])[-1].get("state") == "up" for t in store),
        "both nodes see Redis back",
        timeout=20,
    )
    wait("the other node healed", lambda: seen("Away"), 10)
    away = [p for p in presence_of(recorder, prefix) if p["status"] == "Away"]
    assert len(away) == 1  # the heal is silent
