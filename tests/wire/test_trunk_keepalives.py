"""OPTIONS keep-alives to trunk gateways (issue 11, SPEC O-3) against a real SIPp trunk.

The carrier's SBC (SIPp) answers the gateway's OPTIONS, then stops answering (a second
SIPp on the same port receives them and says nothing): the gateway marks it down within
the dialplan's threshold, says so in its log and in ``/metrics``, and the next 911 call
goes straight to the direct-offer service, the SBC never seeing its INVITE. ``gateway
trunks`` and ``gateway calls`` show it through the node's control socket.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from harness import PROJECT_ROOT, GatewayFactory, GatewayProcess, Sipp, free_port
from prometheus_client.parser import text_string_to_metric_families
from test_operations import log_events, wait_for

from gateway.control import ask

INTERVAL_S = 1.0
TIMEOUT_S = 0.5
DOWN_AFTER = 2
#: the configured threshold: the last answered probe, then DOWN_AFTER probes unanswered
THRESHOLD_S = DOWN_AFTER * INTERVAL_S + TIMEOUT_S


def dialplan(sbc: str, offer: str) -> str:
    """911 to the SBC (probed), direct offer (not probed) behind it; 127.0.0.0/8 a site."""

    def gateway(address: str) -> str:
        host, _, port = address.rpartition(":")
        return f"{{ host: {host}, port: {port} }}"

    return (
        "version: 1\n"
        "node: { name: ka1 }\n"
        "listen:\n"
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }\n"
        "trunks:\n"
        "  carrier-sbc:\n"
        f"    gateways: [ {gateway(sbc)} ]\n"
        "    trusted: true\n"
        f"    keepalive: {{ interval_s: {INTERVAL_S}, timeout_s: {TIMEOUT_S},"
        f" down_after: {DOWN_AFTER}, up_after: 1 }}\n"
        "emergency:\n"
        "  provisional_timeout_s: 3\n"
        "  direct_routing:\n"
        "    - { name: sbc-911, match: '^911$', trunk: carrier-sbc }\n"
        "  direct_offer:\n"
        f"    gateways: [ {gateway(offer)} ]\n"
        "sites:\n"
        "  lobby:\n"
        "    networks: ['127.0.0.0/8']\n"
        "    location: { street: Main St, house_number: '100', city: Springfield, state: IL,"
        " postcode: '62701', country: US }\n"
        "    callback_number: '+15555550180'\n"
    )


def gateway_up(metrics_port: int, gateway: str) -> float | None:
    """``gateway_trunk_gateway_up`` of ``gateway`` on the node's ``/metrics``."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_trunk_gateway_up" and sample.labels["gateway"] == gateway:
                return sample.value
    return None


def live(gw: GatewayProcess, listing: str) -> list[dict[str, Any]]:
    """``gateway <listing> --json`` against the running node (its control socket)."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", listing, "--json"],
        capture_output=True,
        text=True,
        env={"GATEWAY_DATA_DIR": str(gw.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_a_trunk_that_stops_answering_options_is_down_and_911_goes_straight_to_the_next_path(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    answering = sipp.uas("uas_options_ok.xml", calls=1000, timeout=60)
    sbc_port, sbc_key = answering.port, f"udp:{answering.address}"
    offer = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    metrics_port = free_port("tcp")
    gw = gateway_factory(
        dialplan(answering.address, offer.address),
        env={"GATEWAY_METRICS_ADDR": f"127.0.0.1:{metrics_port}"},
    )
    time.sleep(2 * INTERVAL_S + 0.2)  # a few keep-alives, answered
    answered = answering.stop()
    assert answered.successful_calls >= 2, answered.describe()
    assert log_events(gw, "trunk_gateway_down") == []
    assert gateway_up(metrics_port, sbc_key) == 1.0
    silent_since = time.monotonic()
    mute = sipp.uas("uas_options_mute.xml", sbc_port, calls=1000, timeout=60)

    wait_for(lambda: bool(log_events(gw, "trunk_gateway_down")), "the SBC marked down", 15)
    marked_after = time.monotonic() - silent_since
    # the threshold, plus the time this loaded machine takes to read the log
    assert marked_after < THRESHOLD_S + 1.5, marked_after
    (down,) = log_events(gw, "trunk_gateway_down")
    assert down["gateway"] == sbc_key and down["trunks"] == ["carrier-sbc"]
    assert down["reason"] == f"no answer within {TIMEOUT_S:g} s" and down["level"] == "warning"
    assert gateway_up(metrics_port, sbc_key) == 0.0

    trunks = {row["trunk"]: row for row in live(gw, "trunks")}
    assert trunks["carrier-sbc"]["state"] == "down" and trunks["carrier-sbc"]["failures"] >= 2
    assert trunks["direct-offer"]["state"] == "not probed"

    dialled = time.monotonic()
    caller = sipp.start_uac("uac_basic.xml", gw.address, 1, service="911", call_length=3.0)
    wait_for(lambda: bool(log_events(gw, "b_leg_try")), "the B-leg INVITE")
    # the control socket itself (a CLI process may start slower than the call lasts here)
    (call,) = ask(gw.data_dir, "calls")  # both legs' Call-IDs, to match a carrier's trace
    assert call["kind"] == "emergency" and call["gateway"] == f"udp:{offer.address}"
    assert call["a_call_id"] and call["b_call_id"] and call["a_call_id"] != call["b_call_id"]
    caller.wait(timeout=20).assert_calls(1)
    assert time.monotonic() - dialled < 3.0 + 3.0  # no 3 s provisional timeout at the SBC
    offer.wait(timeout=20).assert_calls(1)
    tries = [
        json.loads(line)
        for line in gw.log_text().splitlines()
        if '"b_leg_try"' in line and json.loads(line).get("event") == "b_leg_try"
    ]
    assert [t["gateway"] for t in tries] == [f"udp:{offer.address}"]  # straight there
    silent = mute.stop()
    assert "INVITE sip:" not in silent.files.messages.read_text()  # never saw the 911 call
    assert silent.failed_calls == 0, silent.describe()
