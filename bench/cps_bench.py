"""Calls per second: the gateway against SIPp talking straight to SIPp, in one run.

Two set-ups, each driven through rising call rates:

    gateway      sipp uac  ->  gateway  ->  sipp uas
    sipp->sipp   sipp uac  ->  sipp uas

Each step places ``rate * --step-seconds`` calls at ``rate`` calls/s with
``bench/scenarios/uac_rtd.xml`` (INVITE with SDP, [100] [180] 200, ACK, BYE, 200; no pause)
against ``bench/scenarios/uas_rtd.xml`` (SIPp's built-in uas, ACK required, 1 s timewait;
``uas_rtd_tcp.xml``, without timewait, over TCP).
Response time 1 runs from sending the INVITE to receiving its 200: the call set-up time
seen by the caller; ``-trace_rtt -rtt_freq 1`` writes every call's value to a CSV.

A step passes when every call succeeded on both SIPp sides and the set-up p99 is under
--p99-limit-ms (50). Rates rise until the first step that does not pass, or --max-rate.
The sustained rate of a set-up is its highest passing step. The gateway is a fresh
process per set-up (log level WARNING, JSON), and its CPU use is read from
/proc/PID/stat (utime + stime) over each step: 100 % is one core.

Everything runs on 127.0.0.1; every SIPp run has -timeout (and is killed shortly after
it) and the uac has -recv_timeout, so each step is bounded. The files of every run
(SIPp statistics, errors, screens, rtt CSVs, gateway logs) stay under --workdir.

    .venv/bin/python bench/cps_bench.py [--max-rate 10000] [--step-seconds 6]
        [--transport udp|tcp] [--rates 100,200,...] [--gateway-env KEY=VALUE]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
UAC_SCENARIO = SCENARIOS / "uac_rtd.xml"
UAS_SCENARIO = SCENARIOS / "uas_rtd.xml"
UAS_SCENARIO_TCP = SCENARIOS / "uas_rtd_tcp.xml"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: uas timewait in uas_rtd.xml (s): the uas ends this long after its last call.
UAS_TIMEWAIT_S = 1.0
#: A SIPp run is killed this many seconds after its own -timeout.
HARD_MARGIN_S = 5.0
#: Pause between steps so that the previous step's retransmissions and timers settle.
SETTLE_S = 1.0


# --------------------------------------------------------------------------- ports


_handed_out: set[int] = set()


def _bindable(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 free for both UDP and TCP, never handed out twice."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port in _handed_out:
            continue
        if _bindable(socket.SOCK_STREAM, port) and _bindable(socket.SOCK_DGRAM, port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1")


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def port_bound_by(pid: int, port: int, transport: str) -> bool:
    """True when process ``pid`` holds a socket bound to ``port`` (listening, for TCP)."""
    inodes = _socket_inodes(pid)
    if not inodes:
        return False
    table = "udp" if transport == "udp" else "tcp"
    try:
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) < 10:
            continue
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        listening = table == "udp" or fields[3] == "0A"
        if local_port == port and listening and fields[9] in inodes:
            return True
    return False


# --------------------------------------------------------------------------- processes


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return int(fields[11]) + int(fields[12])


def busy_ticks() -> int:
    """Clock ticks all CPUs spent not idle since boot (first line of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0
    values = [int(v) for v in fields[:8]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


class Child:
    """A child process reaped with wait4, so that its CPU time (rusage) is known."""

    started_children: list[Child] = []

    def __init__(
        self,
        command: list[str],
        cwd: Path,
        output: Path,
        env: dict[str, str] | None = None,
        stderr: Path | None = None,
    ) -> None:
        self.command = command
        out = output.open("wb")
        err = stderr.open("wb") if stderr is not None else None
        try:
            self.popen = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err if err is not None else subprocess.STDOUT,
            )
        finally:
            out.close()
            if err is not None:
                err.close()
        self.pid = self.popen.pid
        Child.started_children.append(self)
        self.started = time.monotonic()
        self.ended: float | None = None
        self.returncode: int | None = None
        self.cpu_s: float | None = None
        self.killed = False

    @property
    def running(self) -> bool:
        return self.poll() is None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                self.ended = time.monotonic()
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.popen.returncode = self.returncode
                self.cpu_s = usage.ru_utime + usage.ru_stime
                self.ended = time.monotonic()
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.returncode

    def send(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, soft: int = signal.SIGUSR1, grace: float = 3.0) -> int:
        """``soft`` signal, then SIGTERM, then SIGKILL, each given time to work."""
        for sig, wait_for in ((soft, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.poll() is not None:
                break
            if sig != soft:
                self.killed = True
            self.send(sig)
            self.wait(wait_for)
        return self.returncode if self.returncode is not None else -1

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started


# --------------------------------------------------------------------------- SIPp files


def read_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp -trace_stat CSV as {column: value}; {} when absent."""
    try:
        with path.open(newline="", errors="replace") as stream:
            rows = [row for row in csv.reader(stream, delimiter=";") if row]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def stat_int(stats: dict[str, str], name: str) -> int:
    try:
        return int(stats.get(name, "0"))
    except ValueError:
        return 0


def read_rtt(directory: Path) -> list[tuple[float, float]]:
    """(date_ms, response_time_ms) of every response time 1 sample in ``directory``."""
    samples: list[tuple[float, float]] = []
    for path in directory.glob("*_rtt.csv"):
        with path.open(newline="", errors="replace") as stream:
            reader = csv.reader(stream, delimiter=";")
            next(reader, None)
            for row in reader:
                if len(row) >= 3 and row[2].strip() == "1":
                    with contextlib.suppress(ValueError):
                        samples.append((float(row[0]), float(row[1])))
    samples.sort()
    return samples


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def scenario_screen(path: Path) -> str:
    """The scenario screen (messages, retransmissions, timeouts per message) of a run."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name} not written)"
    lines = text.splitlines()
    out: list[str] = []
    for line in lines[1:]:
        if "Screen" in line and line.startswith("-"):
            break
        out.append(line)
    return "\n".join(line.rstrip() for line in out if line.strip())


def head_lines(path: Path, count: int) -> list[str]:
    try:
        with path.open(errors="replace") as stream:
            return [line.rstrip("\n") for _, line in zip(range(count), stream, strict=False)]
    except OSError:
        return []


# --------------------------------------------------------------------------- gateway


def sip_options(port: int, timeout: float = 0.3) -> str | None:
    """Send one OPTIONS over UDP to 127.0.0.1:port; return the final status line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        local_port = sock.getsockname()[1]
        token = secrets.token_hex(8)
        request = (
            f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK{token};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{HOST}>;tag={token[:8]}\r\n"
            f"To: <sip:{HOST}:{port}>\r\n"
            f"Call-ID: {token}@{HOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        deadline = time.monotonic() + timeout
        try:
            sock.sendto(request, (HOST, port))
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                line = sock.recv(65535).split(b"\r\n", 1)[0].decode("utf-8", "replace")
                if line.startswith("SIP/2.0 ") and not line.startswith("SIP/2.0 1"):
                    return line
        except OSError:
            return None
    return None


DIALPLAN = """\
version: 1
node: {{ name: cps-bench }}
listen:
  - {{ transport: udp, host: {host}, port: {port} }}
  - {{ transport: tcp, host: {host}, port: {port} }}
trunks:
  carrier:
    gateways:
      - {{ host: {host}, port: {uas_port}, transport: {transport} }}
# the uac calls from 127.0.0.1 without digest authentication, like an agent phone on a
# trusted network (without this the gateway answers 403 or 407)
registrar:
  unauthenticated_outbound_from: ["{host}/32"]
outbound:
  - {{ name: catch-all, match: '.*', trunk: carrier }}
"""


class Gateway:
    def __init__(
        self,
        workdir: Path,
        port: int,
        uas_port: int,
        transport: str,
        extra_env: dict[str, str],
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.dialplan = workdir / "dialplan.yaml"
        self.dialplan.write_text(
            DIALPLAN.format(host=HOST, port=port, uas_port=uas_port, transport=transport)
        )
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        self.stdout = workdir / "gateway.stdout.log"
        self.stderr = workdir / "gateway.stderr.log"
        env = {
            **os.environ,
            "GATEWAY_DATA_DIR": str(data),
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": os.environ.get("GATEWAY_LOG_LEVEL", "WARNING"),
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        if not env.get("GATEWAY_MQTT_URL") and "GATEWAY_MQTT_EMBEDDED_PORT" not in extra_env:
            # the embedded MQTT broker (the default) must not collide with another gateway
            env["GATEWAY_MQTT_EMBEDDED_PORT"] = str(free_port())
        self.env = {k: v for k, v in env.items() if k.startswith("GATEWAY_")}
        command = [sys.executable, "-m", "gateway", "run", "--dialplan", str(self.dialplan)]
        self.child = Child(command, PROJECT_ROOT, self.stdout, env=env, stderr=self.stderr)
        deadline = time.monotonic() + 15.0
        answer: str | None = None
        while time.monotonic() < deadline:
            if not self.child.running:
                raise RuntimeError(
                    f"gateway exited ({self.child.returncode}) before answering OPTIONS:\n"
                    + self.log_tail(30)
                )
            answer = sip_options(port)
            if answer is not None and answer.startswith("SIP/2.0 200"):
                return
            time.sleep(0.1)
        self.child.stop(soft=signal.SIGTERM)
        raise RuntimeError(
            f"gateway did not answer OPTIONS with 200 (last: {answer})\n" + self.log_tail(30)
        )

    def log_lines(self) -> list[str]:
        lines: list[str] = []
        for path in (self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()
        return lines

    def log_tail(self, count: int) -> str:
        return "\n".join(self.log_lines()[-count:])

    def stop(self) -> int:
        return self.child.stop(soft=signal.SIGTERM, grace=10.0)


# --------------------------------------------------------------------------- one step


@dataclass
class Step:
    setup: str
    rate: int
    calls: int
    achieved_cps: float = 0.0
    successful: int = 0
    failed: int = 0
    uas_successful: int = 0
    uas_failed: int = 0
    retransmissions: int = 0
    uac_timeouts: int = 0
    unexpected: int = 0
    dead_call_msgs: int = 0
    out_of_call_msgs: int = 0
    samples: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    wall_s: float = 0.0
    gateway_cpu_pct: float | None = None
    gateway_rss_mb: float | None = None
    gateway_log_lines: int = 0
    uac_cpu_pct: float | None = None
    uas_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    uac_exit: int | None = None
    uas_exit: int | None = None
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    directory: str = ""


def sipp_common(
    directory: Path, role: str, port: int, transport: str, calls: int, timeout_s: float
) -> list[str]:
    # fmt: off
    return [
        "-i", HOST, "-p", str(port), "-t", "t1" if transport == "tcp" else "u1",
        "-m", str(calls),
        "-nostdin",
        "-timeout", f"{timeout_s:g}s", "-timeout_error",
        "-max_recv_loops", "1000",
        "-trace_stat", "-stf", str(directory / f"{role}_stat.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(directory / f"{role}_errors.log"),
        "-trace_screen", "-screen_file", str(directory / f"{role}_screen.log"),
    ]
    # fmt: on


def run_step(
    setup: str,
    rate: int,
    args: argparse.Namespace,
    directory: Path,
    target_port: int,
    uas_port: int,
    gateway: Gateway | None,
) -> Step:
    directory.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * args.step_seconds))
    step = Step(setup=setup, rate=rate, calls=calls, directory=str(directory))
    uac_timeout = args.step_seconds + 20.0
    sipp = args.sipp

    uas_scenario = UAS_SCENARIO_TCP if args.transport == "tcp" else UAS_SCENARIO
    uas_command = [
        sipp, "-sf", str(uas_scenario),
        *sipp_common(directory, "uas", uas_port, args.transport, calls, uac_timeout + 10.0),
    ]  # fmt: skip
    uas = Child(uas_command, directory, directory / "uas_output.log")
    deadline = time.monotonic() + 5.0
    while not port_bound_by(uas.pid, uas_port, args.transport):
        if not uas.running or time.monotonic() > deadline:
            uas.stop()
            raise RuntimeError(
                f"SIPp uas did not bind {args.transport} {HOST}:{uas_port}; "
                f"see {directory / 'uas_output.log'}"
            )
        time.sleep(0.02)

    gw_pid = gateway.child.pid if gateway is not None else None
    log_before = len(gateway.log_lines()) if gateway is not None else 0
    uac_command = [
        sipp, f"{HOST}:{target_port}", "-sf", str(UAC_SCENARIO),
        *sipp_common(directory, "uac", free_port(), args.transport, calls, uac_timeout),
        "-r", str(rate), "-rp", "1000",
        "-recv_timeout", "5000",
        "-trace_rtt", "-rtt_freq", "1",
    ]  # fmt: skip
    ticks_before = cpu_ticks(gw_pid) if gw_pid is not None else None
    busy_before = busy_ticks()
    uac = Child(uac_command, directory, directory / "uac_output.log")
    if uac.wait(uac_timeout + HARD_MARGIN_S) is None:
        uac.stop(grace=2.0)
    ticks_after = cpu_ticks(gw_pid) if gw_pid is not None else None
    busy_after = busy_ticks()
    wall = uac.elapsed
    # the uas ends by itself one timewait after its last call; stop it if calls are missing
    if uas.wait(UAS_TIMEWAIT_S + 3.0) is None:
        uas.stop(grace=3.0)

    step.wall_s = round(wall, 3)
    step.uac_exit, step.uas_exit = uac.returncode, uas.returncode
    if uac.cpu_s is not None and wall > 0:
        step.uac_cpu_pct = round(100.0 * uac.cpu_s / wall, 1)
    if uas.cpu_s is not None and uas.elapsed > 0:
        step.uas_cpu_pct = round(100.0 * uas.cpu_s / uas.elapsed, 1)
    if ticks_before is not None and ticks_after is not None and wall > 0:
        step.gateway_cpu_pct = round(100.0 * (ticks_after - ticks_before) / CLK_TCK / wall, 1)
    if wall > 0 and busy_after > busy_before:
        # everything else on the machine (other processes, the kernel's softirqs): the
        # bench box is shared, so this says whether a step ran on a quiet machine
        ours = (uac.cpu_s or 0.0) + (uas.cpu_s or 0.0)
        if ticks_before is not None and ticks_after is not None:
            ours += (ticks_after - ticks_before) / CLK_TCK
        other = (busy_after - busy_before) / CLK_TCK - ours
        step.other_cpu_pct = round(max(0.0, 100.0 * other / wall), 1)
    if gateway is not None:
        step.gateway_rss_mb = rss_mb(gateway.child.pid)
        step.gateway_log_lines = len(gateway.log_lines()) - log_before

    uac_stats = read_stats(directory / "uac_stat.csv")
    uas_stats = read_stats(directory / "uas_stat.csv")
    step.successful = stat_int(uac_stats, "SuccessfulCall(C)")
    # calls never finished (run timed out or was stopped) count as failed too
    step.failed = max(stat_int(uac_stats, "FailedCall(C)"), calls - step.successful)
    step.uas_successful = stat_int(uas_stats, "SuccessfulCall(C)")
    step.uas_failed = stat_int(uas_stats, "FailedCall(C)")
    step.retransmissions = stat_int(uac_stats, "Retransmissions(C)") + stat_int(
        uas_stats, "Retransmissions(C)"
    )
    step.uac_timeouts = stat_int(uac_stats, "FailedTimeoutOnRecv(C)") + stat_int(
        uac_stats, "FailedMaxUDPRetrans(C)"
    )
    step.unexpected = stat_int(uac_stats, "FailedUnexpectedMessage(C)") + stat_int(
        uas_stats, "FailedUnexpectedMessage(C)"
    )
    step.dead_call_msgs = stat_int(uac_stats, "DeadCallMsgs(C)") + stat_int(
        uas_stats, "DeadCallMsgs(C)"
    )
    step.out_of_call_msgs = stat_int(uac_stats, "OutOfCallMsgs(C)") + stat_int(
        uas_stats, "OutOfCallMsgs(C)"
    )

    samples = read_rtt(directory)
    values = sorted(value for _, value in samples)
    step.samples = len(values)
    step.p50_ms = percentile(values, 50)
    step.p99_ms = percentile(values, 99)
    step.max_ms = values[-1] if values else None
    # achieved rate: successful calls over the span in which they were set up (first to
    # last 200 OK, SIPp's clock) plus one call period, so a schedule kept exactly gives
    # the requested rate; falls back to the uac's wall time
    span = (samples[-1][0] - samples[0][0]) / 1000.0 + 1.0 / rate if len(samples) >= 2 else wall
    step.achieved_cps = round(step.successful / span, 1) if span > 0 else 0.0

    if not uac_stats:
        step.reasons.append("uac wrote no statistics")
    if step.failed:
        step.reasons.append(f"{step.failed} failed at uac")
    if step.uas_failed:
        step.reasons.append(f"{step.uas_failed} failed at uas")
    if step.p99_ms is None:
        step.reasons.append("no response times")
    elif step.p99_ms >= args.p99_limit_ms:
        step.reasons.append(f"p99 {step.p99_ms:g} ms >= {args.p99_limit_ms:g} ms")
    if uac.killed:
        step.reasons.append("uac killed after its timeout")
    if gateway is not None and not gateway.child.running:
        step.reasons.append(f"gateway exited ({gateway.child.returncode})")
    step.passed = not step.reasons
    return step


# --------------------------------------------------------------------------- set-ups


def default_rates(max_rate: int) -> list[int]:
    """100..1000 by 100, then 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000, ...: up to
    ``max_rate`` (which is always the last step when it is not on the ladder)."""
    rates = [*range(100, 1001, 100), 1500, 2000, 3000, 4000, 5000, 6000, 8000]
    rate = 10000
    while rate <= max_rate:
        rates.append(rate)
        rate += 5000
    chosen = [r for r in rates if r <= max_rate]
    if not chosen or chosen[-1] != max_rate:
        chosen.append(max_rate)
    return chosen


def slow_bursts(directory: Path, threshold_ms: float, gap_ms: float = 100.0) -> list[str]:
    """Slow set-ups grouped in time: many slow calls in one short window point at a stall
    of the system under test, slow calls spread out at queueing (too little CPU)."""
    bursts: list[list[tuple[float, float]]] = []
    for date, value in read_rtt(directory):
        if value < threshold_ms:
            continue
        if bursts and date - bursts[-1][-1][0] <= gap_ms:
            bursts[-1].append((date, value))
        else:
            bursts.append([(date, value)])
    lines = []
    for burst in bursts:
        worst = max(value for _, value in burst)
        lines.append(f"t={burst[0][0] / 1000.0:6.2f} s: {len(burst):4d} calls, worst {worst:g} ms")
    return lines


def diagnose(step: Step, gateway: Gateway | None, threshold_ms: float) -> str:
    """Evidence for a step that did not pass: SIPp screens, error logs, gateway log."""
    directory = Path(step.directory)
    parts = [
        f"--- {step.setup} @ {step.rate} cps did not pass: {'; '.join(step.reasons)}",
        f"    files: {directory}",
    ]
    bursts = slow_bursts(directory, threshold_ms / 2)
    if bursts:
        parts.append(
            f"--- set-ups >= {threshold_ms / 2:g} ms, grouped in time (t = uac clock): "
            f"{len(bursts)} groups"
        )
        parts += ["    " + line for line in bursts[:20]]
    for role in ("uac", "uas"):
        parts.append(f"--- {role} scenario screen")
        parts.append(scenario_screen(directory / f"{role}_screen.log"))
        errors = head_lines(directory / f"{role}_errors.log", 12)
        if errors:
            parts.append(f"--- {role}_errors.log (first lines)")
            parts += errors
    if gateway is not None:
        lines = gateway.log_lines()
        parts.append(f"--- gateway log during this set-up: {len(lines)} lines (last 15)")
        parts += lines[-15:]
    return "\n".join(parts)


def run_setup(
    setup: str, rates: list[int], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    uas_port = free_port()
    gateway: Gateway | None = None
    directory = workdir / ("gateway" if setup == "gateway" else "sipp-sipp")
    steps: list[Step] = []
    diagnosis = ""
    try:
        if setup == "gateway":
            try:
                gateway = Gateway(
                    directory, free_port(), uas_port, args.transport, args.gateway_env
                )
                print(f"  gateway settings: {gateway.env}", flush=True)
            except RuntimeError as exc:
                print(f"  [gateway] did not start: {exc}", flush=True)
                rates, diagnosis = [], f"--- gateway did not start: {exc}"
            target = gateway.port if gateway is not None else 0
        else:
            target = uas_port
        for rate in rates:
            step = run_step(
                setup, rate, args, directory / f"{rate:05d}cps", target, uas_port, gateway
            )
            steps.append(step)
            print(format_progress(step), flush=True)
            if not step.passed:
                diagnosis = diagnose(step, gateway, args.p99_limit_ms)
                break
            time.sleep(SETTLE_S)
    finally:
        exit_code = gateway.stop() if gateway is not None else None
    passing = [s for s in steps if s.passed]
    best = max(passing, key=lambda s: s.rate) if passing else None
    return {
        "setup": setup,
        "steps": [asdict(s) for s in steps],
        "sustained_cps": best.rate if best else 0,
        "sustained_achieved_cps": best.achieved_cps if best else 0.0,
        "sustained_p99_ms": best.p99_ms if best else None,
        "limit_reached": bool(diagnosis) or (bool(steps) and not steps[-1].passed),
        "gateway_exit": exit_code,
        "gateway_env": gateway.env if gateway is not None else {},
        "diagnosis": diagnosis,
        "directory": str(directory),
    }


# --------------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_progress(step: Step) -> str:
    verdict = "ok" if step.passed else "FAIL: " + "; ".join(step.reasons)
    gw = f" gw CPU {_pct(step.gateway_cpu_pct)}%" if step.gateway_cpu_pct is not None else ""
    return (
        f"  [{step.setup}] {step.rate} cps: {step.successful}/{step.calls} ok, "
        f"p50/p99 {_ms(step.p50_ms)}/{_ms(step.p99_ms)} ms,{gw} {verdict}"
    )


# fmt: off
HEADER = ("rate", "achieved", "ok", "failed", "uas-fail", "retrans", "p50", "p99", "max",
          "gw CPU%", "uac CPU%", "uas CPU%", "other CPU%", "verdict")
# fmt: on


def table(result: dict[str, Any]) -> str:
    rows = [HEADER]
    for s in result["steps"]:
        # fmt: off
        rows.append((
            str(s["rate"]), f"{s['achieved_cps']:.1f}", str(s["successful"]), str(s["failed"]),
            str(s["uas_failed"]), str(s["retransmissions"]),
            _ms(s["p50_ms"]), _ms(s["p99_ms"]), _ms(s["max_ms"]),
            _pct(s["gateway_cpu_pct"]), _pct(s["uac_cpu_pct"]), _pct(s["uas_cpu_pct"]),
            _pct(s["other_cpu_pct"]), "ok" if s["passed"] else "FAIL",
        ))
        # fmt: on
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(gw: dict[str, Any], ss: dict[str, Any], args: argparse.Namespace) -> list[str]:
    def line(label: str, result: dict[str, Any]) -> str:
        rate = result["sustained_cps"]
        achieved = result["sustained_achieved_cps"]
        notes = [f"p99 setup {_ms(result['sustained_p99_ms'])} ms"]
        if rate and achieved < 0.97 * rate:
            notes.append(f"SIPp achieved only {achieved:g} calls/s")
        text = f"{label} sustained: {rate} calls/s ({'; '.join(notes)})"
        if not result["limit_reached"]:
            text += f" (highest rate tried: {args.top_rate}; limit not reached)"
        return text

    ran_gw, ran_ss = "gateway" in args.setup_list, "sipp" in args.setup_list
    lines = ([line("gateway", gw)] if ran_gw else []) + ([line("sipp->sipp", ss)] if ran_ss else [])
    if ran_gw and ran_ss and ss["sustained_cps"]:
        ratio = gw["sustained_cps"] / ss["sustained_cps"]
        bound = "" if ss["limit_reached"] else " (at most: sipp->sipp did not reach its limit)"
        lines.append(f"ratio gateway / sipp->sipp: {ratio:.3f}{bound}")
    elif ran_gw and ran_ss:
        lines.append("ratio gateway / sipp->sipp: n/a (sipp->sipp sustained no step)")
    return lines


# --------------------------------------------------------------------------- main


def code_revision() -> str:
    """``git describe``-like tag of the code measured: commit, plus "+dirty" if gateway/
    has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-rate", type=int, default=10000, help="highest rate tried, calls/s (default 10000)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=6.0,
        help="length of each step: rate * this many calls (default 6)",
    )
    parser.add_argument(
        "--rates", default="", help="comma-separated rates instead of the default ladder"
    )
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument(
        "--p99-limit-ms",
        type=float,
        default=50.0,
        help="a step passes only with set-up p99 below this, ms (default 50)",
    )
    parser.add_argument(
        "--setups", default="gateway,sipp", help="which set-ups to run: gateway,sipp (default both)"
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway, e.g. GATEWAY_MQTT_URL=off (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument(
        "--workdir", type=Path, help="where run files go (default: a new directory in /tmp)"
    )
    args = parser.parse_args(argv)

    sipp = shutil.which("sipp") or ("/usr/bin/sipp" if Path("/usr/bin/sipp").exists() else None)
    if sipp is None:
        parser.error("sipp not found (apt-get install sip-tester)")
    args.sipp = sipp
    if args.rates:
        rates = sorted({int(r) for r in args.rates.split(",") if r.strip()})
        rates = [r for r in rates if r <= args.max_rate]
    else:
        rates = default_rates(args.max_rate)
    args.top_rate = rates[-1]
    try:
        args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    except ValueError:
        parser.error("--gateway-env takes KEY=VALUE")
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if not setups or set(setups) - {"gateway", "sipp"}:
        parser.error("--setups takes gateway, sipp or gateway,sipp")
    args.setup_list = setups
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cps_bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    revision = code_revision()
    print(
        f"cps bench: gateway code {revision}; transport {args.transport}, "
        f"{args.step_seconds:g} s per step, rates {rates[0]}..{rates[-1]} calls/s, pass = 0 "
        f"failed and set-up p99 < {args.p99_limit_ms:g} ms; {os.cpu_count()} CPUs; "
        f"load average {load_average()}; files in {workdir}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    empty: dict[str, Any] = {
        "steps": [],
        "sustained_cps": 0,
        "sustained_p99_ms": None,
        "sustained_achieved_cps": 0.0,
        "limit_reached": False,
        "diagnosis": "",
    }
    try:
        for setup in ("gateway", "sipp"):
            if setup in setups:
                name = "gateway" if setup == "gateway" else "sipp->sipp"
                print(f"{name}:", flush=True)
                results[setup] = run_setup(setup, rates, args, workdir)
                results[setup]["setup"] = name
            else:
                results[setup] = {**empty, "setup": setup}
    finally:
        for child in Child.started_children:  # only on an error or Ctrl-C
            if child.running:
                child.stop(soft=signal.SIGTERM, grace=2.0)

    print()
    for setup in ("gateway", "sipp"):
        result = results[setup]
        if setup not in setups:
            continue
        label = (
            "gateway (sipp uac -> gateway -> sipp uas)"
            if setup == "gateway"
            else "sipp->sipp (sipp uac -> sipp uas)"
        )
        print(f"{label}, {args.transport}; set-up times in ms (SIPp response time 1)")
        print(table(result))
        print()
    for setup in ("gateway", "sipp"):
        if results[setup]["diagnosis"]:
            print(results[setup]["diagnosis"])
            print()
    lines = summary(results["gateway"], results["sipp"], args)
    for line in lines:
        print(line)
    elapsed = time.monotonic() - started
    print(f"(run took {elapsed:.0f} s; load average now {load_average()}; files in {workdir})")

    if args.json is not None:
        payload = {
            "code": revision,
            "transport": args.transport,
            "step_seconds": args.step_seconds,
            "p99_limit_ms": args.p99_limit_ms,
            "rates": rates,
            "cpus": os.cpu_count(),
            "gateway": results["gateway"],
            "sipp_sipp": results["sipp"],
            "summary": lines,
            "elapsed_s": round(elapsed, 1),
            "workdir": str(workdir),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
