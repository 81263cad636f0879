"""A real softphone through the gateway (issue 15): baresip 1.0 from Debian, headless.

baresip registers as agent alice with MD5 digest (her ``digest_algorithms: [MD5]``: it
answers only the first challenge and has no SHA-256) on a gateway whose registrar offers
SHA-256 first, while a SHA-256 agent registers on the same gateway. Then alice calls out
through the gateway to a SIPp carrier, and dials 911, which reaches the SBC (SIPp) with
her callback DID in From and P-Asserted-Identity.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip
from harness import GatewayFactory, GatewayProcess, Sipp

from gateway.registrar.digest_client import authorization_for_challenge

DIDS = ("+15555550190", "+15555550191")


def _dialplan(carrier: str, sbc: str) -> str:
    def gateway(address: str) -> str:
        host, _, port = address.rpartition(":")
        return f"[ {{ host: {host}, port: {port} }} ]"

    return (
        "version: 1\n"
        "node: { name: gw1 }\n"
        "listen:\n"
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
        "registrar: { realm: test, algorithms: [SHA-256, MD5], min_expires_s: 1 }\n"
        # a lab-short session interval: the gateway refreshes both legs every second
        "sip: { session_expires_s: 2, min_se_s: 2 }\n"
        "trunks:\n"
        f"  carrier: {{ gateways: {gateway(carrier)}, trusted: true }}\n"
        f"  carrier-sbc: {{ gateways: {gateway(sbc)}, trusted: true }}\n"
        "outbound:\n"
        "  - { name: local, match: '^\\d{7}$', trunk: carrier }\n"
        "emergency:\n"
        "  provisional_timeout_s: 2\n"
        "  direct_routing:\n"
        "    - { name: sbc-911, match: '^911$', trunk: carrier-sbc }\n"
        f"  callback: {{ dids: [{', '.join(repr(d) for d in DIDS)}], window_s: 3600 }}\n"
        "agents:\n"
        "  alice:\n"
        "    password: alice-pw\n"
        '    identity: "+15555550101"\n'
        "    digest_algorithms: [MD5]\n"
        "    location: { street: Main St, house_number: '100', city: Springfield,"
        " state: IL, postcode: '62701', country: US }\n"
        "  bob:\n"
        "    password: bob-pw\n"
        '    identity: "+15555550102"\n'
    )


@pytest.fixture
def phone_factory(tmp_path: Path) -> Iterator[list[Baresip]]:
    phones: list[Baresip] = []
    yield phones
    for phone in phones:
        phone.close()


def _baresip(phones: list[Baresip], tmp_path: Path, gw: GatewayProcess) -> Baresip:
    account = (
        f"<sip:alice@{gw.address};transport=udp>;auth_user=alice;auth_pass=alice-pw;regint=300"
    )
    phone = Baresip(tmp_path / "baresip", account)
    phones.append(phone)
    return phone


def _log_events(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    marker = f'"{event}"'
    records = [json.loads(line) for line in gw.log_text().splitlines() if marker in line]
    return [record for record in records if record.get("event") == event]


def _register_sha256(gw: GatewayProcess) -> str:
    """bob registers over UDP with SHA-256 only (a modern phone's side, written out)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

        def register(cseq: int, authorization: str = "") -> str:
            lines = [
                f"REGISTER sip:{gw.address} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-bob-{cseq};rport",
                "Max-Forwards: 70",
                f"From: <sip:bob@{gw.address}>;tag=bob1",
                f"To: <sip:bob@{gw.address}>",
                "Call-ID: bob-register-1",
                f"CSeq: {cseq} REGISTER",
                f"Contact: <sip:bob@127.0.0.1:{port}>",
                "Expires: 300",
                *([f"Authorization: {authorization}"] if authorization else []),
                "Content-Length: 0",
            ]
            sock.sendto(
                ("\r\n".join(lines) + "\r\n\r\n").encode(), (gw.listen_host, gw.listen_port)
            )
            return sock.recv(65535).decode()

        first = register(1)
        assert first.startswith("SIP/2.0 401"), first
        challenge = next(
            line.split(":", 1)[1].strip()
            for line in first.splitlines()
            if line.lower().startswith("www-authenticate:") and "SHA-256" in line
        )
        authorization = authorization_for_challenge(
            challenge,
            method="REGISTER",
            uri=f"sip:{gw.address}",
            username="bob",
            password="bob-pw",
            cnonce="bobcnonce",
            nc=1,
        )
        assert "algorithm=SHA-256" in authorization
        return register(2, authorization).splitlines()[0]


def test_baresip_registers_with_md5_beside_a_sha256_agent_and_calls_out(
    sipp: Sipp, gateway_factory: GatewayFactory, phone_factory: list[Baresip], tmp_path: Path
) -> None:
    carrier = sipp.uas("uas_refreshed.xml", calls=1, timeout=40)
    sbc = sipp.uas("uas_refreshed.xml", calls=1, timeout=40)
    gw = gateway_factory(_dialplan(carrier.address, sbc.address))
    assert _register_sha256(gw) == "SIP/2.0 200 OK"
    phone = _baresip(phone_factory, tmp_path, gw)
    phone.registered()
    sent = phone.log_path.read_text(errors="replace")
    assert "algorithm=MD5" in sent or 'algorithm="MD5"' in sent, phone.log_tail()
    # an ordinary call through the gateway to the carrier
    phone.command("dial", f"sip:5551234@{gw.address}")
    first_call = ""
    phone.event("CALL_ESTABLISHED")
    time.sleep(2.5)  # session refreshes: re-INVITE to baresip (no UPDATE in its Allow)
    phone.command("hangup")
    phone.event("CALL_CLOSED")
    carrier.wait(timeout=20).assert_calls(1)  # every refresh answered, then the BYE
    first_call = str(_log_events(gw, "call_end")[0]["call_id"])
    # 911 reaches the SBC with the callback DID
    phone.command("dial", f"sip:911@{gw.address}")
    phone.event("CALL_ESTABLISHED")
    phone.command("hangup")
    sbc.wait(timeout=20).assert_calls(1)
    received = sbc.result().files.messages.read_text()
    invite = received[received.index("INVITE sip:911@") :].split("\n\n")[0]
    headers = {
        line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip()
        for line in invite.splitlines()[1:]
        if ":" in line
    }
    assert any(f"<sip:{did}@" in headers["from"] for did in DIDS), invite
    assert any(did in headers["p-asserted-identity"] for did in DIDS), invite
    # the refreshes of the ordinary call: re-INVITEs to baresip, UPDATEs to SIPp, all answered
    refreshes = [e for e in _log_events(gw, "session_refresh") if e["call_id"] == first_call]
    pairs = {(e["side"], e["method"]) for e in refreshes}
    assert pairs == {("a", "INVITE"), ("b", "UPDATE")}, gw.log_tail(60)
    assert _log_events(gw, "session_expired") == [], gw.log_tail(60)
