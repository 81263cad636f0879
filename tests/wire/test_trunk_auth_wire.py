"""Trunk authentication against a real carrier (issue 13): SIPp challenges and checks.

SIPp plays the carrier (``uas_challenge.xml``: 401 to the INVITE, then the INVITE with
credentials is checked and answered; 401 to the BYE, then the BYE with credentials is
checked) and the agent's phone. The password reaches the gateway through the environment
(``password_env``) and must not appear in its log. Pass rule: the call completes on both
SIPp ends; a wrong password makes the carrier refuse (the same test, made to fail).
"""

from __future__ import annotations

import json
import signal
import time

from harness import GatewayFactory, GatewayProcess, Sipp, SippProcess, free_port
from test_operations import http_get, sample
from test_trunk_keepalives import live

PASSWORD = "carrier-pw-7f3e"


def dialplan(carrier: str) -> str:
    """Ordinary calls and 911 both to the challenging carrier; the phones' network is open
    (no agent credentials) and is a US site, so 911 is that site's emergency call."""
    host, _, port = carrier.rpartition(":")
    return (
        "version: 1\n"
        "listen:\n"
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
        "trunks:\n"
        "  carrier:\n"
        f"    gateways: [ {{ host: {host}, port: {port} }} ]\n"
        "    auth: { username: acme-trunk, password_env: CARRIER_PASSWORD }\n"
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }\n"
        "sites:\n"
        "  hq:\n"
        "    networks: ['127.0.0.0/8']\n"
        "    location: { street: Main St, city: Springfield, state: IL, postcode: '62701',"
        " country: US }\n"
        "    callback_number: '+15555550180'\n"
        "outbound:\n"
        "  - { name: all, match: '.*', trunk: carrier }\n"
        "emergency:\n"
        "  direct_routing:\n"
        "    - { name: sbc-911, match: '^911$', trunk: carrier }\n"
    )


def carrier(sipp: Sipp, password: str, calls: int = 1) -> SippProcess:
    return sipp.uas(
        "uas_challenge.xml",
        calls=calls,
        timeout=30,
        extra=["-key", "carrier_user", "acme-trunk", "-key", "carrier_password", password],
    )


