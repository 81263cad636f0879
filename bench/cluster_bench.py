"""Cluster calls per second (issue #12): two gateway nodes behind the Kamailio front,
one node behind the same front, and the front alone, in one run; then 911 under load.

Three columns, each driven through rising call rates (``testkit.ladder``):

    2 nodes    SIPp uac -> Kamailio front -> gw1 | gw2 (Redis store) -> SIPp uas (trunk)
    1 node     SIPp uac -> Kamailio front -> gw1       (Redis store) -> SIPp uas (trunk)
    kamailio   SIPp uac -> Kamailio front                            -> SIPp uas

The front is ``deploy/kamailio/cluster.cfg`` started as ``deploy/cluster/run-local.sh``
starts it (``testkit.kamailio.start_front``): dispatcher set 1 with a Call-ID hash over
the nodes, OPTIONS probes every 2 s, record-routing. In the ``kamailio`` column its
dispatcher list names the SIPp uas instead, and the probes are off (DS_PING_INTERVAL=0:
SIPp's uas does not answer OPTIONS). Every gateway node is a fresh process per column
(``python -m gateway run``, JSON logs at WARNING, GATEWAY_MQTT_URL=off,
GATEWAY_STORE=redis:// of a redis-server this bench starts on a free port, the same
GATEWAY_NONCE_SECRET, each node its own name, listen port and outage DIDs).

Calls are ``bench/scenarios/uac_rtd.xml`` against ``uas_rtd.xml`` as in cps_bench.py:
INVITE with SDP, 200, ACK, BYE, 200, no pause; set-up time is SIPp's response time from
sending the INVITE to receiving its 200 (``-trace_rtt``). Each step places
``rate * --step-seconds`` (5 s) calls; **a step passes** with 0 failed calls on both SIPp
sides and a set-up p99 under --p99-limit-ms (20). A column's **sustained** rate is its
highest passing step; rates rise until the first step that does not pass.

Then the **emergency run** on a fresh two-node cluster: alice's phone registers through
the front, then dials 911 at --emergency-rate (2) calls/s for --emergency-seconds (10)
(``sipp-scenarios/uac_basic.xml``, -d 0) while ordinary calls run at --load-pct (80) % of
the two-node sustained rate through the same front; the 911 calls go on the nodes'
direct-routing rule to an SBC (``sipp-scenarios/uas_basic.xml``). Reported: emergency
set-up p50/p99/max and failures at alice's phone and the SBC, the ordinary calls' figures.

The issue's targets: 2 nodes >= 2,000 calls/s with 0 failed and p99 < 20 ms, >= 1.7x one
node; emergency p99 < 20 ms at 80 %. Everything here runs on one machine: SIPp, the front,
Redis and the nodes share its CPUs, which the CPU columns show (100 % = one core).

Everything runs on 127.0.0.1 and is bounded (every SIPp has -timeout and is killed 5 s
after it). The files of every run (SIPp statistics, errors, screens, rtt CSVs, the
front's and the nodes' logs, dispatcher lists, dialplans) stay under --workdir.

    .venv/bin/python bench/cluster_bench.py [--max-rate 4000] [--rates 100,200,...]
        [--step-seconds 5] [--p99-limit-ms 20] [--columns two,one,kamailio]
        [--emergency-rate 2] [--emergency-seconds 10] [--load-pct 80] [--load-rate N]
        [--json out.json] [--workdir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# run as `python bench/cluster_bench.py`: the project root holds testkit/, the harness
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.kamailio import Kamailio, start_front
from testkit.ladder import (
    CpuMeter,
    LadderStep,
    default_rates,
    fmt_ms,
    fmt_pct,
    judge,
    measure,
    parse_rates,
    render_table,
    sipp_evidence,
    sustained,
)
from testkit.processes import (
    CLK_TCK,
    LOOPBACK,
    PROJECT_ROOT,
    Child,
    GatewayProcess,
    HarnessError,
    code_revision,
    find_tool,
    free_port,
    load_average,
    start_gateway,
)
from testkit.redisserver import RedisServer
from testkit.sipp import Sipp, percentile, read_rtt, read_stats, stat_int

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
UAC_SCENARIO = SCENARIOS / "uac_rtd.xml"
UAS_SCENARIO = SCENARIOS / "uas_rtd.xml"
SIPP_SCENARIOS = PROJECT_ROOT / "sipp-scenarios"
REGISTER_SCENARIO = SIPP_SCENARIOS / "agent_register.xml"
EMERGENCY_UAC = SIPP_SCENARIOS / "uac_basic.xml"
SBC_UAS = SIPP_SCENARIOS / "uas_basic.xml"
HOST = LOOPBACK

#: uas timewait in uas_rtd.xml (s), and in uas_basic.xml (the SBC).
UAS_TIMEWAIT_S = 1.0
SBC_TIMEWAIT_S = 2.0
#: A SIPp run is killed this many seconds after its own -timeout.
HARD_MARGIN_S = 5.0
#: Pause between steps so that the previous step's retransmissions and timers settle.
SETTLE_S = 1.0
#: Ordinary calls start this long before the first 911 and go on this long after the last.
WARMUP_S, TAIL_S = 2.0, 2.0
#: The issue's targets.
TARGET_CPS, TARGET_RATIO, TARGET_P99_MS = 2000, 1.7, 20.0

COLUMNS = {"two": "2 nodes", "one": "1 node", "kamailio": "kamailio"}
QUICK = {"rates": "100,200", "step_seconds": 2.0, "emergency_seconds": 3.0}

AGENT, PASSWORD = "alice", "alice-secret"
DIDS = ("+15555550190", "+15555550191", "+15555550192")
SECRET = "cluster-bench nonce key shared by every node"

DIALPLAN = """\
version: 1
node: {{ name: {name}, fronts: ['{host}:{front_port}'] }}
listen:
  - {{ transport: udp, host: {host}, port: {port} }}
