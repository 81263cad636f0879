"""Loopback tests of the asyncio transport adapter: UDP and TCP, IPv4 and IPv6.

The gateway runs in-process on free ports; the peer is a plain socket, so every byte on the
wire is visible to the test.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config.loader import load_dialplan_text
from gateway.config.settings import Settings, load_settings
from gateway.sip.message import Response, parse_message

pytestmark = pytest.mark.loopback


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
        with socket.socket(family, socket.SOCK_STREAM) as t:
            try:
                t.bind((host, port))
            except OSError:
                continue
        return port


def _dialplan(host: str, port: int, trunk_port: int, *, catch_all: bool = True) -> str:
    quoted = f'"{host}"'
    rules = (
        "  - { name: all, match: '.*', trunk: carrier }\n"
        if catch_all
        else "  - { name: nanp, match: '^\\+1\\d{10}$', trunk: carrier }\n"
    )
    return (
        "version: 1\n"
        "listen:\n"
        f"  - {{ transport: udp, host: {quoted}, port: {port} }}\n"
        f"  - {{ transport: tcp, host: {quoted}, port: {port} }}\n"
        "sip: { max_message_bytes: 4096 }\n"
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8', '::1/128'] }\n"
        "trunks:\n"
        "  carrier:\n"
        f"    gateways: [ {{ host: {quoted}, port: {trunk_port} }} ]\n"
        "outbound:\n" + rules
    )


def _settings(tmp_path: Path) -> Settings:
    return load_settings(store="sqlite://:memory:", mqtt_url="off", data_dir=tmp_path)


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def gateway(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, str, int]]:
    host = str(request.param)
    port = _free_port(host)
    dialplan = load_dialplan_text(_dialplan(host, port, _free_port(host)), "test.yaml")
    async with Gateway.running(dialplan, _settings(tmp_path)) as gw:
        yield gw, host, port


def _request(
    method: str,
    host: str,
    local_port: int,
    *,
    transport: str = "UDP",
    branch: str = "z9hG4bKtest1",
    extra: str = "",
    body: bytes = b"",
    max_forwards: int = 70,
    uri_user: str = "gw",
) -> bytes:
    h = f"[{host}]" if ":" in host else host
    head = (
        f"{method} sip:{uri_user}@{h} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {h}:{local_port};branch={branch};rport\r\n"
        f"From: <sip:tester@{h}>;tag=t1\r\n"
        f"To: <sip:{uri_user}@{h}>\r\n"
        f"Call-ID: {branch}@test\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class UdpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.queue.put_nowait(data)


async def _udp_peer(host: str) -> tuple[asyncio.DatagramTransport, UdpPeer, int]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(host, 0))
    port = int(transport.get_extra_info("sockname")[1])
    return transport, peer, port


async def _recv_response(peer: UdpPeer, timeout: float = 2.0) -> Response:
    data = await asyncio.wait_for(peer.queue.get(), timeout)
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


async def test_udp_options_gets_200_with_rport_and_received(
    gateway: tuple[Gateway, str, int],
) -> None:
    _, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        transport.sendto(_request("OPTIONS", host, local), (host, port))
        response = await _recv_response(peer)
        assert response.status == 200
        assert "INVITE" in (response.get("Allow") or "")
        via = response.top_via
        assert via.params.get("rport") == str(local)  # RFC 3581 section 4
        assert via.params.get("received") == host
        assert response.to_tag  # a final response carries a To tag
    finally:
        transport.close()


async def test_udp_retransmitted_request_gets_the_same_response(
    gateway: tuple[Gateway, str, int],
) -> None:
    _, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        data = _request("OPTIONS", host, local, branch="z9hG4bKretrans")
        transport.sendto(data, (host, port))
        first = await _recv_response(peer)
        transport.sendto(data, (host, port))
        second = await _recv_response(peer)
        assert first.to_bytes() == second.to_bytes()  # absorbed by the server transaction
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("method", "status"),
    [("FOO", 501), ("SUBSCRIBE", 405), ("REGISTER", 401), ("BYE", 481), ("INFO", 481)],
)
async def test_udp_out_of_dialog_answers(
    gateway: tuple[Gateway, str, int], method: str, status: int
) -> None:
    _, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        transport.sendto(_request(method, host, local, branch=f"z9hG4bK{method}"), (host, port))
        response = await _recv_response(peer)
        assert response.status == status
    finally:
        transport.close()


async def test_invite_with_max_forwards_zero_gets_483(gateway: tuple[Gateway, str, int]) -> None:
    _, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        h = f"[{host}]" if ":" in host else host
        transport.sendto(
            _request(
                "INVITE",
                host,
                local,
                branch="z9hG4bKmf0",
                max_forwards=0,
                extra=f"Contact: <sip:tester@{h}:{local}>\r\n",
            ),
            (host, port),
        )
        # 100 Trying may come first
        response = await _recv_response(peer)
        while response.status == 100:
            response = await _recv_response(peer)
        assert response.status == 483
    finally:
        transport.close()


async def test_malformed_request_gets_400_with_warning(gateway: tuple[Gateway, str, int]) -> None:
    _, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        bad = _request("OPTIONS", host, local, branch="z9hG4bKbad").replace(
            b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"
        )
        transport.sendto(bad, (host, port))
        response = await _recv_response(peer)
        assert response.status == 400
        assert "CSeq" in (response.get("Warning") or "")
    finally:
        transport.close()


async def test_garbage_is_dropped_and_the_gateway_keeps_answering(
    gateway: tuple[Gateway, str, int],
) -> None:
    gw, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        for junk in (b"\x00\xff garbage", b"SIP/2.0 200\r\n\r\n", b"INVITE\r\n\r\n", b"\r\n\r\n"):
            transport.sendto(junk, (host, port))
        transport.sendto(_request("OPTIONS", host, local, branch="z9hG4bKafter"), (host, port))
        response = await _recv_response(peer)
        assert response.status == 200
        assert response.top_via.branch == "z9hG4bKafter"
        assert gw.endpoint.parse_errors >= 3
    finally:
        transport.close()


async def test_oversize_datagram_is_refused(gateway: tuple[Gateway, str, int]) -> None:
    _, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        big = _request(
            "OPTIONS",
            host,
            local,
            branch="z9hG4bKbig",
            body=b"x" * 5000,
            extra="Content-Type: text/plain\r\n",
        )
        transport.sendto(big, (host, port))
        with pytest.raises(asyncio.TimeoutError):
            await _recv_response(peer, timeout=0.5)
    finally:
        transport.close()


async def _tcp_read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), 2.0) if length else b""
    msg = parse_message(head + body)
    assert isinstance(msg, Response)
    return msg


async def test_tcp_framing_split_and_pipelined(gateway: tuple[Gateway, str, int]) -> None:
    _, host, port = gateway
    reader, writer = await asyncio.open_connection(host, port)
    try:
        local = int(writer.get_extra_info("sockname")[1])
        one = _request("OPTIONS", host, local, transport="TCP", branch="z9hG4bKtcp1")
        two = _request("OPTIONS", host, local, transport="TCP", branch="z9hG4bKtcp2")
        three = _request("OPTIONS", host, local, transport="TCP", branch="z9hG4bKtcp3")
        # one message split across writes, then two in a single write, with a keep-alive
        writer.write(one[:17])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(one[17:] + b"\r\n\r\n" + two + three)
        await writer.drain()
        branches = [(await _tcp_read_response(reader)).top_via.branch for _ in range(3)]
        assert branches == ["z9hG4bKtcp1", "z9hG4bKtcp2", "z9hG4bKtcp3"]
    finally:
        writer.close()


async def test_tcp_without_content_length_closes_the_connection(
    gateway: tuple[Gateway, str, int],
) -> None:
    _, host, port = gateway
    reader, writer = await asyncio.open_connection(host, port)
    try:
        local = int(writer.get_extra_info("sockname")[1])
        data = _request("OPTIONS", host, local, transport="TCP").replace(
            b"Content-Length: 0\r\n", b""
        )
        writer.write(data)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed: cannot resynchronise
    finally:
        writer.close()


async def test_invite_without_contact_gets_400(gateway: tuple[Gateway, str, int]) -> None:
    _, host, port = gateway
    transport, peer, local = await _udp_peer(host)
    try:
        transport.sendto(_request("INVITE", host, local, branch="z9hG4bKnocontact"), (host, port))
        response = await _recv_response(peer)
        while response.status == 100:
            response = await _recv_response(peer)
        assert response.status == 400
        assert "Contact" in (response.get("Warning") or "")
    finally:
        transport.close()


async def test_unroutable_invite_gets_404_with_warning(tmp_path: Path) -> None:
    host = "127.0.0.1"
    port = _free_port(host)
    dialplan = load_dialplan_text(
        _dialplan(host, port, _free_port(host), catch_all=False), "t.yaml"
    )
    async with Gateway.running(dialplan, _settings(tmp_path)):
        await _unroutable(host, port)


async def _unroutable(host: str, port: int) -> None:
    transport, peer, local = await _udp_peer(host)
    try:
        sdp = b"v=0\r\n"
        transport.sendto(
            _request(
                "INVITE",
                host,
                local,
                branch="z9hG4bKnoroute",
                uri_user="5551234",
                extra=f"Contact: <sip:tester@{host}:{local}>\r\nContent-Type: application/sdp\r\n",
                body=sdp,
            ),
            (host, port),
        )
        response = await _recv_response(peer)
        while response.status == 100:
            response = await _recv_response(peer)
        assert response.status == 404
        assert "5551234" in (response.get("Warning") or "")
    finally:
        transport.close()
