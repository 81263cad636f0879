"""Overload control on the wire (SPEC O-4, E-3; issue 10).

The gateway is given a deliberately small capacity (three calls in set-up) so that the
test is fast and deterministic on any machine: the carrier (SIPp on 127.0.0.2) rings each
ordinary call for a while before it answers, and SIPp floods ordinary calls well above what
fits. Meanwhile alice, registered, dials 911 from her registered port. Every emergency call
must complete, every shed ordinary call must get 503 with Retry-After (never a time-out),
and every admitted ordinary call must complete. No timing is asserted: the figures live in
bench/overload_bench.py.
"""

from __future__ import annotations

import re
import time

from broker import Mosquitto
from harness import GatewayFactory, Sipp
from test_emergency import (  # the fixtures are used by name
    carrier,  # noqa: F401
    dial,
    dialplan,
    open_site,
)

FLOOD_CALLS = 200
FLOOD_RATE = 50.0
EMERGENCY_CALLS = 3
RING_S = 0.3
OVERLOAD = "overload: { max_calls_in_setup: 3, retry_after_s: 3 }\n"
OPEN = "registrar: { realm: test, algorithms: [MD5], unauthenticated_outbound_from: ['%s'] }"


def _call_ids_with(messages: str, first_line: str) -> set[str]:
    """Call-IDs of the traced messages whose first line starts with ``first_line``."""
    found = set()
    for block in re.split(r"\n(?=-{5,})", messages):
        body = block.split("\n", 2)[-1].lstrip()
        if body.startswith(first_line):
            call_id = re.search(r"^Call-ID:\s*(\S+)", body, re.M | re.I)
            if call_id is not None:
                found.add(call_id.group(1))
    return found


def test_the_gateway_sheds_ordinary_calls_with_503_and_911_still_gets_through(
    sipp: Sipp, carrier: Sipp, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=EMERGENCY_CALLS, timeout=60)
    # a port of its own, not the dialplan's 127.0.0.2:5999, where other tests expect no one
    trunk = carrier.uas(
        "uas_ring_then_answer.xml", calls=FLOOD_CALLS, timeout=60, call_length=RING_S
    )
    text = (
        dialplan(sbc=(sbc.address,))
        .replace("registrar: { realm: test, algorithms: [MD5] }", OPEN % "127.0.0.1/32")
        .replace("port: 5999 }", f"port: {trunk.port} }}")
    )
    site = open_site(sipp, gateway_factory, mosquitto, text + OVERLOAD)
    flood = sipp.start_uac(
        "uac_admitted_or_shed.xml",
        site.gw.address,
        FLOOD_CALLS,
        FLOOD_RATE,
        service="95551230000",
        timeout=60,
    )
    deadline = time.monotonic() + 20
    while "overload_shedding" not in site.gw.log_text():  # the gateway is shedding now
        assert time.monotonic() < deadline, site.gw.log_tail()
        assert flood.running, flood.result().describe()
        time.sleep(0.05)
    for dialled in ("911", "9911", "911")[:EMERGENCY_CALLS]:
        # E-3: never refused, never lost; 9 + 911 (the outside-line rule) is one too
        dial(sipp, site, dialled).assert_calls(1)
    sbc.wait(timeout=30).assert_calls(EMERGENCY_CALLS)
    result = flood.wait()
    assert result.passed, result.describe()  # no time-out, no 503 without Retry-After
    messages = result.files.messages.read_text()
    shed = _call_ids_with(messages, "SIP/2.0 503")
    admitted = _call_ids_with(messages, "BYE ")
    assert shed and admitted, result.describe()
    assert not shed & admitted
    assert len(shed) + len(admitted) == FLOOD_CALLS
    assert "Retry-After: 3" in messages
    # the gate answered them before parsing, statelessly (its To tag), and ate their ACKs
    assert ";tag=gw503-" in messages
    ringing = trunk.stop()
    assert ringing.failed_calls == 0, ringing.describe()
    assert ringing.successful_calls == len(admitted), ringing.describe()
    assert "emergency_call_start" in site.gw.log_text()
