"""Memory: the gateway's resident size (RSS) before, during and after SIPp load (issue 10).

The gateway runs as a user runs it: ``python -m gateway run --dialplan FILE`` on
``dialplans/example.yaml`` with its ports moved to free ones (SIP listener, the carrier
trunk, the emergency gateways, the embedded MQTT broker), so that the uac's calls from
127.0.0.1 go out unauthenticated by the ``catch-all`` rule to a SIPp uas playing the
carrier. Logs are JSON at WARNING (``--log-level``), the store is SQLite in the work
directory (CDR rows are written), MQTT is the embedded broker.

Sections, in order, each on a fresh gateway process whose RSS is read first, once it
answers OPTIONS and has idled ``--settle-seconds`` (the "start" figures are relative to):

    load    ``--calls`` 0-second calls (``bench/scenarios/uac_rtd.xml`` against
            ``uas_rtd.xml``) at ``--rate`` calls/s. RSS is sampled every 0.25 s; the peak
            and the RSS when the uac ends are printed, and the bytes per call while the
            finished calls' transactions wait out their timers: (RSS at the end of the load
            - RSS at start) / the calls that ended within the last 64*T1 = 32 s (Timers
            J, L, M keep a call's transactions that long; the others are shorter).
    after   RSS every second for ``--after-seconds`` (60) after the load: the figure at
            the end, relative to start (issue 10: within 20 %), and at 35 s (timers done).
    hold    ``--hold-calls`` (10,000) calls placed at ``--hold-rate`` calls/s with
            ``uac_hold.xml`` (a ``-d`` pause between ACK and BYE), held until every
            INVITE transaction has ended (the last call's 64*T1 has passed), RSS read then
            (the calls' own cost, transactions gone) and at the moment the last call is up;
            then every call hangs up and RSS is read ``--after-seconds`` later.

``--quick`` is a short run that proves the bench works (not a measurement): 600 calls at
200 calls/s, 35 s after, 1,000 held calls. ``--sections load,hold`` runs a part.
Every SIPp run has ``-timeout`` and is killed after it; files stay in ``--workdir``.

    .venv/bin/python bench/memory_bench.py [--calls 20000] [--rate 500]
        [--after-seconds 60] [--hold-calls 10000] [--hold-rate 500]
        [--sections load,hold] [--gateway-env KEY=VALUE] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# run as `python bench/memory_bench.py`: the project root holds testkit/, the shared harness
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    Child,
    GatewayProcess,
    HarnessError,
    code_revision,
    find_tool,
    free_port,
    load_average,
    rss_mb,
    start_gateway,
)
from testkit.sipp import Sipp, SippProcess, SippResult

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
UAC_SCENARIO = SCENARIOS / "uac_rtd.xml"
UAC_HOLD_SCENARIO = SCENARIOS / "uac_hold.xml"
UAS_SCENARIO = SCENARIOS / "uas_rtd.xml"
EXAMPLE_DIALPLAN = PROJECT_ROOT / "dialplans" / "example.yaml"
HOST = LOOPBACK
#: 64*T1 with the example dialplan's T1 (500 ms): how long Timers J, L and M run.
LINGER_S = 32.0
#: RSS sampling period during the load, seconds.
SAMPLE_S = 0.25


def example_dialplan(ports: dict[int, int]) -> str:
    """dialplans/example.yaml with each ``port: OLD`` / ``:OLD`` moved to ``ports[OLD]``."""
    text = EXAMPLE_DIALPLAN.read_text()
    for old, new in ports.items():
        text = re.sub(rf"\bport: {old}\b", f"port: {new}", text)
        text = re.sub(rf":{old}\b", f":{new}", text)
    return text


def start_bench_gateway(
    workdir: Path, uas_port: int, log_level: str, extra_env: dict[str, str]
) -> GatewayProcess:
    listen = free_port()
    ports = {5060: listen, 5080: uas_port, 5081: free_port(), 5082: free_port(), 5090: free_port()}
    env = {
        "GATEWAY_LOG_LEVEL": log_level,
        "GATEWAY_MQTT_EMBEDDED_PORT": str(free_port()),
        **extra_env,
    }
    return start_gateway(
        example_dialplan(ports), workdir, listen_port=listen, env=env, ready_timeout=20.0
    )


# --------------------------------------------------------------------------- RSS sampling


class RssSampler:
    """Reads a process's RSS (MiB) every ``period`` seconds in a thread: (t, MiB) pairs."""

    def __init__(self, pid: int, period: float) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((time.monotonic(), value))
            self._stop.wait(self.period)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join(5.0)
        return self.samples

    def peak(self) -> float | None:
        return max((v for _, v in self.samples), default=None)


