"""The gateway as a black box between real SIP peers: SIPp uac -> gateway -> SIPp uas.

Pass rule (Kamailio style): count the successful calls on both SIPp ends. Every run is
bounded in calls (-m) and in time (-timeout), on loopback only.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from harness import (
    LOOPBACK,
    SCENARIO_DIR,
    GatewayFactory,
    GatewayProcess,
    Sipp,
    SippProcess,
    free_port,
)
from kamailio import KamailioFactory

SERVICE = "5551234"


def dialplan(*gateways: str, provisional_timeout: float = 10.0, transport: str = "udp") -> str:
    """A dialplan routing everything to a trunk whose gateways are ``host:port[/tcp]``."""
    lines = []
    for gw in gateways:
        address, _, gw_transport = gw.partition("/")
        host, _, port = address.rpartition(":")
        lines.append(
            f"      - {{ host: {host}, port: {port}, transport: {gw_transport or transport} }}"
        )
    return (
        "version: 1\n"
        "listen:\n"
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
        "  - { transport: tcp, host: ${listen_host}, port: ${listen_port} }\n"
        "trunks:\n"
        "  carrier:\n"
        "    gateways:\n" + "\n".join(lines) + "\n"
        f"    provisional_timeout_s: {provisional_timeout}\n"
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }\n"
        "outbound:\n"
        "  - { name: all, match: '.*', trunk: carrier }\n"
    )


def call_ends(gateway: GatewayProcess) -> list[dict[str, object]]:
    """The gateway's ``call_end`` log records."""
    out = []
    for line in gateway.log_text().splitlines():
        if '"call_end"' in line:
            out.append(json.loads(line))
    return out


def _assert_gateway_alive(gateway: GatewayProcess) -> None:
    assert gateway.running, gateway.log_tail()
    assert "Traceback" not in gateway.log_text(), gateway.log_tail(80)


# -- volume ------------------------------------------------------------------------------


def test_thousand_calls_zero_failed(sipp: Sipp, gateway_factory: GatewayFactory) -> None:
    """1000 calls of SIPp's built-in uac/uas through the gateway, none failed."""
    calls = 1000
    uas = sipp.uas("uas", calls=calls, timeout=60, trace_messages=False)
    gw = gateway_factory(dialplan(uas.address), env={"GATEWAY_LOG_LEVEL": "WARNING"})
    uac = sipp.uac("uac", gw.address, calls, 200, timeout=60, trace_messages=False)
    uac.assert_calls(calls)
    uas.wait(timeout=30).assert_calls(calls)
    _assert_gateway_alive(gw)


def test_ten_percent_loss_on_both_ends(sipp: Sipp, gateway_factory: GatewayFactory) -> None:
    """1000 calls with SIPp dropping 10 % of its messages at both ends: >= 99 % complete.

    Every lost message must be recovered by retransmission (RFC 3261 Timers A, E, G and
    the 2xx retransmission of section 13.3.1.4), on both legs of the gateway.
    """
    calls = 1000
    # uas_basic answers a retransmitted INVITE again (our INVITE is retransmitted when its
    # 180 and 200 were lost); SIPp's built-in uas aborts such a call instead
    uas = sipp.uas("uas_basic.xml", calls=calls, timeout=150, lost=10, trace_messages=False)
    gw = gateway_factory(dialplan(uas.address), env={"GATEWAY_LOG_LEVEL": "WARNING"})
    uac = sipp.uac("uac", gw.address, calls, 100, timeout=140, lost=10, trace_messages=False)
    assert uac.stats_found, uac.describe()
    assert uac.successful_calls >= 0.99 * calls, uac.describe()
    uas.stop(grace=5)
    _assert_gateway_alive(gw)


# -- scenarios ---------------------------------------------------------------------------

