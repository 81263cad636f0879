"""Emergency failover that never sticks, and every failure explained (SPEC E-2, E-3).

SIPp plays the agent's phone, the carrier's SBC (answering 503, or 100 Trying and then
nothing, or not there at all) and the direct-offer service; a Mosquitto started here
carries the emergency events, which must validate against the published schema.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jsonschema
import pytest
from broker import Mosquitto
from harness import LOOPBACK, GatewayFactory, GatewayProcess, Sipp, free_port
from test_b2bua_wire import SERVICE
from test_b2bua_wire import dialplan as trunk_dialplan
from test_emergency import SCHEMA, Site, dial, dialplan, open_site

SBC_PATH = "direct-routing:carrier-sbc"


def emergency_dialplan(
    *, sbc: tuple[str, ...] = (), offer: tuple[str, ...] = (), setup_timeout: float = 1.0
) -> str:
    """test_emergency's site, with a 3 s provisional timeout and a short setup timeout."""
    text = dialplan(sbc=sbc, offer=offer)
    old = "  provisional_timeout_s: 2\n"
    assert old in text
    return text.replace(old, f"  provisional_timeout_s: 3\n  setup_timeout_s: {setup_timeout}\n")


def b_leg_tries(gw: GatewayProcess) -> list[tuple[datetime, str]]:
    """(time, gateway) of every B-leg INVITE the gateway placed, from its JSON log."""
    tries = []
    for line in gw.log_text().splitlines():
        if '"b_leg_try"' in line:
            record = json.loads(line)
            tries.append((datetime.fromisoformat(record["timestamp"]), str(record["gateway"])))
    return tries


def final_response(messages: str, status: int) -> str:
    """The first message in a SIPp trace that starts with ``SIP/2.0 <status>``."""
    for block in messages.split("\n\n"):
        text = block.strip()
        at = text.find(f"SIP/2.0 {status} ")
        if at != -1:
            return text[at:]
    raise AssertionError(f"no {status} in the trace")


def failed_event(site: Site) -> dict[str, Any]:
    site.recorder.wait_for(lambda: "failed" in site.names(), "the failed event")
    (event,) = [e for e in site.events() if e["event"] == "failed"]
    return event


def test_sbc_503_without_direct_offer_explains_itself(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """Hole 4: the agent gets 503 + a Warning naming the SBC path and its 503; the
    ``failed`` event lists the attempt as fields (no "failed 503" string to parse)."""
    sbc = sipp.uas("uas_reject.xml", calls=1, timeout=30)
    site = open_site(sipp, gateway_factory, mosquitto, emergency_dialplan(sbc=(sbc.address,)))
    result = dial(sipp, site, "911", scenario="uac_expect_503.xml")
    result.assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    response = final_response(result.files.messages.read_text(), 503)
    warning = next(line for line in response.splitlines() if line.startswith("Warning:"))
    assert warning.startswith(f'Warning: 399 {LOOPBACK} "'), warning
    assert f"{SBC_PATH} udp:{sbc.address} 503 Service Unavailable" in warning, warning
    assert "Retry-After" not in response  # the SBC's Retry-After must not hold the phone
    attempt = {
        "path": SBC_PATH,
        "gateway": f"udp:{sbc.address}",
        "code": 503,
        "error": "status",
        "detail": "Service Unavailable",
    }
    failed = failed_event(site)
    assert failed["result"] == "failed" and failed["status"] == 503
    assert failed["attempts"] == [attempt]
    (failover,) = [e for e in site.events() if e["event"] == "failover"]
    assert {k: failover[k] for k in attempt} == attempt
    for event in site.events():
        jsonschema.validate(event, SCHEMA)


@pytest.mark.parametrize(
    "stuck", ["uas_100_then_nothing.xml", "uas_100_then_late_200.xml"], ids=["487", "late_200"]
)
def test_sbc_that_sends_100_and_nothing_else_is_left_after_the_setup_timeout(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, stuck: str
) -> None:
    """Hole 5a: 100 Trying, then silence: after setup_timeout_s (1 s) the SBC gets a
    CANCEL and the call is answered by direct offer. A 200 that crosses the CANCEL is
    ACKed and BYEd (the SIPp SBC passes only if both come), never given to the agent."""
    sbc = sipp.uas(stuck, calls=1, timeout=30)
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(
        sipp,
        gateway_factory,
        mosquitto,
        emergency_dialplan(sbc=(sbc.address,), offer=(offer.address,), setup_timeout=1.0),
    )
    dial(sipp, site, "911").assert_calls(1)
    offer.wait(timeout=20).assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)  # got the CANCEL (and ACK + BYE for a late 200)
    (first, _), (second, second_gw) = b_leg_tries(site.gw)
    assert second_gw == f"udp:{offer.address}"
    assert 0.9 <= (second - first).total_seconds() < 2.0  # setup 1 s, not Timer C (180 s)
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    (failover,) = [e for e in site.events() if e["event"] == "failover"]
    assert failover["error"] == "setup_timeout" and failover["code"] is None
    assert failover["path"] == SBC_PATH and failover["gateway"] == f"udp:{sbc.address}"
    for event in site.events():
        jsonschema.validate(event, SCHEMA)


