"""SIP over TLS against real peers (issue 13, RFC 3261 section 26.2): Kamailio's tls module.

    SIPp uac -udp-> Kamailio "edge" -TLS-> gateway -TLS-> Kamailio "sbc" -udp-> SIPp uas

The SIPp of Debian (sip-tester) is built without TLS (``sipp -h`` lists no ``l1``), so the
agent's TLS hop is played by a Kamailio relay in front of SIPp; the carrier's SBC is a
Kamailio relay with a TLS listener that asks for the gateway's client certificate (mutual
TLS). Certificates come from a trustme CA made by the test. Each Kamailio logs the
protocol every initial request arrived on, so the test sees TLS on both of the gateway's
legs, and that a trunk with a wrong certificate never gets the INVITE at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from harness import LOOPBACK, GatewayFactory, GatewayProcess, Sipp, free_port
from kamailio import KamailioProcess, KamailioTls, start_kamailio

SERVICE = "5551234"


@dataclass
class Pki:
    """A CA and the PEM files of the gateway and of the two Kamailio relays."""

    ca: trustme.CA
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def leaf(self, name: str, *identities: str) -> tuple[Path, Path]:
        """(certificate, key) files of a new certificate for ``identities``."""
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        issued = self.ca.issue_cert(*identities)
        issued.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    pki = Pki(trustme.CA(), directory)
    pki.ca.cert_pem.write_to_path(str(pki.ca_file))
    return pki


@pytest.fixture
def relays() -> Iterator[list[KamailioProcess]]:
    started: list[KamailioProcess] = []
    yield started
    for relay in started:
        relay.stop()


def tls_relay(
    relays: list[KamailioProcess],
    tmp_path: Path,
    pki: Pki,
    name: str,
    cert_names: tuple[str, ...],
    next_hop_uri: str,
    *,
    require_client_cert: bool = False,
) -> tuple[KamailioProcess, int]:
    """A Kamailio TLS relay (udp port for the probe, and the tls port it returns)."""
    cert, key = pki.leaf(name, *cert_names)
    tls_port = free_port("tcp")
    relay = start_kamailio(
        tmp_path / name,
        free_port(),
        next_hop_uri,
        tls=KamailioTls(tls_port, next_hop_uri, cert, key, pki.ca_file, require_client_cert),
    )
    relays.append(relay)
    return relay, tls_port


def dialplan(gw_tls_port: int, sbc_tls_port: int, offer: str | None = None) -> str:
    lines = [
        "version: 1",
        "listen:",
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }",
        f"  - {{ transport: tls, host: ${{listen_host}}, port: {gw_tls_port} }}",
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }",
        "trunks:",
        "  carrier:",
        f"    gateways: [ {{ host: {LOOPBACK}, port: {sbc_tls_port}, transport: tls }} ]",
        "    tls: { server_name: sbc.carrier.test, mutual: true }",
        "    provisional_timeout_s: 3",
        "outbound:",
        "  - { name: all, match: '^5\\d+$', trunk: carrier }",
        "emergency:",
        "  provisional_timeout_s: 3",
        "  direct_routing:",
        "    - { name: sbc-911, match: '^911$', trunk: carrier }",
    ]
    if offer is not None:
        host, _, port = offer.rpartition(":")
        lines.append(
            f"  direct_offer: {{ enabled: true, gateways: [ {{ host: {host}, port: {port} }} ] }}"
        )
    lines += [
        "sites:",
        "  hq:",
        "    networks: ['127.0.0.0/8']",
        "    callback_number: '+15555550100'",
        "    location: { street: Main St, house_number: '1', city: Springfield, state: IL,"
        " postcode: '62701', country: US }",
    ]
    return "\n".join(lines) + "\n"


def gateway_env(pki: Pki) -> dict[str, str]:
    cert, key = pki.leaf("gateway", "gateway.test", LOOPBACK)
    return {
        "GATEWAY_TLS_CERT_FILE": str(cert),
        "GATEWAY_TLS_KEY_FILE": str(key),
        "GATEWAY_TLS_CA_FILE": str(pki.ca_file),
    }


def arrivals(relay: KamailioProcess) -> list[str]:
    """Kamailio's ``initial ... arrived over <proto>`` lines."""
    return [line for line in relay.log_text().splitlines() if "initial INVITE" in line]


