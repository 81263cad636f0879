"""The cluster's Kamailio front (deploy/kamailio/cluster.cfg) before two gateway nodes that
share a real redis-server (issue #12).

alice's phones (a few lines of Python each, so that a refresh keeps its Call-ID) register
through the front, which hashes the Call-ID to one of the two nodes. The node that took the
first phone is killed (SIGKILL); that phone's refresh hashes to the dead node, and the front
must time out there, mark it inactive and go on to the survivor. No registration is lost:
the dead node's is in Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    PROJECT_ROOT,
    GatewayFactory,
    GatewayProcess,
    HarnessError,
    free_port,
    require_tool,
    sip_options,
)

from gateway.registrar.digest_client import authorization_for_challenge
from gateway.sip.message import Response, parse_message
from gateway.stores import open_stores
from testkit.redisserver import RedisServer

FRONT_CONFIG = PROJECT_ROOT / "deploy" / "kamailio" / "cluster.cfg"
SECRET = "a nonce key both nodes share"


def node_dialplan(name: str) -> str:
    return (
        "version: 1\n"
        f"node: {{ name: {name} }}\n"
        "listen: [ { transport: udp, host: ${listen_host}, port: ${listen_port} } ]\n"
        "registrar: { realm: test, algorithms: [MD5] }\n"
        "agents:\n"
        "  alice: { password: alice-pw }\n"
    )


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


def start_front(workdir: Path, port: int, nodes: list[str]) -> subprocess.Popen[bytes]:
    """Kamailio on ``cluster.cfg`` (checked with ``kamailio -c`` first) before ``nodes``."""
    binary = require_tool("kamailio")
    workdir.mkdir(parents=True, exist_ok=True)
    dispatcher = workdir / "dispatcher.list"
    dispatcher.write_text("".join(f"1 sip:{node} 0 0\n" for node in nodes))
    defines = ["-A", f"FRONT_PORT={port}", "-A", f'DISPATCHER_LIST="{dispatcher}"']
    check = subprocess.run(
        [binary, "-c", "-f", str(FRONT_CONFIG), *defines],
        cwd=workdir, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert check.returncode == 0, f"kamailio -c refused cluster.cfg:\n{check.stderr}"
    log = (workdir / "kamailio.log").open("wb")
    front = subprocess.Popen(
        [binary, "-DD", "-E", "-f", str(FRONT_CONFIG), *defines, "-w", str(workdir),
         "-Y", str(workdir), "-P", str(workdir / "kamailio.pid"), "-m", "32", "-M", "8"],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = sip_options(LOOPBACK, port, timeout=0.2)
        if answer is not None and answer.startswith("SIP/2.0 200"):
            return front
        if front.poll() is not None:
            break
        time.sleep(0.05)
    front.kill()
    front.wait()
    tail = (workdir / "kamailio.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"the front did not answer OPTIONS on {port}:\n{tail}", pytrace=False)


class Phone:
    """alice's phone on its own UDP port: REGISTERs with a Call-ID it keeps (a refresh
    reuses it, so the front hashes it to the same node), answering the 401 once."""

    def __init__(self, front: tuple[str, int], call_id: str) -> None:
        self.front, self.call_id, self.cseq = front, call_id, 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]

    def _send(self, authorization: str | None) -> Response:
        self.cseq += 1
        lines = [
            f"REGISTER sip:{self.front[0]}:{self.front[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{uuid.uuid4().hex};rport",
            "Max-Forwards: 70",
            f"From: <sip:alice@{LOOPBACK}>;tag={self.call_id}",
            f"To: <sip:alice@{LOOPBACK}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:alice@{LOOPBACK}:{self.port}>",
            "Expires: 3600",
            *([f"Authorization: {authorization}"] if authorization else []),
            "Content-Length: 0",
        ]
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), self.front)
        self.sock.settimeout(10)  # the front's failover takes its 2 s fr_timer
        while True:
            message = parse_message(self.sock.recv(65535))
            if isinstance(message, Response) and message.status >= 200:
                return message

    def register(self) -> None:
        answer = self._send(None)
        assert answer.status == 401, answer.status
        authorization = authorization_for_challenge(
            answer.get_all("www-authenticate")[0], method="REGISTER",
            uri=f"sip:{self.front[0]}:{self.front[1]}", username="alice",
            password="alice-pw", cnonce=uuid.uuid4().hex,
        )  # fmt: skip
        assert self._send(authorization).status == 200

    def close(self) -> None:
        self.sock.close()


def contacts_in_redis(server: RedisServer, tmp_path: Path) -> list[str]:
    async def read() -> list[str]:
        async with await open_stores(server.url, tmp_path / "reader", timeout=5) as stores:
            return [b.contact_uri for b in await stores.registrations.bindings("alice", 0)]

    return asyncio.run(read())


def registrations_logged(nodes: list[GatewayProcess], total: int) -> list[int]:
    """How many registrations each node logged, once they add up to ``total`` (5 s)."""
    deadline = time.monotonic() + 5
    while True:
        counts = [node.log_text().count('"event": "registered"') for node in nodes]
        if sum(counts) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_registrations_through_the_front_survive_a_killed_node(
    gateway_factory: GatewayFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"GATEWAY_STORE": redis_server.url, "GATEWAY_NONCE_SECRET": SECRET}
    nodes = [gateway_factory(node_dialplan(name), env=env) for name in ("gw1", "gw2")]
    port = free_port()
    front = start_front(tmp_path / "front", port, [node.address for node in nodes])
    phones = [Phone((LOOPBACK, port), f"phone-{n}-{uuid.uuid4().hex}") for n in range(2)]
    try:
        phones[0].register()
        handled = registrations_logged(nodes, 1)
        assert sorted(handled) == [0, 1], handled
        victim = nodes[handled.index(1)]
        survivor = nodes[handled.index(0)]
        os.kill(victim.pid, signal.SIGKILL)  # no goodbye: the front must notice
        # The refresh keeps its Call-ID, so the hash sends it to the dead node: the front
        # must time out there, mark it inactive and go on to the survivor.
        phones[0].register()
        phones[1].register()  # a new phone: whatever its hash, the survivor takes it
        assert registrations_logged([survivor], 2) == [2]
        # the first registration, taken by the node that died, was never lost: Redis has it
        contacts = contacts_in_redis(redis_server, tmp_path)
        assert sorted(contacts) == sorted(f"sip:alice@{LOOPBACK}:{phone.port}" for phone in phones)
    finally:
        for phone in phones:
            phone.close()
        front.terminate()
        front.wait(timeout=10)