SCENARIOS = {
    # name: (uac scenario, uas scenario, uac call length, uas call length)
    "basic_sdp_end_to_end": ("uac_basic.xml", "uas_basic.xml", None, None),
    "cancel_during_ringing": ("uac_cancel.xml", "uas_ring_cancel.xml", 0.05, None),
    "callee_hangs_up": ("uac_callee_hangup.xml", "uas_hangup.xml", None, 0.1),
    "reinvite": ("uac_reinvite.xml", "uas_reinvite.xml", 0.05, None),
    "update": ("uac_update.xml", "uas_update.xml", 0.05, None),
}


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_through_gateway(
    sipp: Sipp, gateway_factory: GatewayFactory, name: str, transport: str
) -> None:
    uac_xml, uas_xml, uac_length, uas_length = SCENARIOS[name]
    calls = 10
    uas = sipp.uas(uas_xml, calls=calls, timeout=30, call_length=uas_length, transport=transport)  # type: ignore[arg-type]
    gw_transport = "tcp" if transport == "t1" else "udp"
    gw = gateway_factory(dialplan(uas.address, transport=gw_transport))
    uac = sipp.uac(
        uac_xml,
        gw.address,
        calls,
        20,
        service=SERVICE,
        timeout=30,
        recv_timeout=10,
        call_length=uac_length,
        transport=transport,  # type: ignore[arg-type]
    )
    uac.assert_calls(calls)
    uas.wait(timeout=20).assert_calls(calls)
    _assert_gateway_alive(gw)
    if name == "basic_sdp_end_to_end":
        # the offer and the answer crossed the gateway byte for byte
        received = uas.result().files.messages.read_text()
        assert "o=caller 53655765 2353687637 IN IP4 127.0.0.1" in received
        answered = uac.files.messages.read_text()
        assert "o=callee 53655765 2353687637 IN IP4 127.0.0.1" in answered
        # two legs: the uas never sees the caller's Call-ID
        caller_ids = {
            line.split(":", 1)[1].strip()
            for line in uac.files.messages.read_text().splitlines()
            if line.startswith("Call-ID:")
        }
        assert not any(cid in received for cid in caller_ids)
    ends = call_ends(gw)
    assert len(ends) == calls
    expected = "cancelled" if name == "cancel_during_ringing" else "completed"
    assert {e["result"] for e in ends} == {expected}, ends[:3]


