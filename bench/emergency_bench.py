"""Emergency call set-up latency through the gateway: alone, under load, with a mail server.

An agent's phone (alice, location US) registers from one port, then dials 911 from that
same port; the gateway identifies alice by her registration flow, reserves a callback DID
in SQLite and places the emergency leg on the SBC trunk of a direct-routing rule:

    alone   alice (SIPp uac, -s 911)  ->  gateway  ->  SBC (SIPp uas)
    load    the same, while            SIPp uac  ->  gateway  ->  SIPp uas
            places ordinary calls at --load-rate (400) calls/s on an outbound rule

and three scenarios for the e-mail to alice's emergency contacts (SPEC E-6): the calls of
``alone`` (no ordinary load), with alice given two ``emergency_contacts``, so that every
call makes the gateway send 2 mails:

    mail-none   GATEWAY_SMTP_HOST unset: no mail server configured
    mail-fast   an aiosmtpd server (a thread of this script, free port, plain SMTP) that
                accepts every mail at once
    mail-slow   the same, but its handle_DATA sleeps 2 s (--slow-mail-seconds) per mail

(GATEWAY_SMTP_HOST=127.0.0.1, GATEWAY_SMTP_PORT=<its port>, GATEWAY_SMTP_SECURITY=none; the
templates of dialplans/templates are copied next to the dialplan.) The issue: set-up
latency must be the same in the three. The gateway sends at most 4 mails at a time, so the
slow server gets about 2 mails/s, fewer than the 10/s the calls make: by the last call it
has only part of them, the rest stay pending in the gateway's outbox and keep going out
after the run (until the gateway stops; --mail-drain-seconds keeps it running that long
after the last call, waiting for them). Reported per scenario: mails expected, received by
the last call and by the gateway's stop, the outbox rows still pending, and the
gateway's notification_* log events.

Emergency calls: --emergency-rate (5) calls/s for --emergency-seconds (20): 100 short calls
(sipp-scenarios/uac_basic.xml, -d 0) against sipp-scenarios/uas_basic.xml. Ordinary calls:
bench/scenarios/uac_rtd.xml against uas_rtd.xml, as in cps_bench.py; they start
--warmup-seconds (3) before the first emergency call and go on 2 s after the last.

Set-up latency is measured three ways, for the same calls:

    wire      the INVITE to 911 entering the gateway -> the INVITE leaving it for the SBC,
              from a loopback capture (dumpcap, read with tshark; microsecond timestamps).
              The two legs have different Call-IDs: they are paired in order (calls are
              200 ms apart, so one is in set-up at a time) and checked: the incoming one
              is from alice's registered port, the outgoing one carries a callback DID of
              the pool in From and P-Asserted-Identity.
    internal  the gateway's own log: ``emergency_call_start`` -> ``emergency_event`` trying
              of the same call_id (GATEWAY_LOG_LEVEL=INFO). Internal timestamps: taken
              after the INVITE was read and parsed, and before the B-leg INVITE is sent,
              so the socket read/write and the parse are not in it.
    uac       SIPp's response time at alice's phone, INVITE sent -> 200 received (the rtd
              of uac_basic.xml): an external upper bound, including the SBC's 180 and 200
              and both directions of the gateway; SIPp's clock ticks in ~4 ms steps.

Each scenario runs on a fresh gateway (GATEWAY_MQTT_URL=off, GATEWAY_STORE=sqlite:///...
in the work directory, so the DID reservation really hits SQLite; JSON logs at INFO, the
gateway's default level). Emergency calls must all succeed. Target (the issue): emergency
p99 < 20 ms and 0 failures under load. Everything runs on 127.0.0.1 and is bounded (about
two minutes with the defaults, all five scenarios); the files stay in the work
directory printed at the end.

    .venv/bin/python bench/emergency_bench.py [--load-rate 400] [--emergency-rate 5]
        [--emergency-seconds 20] [--warmup-seconds 3]
        [--scenarios alone,load,mail-none,mail-fast,mail-slow] [--slow-mail-seconds 2]
        [--mail-drain-seconds 0] [--log-level INFO] [--target-p99-ms 20] [--no-capture]
        [--json out.json] [--workdir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

# run as `python bench/emergency_bench.py`: the project root holds testkit/, the harness
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.ladder import render_table
from testkit.processes import (
    CLK_TCK,
    PROJECT_ROOT,
    Child,
    GatewayProcess,
    code_revision,
    cpu_ticks,
    find_tool,
    free_port,
    load_average,
    port_bound_by,
    start_gateway,
)
from testkit.sipp import (
    head_lines,
    percentile,
    read_rtt,
    read_stats,
    scenario_screen,
    stat_int,
)

SIPP_SCENARIOS = PROJECT_ROOT / "sipp-scenarios"
BENCH_SCENARIOS = PROJECT_ROOT / "bench" / "scenarios"
REGISTER_SCENARIO = SIPP_SCENARIOS / "agent_register.xml"
EMERGENCY_UAC = SIPP_SCENARIOS / "uac_basic.xml"
SBC_UAS = SIPP_SCENARIOS / "uas_basic.xml"
LOAD_UAC = BENCH_SCENARIOS / "uac_rtd.xml"
LOAD_UAS = BENCH_SCENARIOS / "uas_rtd.xml"
HOST = "127.0.0.1"
#: A SIPp run is killed this many seconds after its own -timeout.
HARD_MARGIN_S = 5.0
AGENT = "alice"
PASSWORD = "alice-secret"
DIDS = ("+15555550190", "+15555550191", "+15555550192")
#: Ordinary calls go on this long after the last emergency call.
LOAD_TAIL_S = 2.0
#: timewait at the end of uas_basic.xml (SBC) and uas_rtd.xml (ordinary callee), s.
SBC_TIMEWAIT_S = 2.0
LOAD_UAS_TIMEWAIT_S = 1.0
RECV_TIMEOUT_MS = 5000
#: alice's emergency contacts in the mail-* scenarios: 2 mails per call.
CONTACTS = ("supervisor@example.com", "security@example.com")
TEMPLATES = PROJECT_ROOT / "dialplans" / "templates"
#: scenario -> (ordinary load?, mail server: None = contacts unset, "none", "fast", "slow")
SCENARIOS: dict[str, tuple[bool, str | None]] = {
    "alone": (False, None),
    "load": (True, None),
    "mail-none": (False, "none"),
    "mail-fast": (False, "fast"),
    "mail-slow": (False, "slow"),
}
DEFAULT_SCENARIOS = ",".join(SCENARIOS)
#: --quick: every scenario, 2 s of emergency calls, 1 s warm-up, 100 ordinary calls/s.
QUICK = {"emergency_seconds": 2.0, "warmup_seconds": 1.0, "load_rate": 100}

DIALPLAN = """\
version: 1
node: {{ name: emergency-bench }}
listen:
  - {{ transport: udp, host: {host}, port: {port} }}
