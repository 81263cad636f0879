"""Running it in production (issue 11, SPEC O-3, O-7): stop, reload, health, metrics.

SIPp plays the callers (ordinary calls from a trusted network, and a 911 call from an
unidentified phone of a trusted site), the carrier and the carrier's SBC; the gateway runs
as a process and gets real signals.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from harness import PROJECT_ROOT, GatewayFactory, GatewayProcess, Sipp, SippProcess, free_port
from prometheus_client.parser import text_string_to_metric_families

ORDINARY = "5551234"
SITE_NUMBER = "+15555550180"


def dialplan(carrier: str, sbc: str, *, extra: str = "") -> str:
    """Ordinary calls to ``carrier``, 911 to ``sbc``; 127.0.0.0/8 is a trusted site."""

    def gateway(address: str) -> str:
        host, _, port = address.rpartition(":")
        return f"{{ host: {host}, port: {port} }}"

    return (
        "version: 1\n"
        "node: { name: ops1 }\n"
        "listen:\n"
        "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
        "registrar: { unauthenticated_outbound_from: ['127.0.0.0/8'] }\n"
        "trunks:\n"
        f"  carrier: {{ gateways: [ {gateway(carrier)} ] }}\n"
        f"  carrier-sbc: {{ gateways: [ {gateway(sbc)} ], trusted: true }}\n"
        "outbound:\n"
        "  - { name: all, match: '^\\d+$', trunk: carrier }\n"
        "emergency:\n"
        "  provisional_timeout_s: 2\n"
        "  direct_routing:\n"
        "    - { name: sbc-911, match: '^911$', trunk: carrier-sbc }\n"
        "sites:\n"
        "  lobby:\n"
        "    networks: ['127.0.0.0/8']\n"
        "    location: { street: Main St, house_number: '100', city: Springfield, state: IL,"
        " postcode: '62701', country: US }\n"
        f"    callback_number: '{SITE_NUMBER}'\n" + extra
    )


def log_events(gw: GatewayProcess, name: str) -> list[dict[str, object]]:
    """The gateway's JSON log records named ``name``."""
    out = []
    for line in gw.log_text().splitlines():
        if f'"{name}"' in line:
            record = json.loads(line)
            if record.get("event") == name:
                out.append(record)
    return out


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def cdr_rows(gw: GatewayProcess) -> list[dict[str, object]]:
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


def _all_up(gw: GatewayProcess, calls: int, *uas: SippProcess) -> None:
    wait_for(lambda: len(log_events(gw, "call_start")) >= calls - 1, "the calls to start")
    wait_for(lambda: len(log_events(gw, "emergency_call_start")) == 1, "the 911 call")
    time.sleep(0.3)  # the 200s and ACKs of the last calls (loopback: milliseconds)


def test_sigterm_drains_ordinary_calls_and_the_911_call_survives(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """SIGTERM with a 911 call and 20 ordinary calls up (SPEC O-7, E-3).

    The ordinary calls get the drain time, then BYEs on both legs and a CDR row each; a
    new ordinary call gets 503 meanwhile; the 911 call survives the drain and ends with
    BYEs on both legs when its caller hangs up, and only then does the gateway exit.
    """
    ordinary = 20
    drain_s = 1.5
    carrier = sipp.uas("uas_basic.xml", calls=ordinary, timeout=40)
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=40)
    gw = gateway_factory(
        dialplan(carrier.address, sbc.address), env={"GATEWAY_DRAIN_S": str(drain_s)}
    )
    sos = sipp.start_uac(
        "uac_basic.xml", gw.address, 1, service="911", call_length=drain_s + 3, timeout=30
    )
    calls = sipp.start_uac(
        "uac_callee_hangup.xml", gw.address, ordinary, 200, service=ORDINARY, timeout=30
    )
    _all_up(gw, ordinary, carrier, sbc)
    gw.popen.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # while draining, a new ordinary call is refused with 503 (and Retry-After)
    sipp.uac("uac_expect_503.xml", gw.address, 1, service=ORDINARY, timeout=10).assert_calls(1)
    calls.wait(timeout=20).assert_calls(ordinary)  # each got the gateway's BYE
    drained_after = time.monotonic() - signalled
    assert drained_after >= drain_s - 0.1, drained_after
    carrier.wait(timeout=20).assert_calls(ordinary)  # BYEs on the carrier's legs too
    assert gw.running, gw.log_tail()  # the 911 call is still up: no exit
    sos.wait(timeout=20).assert_calls(1)  # its caller hung up, after the drain window
    sbc.wait(timeout=20).assert_calls(1)  # and the BYE reached the SBC
    assert gw.popen.wait(timeout=10) == 0, gw.log_tail()
    assert "Traceback" not in gw.log_text(), gw.log_tail(80)
    rows = cdr_rows(gw)
    assert len(rows) == ordinary, rows
    assert {row["result"] for row in rows} == {"drained"}
    assert all(row["callee"] == ORDINARY for row in rows)  # and no row for 911 (E-9)
    (hung_up,) = log_events(gw, "calls_hung_up")
    assert hung_up["calls"] == ordinary and hung_up["emergency_included"] is False