def test_a_carrier_that_challenges_invite_and_bye_gets_the_credentials(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """An ordinary call, then a 911 call (direct routing to the same carrier)."""
    uas = carrier(sipp, PASSWORD, calls=2)
    gw = gateway_factory(dialplan(uas.address), env={"CARRIER_PASSWORD": PASSWORD})
    for number in ("5551234", "911"):
        sipp.uac("uac_basic.xml", gw.address, 1, 1, service=number, timeout=20).assert_calls(1)
    uas.wait(timeout=20).assert_calls(2)
    log = gw.log_text()
    assert log.count('"trunk_challenge_answered"') == 4  # INVITE and BYE of each call
    tries = [json.loads(line) for line in log.splitlines() if '"b_leg_try"' in line]
    assert [t["trunk"] for t in tries] == ["carrier", "direct-routing:carrier"]
    assert '"b_leg_failover"' not in log and '"b_leg_failed"' not in log
    assert PASSWORD not in log
    assert "Traceback" not in log


def test_a_wrong_password_is_refused_by_the_carrier(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """The pass rule can fail: the carrier checks the digest, a wrong one gets 403."""
    uas = carrier(sipp, "not-" + PASSWORD)
    gw = gateway_factory(dialplan(uas.address), env={"CARRIER_PASSWORD": PASSWORD})
    result = sipp.uac("uac_basic.xml", gw.address, 1, 1, service="5551234", timeout=20)
    assert result.failed_calls == 1, result.describe()
    assert uas.wait(timeout=20).successful_calls == 0


def registered_trunk(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    scenario: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[SippProcess, GatewayProcess]:
    """SIPp as the carrier's registrar (``scenario``, checking the trunk's digest) and a
    gateway whose trunk registers there for 600 s (``env``: more of its settings)."""
    registrar = sipp.uas(
        scenario,
        calls=1,
        timeout=timeout,
        extra=["-key", "carrier_user", "acme-trunk", "-key", "carrier_password", PASSWORD],
    )
    text = dialplan(registrar.address).replace(
        "    auth: { username: acme-trunk, password_env: CARRIER_PASSWORD }\n",
        "    auth: { username: acme-trunk, password_env: CARRIER_PASSWORD }\n"
        "    register: { expires: 600, domain: carrier.test }\n",
    )
    return registrar, gateway_factory(text, env={"CARRIER_PASSWORD": PASSWORD, **(env or {})})


def wait_registered(gw: GatewayProcess) -> None:
    """Until the gateway logs its trunk registered (at most 10 s)."""
    deadline = time.monotonic() + 10.0
    while '"state": "registered"' not in gw.log_text():
        assert time.monotonic() < deadline, gw.log_tail(30)
        time.sleep(0.1)


def test_a_registration_based_trunk_is_registered_and_refreshed(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """REGISTER challenged and accepted for 2 s; the refresh comes before they run out,
    challenged and accepted again (SIPp checks the digest both times)."""
    port = free_port()
    registrar, gw = registered_trunk(
        sipp, gateway_factory, "uas_register_challenge.xml", 30,
        env={"GATEWAY_METRICS_ADDR": f"127.0.0.1:{port}"},
    )  # fmt: skip
    registrar.wait(timeout=20).assert_calls(1)
    deadline = time.monotonic() + 5.0
    while True:  # the last 200 was SIPp's final step: the gateway may log it just after
        states = [
            json.loads(line)
            for line in gw.log_text().splitlines()
            if '"trunk_registration"' in line
        ]
        granted = [s["expires"] for s in states if s["state"] == "registered" and "error" not in s]
        if len(granted) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert granted[:2] == [2, 600], states
    assert PASSWORD not in gw.log_text()
    # the operator sees it in /metrics (per trunk) and in ``gateway trunks``
    _, metrics = http_get(port, "/metrics")
    assert sample(metrics, "gateway_trunk_registered", trunk="carrier") == 1.0, metrics
    assert sample(metrics, "gateway_trunk_registrations_up") == 1.0
    (row,) = live(gw, "trunks")
    assert row["trunk"] == "carrier"
    assert row["registration"].startswith("registered, ") and row["registration"].endswith(
        " s left"
    ), row


def test_a_clean_stop_removes_the_trunk_registration(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """Registered for 600 s; on SIGTERM the gateway sends REGISTER with Expires: 0 (with
    credentials when challenged) before it exits, so the carrier stops sending it calls."""
    registrar, gw = registered_trunk(sipp, gateway_factory, "uas_register_unregister.xml", 60)
    wait_registered(gw)
    assert gw.stop() == 0
    registrar.wait(timeout=20).assert_calls(1)
    states = [
        json.loads(line)["state"]
        for line in gw.log_text().splitlines()
        if '"trunk_registration"' in line
    ]
    assert states[-1] == "unregistered", states


def test_a_reload_moves_the_registration_to_the_new_registrar(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """The dialplan's trunk moves to another registrar and is reloaded (SIGHUP, SPEC O-1):
    the old registrar sees the binding removed (Expires: 0, digest on its challenge), the
    new one sees the trunk register with its credentials, without a restart."""
    old, gw = registered_trunk(sipp, gateway_factory, "uas_register_unregister.xml", 60)
    wait_registered(gw)
    new = sipp.uas(
        "uas_register_challenge.xml",
        calls=1,
        timeout=30,
        extra=["-key", "carrier_user", "acme-trunk", "-key", "carrier_password", PASSWORD],
    )
    text = gw.dialplan_path.read_text()
    moved = text.replace(old.address.rpartition(":")[2], new.address.rpartition(":")[2])
    assert moved != text
    gw.dialplan_path.write_text(moved)
    gw.popen.send_signal(signal.SIGHUP)
    old.wait(timeout=20).assert_calls(1)  # removed, with credentials on the challenge
    new.wait(timeout=20).assert_calls(1)  # registered (2 s), refreshed (600 s), challenged
    log = gw.log_text()
    assert '"dialplan_reloaded"' in log and '"trunk_registrations_reloaded"' in log, log
    assert gw.running and PASSWORD not in log and "Traceback" not in log