def test_closed_sbc_port_fails_over_to_direct_offer_at_once(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """Hole 5b: nothing listens on the SBC's UDP port; the ICMP port unreachable is a
    transport failure at once, not a 3 s provisional timeout."""
    closed = f"{LOOPBACK}:{free_port()}"
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(
        sipp, gateway_factory, mosquitto, emergency_dialplan(sbc=(closed,), offer=(offer.address,))
    )
    dial(sipp, site, "911").assert_calls(1)
    offer.wait(timeout=20).assert_calls(1)
    (first, first_gw), (second, second_gw) = b_leg_tries(site.gw)
    assert (first_gw, second_gw) == (f"udp:{closed}", f"udp:{offer.address}")
    assert (second - first).total_seconds() < 1.0  # provisional_timeout_s is 3
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    (failover,) = [e for e in site.events() if e["event"] == "failover"]
    assert failover["error"] == "refused" and failover["code"] is None
    assert failover["detail"] == "ICMP port unreachable"


def test_closed_port_with_no_other_path_gives_503_naming_it(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """E-3: no 404/424, a 503 whose Warning says the SBC refused; fast, not after 3 s."""
    closed = f"{LOOPBACK}:{free_port()}"
    site = open_site(sipp, gateway_factory, mosquitto, emergency_dialplan(sbc=(closed,)))
    result = dial(sipp, site, "911", scenario="uac_expect_503.xml")
    result.assert_calls(1)
    response = final_response(result.files.messages.read_text(), 503)
    assert f"{SBC_PATH} udp:{closed} ICMP port unreachable" in response, response
    failed = failed_event(site)
    assert [a["error"] for a in failed["attempts"]] == ["refused"]
    jsonschema.validate(failed, SCHEMA)


def test_ordinary_trunk_skips_a_closed_gateway_port_at_once(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """Hole 5b for ordinary calls: trunk failover on ICMP port unreachable, no 3 s wait."""
    calls = 3
    closed = f"{LOOPBACK}:{free_port()}"
    good = sipp.uas("uas_basic.xml", calls=calls, timeout=40)
    gw = gateway_factory(trunk_dialplan(closed, good.address, provisional_timeout=3.0))
    sipp.uac("uac_basic.xml", gw.address, calls, 10, service=SERVICE, timeout=30).assert_calls(
        calls
    )
    good.wait(timeout=20).assert_calls(calls)
    tries = b_leg_tries(gw)
    assert [g for _, g in tries] == [f"udp:{closed}", f"udp:{good.address}"] * calls
    for (first, _), (second, _) in zip(tries[::2], tries[1::2], strict=True):
        assert (second - first).total_seconds() < 1.0
    failed = [json.loads(line) for line in gw.log_text().splitlines() if '"b_leg_failed"' in line]
    assert [f["error"] for f in failed] == ["refused"] * calls


@pytest.mark.parametrize("status", [404, 486])
def test_sbc_that_refuses_with_any_final_status_falls_back_to_direct_offer(
    sipp: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto, status: int
) -> None:
    """E-3: an SBC answering 404 or 486 has failed the call as surely as one answering 503;
    the direct-offer service still gets it (E-2 names only 408/503/504 for a gateway list)."""
    from test_b2bua_wire import _reject_uas

    sbc = _reject_uas(sipp, 1, status)
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    site = open_site(
        sipp,
        gateway_factory,
        mosquitto,
        emergency_dialplan(sbc=(sbc.address,), offer=(offer.address,)),
    )
    dial(sipp, site, "911").assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    offer.wait(timeout=20).assert_calls(1)
    site.recorder.wait_for(lambda: "ended" in site.names(), "the ended event")
    (failover,) = [e for e in site.events() if e["event"] == "failover"]
    assert failover["code"] == status and failover["path"] == SBC_PATH
