"""A trunk found through RFC 3263 DNS (NAPTR -> SRV -> A), with failover between the SRV
targets (issue 13), for calls and for a trunk's registration. The DNS server is
``testkit.dnsserver.DnsServer`` on loopback; the gateway runs as a process pointed at it
with ``GATEWAY_DNS_SERVER``."""

from __future__ import annotations

import json
import socket

from harness import LOOPBACK, GatewayFactory, Sipp

from testkit.dnsserver import DnsServer, Records

SERVICE = "5551234"


def silent_port() -> tuple[socket.socket, int]:
    """A UDP socket on loopback that is bound and never answers, and its port."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((LOOPBACK, 0))
    return silent, int(silent.getsockname()[1])


def two_srv_targets(first_port: int, second_port: int) -> Records:
    """``_sip._udp.carrier.test``: sbc1 (priority 10) on ``first_port``, then sbc2 (20) on
    ``second_port``, both on loopback."""
    return {
        ("_sip._udp.carrier.test", "SRV"): (
            60,
            [f"10 0 {first_port} sbc1.carrier.test.", f"20 0 {second_port} sbc2.carrier.test."],
        ),
        ("sbc1.carrier.test", "A"): (60, [LOOPBACK]),
        ("sbc2.carrier.test", "A"): (60, [LOOPBACK]),
    }


def test_second_srv_target_takes_the_call_when_the_first_does_not_answer(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    uas = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    silent, dead_port = silent_port()
    records = {
        ("carrier.test", "NAPTR"): (60, ['10 50 "s" "SIP+D2U" "" _sip._udp.carrier.test.']),
        **two_srv_targets(dead_port, uas.port),
    }
    with silent, DnsServer(records) as dns:
        gw = gateway_factory(
            "version: 1\n"
            "listen: [ { transport: udp, host: ${listen_host}, port: ${listen_port} } ]\n"
            "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }\n"
            "trunks:\n"
            "  carrier:\n"
            "    gateways: [ { host: carrier.test } ]\n"
            "    provisional_timeout_s: 1\n"
            "outbound:\n"
            "  - { name: all, match: '.*', trunk: carrier }\n",
            env={"GATEWAY_DNS_SERVER": dns.address},
        )
        uac = sipp.uac("uac_basic.xml", gw.address, 1, 1, service=SERVICE, timeout=30)
        uac.assert_calls(1)
        uas.wait(timeout=20).assert_calls(1)
        asked = set(dns.queries)
    assert {("carrier.test", "NAPTR"), ("_sip._udp.carrier.test", "SRV")} <= asked
    tries = [
        json.loads(line)["gateway"] for line in gw.log_text().splitlines() if '"b_leg_try"' in line
    ]
    assert tries == [f"udp:{LOOPBACK}:{dead_port}", f"udp:{LOOPBACK}:{uas.port}"]


def test_the_trunk_registers_at_the_second_srv_target_when_the_first_is_silent(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """A registration-based trunk found through SRV: the first target never answers, so
    after Timer F (short here: T1 50 ms) and the backoff the REGISTER goes to the second,
    SIPp's registrar, which challenges and grants (it checks the digest)."""
    registrar = sipp.uas(
        "uas_register_challenge.xml",
        calls=1,
        timeout=30,
        extra=["-key", "carrier_user", "acme-trunk", "-key", "carrier_password", "pw-3"],
    )
    silent, dead_port = silent_port()
    with silent, DnsServer(two_srv_targets(dead_port, registrar.port)) as dns:
        gw = gateway_factory(
            "version: 1\n"
            "listen: [ { transport: udp, host: ${listen_host}, port: ${listen_port} } ]\n"
            "sip: { t1_ms: 50, t2_ms: 400 }\n"
            "trunks:\n"
            "  carrier:\n"
            "    gateways: [ { host: carrier.test } ]\n"
            "    auth: { username: acme-trunk, password_env: CARRIER_PASSWORD }\n"
            "    register: { expires: 600, retry_min_s: 0.5 }\n",
            env={"GATEWAY_DNS_SERVER": dns.address, "CARRIER_PASSWORD": "pw-3"},
        )
        registrar.wait(timeout=25).assert_calls(1)  # challenged, granted, refreshed
    states = [
        json.loads(line) for line in gw.log_text().splitlines() if '"trunk_registration"' in line
    ]
    tried = [s["registrar"] for s in states]
    assert f"udp:{LOOPBACK}:{dead_port}" in tried, states
    assert states[-1]["registrar"] == f"udp:{LOOPBACK}:{registrar.port}", states
    assert any(s["state"] == "registered" for s in states), states
