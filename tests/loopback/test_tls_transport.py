"""Loopback tests of TLS (RFC 3261 section 26.2) and stream keep-alive (RFC 5626 3.5.1).

The gateway runs in-process; its TLS peers are asyncio servers with trustme certificates,
so the test sees what arrived over TLS, the name the gateway asked for (SNI), and that
nothing ever arrives in clear text.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.app import Gateway
from gateway.config.loader import load_dialplan_text
from gateway.config.settings import Settings, load_settings
from gateway.sip.message import Request, Response, StreamFramer, parse_message
from gateway.transport import endpoint as endpoint_module

pytestmark = pytest.mark.loopback

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    """A test CA, the gateway's certificate, and the files the settings point at."""

    ca: trustme.CA
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)

    def gateway_settings(self, tmp_path: Path, **extra: object) -> Settings:
        return load_settings(
            store="sqlite://:memory:",
            mqtt_url="off",
            data_dir=tmp_path,
            tls_cert_file=self.files["gw_cert"],
            tls_key_file=self.files["gw_key"],
            tls_ca_file=self.files["ca"],
            **extra,
        )

    def server_context(self, *names: str, ca: trustme.CA | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (ca or self.ca).issue_cert(*names).configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    pki = Pki(ca, tmp_path)
    leaf = ca.issue_cert("gateway.test", HOST)
    pki.files["ca"] = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pki.files["ca"]))
    pki.files["gw_cert"] = tmp_path / "gw.pem"
    pki.files["gw_key"] = tmp_path / "gw.key"
    leaf.private_key_pem.write_to_path(str(pki.files["gw_key"]))
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(pki.files["gw_cert"]), append=True)
    return pki


def _dialplan(port: int, trunk_port: int, *, trunk_extra: str = "") -> str:
    return (
        "version: 1\n"
        "listen:\n"
        f"  - {{ transport: udp, host: {HOST}, port: {port} }}\n"
        f"  - {{ transport: tls, host: {HOST}, port: {port} }}\n"
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }\n"
        "trunks:\n"
        "  carrier:\n"
        f"    gateways: [ {{ host: {HOST}, port: {trunk_port}, transport: tls }} ]\n"
        f"    provisional_timeout_s: 2\n{trunk_extra}"
        "outbound:\n"
        "  - { name: all, match: '.*', trunk: carrier }\n"
    )


class Trunk:
    """A TLS trunk that records every SIP message it gets and the SNI it was asked for."""

    def __init__(self, context: ssl.SSLContext | None):
        self.context = context
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.raw = bytearray()
        self.sni: list[str | None] = []
        self.writers: list[asyncio.StreamWriter] = []
        if context is not None:
            context.sni_callback = self._sni

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                self.raw += data
                for message in framer.feed(data):
                    self.messages.put_nowait(message)
        except (ssl.SSLError, ConnectionError):
            pass


async def _start_trunk(context: ssl.SSLContext | None) -> tuple[Trunk, int, asyncio.Server]:
    trunk = Trunk(context)
    port = _free_port()
    server = await asyncio.start_server(trunk.serve, HOST, port, ssl=context)
    return trunk, port, server


def _invite(gw_port: int, local_port: int, user: str = "15551230000") -> bytes:
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    return (
        f"INVITE sip:{user}@{HOST}:{gw_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bKtls1;rport\r\n"
        f"From: <sip:agent@{HOST}>;tag=a1\r\n"
        f"To: <sip:{user}@{HOST}>\r\n"
        "Call-ID: tls-call-1@test\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:agent@{HOST}:{local_port}>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class UdpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.queue.put_nowait(data)


async def _caller() -> tuple[asyncio.DatagramTransport, UdpPeer, int]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(HOST, 0))
    return transport, peer, int(transport.get_extra_info("sockname")[1])


async def _final(peer: UdpPeer, timeout: float = 5.0) -> Response:
    while True:
        message = parse_message(await asyncio.wait_for(peer.queue.get(), timeout))
        assert isinstance(message, Response)
        if message.status >= 200:
            return message