def rss_now(gateway: GatewayProcess) -> float:
    value = rss_mb(gateway.pid)
    if value is None:
        raise HarnessError("the gateway is gone:\n" + gateway.log_tail(30))
    return value


def sleep_reading(gateway: GatewayProcess, seconds: float, marks: list[float]) -> dict[str, float]:
    """Sleep ``seconds``; return the RSS at each of ``marks`` (seconds from now)."""
    started = time.monotonic()
    readings: dict[str, float] = {}
    for mark in sorted(m for m in marks if m <= seconds):
        time.sleep(max(0.0, started + mark - time.monotonic()))
        readings[f"{mark:g}"] = rss_now(gateway)
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    return readings


# --------------------------------------------------------------------------- sections


@dataclass
class Section:
    name: str
    calls: int
    rate: float
    rss_start_mb: float = 0.0
    trims: int = 0
    successful: int = 0
    failed: int = 0
    uas_failed: int = 0
    rss_before_mb: float = 0.0
    rss_peak_mb: float | None = None
    rss_end_mb: float | None = None
    lingering_calls: int = 0
    bytes_per_call: float | None = None
    rss_held_mb: float | None = None
    rss_all_up_mb: float | None = None
    after: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _count(section: Section, uac: SippResult, uas: SippResult) -> None:
    section.successful = uac.successful_calls
    section.failed = uac.failed_calls
    section.uas_failed = uas.failed_calls
    if uac.failed_calls or uas.failed_calls or uac.successful_calls < section.calls:
        section.notes.append(
            f"uac {uac.successful_calls} ok / {uac.failed_calls} failed, uas "
            f"{uas.successful_calls} ok / {uas.failed_calls} failed (files "
            f"{uac.files.directory})"
        )


def run_load(
    args: argparse.Namespace, gateway: GatewayProcess, uas_port: int, workdir: Path
) -> Section:
    section = Section("load", args.calls, args.rate, rss_before_mb=rss_now(gateway))
    sipp = Sipp(workdir / "load", binary=args.sipp, host=HOST)
    duration = args.calls / args.rate
    timeout = duration + 30.0
    uas = sipp.uas(
        UAS_SCENARIO, uas_port, calls=args.calls, timeout=timeout + 10.0, trace_messages=False
    )
    sampler = RssSampler(gateway.pid, SAMPLE_S)
    started = time.monotonic()
    uac = sipp.start_uac(
        UAC_SCENARIO,
        gateway.address,
        args.calls,
        args.rate,
        timeout=timeout,
        recv_timeout=5.0,
        trace_messages=False,
    )
    uac_result = uac.wait()
    ended = time.monotonic()
    section.wall_s = ended - started
    section.rss_end_mb = rss_now(gateway)
    uas_result = uas.wait(5.0)
    sampler.stop()
    section.rss_peak_mb = sampler.peak()
    _count(section, uac_result, uas_result)
    # calls that ended within the last 64*T1: their transactions still wait out their timers
    section.lingering_calls = min(section.successful, round(args.rate * min(LINGER_S, duration)))
    if section.lingering_calls:
        grown = (section.rss_end_mb - section.rss_before_mb) * 1024 * 1024
        section.bytes_per_call = grown / section.lingering_calls
    return section


