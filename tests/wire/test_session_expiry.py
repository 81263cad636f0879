"""Session timers (RFC 4028) over the wire (issue 15 hole 5): the far end vanishes.

A SIPp phone asks for session timers (the phone refreshes, every 90 s); the SIPp carrier
answers with ``Allow: UPDATE`` and no interval, so the gateway refreshes that leg at its
own (lab-short) interval, gets one refresh answered, and then finds the carrier gone.
The gateway hangs up the phone with a BYE and writes the CDR row ``session_expired``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness import PROJECT_ROOT, GatewayFactory, GatewayProcess, Sipp


def _dialplan(carrier: str) -> str:
    host, _, port = carrier.rpartition(":")
    return (
        "version: 1\n"
        "listen:\n"
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
        # a lab-short session interval (2 s: a refresh each second) and Timer F of 3.2 s
        "sip: { t1_ms: 50, t2_ms: 400, session_expires_s: 2, min_se_s: 2 }\n"
        "trunks:\n"
        f"  carrier: {{ gateways: [ {{ host: {host}, port: {port} }} ] }}\n"
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }\n"
        "outbound:\n"
        "  - { name: all, match: '.*', trunk: carrier }\n"
    )


def _cdr_rows(gw: GatewayProcess) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "cdr", "--json"],
        capture_output=True,
        text=True,
        env={"GATEWAY_DATA_DIR": str(gw.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_a_carrier_that_vanishes_is_hung_up_by_the_session_timer(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    carrier = sipp.uas("uas_vanishes.xml", calls=1, timeout=20)
    gw = gateway_factory(_dialplan(carrier.address))
    phone = sipp.uac("uac_session_timer.xml", gw.address, 1, 1, service="5551234", timeout=20)
    phone.assert_calls(1)  # the 200 had Session-Expires: 90;refresher=uac, Require: timer
    carrier.wait(timeout=10).assert_calls(1)  # one UPDATE refresh answered, then gone
    assert '"session_expired"' in gw.log_text(), gw.log_tail(40)
    code = gw.stop()  # the CDR writer flushes on a clean stop
    assert code == 0, (code, gw.log_tail())
    assert [row["result"] for row in _cdr_rows(gw)] == ["session_expired"]
