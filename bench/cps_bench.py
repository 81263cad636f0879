"""Calls per second: the gateway against Kamailio and SIPp talking straight to SIPp, in one run.

Three set-ups, each driven through rising call rates:

    gateway      sipp uac  ->  gateway  ->  sipp uas
    kamailio     sipp uac  ->  Kamailio tm relay  ->  sipp uas     (udp only)
    sipp->sipp   sipp uac  ->  sipp uas

The Kamailio relay is ``deploy/kamailio/kamailio-relay.cfg.tmpl`` (the wire tests' relay:
2 UDP workers, record-routing, stateful ``t_relay``), a fresh process per run; its CPU is
that of its main process and workers (``testkit.kamailio``). It is the reference for "a
SIP server in C doing the least a stateful proxy does", beside SIPp alone.

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
        [--transport udp|tcp] [--rates 100,200,...] [--setups gateway,kamailio,sipp]
        [--gateway-env KEY=VALUE]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# run as `python bench/cps_bench.py`: the project root holds testkit/, the shared harness
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.kamailio import Kamailio, start_relay
from testkit.ladder import (
    CpuMeter,
    LadderStep,
    default_rates,
    fmt_ms,
    fmt_pct,
    judge,
    measure,
    render_table,
    sipp_evidence,
    sustained,
)
from testkit.processes import (
    CLK_TCK,
    LOOPBACK,
    Child,
    GatewayProcess,
    HarnessError,
    code_revision,
    find_tool,
    free_port,
    load_average,
    start_gateway,
)
from testkit.sipp import Sipp, SippTransport

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
UAC_SCENARIO = SCENARIOS / "uac_rtd.xml"
UAS_SCENARIO = SCENARIOS / "uas_rtd.xml"
UAS_SCENARIO_TCP = SCENARIOS / "uas_rtd_tcp.xml"
HOST = LOOPBACK

#: uas timewait in uas_rtd.xml (s): the uas ends this long after its last call.
UAS_TIMEWAIT_S = 1.0
#: A SIPp run is killed this many seconds after its own -timeout.
HARD_MARGIN_S = 5.0
#: Pause between steps so that the previous step's retransmissions and timers settle.
SETTLE_S = 1.0
#: Quick mode (--quick): one short step at each of these rates, both set-ups.
QUICK_RATES = "100,200"
QUICK_STEP_SECONDS = 2.0
#: The set-ups, in the order they run, and their labels.
SETUPS = {"gateway": "gateway", "kamailio": "kamailio", "sipp": "sipp->sipp"}


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


def start_bench_gateway(
    workdir: Path, uas_port: int, transport: str, extra_env: dict[str, str]
) -> GatewayProcess:
    """A fresh gateway (JSON logs at WARNING) with one trunk towards the uas."""
    port = free_port()
    env = {"GATEWAY_LOG_LEVEL": os.environ.get("GATEWAY_LOG_LEVEL", "WARNING"), **extra_env}
    mqtt_url = extra_env.get("GATEWAY_MQTT_URL", os.environ.get("GATEWAY_MQTT_URL"))
    if not mqtt_url and "GATEWAY_MQTT_EMBEDDED_PORT" not in extra_env:
        # the embedded MQTT broker (the default) must not collide with another gateway
        env["GATEWAY_MQTT_EMBEDDED_PORT"] = str(free_port())
    text = DIALPLAN.format(host=HOST, port=port, uas_port=uas_port, transport=transport)
    return start_gateway(text, workdir, listen_port=port, env=env, ready_timeout=15.0)


# --------------------------------------------------------------------------- one step


@dataclass(kw_only=True)
class Step(LadderStep):
    setup: str
    #: the Kamailio relay's CPU over the step (main process and workers), kamailio set-up
    proxy_cpu_pct: float | None = None


def run_step(
    setup: str,
    rate: int,
    args: argparse.Namespace,
    directory: Path,
    target_port: int,
    uas_port: int,
    gateway: GatewayProcess | None,
    proxy: Kamailio | None = None,
) -> Step:
    directory.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * args.step_seconds))
    step = Step(setup=setup, rate=rate, calls=calls, directory=str(directory))
    uac_timeout = args.step_seconds + 20.0
    transport: SippTransport = "t1" if args.transport == "tcp" else "u1"
    sipp = Sipp(directory, binary=args.sipp, host=HOST)
    common: dict[str, Any] = {
        "transport": transport,
        "max_recv_loops": 1000,
        "trace_messages": False,
    }
    uas = sipp.uas(
        UAS_SCENARIO_TCP if args.transport == "tcp" else UAS_SCENARIO,
        uas_port,
        calls=calls,
        timeout=uac_timeout + 10.0,
        **common,
    )
    log_before = len(gateway.log_lines()) if gateway is not None else 0
    meter = CpuMeter({"gateway": gateway.pid if gateway is not None else None})
    proxy_before = proxy.cpu_ticks() if proxy is not None else None
    uac = sipp.start_uac(
        UAC_SCENARIO,
        f"{HOST}:{target_port}",
        calls,
        rate,
        timeout=uac_timeout,
        recv_timeout=5.0,
        extra=["-trace_rtt", "-rtt_freq", "1"],
        **common,
    )
    uac.wait(uac_timeout + HARD_MARGIN_S)
    meter.stop()
    proxy_after = proxy.cpu_ticks() if proxy is not None else None
    # the uas ends by itself one timewait after its last call; stop it if calls are missing
    uas.wait(UAS_TIMEWAIT_S + 3.0)
    proxy_s = None
    if proxy_before is not None and proxy_after is not None:
        proxy_s = (proxy_after - proxy_before) / CLK_TCK
        step.proxy_cpu_pct = round(100.0 * proxy_s / uac.elapsed, 1) if uac.elapsed else None
    measure(step, uac, uas, meter, gateway=gateway, also_ours=[proxy_s])
    if gateway is not None:
        step.gateway_log_lines = len(gateway.log_lines()) - log_before
    judge(step, args.p99_limit_ms, uac, gateway)
    if proxy is not None and not proxy.running:
        step.reasons.append("kamailio exited")
        step.passed = False
    return step


# --------------------------------------------------------------------------- set-ups


def diagnose(step: Step, gateway: GatewayProcess | None, threshold_ms: float) -> str:
    """Evidence for a step that did not pass: SIPp screens, error logs, gateway log."""
    parts = [
        f"--- {step.setup} @ {step.rate} cps did not pass: {'; '.join(step.reasons)}",
        f"    files: {step.directory}",
        *sipp_evidence(step, threshold_ms / 2),
    ]
    if gateway is not None:
        lines = gateway.log_lines()
        parts.append(f"--- gateway log during this set-up: {len(lines)} lines (last 15)")
        parts += lines[-15:]
    return "\n".join(parts)


def run_setup(
    setup: str, rates: list[int], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    uas_port = free_port()
    gateway: GatewayProcess | None = None
    proxy: Kamailio | None = None
    directory = workdir / {"gateway": "gateway", "kamailio": "kamailio"}.get(setup, "sipp-sipp")
    steps: list[Step] = []
    diagnosis = ""
    try:
        if setup == "gateway":
            try:
                gateway = start_bench_gateway(directory, uas_port, args.transport, args.gateway_env)
                print(f"  gateway settings: {gateway.env}", flush=True)
            except HarnessError as exc:
                print(f"  [gateway] did not start: {exc}", flush=True)
                rates, diagnosis = [], f"--- gateway did not start: {exc}"
            target = gateway.listen_port if gateway is not None else 0
        elif setup == "kamailio":
            try:
                proxy = start_relay(directory / "relay", free_port(), f"{HOST}:{uas_port}")
            except HarnessError as exc:
                print(f"  [kamailio] did not start: {exc}", flush=True)
                rates, diagnosis = [], f"--- kamailio did not start: {exc}"
            target = proxy.port if proxy is not None else 0
        else:
            target = uas_port
        for rate in rates:
            try:
                step = run_step(
                    setup,
                    rate,
                    args,
                    directory / f"{rate:05d}cps",
                    target,
                    uas_port,
                    gateway,
                    proxy,
                )
            except HarnessError as exc:
                diagnosis = f"--- {setup} @ {rate} cps: {exc}"
                break
            steps.append(step)
            print(format_progress(step), flush=True)
            if not step.passed:
                diagnosis = diagnose(step, gateway, args.p99_limit_ms)
                break
            time.sleep(SETTLE_S)
    finally:
        exit_code = gateway.stop() if gateway is not None else None
        if proxy is not None:
            proxy.stop()
    best = sustained(steps)
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


_ms, _pct = fmt_ms, fmt_pct


def format_progress(step: Step) -> str:
    verdict = "ok" if step.passed else "FAIL: " + "; ".join(step.reasons)
    gw = f" gw CPU {_pct(step.gateway_cpu_pct)}%" if step.gateway_cpu_pct is not None else ""
    if step.proxy_cpu_pct is not None:
        gw = f" kamailio CPU {_pct(step.proxy_cpu_pct)}%"
    return (
        f"  [{step.setup}] {step.rate} cps: {step.successful}/{step.calls} ok, "
        f"p50/p99 {_ms(step.p50_ms)}/{_ms(step.p99_ms)} ms,{gw} {verdict}"
    )


# fmt: off
HEADER = ("rate", "achieved", "ok", "failed", "uas-fail", "retrans", "p50", "p99", "max",
          "gw CPU%", "kam CPU%", "uac CPU%", "uas CPU%", "other CPU%", "verdict")
# fmt: on


def table(result: dict[str, Any]) -> str:
    rows = [HEADER]
    for s in result["steps"]:
        # fmt: off
        rows.append((
            str(s["rate"]), f"{s['achieved_cps']:.1f}", str(s["successful"]), str(s["failed"]),
            str(s["uas_failed"]), str(s["retransmissions"]),
            _ms(s["p50_ms"]), _ms(s["p99_ms"]), _ms(s["max_ms"]),
            _pct(s["gateway_cpu_pct"]), _pct(s["proxy_cpu_pct"]),
            _pct(s["uac_cpu_pct"]), _pct(s["uas_cpu_pct"]),
            _pct(s["other_cpu_pct"]), "ok" if s["passed"] else "FAIL",
        ))
        # fmt: on
    # the gateway's table has no Kamailio CPU, Kamailio's no gateway CPU
    return render_table(rows, drop_empty=True)


def summary(
    gw: dict[str, Any], ss: dict[str, Any], args: argparse.Namespace, kam: dict[str, Any]
) -> list[str]:
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

    def ratio(label: str, reference: dict[str, Any]) -> str:
        if not reference["sustained_cps"]:
            return f"ratio gateway / {label}: n/a ({label} sustained no step)"
        value = gw["sustained_cps"] / reference["sustained_cps"]
        bound = "" if reference["limit_reached"] else f" (at most: {label} did not reach its limit)"
        return f"ratio gateway / {label}: {value:.3f}{bound}"

    ran = set(args.setup_list)
    lines = [
        line(label, result)
        for key, label, result in (
            ("gateway", "gateway", gw),
            ("kamailio", "kamailio", kam),
            ("sipp", "sipp->sipp", ss),
        )
        if key in ran
    ]
    if "gateway" in ran and "kamailio" in ran:
        lines.append(ratio("kamailio", kam))
    if "gateway" in ran and "sipp" in ran:
        lines.append(ratio("sipp->sipp", ss))
    return lines


# --------------------------------------------------------------------------- main


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
        "--setups",
        default="gateway,kamailio,sipp",
        help="which set-ups to run: gateway,kamailio,sipp (default all three; kamailio: udp only)",
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
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run that proves the bench works: rates {QUICK_RATES}, "
        f"{QUICK_STEP_SECONDS:g} s per step (overrides --rates and --step-seconds)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.step_seconds = QUICK_RATES, QUICK_STEP_SECONDS

    sipp = find_tool("sipp")
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
    if not setups or set(setups) - set(SETUPS):
        parser.error("--setups takes gateway, kamailio, sipp (comma-separated)")
    if args.transport == "tcp" and "kamailio" in setups:
        if args.setups != parser.get_default("setups"):
            parser.error("the kamailio set-up is udp only (kamailio-relay.cfg.tmpl)")
        setups.remove("kamailio")  # the default set, over TCP: without it
        print("(the kamailio set-up is udp only: left out over tcp)", flush=True)
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
        for setup in SETUPS:
            if setup in setups:
                name = SETUPS[setup]
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
    for setup in SETUPS:
        result = results[setup]
        if setup not in setups:
            continue
        label = {
            "gateway": "gateway (sipp uac -> gateway -> sipp uas)",
            "kamailio": "kamailio (sipp uac -> Kamailio tm relay -> sipp uas)",
            "sipp": "sipp->sipp (sipp uac -> sipp uas)",
        }[setup]
        print(f"{label}, {args.transport}; set-up times in ms (SIPp response time 1)")
        print(table(result))
        print()
    for setup in SETUPS:
        if results[setup]["diagnosis"]:
            print(results[setup]["diagnosis"])
            print()
    lines = summary(results["gateway"], results["sipp"], args, results["kamailio"])
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
            "kamailio": results["kamailio"],
            "sipp_sipp": results["sipp"],
            "summary": lines,
            "elapsed_s": round(elapsed, 1),
            "workdir": str(workdir),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