def run_after(args: argparse.Namespace, gateway: GatewayProcess, label: str) -> dict[str, float]:
    marks = [5.0, 15.0, 35.0, 45.0, args.after_seconds]
    print(f"  [{label}] waiting {args.after_seconds:g} s with no load ...", flush=True)
    return sleep_reading(gateway, args.after_seconds, marks)


def run_hold(
    args: argparse.Namespace, gateway: GatewayProcess, uas_port: int, workdir: Path
) -> Section:
    section = Section("hold", args.hold_calls, args.hold_rate, rss_before_mb=rss_now(gateway))
    sipp = Sipp(workdir / "hold", binary=args.sipp, host=HOST)
    ramp = args.hold_calls / args.hold_rate
    # hold until the last call's INVITE transactions (64*T1) have ended and the idle trim
    # (gateway/gcpolicy.py: 3 s after the work stopped falling) has had its chance
    hold = ramp + LINGER_S + 14.0
    timeout = hold + ramp + 40.0
    uas: SippProcess = sipp.uas(
        UAS_SCENARIO, uas_port, calls=args.hold_calls, timeout=timeout + 10.0, trace_messages=False
    )
    sampler = RssSampler(gateway.pid, SAMPLE_S)
    started = time.monotonic()
    uac = sipp.start_uac(
        UAC_HOLD_SCENARIO,
        gateway.address,
        args.hold_calls,
        args.hold_rate,
        timeout=timeout,
        recv_timeout=5.0,
        call_length=hold,
        trace_messages=False,
        extra=["-l", str(args.hold_calls)],
    )
    time.sleep(max(0.0, started + ramp + 1.0 - time.monotonic()))
    section.rss_all_up_mb = rss_now(gateway)
    time.sleep(max(0.0, started + ramp + LINGER_S + 9.0 - time.monotonic()))
    section.rss_held_mb = rss_now(gateway)
    uac_result = uac.wait()
    section.wall_s = time.monotonic() - started
    section.rss_end_mb = rss_now(gateway)
    uas_result = uas.wait(5.0)
    sampler.stop()
    section.rss_peak_mb = sampler.peak()
    _count(section, uac_result, uas_result)
    return section


# --------------------------------------------------------------------------- output


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


def _rel(value: float | None, start: float) -> str:
    return "-" if value is None else f"{value:.1f} MB ({100.0 * (value - start) / start:+.0f} %)"


def report(sections: list[Section]) -> list[str]:
    lines = []
    for s in sections:
        start = s.rss_start_mb
        ok = f"{s.successful}/{s.calls} calls ok, {s.failed} failed, uas failed {s.uas_failed}"
        if s.name == "load":
            lines.append(
                f"load (fresh gateway, RSS at start {start:.1f} MB): {s.calls} calls at "
                f"{s.rate:g} calls/s ({ok}, {s.wall_s:.0f} s): peak {_mb(s.rss_peak_mb)}, at "
                f"the end {_mb(s.rss_end_mb)}"
            )
            if s.bytes_per_call is not None:
                lines.append(
                    f"  bytes per call while transactions wait out their timers: "
                    f"{s.bytes_per_call:,.0f} (RSS growth / {s.lingering_calls} calls ended "
                    f"in the last {LINGER_S:g} s)"
                )
        else:
            lines.append(
                f"hold (fresh gateway, RSS at start {start:.1f} MB): {s.calls} concurrent calls "
                f"placed at {s.rate:g} calls/s ({ok}): all up {_mb(s.rss_all_up_mb)}, held "
                f"with INVITE transactions ended {_mb(s.rss_held_mb)}, peak {_mb(s.rss_peak_mb)}"
            )
            if s.rss_held_mb is not None and s.calls:
                per_call = (s.rss_held_mb - s.rss_before_mb) * 1024 * 1024 / s.calls
                lines.append(f"  bytes per held call (transactions ended): {per_call:,.0f}")
        if s.after:
            readings = ", ".join(f"+{k} s {_rel(v, start)}" for k, v in s.after.items())
            lines.append(f"  after the {s.name} (relative to start): {readings}")
            if s.trims:
                lines.append(f"  memory_trimmed log lines (logged at INFO): {s.trims}")
        lines += [f"  note: {n}" for n in s.notes]
    return lines