# -- failover ----------------------------------------------------------------------------


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    """A bound UDP socket that never answers (a gateway that lost its mind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        yield int(s.getsockname()[1])


def _reject_uas(sipp: Sipp, calls: int, status: int) -> SippProcess:
    """uas_reject.xml answering ``status`` (SIPp reads response codes at load time)."""
    template = (SCENARIO_DIR / "uas_reject.xml").read_text()
    path = sipp.workdir / f"uas_reject_{status}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        template.replace("SIP/2.0 503 Service Unavailable", f"SIP/2.0 {status} Refused")
    )
    return sipp.uas(path, calls=calls, timeout=40)


@pytest.mark.parametrize("status", [503, 408, 504])
def test_failover_on_error_response(
    sipp: Sipp, gateway_factory: GatewayFactory, status: int
) -> None:
    """First gateway answers 503/408/504 -> the call completes on the second."""
    calls = 5
    bad = _reject_uas(sipp, calls, status)
    good = sipp.uas("uas_basic.xml", calls=calls, timeout=40)
    gw = gateway_factory(dialplan(bad.address, good.address))
    uac = sipp.uac("uac_basic.xml", gw.address, calls, 10, service=SERVICE, timeout=30)
    uac.assert_calls(calls)
    good.wait(timeout=20).assert_calls(calls)
    bad.wait(timeout=20).assert_calls(calls)  # each got its ACK for the error
    assert all(len(e["attempts"]) == 2 for e in call_ends(gw))  # type: ignore[arg-type]


def test_no_failover_on_other_codes(sipp: Sipp, gateway_factory: GatewayFactory) -> None:
    """486 Busy is not a failover code: relayed to the caller, second gateway untouched."""
    calls = 3
    busy = _reject_uas(sipp, calls, 486)
    never = free_port()
    gw = gateway_factory(dialplan(busy.address, f"{LOOPBACK}:{never}"))
    uac = sipp.start_uac("uac_expect_503.xml", gw.address, calls, 10, service=SERVICE, timeout=10)
    result = uac.wait()
    # the caller expected 503 but got 486: every call "failed" on the uac, none succeeded
    assert result.successful_calls == 0 and result.failed_calls == calls, result.describe()
    assert "486" in result.files.messages.read_text()
    busy.wait(timeout=20).assert_calls(calls)


def test_failover_when_no_provisional_in_time(
    sipp: Sipp, gateway_factory: GatewayFactory, silent_udp_port: int
) -> None:
    """A gateway that never answers is left after provisional_timeout_s."""
    calls = 3
    good = sipp.uas("uas_basic.xml", calls=calls, timeout=40)
    gw = gateway_factory(
        dialplan(f"{LOOPBACK}:{silent_udp_port}", good.address, provisional_timeout=0.5)
    )
    uac = sipp.uac("uac_basic.xml", gw.address, calls, 10, service=SERVICE, timeout=30)
    uac.assert_calls(calls)
    good.wait(timeout=20).assert_calls(calls)
    assert '"b_leg_no_provisional"' in gw.log_text()


def test_failover_on_transport_failure(sipp: Sipp, gateway_factory: GatewayFactory) -> None:
    """A TCP gateway refusing the connection is skipped at once."""
    calls = 3
    refused = free_port("tcp")
    good = sipp.uas("uas_basic.xml", calls=calls, timeout=40)
    gw = gateway_factory(dialplan(f"{LOOPBACK}:{refused}/tcp", good.address))
    uac = sipp.uac("uac_basic.xml", gw.address, calls, 10, service=SERVICE, timeout=20)
    uac.assert_calls(calls)
    good.wait(timeout=20).assert_calls(calls)
    assert '"b_leg_failed"' in gw.log_text()


def test_every_gateway_fails_gives_503(sipp: Sipp, gateway_factory: GatewayFactory) -> None:
    calls = 3
    first = _reject_uas(sipp, calls, 503)
    second = _reject_uas(sipp, calls, 503)
    gw = gateway_factory(dialplan(first.address, second.address))
    uac = sipp.uac("uac_expect_503.xml", gw.address, calls, 10, service=SERVICE, timeout=20)
    uac.assert_calls(calls)
    first.wait(timeout=20).assert_calls(calls)
    second.wait(timeout=20).assert_calls(calls)


# -- interop with Kamailio -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["basic_sdp_end_to_end", "callee_hangs_up", "reinvite"])
def test_through_kamailio(
    sipp: Sipp, gateway_factory: GatewayFactory, kamailio_factory: KamailioFactory, name: str
) -> None:
    """SIPp uac -> Kamailio (Record-Route) -> gateway -> SIPp uas.

    The gateway sees two Vias and a Record-Route; its responses must find their way back
    through Kamailio and its in-dialog requests to the caller (the callee's BYE) must
    follow the route set.
    """
    uac_xml, uas_xml, uac_length, uas_length = SCENARIOS[name]
    calls = 10
    uas = sipp.uas(uas_xml, calls=calls, timeout=30, call_length=uas_length)
    gw = gateway_factory(dialplan(uas.address))
    relay = kamailio_factory(gw.address)
    uac = sipp.uac(
        uac_xml,
        relay.address,
        calls,
        20,
        service=SERVICE,
        timeout=30,
        recv_timeout=10,
        call_length=uac_length,
    )
    uac.assert_calls(calls)
    uas.wait(timeout=20).assert_calls(calls)
    _assert_gateway_alive(gw)
    received = uac.files.messages.read_text()
    assert f"Record-Route: <sip:{relay.address};lr>" in received
    if name == "callee_hangs_up":
        # the gateway's BYE to the caller went through Kamailio (loose routing)
        assert relay.log_text().count("in-dialog BYE relayed by loose_route") >= calls
