"""Flood and scanner defence on the wire (SPEC O-6, E-3; issue 13).

A stranger on 127.0.0.9 (no trunk, no registration, no trusted network) throws 5,000
OPTIONS and REGISTERs at the gateway as fast as it can, each with a Call-ID of its own.
Meanwhile alice, registered, dials 911 from her phone. The stranger gets answers to about
its per-source burst and rate, the rest is dropped unanswered before parsing; alice's call
completes. No timing is asserted: the count of answers depends on the limit, not the box.
"""

from __future__ import annotations

import socket
import threading
import time

from broker import Mosquitto
from harness import GatewayFactory, Sipp
from test_emergency import (  # the fixtures are used by name
    carrier,  # noqa: F401
    dial,
    dialplan,
    open_site,
)

STRANGER = "127.0.0.9"
FLOOD = 5000
RATE, BURST = 30.0, 60
LIMITS = f"overload: {{ per_source_rate: {RATE:g}, per_source_burst: {BURST} }}\n"


def _request(method: str, i: int, host: str, port: int, target: str) -> bytes:
    return (
        f"{method} sip:{target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-flood-{i}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{100 + i % 900}@{target}>;tag=f{i}\r\n"
        f"To: <sip:{100 + i % 900}@{target}>\r\n"
        f"Call-ID: flood-{i}@{host}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:{100 + i % 900}@{host}:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Flooder(threading.Thread):
    """Sends ``FLOOD`` requests from ``STRANGER`` and counts the answers."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((STRANGER, 0))
        self.sock.settimeout(0.0)
        self.answers = 0
        self.sent = 0
        self.seconds = 0.0

    def run(self) -> None:
        host, port = self.sock.getsockname()
        uri = f"{self.target[0]}:{self.target[1]}"
        started = time.monotonic()
        for i in range(FLOOD):
            method = "OPTIONS" if i % 2 else "REGISTER"
            self.sock.sendto(_request(method, i, host, port, uri), self.target)
            self.sent += 1
            self._read()
            if i % 200 == 199:
                time.sleep(0.02)  # a scanner's pace, not a kernel-buffer overrun
        self.seconds = time.monotonic() - started
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            self._read()
            time.sleep(0.01)
        self.sock.close()

    def _read(self) -> None:
        while True:
            try:
                self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            self.answers += 1


def test_a_strangers_flood_is_limited_while_a_registered_agents_911_completes(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    site = open_site(sipp, gateway_factory, mosquitto, dialplan(sbc=(sbc.address,)) + LIMITS)
    host, _, port = site.gw.address.rpartition(":")
    flooder = Flooder((host, int(port)))
    flooder.start()
    dial(sipp, site, "911").assert_calls(1)  # E-3: exempt from every limit
    sbc.wait(timeout=30).assert_calls(1)
    flooder.join(timeout=60)
    assert not flooder.is_alive() and flooder.sent == FLOOD
    allowed = BURST + RATE * (flooder.seconds + 2.0)
    assert 0 < flooder.answers <= allowed + 10, (flooder.answers, allowed)
    assert flooder.answers < FLOOD / 10
    log = site.gw.log_text()
    assert "flood_limited" in log and STRANGER in log
    assert log.count("flood_limited") <= 2 + flooder.seconds / 10  # bounded logging