async def test_tls_listener_answers_over_tls_and_pongs_a_crlf_ping(
    pki: Pki, tmp_path: Path
) -> None:
    port = _free_port()
    dialplan = load_dialplan_text(_dialplan(port, _free_port()), "tls.yaml")
    async with Gateway.running(dialplan, pki.gateway_settings(tmp_path)):
        client = ssl.create_default_context(cafile=str(pki.files["ca"]))
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client, server_hostname="gateway.test"
        )
        writer.write(b"\r\n\r\n")  # RFC 5626 ping
        assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
        writer.write(
            (
                f"OPTIONS sip:gw@{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS {HOST}:5999;branch=z9hG4bKopt1;rport\r\n"
                f"From: <sip:t@{HOST}>;tag=o1\r\nTo: <sip:gw@{HOST}>\r\n"
                "Call-ID: opt1@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        framer = StreamFramer()
        messages: list[bytes] = []
        while not messages:
            messages = framer.feed(await asyncio.wait_for(reader.read(65536), 2))
        response = parse_message(messages[0])
        assert isinstance(response, Response) and response.status == 200
        writer.close()


async def test_call_to_a_tls_trunk_goes_over_tls_with_sni_and_a_tls_via(
    pki: Pki, tmp_path: Path
) -> None:
    trunk, trunk_port, server = await _start_trunk(pki.server_context("sbc.carrier.test"))
    port = _free_port()
    extra = "    tls: { server_name: sbc.carrier.test }\n"
    dialplan = load_dialplan_text(_dialplan(port, trunk_port, trunk_extra=extra), "tls.yaml")
    settings = pki.gateway_settings(tmp_path, tls_keepalive_s=0.2)
    async with Gateway.running(dialplan, settings):
        transport, _caller_peer, local = await _caller()
        transport.sendto(_invite(port, local), (HOST, port))
        invite = parse_message(await asyncio.wait_for(trunk.messages.get(), 5))
        assert isinstance(invite, Request) and invite.method == "INVITE"
        assert trunk.sni == ["sbc.carrier.test"]
        assert str(invite.get("via")).startswith(f"SIP/2.0/TLS {HOST}:{port};")
        assert ";transport=tls" in str(invite.get("contact"))
        # RFC 5626: the gateway pings the connection it opened, and keeps using it
        seen = len(trunk.raw)
        await asyncio.sleep(0.5)
        assert b"\r\n\r\n" in bytes(trunk.raw[seen:])
        transport.close()
    server.close()


class _TransportLog:
    """Stands in for the endpoint's module logger and keeps what it was told. (capture_logs
    cannot be used: a test that configured structlog with cached loggers earlier in the same
    run leaves the endpoint's logger bound to that configuration.)"""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def _keep(self, event: str, **fields: Any) -> None:
        self.entries.append({"event": event, **fields})

    info = warning = error = debug = exception = _keep


@pytest.mark.parametrize("wrong", ["other_name", "unknown_ca"])
async def test_a_wrong_trunk_certificate_is_refused_and_nothing_goes_in_clear(
    pki: Pki, tmp_path: Path, wrong: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if wrong == "other_name":
        context = pki.server_context("sbc.elsewhere.test")
    else:
        context = pki.server_context("sbc.carrier.test", ca=trustme.CA())
    trunk, trunk_port, server = await _start_trunk(context)
    port = _free_port()
    extra = "    tls: { server_name: sbc.carrier.test }\n"
    dialplan = load_dialplan_text(_dialplan(port, trunk_port, trunk_extra=extra), "tls.yaml")
    transport_log = _TransportLog()
    monkeypatch.setattr(endpoint_module, "log", transport_log)
    logs = transport_log.entries
    async with Gateway.running(dialplan, pki.gateway_settings(tmp_path)):
        transport, caller, local = await _caller()
        transport.sendto(_invite(port, local), (HOST, port))
        final = await _final(caller)
        transport.close()
    server.close()
    assert final.status in (408, 503), final.status  # the only hop failed at transport level
    assert trunk.messages.empty() and b"INVITE" not in trunk.raw
    refused = [entry for entry in logs if entry["event"] == "tls_handshake_failed"]
    assert refused, logs
    assert refused[0]["server_name"] == "sbc.carrier.test"
    expected = "Hostname mismatch" if wrong == "other_name" else "unable to get local issuer"
    assert expected in refused[0]["reason"], refused[0]