trunks:
  carrier:
    gateways: [ {{ host: {host}, port: {uas_port}, transport: udp }} ]
  carrier-sbc:
    gateways: [ {{ host: {host}, port: {sbc_port}, transport: udp }} ]
    trusted: true
# the phones (SIPp) are on 127.0.0.1: calls from there need no digest authentication,
# like phones on a trusted network; behind the front the nodes judge each request by the
# source the front names in X-Gateway-Source (node.fronts)
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
    outage_dids: ['{outage_did}']
agents:
  {agent}:
    password: {password}
    identity: '+15555550101'
    location: {{ street: 100 Main St, city: Springfield, state: IL, postcode: '62701',
                country: US }}
"""


# --------------------------------------------------------------------------- the set-up


@dataclass
class Cluster:
    """What one column runs: the front, the nodes (none for ``kamailio``), their ports."""

    column: str
    front: Kamailio
    nodes: list[GatewayProcess]
    uas_port: int
    sbc_port: int
    #: the redis-server's pid: its CPU is the set-up's, not "other"
    redis_pid: int | None = None


def start_nodes(
    count: int, directory: Path, redis: RedisServer, uas_port: int, sbc_port: int, front_port: int
) -> list[GatewayProcess]:
    nodes: list[GatewayProcess] = []
    try:
        for n in range(1, count + 1):
            port = free_port()
            text = DIALPLAN.format(
                name=f"gw{n}", host=HOST, port=port, uas_port=uas_port, sbc_port=sbc_port,
                front_port=front_port,
                dids=", ".join(f"'{d}'" for d in DIDS), outage_did=f"+1555555029{n}",
                agent=AGENT, password=PASSWORD,
            )  # fmt: skip
            env = {
                "GATEWAY_STORE": redis.url,
                "GATEWAY_NONCE_SECRET": SECRET,
                "GATEWAY_MQTT_URL": "off",
                "GATEWAY_LOG_LEVEL": "WARNING",
            }
            node = start_gateway(
                text,
                directory / f"gw{n}",
                listen_port=port,
                env=env,
                ready_timeout=15.0,
                inherit_gateway_env=False,
            )
            nodes.append(node)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


@contextmanager
def cluster(column: str, directory: Path, redis: RedisServer) -> Iterator[Cluster]:
    """The front and the nodes of ``column``, stopped on the way out."""
    uas_port, sbc_port, front_port = free_port(), free_port(), free_port()
    count = {"two": 2, "one": 1, "kamailio": 0}[column]
    nodes = start_nodes(count, directory, redis, uas_port, sbc_port, front_port) if count else []
    front: Kamailio | None = None
    try:
        destinations = [n.address for n in nodes] or [f"{HOST}:{uas_port}"]
        front = start_front(directory / "front", front_port, destinations, probe=bool(nodes))
        if nodes:
            time.sleep(2.5)  # the first round of OPTIONS probes: every node known active
        redis_pid = redis.child.pid if redis.child is not None else None
        yield Cluster(column, front, nodes, uas_port, sbc_port, redis_pid)
    finally:
        if front is not None:
            front.stop()
        for node in nodes:
            node.stop()


# --------------------------------------------------------------------------- one step


@dataclass(kw_only=True)
class Step(LadderStep):
    column: str
    node_cpu_pct: list[float | None] = field(default_factory=list)
    front_cpu_pct: float | None = None


def run_step(setup: Cluster, rate: int, args: argparse.Namespace, directory: Path) -> Step:
    directory.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * args.step_seconds))
    step = Step(column=setup.column, rate=rate, calls=calls, directory=str(directory))
    uac_timeout = args.step_seconds + 20.0
    sipp = Sipp(directory, binary=args.sipp, host=HOST)
    uas = sipp.uas(
        UAS_SCENARIO, setup.uas_port, calls=calls, timeout=uac_timeout + 10.0,
        max_recv_loops=1000, trace_messages=False,
    )  # fmt: skip
    meter = CpuMeter(
        {"redis": setup.redis_pid, **{f"gw{n}": node.pid for n, node in enumerate(setup.nodes, 1)}}
    )
    front_before = setup.front.cpu_ticks()
    uac = sipp.start_uac(
        UAC_SCENARIO, setup.front.address, calls, rate, timeout=uac_timeout,
        recv_timeout=5.0, max_recv_loops=1000, trace_messages=False,
        extra=["-trace_rtt", "-rtt_freq", "1"],
    )  # fmt: skip
    uac.wait(uac_timeout + HARD_MARGIN_S)
    meter.stop()
    front_after = setup.front.cpu_ticks()
    uas.wait(UAS_TIMEWAIT_S + 3.0)
    front_s = (
        (front_after - front_before) / CLK_TCK
        if front_before is not None and front_after is not None
        else None
    )
    node_s = [meter.seconds(f"gw{n}") for n in range(1, len(setup.nodes) + 1)]
    measure(step, uac, uas, meter, also_ours=[front_s, meter.seconds("redis"), *node_s])
    wall = uac.elapsed
    step.node_cpu_pct = [None if s is None else round(100.0 * s / wall, 1) for s in node_s]
    step.front_cpu_pct = None if front_s is None else round(100.0 * front_s / wall, 1)
    judge(step, args.p99_limit_ms, uac, None)
    for n, node in enumerate(setup.nodes, 1):
        if not node.running:
            step.reasons.append(f"gw{n} exited ({node.popen.returncode})")
    if not setup.front.running:
        step.reasons.append("the front exited")
    step.passed = not step.reasons
    return step


def diagnose(step: Step, setup: Cluster, threshold_ms: float) -> str:
    parts = [
        f"--- {COLUMNS[step.column]} @ {step.rate} cps did not pass: {'; '.join(step.reasons)}",
        f"    files: {step.directory}",
        *sipp_evidence(step, threshold_ms / 2, bursts=10, errors=6),
    ]
    for n, node in enumerate(setup.nodes, 1):
        lines = node.log_lines()
        parts.append(f"--- gw{n} log: {len(lines)} lines (last 8)")
        parts += lines[-8:]
    parts.append("--- front log (last 8)")
    parts.append(setup.front.log_tail(8))
    return "\n".join(parts)


def run_column(
    column: str, rates: list[int], args: argparse.Namespace, workdir: Path, redis: RedisServer
) -> dict[str, Any]:
    directory = workdir / column
    steps: list[Step] = []
    diagnosis = ""
    try:
        with cluster(column, directory, redis) as setup:
            for rate in rates:
                step = run_step(setup, rate, args, directory / f"{rate:05d}cps")
                steps.append(step)
                print(format_progress(step), flush=True)
                if not step.passed:
                    diagnosis = diagnose(step, setup, args.p99_limit_ms)
                    break
                time.sleep(SETTLE_S)
    except HarnessError as exc:
        diagnosis = f"--- {COLUMNS[column]}: {exc}"
        print(f"  [{COLUMNS[column]}] {str(exc).splitlines()[0]}", flush=True)
    best = sustained(steps)
    return {
        "column": COLUMNS[column],
        "steps": [asdict(s) for s in steps],
        "sustained_cps": best.rate if best else 0,
        "sustained_p99_ms": best.p99_ms if best else None,
        "limit_reached": bool(diagnosis),
        "diagnosis": diagnosis,
        "directory": str(directory),
    }


# --------------------------------------------------------------------------- emergency run


@dataclass
class EmergencyRun:
    load_rate: int
    emergency_calls: int
    emergency_ok: int = 0
    emergency_failed: int = 0
    sbc_ok: int = 0
    sbc_failed: int = 0
    emergency_p50_ms: float | None = None
    emergency_p99_ms: float | None = None
    emergency_max_ms: float | None = None
    load_calls: int = 0
    load_ok: int = 0
    load_failed: int = 0
    load_uas_failed: int = 0
    load_p50_ms: float | None = None
    load_p99_ms: float | None = None
    node_cpu_pct: list[float | None] = field(default_factory=list)
    front_cpu_pct: float | None = None
    #: unexpected answers that failed ordinary calls (status line -> count), uac errors.log
    load_answers: dict[str, int] = field(default_factory=dict)
    #: per node: 911 calls it could not tie to alice's registration (E-13), from its log
    unidentified: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    directory: str = ""


def sipp_child(
    args: argparse.Namespace, directory: Path, role: str, arguments: Sequence[str], timeout: float
) -> Child:
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        args.sipp, *arguments, "-i", HOST, "-nostdin",
        "-timeout", f"{timeout:g}s", "-timeout_error",
        "-trace_stat", "-stf", str(directory / f"{role}_stat.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(directory / f"{role}_errors.log"),
        "-trace_screen", "-screen_file", str(directory / f"{role}_screen.log"),
    ]  # fmt: skip
    return Child(command, directory, directory / f"{role}_output.log")


def finish(child: Child, timeout: float) -> bool:
    """Wait for a SIPp run; stop it (SIGUSR1, then harder) past ``timeout``. False if it
    had to be stopped."""
    if child.wait(timeout) is None:
        child.stop(soft=signal.SIGUSR1, grace=2.0)
        return False
    return True


def run_emergency(
    load_rate: int, args: argparse.Namespace, workdir: Path, redis: RedisServer
) -> EmergencyRun:
    directory = workdir / "emergency"
    em_dir, load_dir = directory / "911", directory / "ordinary"
    calls = max(1, round(args.emergency_rate * args.emergency_seconds))
    load_seconds = WARMUP_S + args.emergency_seconds + TAIL_S
    load_calls = round(load_rate * load_seconds) if load_rate else 0
    result = EmergencyRun(load_rate, calls, load_calls=load_calls, directory=str(directory))
    em_timeout, load_timeout = args.emergency_seconds + 20.0, load_seconds + 20.0
    children: list[Child] = []
    try:
        with cluster("two", directory, redis) as setup:
            front = setup.front.address
            sbc = sipp_child(
                args, em_dir, "sbc",
                ["-sf", str(SBC_UAS), "-p", str(setup.sbc_port), "-m", str(calls)],
                em_timeout + 10.0,
            )  # fmt: skip
            children.append(sbc)
            alice_port = free_port()
            register = sipp_child(
                args, em_dir, "register",
                [front, "-sf", str(REGISTER_SCENARIO), "-s", AGENT, "-au", AGENT,
                 "-ap", PASSWORD, "-key", "expires", "3600", "-m", "1", "-bind_local",
                 "-p", str(alice_port)],
                10.0,
            )  # fmt: skip
            if not finish(register, 10.0 + HARD_MARGIN_S) or register.returncode != 0:
                result.problems.append(f"alice's REGISTER through the front failed ({em_dir})")
            load_uac: Child | None = None
            load_uas: Child | None = None
            if load_calls:
                load_uas = sipp_child(
                    args, load_dir, "uas",
                    ["-sf", str(UAS_SCENARIO), "-p", str(setup.uas_port), "-m", str(load_calls),
                     "-max_recv_loops", "1000"],
                    load_timeout + 10.0,
                )  # fmt: skip
                children.append(load_uas)
                time.sleep(0.3)  # the uas binds its port
                load_uac = sipp_child(
                    args, load_dir, "uac",
                    [front, "-sf", str(UAC_SCENARIO), "-p", str(free_port()),
                     "-m", str(load_calls), "-r", str(load_rate), "-rp", "1000",
                     "-max_recv_loops", "1000", "-recv_timeout", "5000",
                     "-trace_rtt", "-rtt_freq", "1"],
                    load_timeout,
                )  # fmt: skip
                children.append(load_uac)
                time.sleep(WARMUP_S)
            meter = CpuMeter({f"gw{n}": node.pid for n, node in enumerate(setup.nodes, 1)})
            front_before = setup.front.cpu_ticks()
            em_uac = sipp_child(
                args, em_dir, "uac",
                [front, "-sf", str(EMERGENCY_UAC), "-s", "911", "-p", str(alice_port),
                 "-m", str(calls), "-r", f"{args.emergency_rate:g}", "-rp", "1000",
                 "-d", "0", "-recv_timeout", "5000", "-trace_rtt", "-rtt_freq", "1"],
                em_timeout,
            )  # fmt: skip
            children.append(em_uac)
            if not finish(em_uac, em_timeout + HARD_MARGIN_S):
                result.problems.append("the 911 uac was stopped after its timeout")
            meter.stop()
            front_after = setup.front.cpu_ticks()
            wall = em_uac.elapsed
            result.node_cpu_pct = [
                None if (s := meter.seconds(f"gw{n}")) is None else round(100 * s / wall, 1)
                for n in range(1, len(setup.nodes) + 1)
            ]
            if front_before is not None and front_after is not None and wall > 0:
                result.front_cpu_pct = round(
                    100.0 * (front_after - front_before) / CLK_TCK / wall, 1
                )
            finish(sbc, SBC_TIMEWAIT_S + 3.0)
            if load_uac is not None and not finish(load_uac, load_timeout + HARD_MARGIN_S):
                result.problems.append("the ordinary uac was stopped after its timeout")
            if load_uas is not None:
                finish(load_uas, UAS_TIMEWAIT_S + 3.0)
            for n, node in enumerate(setup.nodes, 1):
                if not node.running:
                    result.problems.append(f"gw{n} exited ({node.popen.returncode})")
                result.unidentified.append(
                    node.log_text().count('"event": "emergency_caller_unidentified"')
                )
    except HarnessError as exc:
        result.problems.append(str(exc).splitlines()[0])
    finally:
        for child in children:
            if child.running:
                child.stop(grace=2.0)

    uac_stats, sbc_stats = read_stats(em_dir / "uac_stat.csv"), read_stats(em_dir / "sbc_stat.csv")
    result.emergency_ok = stat_int(uac_stats, "SuccessfulCall(C)")
    result.emergency_failed = max(stat_int(uac_stats, "FailedCall(C)"), calls - result.emergency_ok)
    result.sbc_ok = stat_int(sbc_stats, "SuccessfulCall(C)")
    result.sbc_failed = stat_int(sbc_stats, "FailedCall(C)")
    values = sorted(v for _, v in read_rtt(em_dir))
    result.emergency_p50_ms, result.emergency_p99_ms = (
        percentile(values, 50),
        percentile(values, 99),
    )
    result.emergency_max_ms = values[-1] if values else None
    if load_calls:
        load_stats = read_stats(load_dir / "uac_stat.csv")
        result.load_ok = stat_int(load_stats, "SuccessfulCall(C)")
        result.load_failed = max(stat_int(load_stats, "FailedCall(C)"), load_calls - result.load_ok)
        result.load_uas_failed = stat_int(read_stats(load_dir / "uas_stat.csv"), "FailedCall(C)")
        result.load_answers = unexpected_answers(load_dir / "uac_errors.log")
        load_values = sorted(v for _, v in read_rtt(load_dir))
        result.load_p50_ms = percentile(load_values, 50)
        result.load_p99_ms = percentile(load_values, 99)
    if result.emergency_failed or result.sbc_failed:
        result.problems.append(
            f"{result.emergency_failed} emergency calls failed at alice's phone, "
            f"{result.sbc_failed} at the SBC"
        )
    return result


def unexpected_answers(errors_log: Path) -> dict[str, int]:
    """The responses SIPp aborted calls on, by status line (e.g. "403 Forbidden")."""
    try:
        text = errors_log.read_text(errors="replace")
    except OSError:
        return {}
    found: dict[str, int] = {}
    for status in re.findall(r"received 'SIP/2\.0 (\d{3} [^\r\n]*)", text):
        found[status] = found.get(status, 0) + 1
    return found


# --------------------------------------------------------------------------- output


def format_progress(step: Step) -> str:
    verdict = "ok" if step.passed else "FAIL: " + "; ".join(step.reasons)
    nodes = " ".join(f"gw{n} {fmt_pct(p)}%" for n, p in enumerate(step.node_cpu_pct, 1))
    return (
        f"  [{COLUMNS[step.column]}] {step.rate} cps: {step.successful}/{step.calls} ok, "
        f"p50/p99 {fmt_ms(step.p50_ms)}/{fmt_ms(step.p99_ms)} ms, "
        f"front {fmt_pct(step.front_cpu_pct)}% {nodes} {verdict}"
    )


def ladder_table(results: dict[str, dict[str, Any]], rates: list[int]) -> str:
    """One row per rate; per column: offered, failed, set-up p50/p99, CPU."""
    names = [c for c in COLUMNS if c in results]
    header = ["rate"]
    for c in names:
        header += [f"{COLUMNS[c]}: offered", "failed", "p50/p99 ms", "CPU% front/nodes", "other%"]
    rows: list[Sequence[str]] = [header]
    by_rate = {c: {s["rate"]: s for s in results[c]["steps"]} for c in names}
    for rate in rates:
        if not any(rate in by_rate[c] for c in names):
            continue
        row = [str(rate)]
        for c in names:
            s = by_rate[c].get(rate)
            if s is None:
                row += ["-", "-", "-", "-", "-"]
                continue
            cpu = "/".join([fmt_pct(s["front_cpu_pct"]), *map(fmt_pct, s["node_cpu_pct"])])
            mark = "" if s["passed"] else " X"
            row += [
                str(s["calls"]),
                str(s["failed"] + s["uas_failed"]),
                f"{fmt_ms(s['p50_ms'])}/{fmt_ms(s['p99_ms'])}{mark}",
                cpu,
                fmt_pct(s["other_cpu_pct"]),
            ]
        rows.append(row)
    return render_table(rows)


def summary(
    results: dict[str, dict[str, Any]], emergency: EmergencyRun | None, args: argparse.Namespace
) -> list[str]:
    lines = []
    for c, result in results.items():
        note = "" if result["limit_reached"] else f" (limit not reached: highest rate {args.top}"
        note += ")" if note else ""
        lines.append(
            f"{COLUMNS[c]:>8} sustained: {result['sustained_cps']} calls/s "
            f"(0 failed, p99 {fmt_ms(result['sustained_p99_ms'])} ms < "
            f"{args.p99_limit_ms:g} ms){note}"
        )
    two, one = results.get("two"), results.get("one")
    if two is not None:
        verdict = "met" if two["sustained_cps"] >= TARGET_CPS else "NOT met"
        lines.append(f"target 2 nodes >= {TARGET_CPS} calls/s: {verdict}")
    if two is not None and one is not None:
        if one["sustained_cps"]:
            ratio = two["sustained_cps"] / one["sustained_cps"]
            verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
            lines.append(
                f"ratio 2 nodes / 1 node: {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})"
            )
        else:
            lines.append("ratio 2 nodes / 1 node: n/a (1 node sustained no step)")
    if emergency is not None:
        e = emergency
        verdict = (
            "met"
            if not e.emergency_failed
            and e.emergency_p99_ms is not None
            and e.emergency_p99_ms < TARGET_P99_MS
            else "NOT met"
        )
        lines.append(
            f"emergency: {e.emergency_calls} calls to 911 at {args.emergency_rate:g}/s under "
            f"{e.load_rate} ordinary calls/s: {e.emergency_failed} failed, set-up p50/p99/max "
            f"{fmt_ms(e.emergency_p50_ms)}/{fmt_ms(e.emergency_p99_ms)}/"
            f"{fmt_ms(e.emergency_max_ms)} ms (target p99 < {TARGET_P99_MS:g} ms, 0 failed: "
            f"{verdict})"
        )
        lines.append(
            f"  ordinary calls meanwhile: {e.load_ok}/{e.load_calls} ok, "
            f"{e.load_failed + e.load_uas_failed} failed, p50/p99 {fmt_ms(e.load_p50_ms)}/"
            f"{fmt_ms(e.load_p99_ms)} ms; CPU% front "
            f"{fmt_pct(e.front_cpu_pct)}, nodes {'/'.join(map(fmt_pct, e.node_cpu_pct))}"
        )
        if e.load_answers:
            answers = ", ".join(f"{n} x {status}" for status, n in sorted(e.load_answers.items()))
            lines.append(f"  ordinary calls failed on: {answers}")
        lines.append(
            f"  at the SBC: {e.sbc_ok} ok, {e.sbc_failed} failed; not tied to alice's "
            f"registration (logged emergency_caller_unidentified), per node: "
            f"{'/'.join(map(str, e.unidentified)) or '-'}"
        )
        lines += [f"  problem: {p}" for p in e.problems]
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-rate", type=int, default=4000, help="highest rate (default 4000)")
    parser.add_argument("--rates", default="", help="comma-separated rates instead of the ladder")
    parser.add_argument("--step-seconds", type=float, default=5.0, help="step length (5 s)")
    parser.add_argument("--p99-limit-ms", type=float, default=20.0, help="pass rule p99 (20)")
    parser.add_argument(
        "--columns", default="two,one,kamailio", help="which columns: two,one,kamailio"
    )
    parser.add_argument("--emergency-rate", type=float, default=2.0, help="911 calls/s (2)")
    parser.add_argument("--emergency-seconds", type=float, default=10.0, help="911 run (10 s)")
    parser.add_argument(
        "--load-pct", type=float, default=80.0, help="ordinary load, %% of 2-node sustained (80)"
    )
    parser.add_argument(
        "--load-rate", type=int, help="ordinary load in calls/s (instead of --load-pct)"
    )
    parser.add_argument("--no-emergency", action="store_true", help="skip the emergency run")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--workdir", type=Path, help="where run files go (default: /tmp)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"proves the bench works in under 2 minutes: rates {QUICK['rates']}, "
        f"{QUICK['step_seconds']:g} s steps, {QUICK['emergency_seconds']:g} s of 911 calls",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.step_seconds = QUICK["rates"], QUICK["step_seconds"]
        args.emergency_seconds = QUICK["emergency_seconds"]
    args.sipp = find_tool("sipp")
    if args.sipp is None:
        parser.error("sipp not found (apt-get install sip-tester)")
    for tool in ("kamailio", "redis-server"):
        if find_tool(tool) is None:
            parser.error(f"{tool} not found (scripts/install-test-deps.sh)")
    try:
        rates = parse_rates(args.rates) if args.rates else default_rates(args.max_rate)
    except ValueError as exc:
        parser.error(str(exc))
    args.top = rates[-1]
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    if not columns or set(columns) - set(COLUMNS):
        parser.error("--columns takes two, one, kamailio (comma-separated)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cluster_bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    revision = code_revision()
    print(
        f"cluster bench: gateway code {revision}; {args.step_seconds:g} s per step, rates "
        f"{rates[0]}..{rates[-1]} calls/s, pass = 0 failed and set-up p99 < "
        f"{args.p99_limit_ms:g} ms; {os.cpu_count()} CPUs shared by SIPp, the front, Redis "
        f"and the nodes; load average {load_average()}; files in {workdir}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    emergency: EmergencyRun | None = None
    try:
        redis = RedisServer.start(workdir / "redis")
    except HarnessError as exc:
        print(f"redis-server did not start: {exc}", flush=True)
        return 1
    try:
        for column in COLUMNS:
            if column in columns:
                print(f"{COLUMNS[column]}:", flush=True)
                results[column] = run_column(column, rates, args, workdir, redis)
        if not args.no_emergency:
            load_rate = args.load_rate
            if load_rate is None:
                two = results.get("two", {}).get("sustained_cps", 0)
                if not two:
                    # no 2-node capacity measured (column not run, or no step passed):
                    # the lowest step of the ladder stands in for it, so that 911 still
                    # meets ordinary traffic
                    two = rates[0]
                    print(f"(no 2-node sustained rate: {args.load_pct:g} % of {two} calls/s)")
                load_rate = round(two * args.load_pct / 100.0)
            print(
                f"emergency: 911 at {args.emergency_rate:g}/s for {args.emergency_seconds:g} s "
                f"under {load_rate} ordinary calls/s",
                flush=True,
            )
            emergency = run_emergency(load_rate, args, workdir, redis)
    except KeyboardInterrupt:
        print("interrupted: stopping everything started", flush=True)
        return 130
    finally:
        for child in Child.started_children:
            if child.running:
                child.stop(grace=2.0)
        redis.stop()

    print()
    print(ladder_table(results, rates))
    print("(X: the step did not pass; CPU% over the step, 100 % = one core: front = Kamailio")
    print(" and its workers, then each node; other% = the rest of the machine: all but")
    print(" the two SIPp, the front, the nodes and Redis, e.g. other work on a shared box)")
    for result in results.values():
        if result["diagnosis"]:
            print(result["diagnosis"])
    print()
    lines = summary(results, emergency, args)
    for line in lines:
        print(line)
    elapsed = time.monotonic() - started
    print(f"(run took {elapsed:.0f} s; load average now {load_average()}; files in {workdir})")
    if args.json is not None:
        payload = {
            "code": revision,
            "step_seconds": args.step_seconds,
            "p99_limit_ms": args.p99_limit_ms,
            "rates": rates,
            "cpus": os.cpu_count(),
            "columns": results,
            "emergency": asdict(emergency) if emergency is not None else None,
            "summary": lines,
            "elapsed_s": round(elapsed, 1),
            "workdir": str(workdir),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