trunks:
  carrier:
    gateways: [ {{ host: {host}, port: {carrier_port}, transport: udp }} ]
  carrier-sbc:
    gateways: [ {{ host: {host}, port: {sbc_port}, transport: udp }} ]
    trusted: true
registrar:
  realm: bench
  algorithms: [MD5]
  unauthenticated_outbound_from: ['{host}/32']
outbound:
  - {{ name: catch-all, match: '.*', trunk: carrier }}
emergency:
  direct_routing:
    - {{ name: sbc-911, match: '^911$', trunk: carrier-sbc, countries: [US] }}
  callback:
    dids: [{dids}]
    window_s: 3600
agents:
  {agent}:
    password: {password}
    identity: '+15555550101'
    capacity: 1
    location: {{ street: 100 Main St, city: Springfield, state: IL, postcode: '62701',
                country: US }}
    callback_fallback: 'sip:security@{host}:5999'
{contacts}"""


# --------------------------------------------------------------------------- helpers


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def stats_ms(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "count": float(len(ordered)),
        "p50_ms": percentile(ordered, 50),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else None,
    }


def triple(stats: dict[str, float | None], digits: int = 2) -> str:
    return "/".join(_ms(stats.get(k), digits) for k in ("p50_ms", "p99_ms", "max_ms"))


def sipp_files(directory: Path, role: str, timeout_s: float) -> list[str]:
    # fmt: off
    return [
        "-nostdin",
        "-timeout", f"{timeout_s:g}s", "-timeout_error",
        "-trace_stat", "-stf", str(directory / f"{role}_stat.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(directory / f"{role}_errors.log"),
        "-trace_screen", "-screen_file", str(directory / f"{role}_screen.log"),
    ]
    # fmt: on


def wait_bound(child: Child, port: int, what: str) -> None:
    deadline = time.monotonic() + 5.0
    while not port_bound_by(child.pid, port, "udp"):
        if not child.running or time.monotonic() > deadline:
            child.stop()
            raise RuntimeError(f"{what} did not bind udp {HOST}:{port}")
        time.sleep(0.02)


def iso_seconds(text: str) -> float | None:
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


# --------------------------------------------------------------------------- gateway


def start_bench_gateway(
    directory: Path,
    text: str,
    port: int,
    log_level: str,
    extra_env: dict[str, str] | None = None,
) -> GatewayProcess:
    """A fresh gateway on its own dialplan, SQLite store (``data/gateway.db``) and logs;
    none of this process's GATEWAY_* settings leak into it."""
    env = {
        "GATEWAY_STORE": f"sqlite:///{directory / 'data' / 'gateway.db'}",
        "GATEWAY_MQTT_URL": "off",
        "GATEWAY_LOG_LEVEL": log_level,
        **(extra_env or {}),
    }
    return start_gateway(
        text,
        directory,
        listen_port=port,
        env=env,
        ready_timeout=15.0,
        inherit_gateway_env=False,
    )


def outbox_states(gateway: GatewayProcess) -> dict[str, int]:
    """Outbox rows by state (pending, sent, failed), read after the gateway stopped."""
    # the outbox has a file of its own beside the main store (gateway/stores/sqlite.py)
    outbox = gateway.data_dir / "gateway-outbox.db"
    with contextlib.suppress(sqlite3.Error):
        connection = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state")
            return {str(state): int(count) for state, count in rows}
        finally:
            connection.close()
    return {}


# --------------------------------------------------------------------------- mail server


@dataclass
class Mail:
    arrived: float  # time.time() when the server accepted it
    call_id: str  # X-Gateway-Call-ID
    recipient: str