def test_usr1_and_usr2_log_the_status_and_cut_no_call(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """A stray SIGUSR1 or SIGUSR2 (log rotation scripts send them) must not end the node:
    their default action would, cutting the 911 call. Each logs one ``status`` line."""
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    carrier = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    gw = gateway_factory(dialplan(carrier.address, sbc.address))
    sos = sipp.start_uac("uac_basic.xml", gw.address, 1, service="911", call_length=2.0)
    wait_for(lambda: len(log_events(gw, "call_answered")) == 1, "the 911 call up")
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        gw.popen.send_signal(sig)
    wait_for(lambda: len(log_events(gw, "status")) == 2, "two status lines")
    sos.wait(timeout=20).assert_calls(1)
    sbc.wait(timeout=20).assert_calls(1)
    assert gw.running, gw.log_tail()
    statuses = log_events(gw, "status")
    assert sorted(
        (e["signal"], e["calls_in_progress"], e["emergency_calls"]) for e in statuses
    ) == [
        ("SIGUSR1", 1, 1),
        ("SIGUSR2", 1, 1),
    ]  # in either order: both were pending at once
    sipp.uac("uac_basic.xml", gw.address, 1, service=ORDINARY, timeout=10).assert_calls(1)


def test_a_second_sigterm_stops_at_once_with_byes_on_every_leg(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    carrier = sipp.uas("uas_basic.xml", calls=2, timeout=30)
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    gw = gateway_factory(dialplan(carrier.address, sbc.address), env={"GATEWAY_DRAIN_S": "60"})
    sos = sipp.start_uac("uac_callee_hangup.xml", gw.address, 1, service="911", timeout=30)
    calls = sipp.start_uac("uac_callee_hangup.xml", gw.address, 2, 10, service=ORDINARY)
    _all_up(gw, 2, carrier, sbc)
    gw.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: bool(log_events(gw, "gateway_draining")), "the drain")
    gw.popen.send_signal(signal.SIGTERM)
    assert gw.popen.wait(timeout=5) == 0, gw.log_tail()
    calls.wait(timeout=10).assert_calls(2)
    sos.wait(timeout=10).assert_calls(1)
    carrier.wait(timeout=10).assert_calls(2)
    sbc.wait(timeout=10).assert_calls(1)


def http_get(port: int, path: str, *, wait: float = 10.0) -> tuple[int, str]:
    """``GET path`` on the metrics listener: (status, body). The listener opens just after
    the SIP ports (which is when the harness hands the gateway over): a refused connection
    is tried again for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except urllib.error.URLError as error:
            refused = isinstance(error.reason, ConnectionRefusedError)
            if not refused or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_metrics_move_with_calls_and_healthz_turns_503_on_drain(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    carrier = sipp.uas("uas_basic.xml", calls=4, timeout=30)
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=30)
    port = free_port("tcp")
    gw = gateway_factory(
        dialplan(carrier.address, sbc.address),
        env={"GATEWAY_METRICS_ADDR": f"127.0.0.1:{port}", "GATEWAY_DRAIN_S": "5"},
    )
    assert http_get(port, "/healthz") == (200, "serving\n")
    status, before = http_get(port, "/metrics")
    assert status == 200
    assert sample(before, "gateway_calls_total", kind="ordinary", result="completed") == 0
    sipp.uac("uac_basic.xml", gw.address, 3, 10, service=ORDINARY).assert_calls(3)
    sipp.uac("uac_basic.xml", gw.address, 1, service="911").assert_calls(1)
    carrier.wait_bound()
    _, after = http_get(port, "/metrics")
    assert sample(after, "gateway_calls_total", kind="ordinary", result="completed") == 3
    assert sample(after, "gateway_calls_total", kind="emergency", result="completed") == 1
    route = {"route": "direct-routing:carrier-sbc", "result": "completed"}
    assert sample(after, "gateway_emergency_calls_total", **route) == 1
    assert sample(after, "gateway_call_setup_seconds_count", kind="ordinary") == 3
    assert sample(after, "gateway_calls_in_progress") == 0
    assert "gateway_event_loop_lag_seconds" in after
    assert sample(after, "gateway_calls_shed") == 0  # overload control (O-4) has its gauges
    assert sample(after, "gateway_overload_admit_limit") == 0
    # a call up keeps the node draining (not stopped): /healthz says so
    calls = sipp.start_uac("uac_callee_hangup.xml", gw.address, 1, service=ORDINARY)
    wait_for(lambda: len(log_events(gw, "call_start")) == 4, "the fourth call")
    gw.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: http_get(port, "/healthz")[0] == 503, "healthz 503")
    assert http_get(port, "/healthz") == (503, "draining\n")
    calls.wait(timeout=15).assert_calls(1)
    assert gw.popen.wait(timeout=10) == 0, gw.log_tail()


def gateway_reload(gw: GatewayProcess) -> subprocess.CompletedProcess[str]:
    """``gateway reload`` as an operator runs it, beside the running node."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "reload", "--dialplan", str(gw.dialplan_path)],
        capture_output=True,
        text=True,
        env={"GATEWAY_DATA_DIR": str(gw.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
    )


def test_reload_during_100_calls_keeps_them_and_refuses_a_bad_file(
    sipp: Sipp, gateway_factory: GatewayFactory
) -> None:
    """SIGHUP / ``gateway reload`` with 100 calls in progress (SPEC O-1): 0 failed.

    A bad file is refused (non-zero exit, the reason logged) and the old plan kept; a
    good one is applied: the calls in progress stay on the old carrier, new calls go to
    the new one.
    """
    calls = 100
    old = sipp.uas("uas_basic.xml", calls=calls, timeout=60, trace_messages=False)
    new = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    sbc = sipp.uas("uas_basic.xml", calls=1, timeout=60)
    gw = gateway_factory(dialplan(old.address, sbc.address))
    running = sipp.start_uac(
        "uac_basic.xml",
        gw.address,
        calls,
        100,
        service=ORDINARY,
        call_length=3,
        timeout=40,
        trace_messages=False,
    )
    wait_for(lambda: len(log_events(gw, "call_start")) >= calls // 2, "calls in progress")
    good_text = gw.dialplan_path.read_text()
    gw.dialplan_path.write_text(good_text.replace("match: '^\\d+$'", "match: '^(\\d+'"))
    refused = gateway_reload(gw)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "dialplan refused" in refused.stderr
    # the node itself refuses the same file on SIGHUP, says why, and keeps the old plan
    gw.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: bool(log_events(gw, "dialplan_reload_refused")), "the refusal")
    (refusal,) = log_events(gw, "dialplan_reload_refused")
    assert "dialplan.yaml" in str(refusal["problems"])
    # a good file: the new carrier for new calls. Every one of the 100 calls has started
    # first (they last 3 s, so all are in progress): a call the uac places after the
    # reload rightly goes to the new carrier, which takes one call only
    wait_for(lambda: len(log_events(gw, "call_start")) >= calls, "all calls started")
    carrier = old.address.rpartition(":")[2]
    moved = good_text.replace(f"port: {carrier} }}", f"port: {new.address.rpartition(':')[2]} }}")
    assert moved != good_text
    gw.dialplan_path.write_text(moved)
    applied = gateway_reload(gw)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    wait_for(lambda: bool(log_events(gw, "dialplan_reloaded")), "the reload")
    running.wait(timeout=40).assert_calls(calls)  # every call in progress went on
    old.wait(timeout=20).assert_calls(calls)
    sipp.uac("uac_basic.xml", gw.address, 1, service=ORDINARY).assert_calls(1)
    new.wait(timeout=20).assert_calls(1)
    assert gw.running and "Traceback" not in gw.log_text(), gw.log_tail(80)


def _environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")  # noqa: SIM115
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def test_run_switches_to_the_c_allocator_in_place_unless_told_not_to(
    gateway_factory: GatewayFactory,
) -> None:
    """``gateway run`` re-executes itself with ``PYTHONMALLOC=malloc`` (issue 10: freed
    memory goes back after a load), keeping its process id, so a supervisor's signals
    and sd_notify still reach it; ``GATEWAY_ALLOCATOR=pymalloc`` keeps CPython's."""
    plan = dialplan("127.0.0.1:9", "127.0.0.1:9")
    gw = gateway_factory(plan)
    assert _environ(gw.popen.pid).get("PYTHONMALLOC") == "malloc"  # the pid we started
    gw.popen.send_signal(signal.SIGTERM)
    assert gw.popen.wait(timeout=10) == 0, gw.log_tail()
    kept = gateway_factory(plan, env={"GATEWAY_ALLOCATOR": "pymalloc"})
    assert "PYTHONMALLOC" not in _environ(kept.popen.pid)
    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--dialplan", "/nonexistent.yaml"],
        capture_output=True,
        text=True,
        env={"GATEWAY_ALLOCATOR": "jemalloc", "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT,
        timeout=30,
    )
    assert refused.returncode == 2 and "GATEWAY_ALLOCATOR" in refused.stderr, refused.stderr


def test_a_port_already_taken_is_a_one_line_refusal_not_a_traceback(tmp_path: Path) -> None:
    """``make run`` twice: the second gateway finds its SIP port taken and says which, in
    one line, with exit code 1 (the error used to surface as nested exception groups)."""
    port = free_port()
    text = (
        dialplan("127.0.0.1:9", "127.0.0.1:9")
        .replace("${listen_host}", "127.0.0.1")
        .replace("${listen_port}", str(port))
    )
    plan = tmp_path / "dialplan.yaml"
    plan.write_text(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        run = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--dialplan", str(plan)],
            capture_output=True,
            text=True,
            env={
                "PATH": "/usr/bin:/bin",
                "GATEWAY_DATA_DIR": str(tmp_path / "data"),
                "GATEWAY_METRICS_ADDR": "off",
                "GATEWAY_MQTT_URL": "off",
            },
            cwd=PROJECT_ROOT,
            timeout=60,
        )
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"gateway: cannot start: [Errno 98] bind udp:127.0.0.1:{port}: " in run.stderr
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]