def log_records(gw: GatewayProcess, event: str) -> list[dict[str, object]]:
    return [
        record
        for line in gw.log_text().splitlines()
        if f'"{event}"' in line and (record := json.loads(line)).get("event") == event
    ]


@dataclass
class Site:
    gw: GatewayProcess
    edge: KamailioProcess
    sbc: KamailioProcess
    sbc_tls_port: int


def open_site(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    relays: list[KamailioProcess],
    tmp_path: Path,
    pki: Pki,
    uas_address: str,
    *,
    sbc_names: tuple[str, ...] = ("sbc.carrier.test",),
    offer: str | None = None,
) -> Site:
    gw_tls = free_port("tcp")
    sbc, sbc_tls = tls_relay(
        relays,
        tmp_path,
        pki,
        "sbc",
        sbc_names,
        f"sip:{uas_address};transport=udp",
        require_client_cert=True,
    )
    gw = gateway_factory(dialplan(gw_tls, sbc_tls, offer), env=gateway_env(pki))
    edge, _ = tls_relay(
        relays, tmp_path, pki, "edge", ("edge.test",), f"sip:{LOOPBACK}:{gw_tls};transport=tls"
    )
    return Site(gw, edge, sbc, sbc_tls)


@pytest.mark.parametrize("number", [SERVICE, "911"], ids=["ordinary", "emergency"])
def test_a_call_over_tls_on_both_legs(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    relays: list[KamailioProcess],
    tmp_path: Path,
    pki: Pki,
    number: str,
) -> None:
    """An ordinary call and a 911 call: the agent's hop into the gateway and the trunk
    hop out of it are TLS (the SBC demands the gateway's client certificate); the call
    completes both ways and the BYE follows the route set over the same connections."""
    uas = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(sipp, gateway_factory, relays, tmp_path, pki, uas.address)
    uac = sipp.uac("uac_basic.xml", site.edge.address, 1, 1, service=number, timeout=30)
    uac.assert_calls(1)
    uas.wait(timeout=20).assert_calls(1)
    (into_gateway,) = arrivals(site.edge)
    assert "arrived over udp" in into_gateway, into_gateway
    (into_sbc,) = arrivals(site.sbc)
    assert "arrived over tls" in into_sbc, site.sbc.log_tail()
    assert "Traceback" not in site.gw.log_text()
    tries = log_records(site.gw, "b_leg_try")
    assert [t["gateway"] for t in tries] == [f"tls:{LOOPBACK}:{site.sbc_tls_port}"]


@pytest.mark.parametrize(
    ("number", "scenario"),
    [(SERVICE, "uac_expect_503.xml"), ("911", "uac_basic.xml")],
    ids=["ordinary_fails", "emergency_fails_over"],
)
def test_a_trunk_certificate_for_another_name_is_refused(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    relays: list[KamailioProcess],
    tmp_path: Path,
    pki: Pki,
    number: str,
    scenario: str,
) -> None:
    """The SBC presents a certificate for sbc.elsewhere.test: the gateway refuses the
    handshake with a clear log line, never sends the INVITE (nor anything else) in clear
    text; the ordinary call fails, the 911 call fails over to direct offer."""
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(
        sipp,
        gateway_factory,
        relays,
        tmp_path,
        pki,
        "127.0.0.1:9",  # never reached
        sbc_names=("sbc.elsewhere.test",),
        offer=offer.address,
    )
    # straight to the gateway: a proxy in front would turn its 503 into a 500 (RFC 3261
    # section 16.7), and this test is about the trunk side
    uac = sipp.uac(scenario, site.gw.address, 1, 1, service=number, timeout=30)
    uac.assert_calls(1)
    assert arrivals(site.sbc) == [], site.sbc.log_tail()
    refused = log_records(site.gw, "tls_handshake_failed")
    assert refused, site.gw.log_tail(40)
    assert refused[0]["server_name"] == "sbc.carrier.test"
    assert "Hostname mismatch" in str(refused[0]["reason"]), refused[0]
    if number == "911":
        offer.wait(timeout=20).assert_calls(1)
    else:
        offer.stop()