class Mailbox:
    """aiosmtpd handler: accepts every mail, after ``delay_s`` (the slow server)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._mails: list[Mail] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        message = message_from_bytes(envelope.content, policy=policy.default)
        mail = Mail(time.time(), str(message["X-Gateway-Call-ID"]), ",".join(envelope.rcpt_tos))
        with self._lock:
            self._mails.append(mail)
        return "250 2.0.0 queued"

    def mails(self) -> list[Mail]:
        with self._lock:
            return list(self._mails)


class MailServer:
    """An aiosmtpd server on 127.0.0.1 in its own thread and event loop (plain SMTP)."""

    def __init__(self, delay_s: float) -> None:
        from aiosmtpd.controller import Controller  # only the mail-* scenarios need it

        self.port = free_port()
        self.mailbox = Mailbox(delay_s)
        self.controller = Controller(self.mailbox, hostname=HOST, port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


# --------------------------------------------------------------------------- capture


class Capture:
    """dumpcap on the loopback, only alice -> gateway and gateway -> SBC datagrams."""

    def __init__(self, directory: Path, alice: int, gateway: int, sbc: int) -> None:
        self.path = directory / "emergency.pcapng"
        self.bpf = (
            f"udp and ((src port {alice} and dst port {gateway}) or "
            f"(src port {gateway} and dst port {sbc}))"
        )
        dumpcap = shutil.which("dumpcap")
        assert dumpcap is not None
        log = directory / "dumpcap.log"
        self.child = Child(
            [dumpcap, "-i", "lo", "-f", self.bpf, "-w", str(self.path), "-q"], directory, log
        )
        deadline = time.monotonic() + 10.0
        while "Capturing on" not in log.read_text(errors="replace"):
            if not self.child.running or time.monotonic() > deadline:
                self.child.stop(soft=signal.SIGTERM)
                raise RuntimeError("dumpcap did not start: " + log.read_text(errors="replace"))
            time.sleep(0.05)

    def stop(self) -> None:
        self.child.stop(soft=signal.SIGINT, grace=5.0)


@dataclass
class Invite:
    time: float
    src: int
    dst: int
    ruri_user: str
    call_id: str
    from_user: str
    pai_user: str


def read_invites(path: Path, ports: tuple[int, ...]) -> list[Invite]:
    """First INVITE of every Call-ID in the capture (retransmissions left out)."""
    tshark = shutil.which("tshark")
    if tshark is None or not path.exists():
        return []
    decode = [arg for port in ports for arg in ("-d", f"udp.port=={port},sip")]
    fields = ["frame.time_epoch", "udp.srcport", "udp.dstport", "sip.r-uri.user",
              "sip.Call-ID", "sip.from.user", "sip.pai.user"]  # fmt: skip
    command = [tshark, "-r", str(path), "-n", *decode, "-Y", 'sip.Method == "INVITE"',
               "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]  # fmt: skip
    for name in fields:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    seen: set[str] = set()
    invites: list[Invite] = []
    for line in out.stdout.splitlines():
        cols = (line.split("\t") + [""] * len(fields))[: len(fields)]
        try:
            invite = Invite(float(cols[0]), int(cols[1]), int(cols[2]), *cols[3:])
        except ValueError:
            continue
        if invite.call_id and invite.call_id not in seen:
            seen.add(invite.call_id)
            invites.append(invite)
    invites.sort(key=lambda i: i.time)
    return invites


@dataclass
class WireResult:
    incoming: int = 0
    outgoing: int = 0
    pairs: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    ambiguous: int = 0
    bad_identity: int = 0
    unmatched_in: int = 0


def pair_invites(invites: list[Invite], alice: int, gateway: int, sbc: int) -> WireResult:
    """Pair each INVITE to 911 from alice with the next INVITE to the SBC, in order."""
    result = WireResult()
    pending: list[Invite] = []
    for invite in invites:
        if invite.src == alice and invite.dst == gateway and invite.ruri_user == "911":
            result.incoming += 1
            pending.append(invite)
        elif invite.src == gateway and invite.dst == sbc:
            result.outgoing += 1
            if not pending:
                continue
            if len(pending) > 1:
                result.ambiguous += 1
            first = pending.pop(0)
            result.pairs += 1
            result.latencies_ms.append((invite.time - first.time) * 1000.0)
            if invite.from_user not in DIDS or invite.pai_user not in DIDS:
                result.bad_identity += 1
    result.unmatched_in = len(pending)
    return result


# --------------------------------------------------------------------------- gateway log


@dataclass
class LogResult:
    starts: int = 0
    tried: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    reserve_ms: list[float] = field(default_factory=list)
    not_alice: int = 0
    no_did: int = 0
    events: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    #: notification_* log events (E-6) by name, and the start time of every call
    notifications: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)


def read_log(lines: list[str]) -> LogResult:
    result = LogResult()
    started: dict[str, float] = {}
    tried: set[str] = set()
    for line in lines:
        if not line.startswith("{"):
            continue
        level_warn = '"level": "warning"' in line or '"level": "error"' in line
        interesting = "emergency" in line or "notification" in line or "mail" in line
        if not interesting and not level_warn and '"level": "critical"' not in line:
            continue
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        event = str(record.get("event", ""))
        if record.get("level") in ("warning", "error", "critical"):
            result.warnings[event] = result.warnings.get(event, 0) + 1
        ts = iso_seconds(str(record.get("timestamp", "")))
        call_id = str(record.get("call_id", ""))
        if event.startswith("notification_"):
            result.notifications[event] = result.notifications.get(event, 0) + 1
        if event == "emergency_call_start" and ts is not None:
            result.starts += 1
            started.setdefault(call_id, ts)
        elif event == "emergency_event":
            name = str(record.get("emergency_event"))
            result.events[name] = result.events.get(name, 0) + 1
            if name == "callback_reserved" and call_id in started and ts is not None:
                result.reserve_ms.append((ts - started[call_id]) * 1000.0)
            if name == "trying" and call_id not in tried and ts is not None:
                tried.add(call_id)
                result.tried += 1
                if call_id in started:
                    result.latencies_ms.append((ts - started[call_id]) * 1000.0)
                if record.get("agent") != AGENT:
                    result.not_alice += 1
                if record.get("did") not in DIDS:
                    result.no_did += 1
    result.started = started
    return result


# --------------------------------------------------------------------------- one scenario


@dataclass
class Scenario:
    name: str
    load_rate: int
    emergency_calls: int
    emergency_ok: int = 0
    emergency_failed: int = 0
    sbc_ok: int = 0
    sbc_failed: int = 0
    retransmissions: int = 0
    wire: dict[str, float | None] = field(default_factory=dict)
    wire_checks: dict[str, int] = field(default_factory=dict)
    internal: dict[str, float | None] = field(default_factory=dict)
    internal_reserve: dict[str, float | None] = field(default_factory=dict)
    internal_checks: dict[str, Any] = field(default_factory=dict)
    uac: dict[str, float | None] = field(default_factory=dict)
    load_calls: int = 0
    load_ok: int = 0
    load_failed: int = 0
    load_uas_failed: int = 0
    load_achieved_cps: float | None = None
    load_setup: dict[str, float | None] = field(default_factory=dict)
    gateway_cpu_pct: float | None = None
    gateway_log_warnings: dict[str, int] = field(default_factory=dict)
    gateway_exit: int | None = None
    problems: list[str] = field(default_factory=list)
    directory: str = ""
    #: E-6: "" (alice has no contacts), "none" (no server configured), "fast", "slow"
    mail_server: str = ""
    mail_delay_s: float = 0.0  # the server's delay per mail
    mails_expected: int = 0
    mails_by_last_call: int | None = None
    mails_at_stop: int | None = None
    mails_duplicated: int = 0
    #: last call ended -> the gateway stopped (drain, shutdown), s
    mail_tail_s: float | None = None
    #: call start (gateway log) -> the mail accepted by the server
    mail_delay: dict[str, float | None] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)
    notification_log: dict[str, int] = field(default_factory=dict)


def register(sipp: str, directory: Path, gateway_port: int, alice_port: int) -> None:
    command = [
        sipp, f"{HOST}:{gateway_port}", "-sf", str(REGISTER_SCENARIO),
        "-s", AGENT, "-au", AGENT, "-ap", PASSWORD, "-key", "expires", "3600", "-m", "1",
        "-i", HOST, "-bind_local", "-p", str(alice_port),
        *sipp_files(directory, "register", 10.0),
    ]  # fmt: skip
    child = Child(command, directory, directory / "register_output.log")
    if child.wait(10.0 + HARD_MARGIN_S) is None:
        child.stop()
    if child.returncode != 0:
        raise RuntimeError(
            f"alice's REGISTER failed (sipp exit {child.returncode}); see {directory}"
        )


def run_scenario(
    name: str, load_rate: int, mail: str | None, args: argparse.Namespace, workdir: Path
) -> Scenario:
    directory = workdir / name
    em_dir, load_dir = directory / "emergency", directory / "load"
    for path in (em_dir, load_dir):
        path.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(args.emergency_rate * args.emergency_seconds))
    result = Scenario(name, load_rate, calls, directory=str(directory), mail_server=mail or "")
    sipp = args.sipp
    gw_port, sbc_port, carrier_port, alice_port = (free_port() for _ in range(4))
    em_timeout = args.emergency_seconds + 20.0
    load_seconds = args.warmup_seconds + args.emergency_seconds + LOAD_TAIL_S
    load_calls = round(load_rate * load_seconds) if load_rate else 0
    load_timeout = load_seconds + 20.0
    result.load_calls = load_calls

    text = DIALPLAN.format(
        host=HOST,
        port=gw_port,
        carrier_port=carrier_port,
        sbc_port=sbc_port,
        dids=", ".join(f"'{d}'" for d in DIDS),
        agent=AGENT,
        password=PASSWORD,
        contacts=f"    emergency_contacts: '{'; '.join(CONTACTS)}'\n" if mail else "",
    )
    started: list[Child] = []
    gateway: GatewayProcess | None = None
    capture: Capture | None = None
    mail_server: MailServer | None = None
    gateway_env: dict[str, str] = {}
    if mail is not None:
        shutil.copytree(TEMPLATES, directory / "gateway" / "templates", dirs_exist_ok=True)
    if mail in ("fast", "slow"):
        result.mails_expected = calls * len(CONTACTS)
        result.mail_delay_s = args.slow_mail_seconds if mail == "slow" else 0.0
        mail_server = MailServer(result.mail_delay_s)
        gateway_env = {
            "GATEWAY_SMTP_HOST": HOST,
            "GATEWAY_SMTP_PORT": str(mail_server.port),
            "GATEWAY_SMTP_SECURITY": "none",
        }
    last_call_ended: float | None = None
    try:
        sbc = Child(
            [sipp, "-sf", str(SBC_UAS), "-i", HOST, "-p", str(sbc_port), "-m", str(calls),
             *sipp_files(em_dir, "sbc", em_timeout + 10.0)],
            em_dir, em_dir / "sbc_output.log",
        )  # fmt: skip
        started.append(sbc)
        wait_bound(sbc, sbc_port, "the SBC uas")
        gateway = start_bench_gateway(
            directory / "gateway", text, gw_port, args.log_level, gateway_env
        )
        register(sipp, em_dir, gw_port, alice_port)
        if args.capture:
            capture = Capture(em_dir, alice_port, gw_port, sbc_port)

        load_uac: Child | None = None
        load_uas: Child | None = None
        if load_calls:
            load_uas = Child(
                [sipp, "-sf", str(LOAD_UAS), "-i", HOST, "-p", str(carrier_port),
                 "-m", str(load_calls), "-max_recv_loops", "1000",
                 *sipp_files(load_dir, "uas", load_timeout + 10.0)],
                load_dir, load_dir / "uas_output.log",
            )  # fmt: skip
            started.append(load_uas)
            wait_bound(load_uas, carrier_port, "the ordinary uas")
            load_uac = Child(
                [sipp, f"{HOST}:{gw_port}", "-sf", str(LOAD_UAC), "-i", HOST,
                 "-p", str(free_port()), "-m", str(load_calls), "-r", str(load_rate),
                 "-rp", "1000", "-max_recv_loops", "1000",
                 "-recv_timeout", str(RECV_TIMEOUT_MS), "-trace_rtt", "-rtt_freq", "1",
                 *sipp_files(load_dir, "uac", load_timeout)],
                load_dir, load_dir / "uac_output.log",
            )  # fmt: skip
            started.append(load_uac)
            time.sleep(args.warmup_seconds)

        ticks_before = cpu_ticks(gateway.pid)
        em_uac = Child(
            [sipp, f"{HOST}:{gw_port}", "-sf", str(EMERGENCY_UAC), "-s", "911",
             "-i", HOST, "-p", str(alice_port), "-m", str(calls),
             "-r", f"{args.emergency_rate:g}", "-rp", "1000",
             "-recv_timeout", str(RECV_TIMEOUT_MS), "-trace_rtt", "-rtt_freq", "1",
             *sipp_files(em_dir, "uac", em_timeout)],
            em_dir, em_dir / "uac_output.log",
        )  # fmt: skip
        started.append(em_uac)
        if em_uac.wait(em_timeout + HARD_MARGIN_S) is None:
            em_uac.stop(grace=2.0)
            result.problems.append("emergency uac killed after its timeout")
        last_call_ended = time.monotonic()
        if mail_server is not None:
            result.mails_by_last_call = len(mail_server.mailbox.mails())
        ticks_after = cpu_ticks(gateway.pid)
        if ticks_before is not None and ticks_after is not None and em_uac.elapsed > 0:
            result.gateway_cpu_pct = round(
                100.0 * (ticks_after - ticks_before) / CLK_TCK / em_uac.elapsed, 1
            )
        time.sleep(0.5)  # the last ACK/BYE on the wire
        if capture is not None:
            capture.stop()
        if sbc.wait(SBC_TIMEWAIT_S + 3.0) is None:
            sbc.stop(grace=2.0)
        if load_uac is not None and load_uac.wait(load_timeout + HARD_MARGIN_S) is None:
            load_uac.stop(grace=2.0)
            result.problems.append("ordinary uac killed after its timeout")
        if load_uas is not None and load_uas.wait(LOAD_UAS_TIMEWAIT_S + 3.0) is None:
            load_uas.stop(grace=3.0)
        if mail_server is not None:  # the outbox goes on sending: wait for it if asked
            deadline = last_call_ended + args.mail_drain_seconds
            while (
                len(mail_server.mailbox.mails()) < result.mails_expected
                and time.monotonic() < deadline
                and gateway.running
            ):
                time.sleep(0.1)
        if not gateway.running:
            result.problems.append(f"gateway exited ({gateway.popen.returncode})")
    finally:
        for child in started:
            if child.running:
                child.stop(grace=2.0)
        if capture is not None and capture.child.running:
            capture.stop()
        if gateway is not None:
            result.gateway_exit = gateway.stop()
            if last_call_ended is not None and mail is not None:
                result.mail_tail_s = round(time.monotonic() - last_call_ended, 1)
        if mail_server is not None:
            mail_server.stop()

    # emergency calls at alice's phone and at the SBC
    uac_stats = read_stats(em_dir / "uac_stat.csv")
    sbc_stats = read_stats(em_dir / "sbc_stat.csv")
    result.emergency_ok = stat_int(uac_stats, "SuccessfulCall(C)")
    result.emergency_failed = max(stat_int(uac_stats, "FailedCall(C)"), calls - result.emergency_ok)
    result.sbc_ok = stat_int(sbc_stats, "SuccessfulCall(C)")
    result.sbc_failed = stat_int(sbc_stats, "FailedCall(C)")
    result.retransmissions = stat_int(uac_stats, "Retransmissions(C)") + stat_int(
        sbc_stats, "Retransmissions(C)"
    )
    result.uac = stats_ms([value for _, value in read_rtt(em_dir)])

    # the wire
    if capture is not None:
        invites = read_invites(capture.path, (gw_port, sbc_port))
        wire = pair_invites(invites, alice_port, gw_port, sbc_port)
        result.wire = stats_ms(wire.latencies_ms)
        result.wire_checks = {
            "incoming_invites": wire.incoming,
            "outgoing_invites": wire.outgoing,
            "pairs": wire.pairs,
            "ambiguous_pairs": wire.ambiguous,
            "without_callback_did": wire.bad_identity,
            "incoming_unanswered": wire.unmatched_in,
        }
        if wire.pairs != calls:
            result.problems.append(f"wire: {wire.pairs} INVITE pairs for {calls} calls")
        if wire.ambiguous or wire.bad_identity:
            result.problems.append(
                f"wire: {wire.ambiguous} ambiguous pairs, {wire.bad_identity} outgoing "
                "INVITEs without a pool DID in From/P-Asserted-Identity"
            )

    # the gateway's log
    starts: dict[str, float] = {}
    if gateway is not None:
        log = read_log(gateway.log_lines())
        result.internal = stats_ms(log.latencies_ms)
        result.internal_reserve = stats_ms(log.reserve_ms)
        result.internal_checks = {
            "emergency_call_start": log.starts,
            "trying": log.tried,
            "trying_not_alice": log.not_alice,
            "trying_without_did": log.no_did,
            "events": log.events,
        }
        result.gateway_log_warnings = log.warnings
        if args.log_level == "INFO" and log.tried != calls:
            result.problems.append(f"log: {log.tried} 'trying' events for {calls} calls")
        if log.not_alice or log.no_did:
            result.problems.append(
                f"log: {log.not_alice} calls not identified as alice, {log.no_did} without DID"
            )
        for bad in ("failover", "failed"):
            if log.events.get(bad):
                result.problems.append(f"log: {log.events[bad]} emergency '{bad}' events")
        starts = log.started
        if mail is not None:
            result.notification_log = log.notifications
            result.outbox = outbox_states(gateway)

    # the mails (E-6)
    if mail_server is not None:
        mails = mail_server.mailbox.mails()
        result.mails_at_stop = len(mails)
        keys = [(m.call_id, m.recipient) for m in mails]
        result.mails_duplicated = len(keys) - len(set(keys))
        result.mail_delay = stats_ms(
            [(m.arrived - starts[m.call_id]) * 1000.0 for m in mails if m.call_id in starts]
        )
        if result.mails_duplicated:
            result.problems.append(f"mail: {result.mails_duplicated} mails received twice")
        unaccounted = result.mails_expected - len(set(keys)) - result.outbox.get("pending", 0)
        if unaccounted:
            result.problems.append(
                f"mail: {unaccounted} of {result.mails_expected} expected mails neither "
                "received nor pending in the outbox"
            )

    # the ordinary load
    if load_calls:
        load_stats = read_stats(load_dir / "uac_stat.csv")
        load_uas_stats = read_stats(load_dir / "uas_stat.csv")
        result.load_ok = stat_int(load_stats, "SuccessfulCall(C)")
        result.load_failed = max(stat_int(load_stats, "FailedCall(C)"), load_calls - result.load_ok)
        result.load_uas_failed = stat_int(load_uas_stats, "FailedCall(C)")
        samples = read_rtt(load_dir)
        result.load_setup = stats_ms([value for _, value in samples])
        if len(samples) >= 2:
            span = (samples[-1][0] - samples[0][0]) / 1000.0 + 1.0 / load_rate
            result.load_achieved_cps = round(result.load_ok / span, 1)
    if result.emergency_failed or result.sbc_failed:
        result.problems.append(
            f"{result.emergency_failed} emergency calls failed at alice's phone, "
            f"{result.sbc_failed} at the SBC"
        )
    return result


# --------------------------------------------------------------------------- output


render = render_table


def main_table(results: list[Scenario]) -> str:
    rows: list[tuple[str, ...]] = [
        ("scenario", "em calls", "failed", "in->out p50/p99/max ms", "internal p50/p99/max ms",
         "uac INVITE->200 p50/p99/max", "ordinary asked", "achieved", "ok", "failed",
         "ord. set-up p50/p99", "gw CPU%"),
    ]  # fmt: skip
    for r in results:
        loaded = r.load_calls > 0
        rows.append((
            r.name, str(r.emergency_calls), str(r.emergency_failed),
            triple(r.wire) if r.wire else "(no capture)",
            triple(r.internal, 3), triple(r.uac, 0),
            f"{r.load_rate}/s" if loaded else "-",
            f"{r.load_achieved_cps:g}/s" if r.load_achieved_cps is not None else "-",
            str(r.load_ok) if loaded else "-",
            str(r.load_failed + r.load_uas_failed) if loaded else "-",
            "/".join(_ms(r.load_setup.get(k), 0) for k in ("p50_ms", "p99_ms")) if loaded else "-",
            "-" if r.gateway_cpu_pct is None else f"{r.gateway_cpu_pct:.0f}",
        ))  # fmt: skip
    return render(rows)


def mail_table(results: list[Scenario]) -> str:
    rows: list[tuple[str, ...]] = [
        ("scenario", "em calls", "failed", "in->out p50/p99/max ms", "internal p50/p99/max ms",
         "mails expected", "recv by last call", "recv at gw stop", "outbox pending",
         "call->mail p50/max s", "gw log sent/retry/failed"),
    ]  # fmt: skip
    for r in results:
        if not r.mail_server:
            continue
        served = r.mail_server != "none"
        log = r.notification_log

        def seconds(key: str, r: Scenario = r) -> str:
            value = r.mail_delay.get(key)
            return "-" if value is None else f"{value / 1000.0:.1f}"

        rows.append((
            r.name, str(r.emergency_calls), str(r.emergency_failed),
            triple(r.wire) if r.wire else "(no capture)", triple(r.internal, 3),
            str(r.mails_expected) if served else "0 (no server)",
            str(r.mails_by_last_call) if served else "-",
            f"{r.mails_at_stop} (+{r.mail_tail_s:g} s)" if served and r.mail_tail_s else "-",
            str(r.outbox.get("pending", 0)),
            f"{seconds('p50_ms')}/{seconds('max_ms')}" if served else "-",
            "/".join(str(log.get(f"notification_{k}", 0)) for k in ("sent", "retry", "failed")),
        ))  # fmt: skip
    return render(rows)


#: "the same latency": p50 and p99 within these of the reference (mail-none, else alone),
#: absolute ms or relative, whichever is larger. The p99 of 100 calls is their second
#: slowest, hence the wide margin: on the shared 2-core box it moves by several ms between
#: runs of the very same scenario.
SAME_P50 = (0.5, 0.25)
SAME_P99 = (5.0, 0.5)


def mail_comparison(results: list[Scenario]) -> list[str]:
    by_name = {r.name: r for r in results}
    reference = by_name.get("mail-none") or by_name.get("alone")
    if reference is None:
        return []
    lines: list[str] = []
    for r in results:
        if r.mail_server not in ("fast", "slow"):
            continue
        source = "wire" if r.wire and reference.wire else "internal"
        ours = r.wire if source == "wire" else r.internal
        theirs = reference.wire if source == "wire" else reference.internal
        verdicts: list[str] = []
        same = True
        for key, (absolute, relative) in (("p50_ms", SAME_P50), ("p99_ms", SAME_P99)):
            a, b = ours.get(key), theirs.get(key)
            if a is None or b is None:
                same = False
                continue
            same = same and abs(a - b) <= max(absolute, relative * b)
            ratio = f" (x{a / b:.2f})" if b > 0 else ""
            verdicts.append(f"{key[:3]} {a:.2f} vs {b:.2f} ms{ratio}")
        lines.append(
            f"{r.name} against {reference.name} ({source}): {', '.join(verdicts)}; "
            f"{r.emergency_failed} vs {reference.emergency_failed} failed: "
            + ("the SAME set-up latency" if same else "DIFFERENT set-up latency")
            + f" (rule: p50 within {SAME_P50[0]:g} ms or {SAME_P50[1]:.0%}, p99 within "
            f"{SAME_P99[0]:g} ms or {SAME_P99[1]:.0%})"
        )
        if r.mail_server == "slow" and r.mails_at_stop is not None:
            lines.append(
                f"{r.name}: the server had {r.mails_by_last_call} of {r.mails_expected} mails "
                f"by the last call and {r.mails_at_stop} when the gateway stopped "
                f"{r.mail_tail_s:g} s later; {r.outbox.get('pending', 0)} still pending in the "
                "outbox: a gateway left running goes on sending them (4 at a time, "
                f"{r.mail_delay_s:g} s each), a restarted one resumes them"
            )
    return lines


def verdict(results: list[Scenario], target_ms: float) -> list[str]:
    lines: list[str] = []
    for r in results:
        measure, source = (r.wire, "wire") if r.wire else (r.internal, "internal")
        p99 = measure.get("p99_ms")
        ok = p99 is not None and p99 < target_ms and r.emergency_failed == 0 and not r.sbc_failed
        lines.append(
            f"{r.name}: emergency p99 {_ms(p99)} ms ({source}), {r.emergency_failed} failed: "
            f"{'meets' if ok else 'MISSES'} the target (p99 < {target_ms:g} ms, 0 failures)"
        )
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-rate", type=int, default=400, help="ordinary calls/s (400)")
    parser.add_argument("--emergency-rate", type=float, default=5.0, help="911 calls/s (5)")
    parser.add_argument("--emergency-seconds", type=float, default=20.0, help="(20)")
    parser.add_argument(
        "--warmup-seconds", type=float, default=3.0, help="ordinary load before the first 911"
    )
    parser.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"any of {DEFAULT_SCENARIOS} (default all)",
    )
    parser.add_argument(
        "--slow-mail-seconds", type=float, default=2.0, help="mail-slow: delay per mail (2)"
    )
    parser.add_argument(
        "--mail-drain-seconds",
        type=float,
        default=0.0,
        help="mail-*: keep the gateway up this long after the last call, until every mail "
        "has arrived (0)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("INFO", "WARNING"),
        help="gateway log level (INFO, its default; WARNING: no internal timestamps)",
    )
    parser.add_argument("--target-p99-ms", type=float, default=20.0, help="(20)")
    parser.add_argument(
        "--no-capture", dest="capture", action="store_false", help="skip the loopback capture"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--workdir", type=Path, help="run files (default: new dir in /tmp)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run that proves the bench works: 2 s of emergency calls, 1 s "
        "warm-up, 100 ordinary calls/s (overrides those options)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)

    sipp = find_tool("sipp")
    if sipp is None:
        parser.error("sipp not found (apt-get install sip-tester)")
    args.sipp = sipp
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not names or set(names) - set(SCENARIOS):
        parser.error(f"--scenarios takes a comma-separated subset of {DEFAULT_SCENARIOS}")
    if any(SCENARIOS[n][1] in ("fast", "slow") for n in names):
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            parser.error("the mail-fast/mail-slow scenarios need aiosmtpd (pip install aiosmtpd)")
    capture_note = ""
    if args.capture and not (shutil.which("dumpcap") and shutil.which("tshark")):
        args.capture = False
        capture_note = " (tshark/dumpcap not installed: no wire figures)"
    elif args.capture and os.geteuid() != 0:
        capture_note = " (not root: dumpcap needs capture rights on lo)"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emergency_bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    revision = code_revision()
    print(
        f"emergency bench: gateway code {revision}; {args.emergency_rate:g} calls/s to 911 for "
        f"{args.emergency_seconds:g} s; ordinary load {args.load_rate} calls/s; gateway log "
        f"{args.log_level}; capture {'on' if args.capture else 'off'}{capture_note}; "
        f"{os.cpu_count()} CPUs; load average {load_average()}; files in {workdir}",
        flush=True,
    )
    results: list[Scenario] = []
    for name in names:
        loaded, mail = SCENARIOS[name]
        rate = args.load_rate if loaded else 0
        print(f"  {name}: running ...", flush=True)
        try:
            result = run_scenario(name, rate, mail, args, workdir)
        except RuntimeError as exc:
            print(f"  {name}: could not run: {exc}", flush=True)
            return 1
        results.append(result)
        print(
            f"  {name}: {result.emergency_ok}/{result.emergency_calls} emergency calls ok, "
            f"in->out {triple(result.wire) if result.wire else '-'} ms"
            + (
                f"; mails {result.mails_by_last_call}/{result.mails_expected} by the last call"
                if result.mails_expected
                else ""
            )
            + (f"; problems: {'; '.join(result.problems)}" if result.problems else ""),
            flush=True,
        )

    print()
    print(
        "emergency call set-up, ms: in->out = INVITE to 911 in -> INVITE to the SBC out "
        "(loopback capture); internal = gateway log emergency_call_start -> trying (after "
        "parse, before send); uac = SIPp INVITE -> 200 at alice's phone (upper bound, ~4 ms "
        "ticks)"
    )
    print(main_table(results))
    if any(r.mail_server for r in results):
        print()
        print(
            "E-6 e-mail to alice's 2 emergency contacts (2 mails per call, alone, no ordinary "
            "load): mails received by the server by the last call's end and when the gateway "
            "had stopped (+ s after the last call); outbox rows left pending; call->mail = "
            "emergency_call_start -> the server's 250; gateway log notification_* events"
        )
        print(mail_table(results))
    print()
    for r in results:
        checks = ", ".join(f"{k} {v}" for k, v in r.wire_checks.items())
        print(f"{r.name}: wire checks: {checks or '-'}")
        print(f"{r.name}: gateway log: {r.internal_checks}")
        if r.internal_reserve.get("count"):
            print(
                f"{r.name}: of internal, emergency_call_start -> callback_reserved (the DID "
                f"reservation in SQLite): p50/p99/max {triple(r.internal_reserve, 3)} ms"
            )
        if r.mail_server:
            print(
                f"{r.name}: notification log events: {r.notification_log or '-'}; "
                f"outbox after stop: {r.outbox or '-'}"
            )
        if r.gateway_log_warnings:
            print(f"{r.name}: gateway warnings/errors by event: {r.gateway_log_warnings}")
        if r.retransmissions:
            print(f"{r.name}: {r.retransmissions} SIP retransmissions on the emergency calls")
        for problem in r.problems:
            print(f"{r.name}: PROBLEM: {problem}")
        if r.problems:
            em_dir = Path(r.directory) / "emergency"
            print(scenario_screen(em_dir / "uac_screen.log"))
            for line in head_lines(em_dir / "uac_errors.log", 8):
                print("    " + line)
    lines = verdict(results, args.target_p99_ms) + mail_comparison(results)
    print()
    for line in lines:
        print(line)
    elapsed = time.monotonic() - started
    print(f"(run took {elapsed:.0f} s; load average now {load_average()}; files in {workdir})")
    if args.json is not None:
        payload = {
            "code": revision,
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")},
            "scenarios": [asdict(r) for r in results],
            "verdict": lines,
            "elapsed_s": round(elapsed, 1),
            "workdir": str(workdir),
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