def run_section(
    name: str, args: argparse.Namespace, workdir: Path, extra_env: dict[str, str]
) -> Section:
    """One section on a fresh gateway: its RSS at start, the load, the idle time after."""
    uas_port = free_port()
    gateway = start_bench_gateway(workdir / f"gateway-{name}", uas_port, args.log_level, extra_env)
    try:
        print(f"  [{name}] gateway settings: {gateway.env}", flush=True)
        time.sleep(args.settle_seconds)
        start = rss_now(gateway)
        print(f"  [{name}] RSS at start: {start:.1f} MB", flush=True)
        if name == "load":
            print(f"  [load] {args.calls} calls at {args.rate:g} calls/s ...", flush=True)
            section = run_load(args, gateway, uas_port, workdir)
        else:
            print(
                f"  [hold] {args.hold_calls} calls at {args.hold_rate:g} calls/s, held ...",
                flush=True,
            )
            section = run_hold(args, gateway, uas_port, workdir)
        print(f"  [{name}] done: RSS {section.rss_end_mb:.1f} MB", flush=True)
        section.rss_start_mb = start
        section.after = run_after(args, gateway, name)
        section.trims = len([line for line in gateway.log_lines() if "memory_trimmed" in line])
        return section
    finally:
        gateway.stop()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="load calls (default 20000)")
    parser.add_argument("--rate", type=float, default=500.0, help="load calls/s (default 500)")
    parser.add_argument(
        "--after-seconds", type=float, default=60.0, help="idle time read after each load (60)"
    )
    parser.add_argument("--hold-calls", type=int, default=10000, help="held calls (10000)")
    parser.add_argument("--hold-rate", type=float, default=500.0, help="calls/s placing them (500)")
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    parser.add_argument("--sections", default="load,hold", help="load, hold or load,hold")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway, e.g. GATEWAY_MQTT_URL=off (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--workdir", type=Path, help="run files (default: new dir in /tmp)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run that proves the bench works: 600 calls at 200/s, 35 s after, "
        "1000 held calls at 200/s",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.rate, args.after_seconds = 600, 200.0, 35.0
        args.hold_calls, args.hold_rate = 1000, 200.0
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections or sections - {"load", "hold"}:
        parser.error("--sections takes load, hold or load,hold")
    try:
        extra_env = dict(item.split("=", 1) for item in args.gateway_env)
    except ValueError:
        parser.error("--gateway-env takes KEY=VALUE")
    sipp = find_tool("sipp")
    if sipp is None:
        parser.error("sipp not found (apt-get install sip-tester)")
    args.sipp = sipp
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="memory_bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    revision = code_revision()
    print(
        f"memory bench: gateway code {revision}; {os.cpu_count()} CPUs; load average "
        f"{load_average()}; files in {workdir}",
        flush=True,
    )
    results: list[Section] = []
    try:
        for name in ("load", "hold"):
            if name in sections:
                results.append(run_section(name, args, workdir, extra_env))
    except HarnessError as exc:
        print(f"harness error: {exc}", flush=True)
        return 1
    finally:
        for child in Child.started_children:  # only on an error or Ctrl-C
            if child.running:
                child.stop(soft=signal.SIGTERM, grace=2.0)

    print()
    lines = report(results)
    for line in lines:
        print(line)
    print(f"(load average now {load_average()}; files in {workdir})")
    if args.json is not None:
        payload: dict[str, Any] = {
            "code": revision,
            "sections": [s.__dict__ for s in results],
            "summary": lines,
            "workdir": str(workdir),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
