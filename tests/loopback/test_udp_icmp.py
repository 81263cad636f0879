"""ICMP errors on the UDP socket become transport failures of the right transactions.

A send to a UDP port where nothing listens draws an ICMP port unreachable from the host
(loopback: at once). The endpoint ties it to the destination (IP_RECVERR, see
gateway/transport/endpoint.py) and the transaction layer fails the INVITE with a
``TransportFailure(refused=True)`` long before Timer B, on asyncio and on uvloop, IPv4
and IPv6.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable

import pytest

from gateway.sip.message import Request, parse_message
from gateway.sip.transaction import (
    Address,
    IdGenerator,
    TimerConfig,
    TransactionLayer,
    TransportFailure,
)
from gateway.transport.endpoint import ListenSpec, SipEndpoint

pytestmark = [
    pytest.mark.loopback,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="ICMP errors on unconnected UDP sockets are read through Linux's IP_RECVERR; "
        "on other systems failover waits for the timers, which other tests cover",
    ),
]


def _closed_udp_port(host: str) -> int:
    """A UDP port nothing listens on (bound, read, released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _invite(host: str, port: int, branch: str) -> Request:
    h = f"[{host}]" if ":" in host else host
    text = (
        f"INVITE sip:911@{h}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:5060;branch={branch}\r\n"
        f"From: <sip:alice@{h}>;tag=a1\r\n"
        f"To: <sip:911@{h}>\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@{h}:5060>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def _loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    factories: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the dev environment
        return factories
    return [*factories, uvloop.new_event_loop]


async def _send_to_closed_port(host: str) -> tuple[list[object], float, Address]:
    loop = asyncio.get_running_loop()
    layer = TransactionLayer(TimerConfig(), IdGenerator())
    endpoint = SipEndpoint(layer, [ListenSpec("udp", host, 0)], loop=loop)
    events: list[object] = []
    endpoint.on_event = events.append
    await endpoint.start()
    try:
        closed = Address("udp", host, _closed_udp_port(host))
        started = time.monotonic()
        tx = layer.send_request(_invite(host, closed.port, "z9hG4bKicmp1"), closed, loop.time())
        endpoint.pump()
        deadline = started + 2.0
        while not events and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        assert events, "no transport failure within 2 s"
        assert tx.state == "terminated"
        return events, elapsed, closed
    finally:
        await endpoint.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("loop_factory", _loops(), ids=lambda f: f.__module__.split(".")[0])
def test_icmp_port_unreachable_fails_the_invite_at_once(
    host: str, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        events, elapsed, closed = runner.run(_send_to_closed_port(host))
    assert len(events) == 1
    failure = events[0]
    assert isinstance(failure, TransportFailure)
    assert failure.refused is True
    assert failure.detail == "ICMP port unreachable"
    assert failure.transaction.destination == closed  # type: ignore[union-attr]
    assert elapsed < 0.5  # Timer A would only retransmit after 0.5 s; Timer B is 32 s
