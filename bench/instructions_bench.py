"""Instructions per call: the gateway under callgrind, a count the machine's noise leaves alone.

The CPU-seconds figures of the other benches move by 10-20 % from one run to the next on a
shared 2-core VM. ``valgrind --tool=callgrind`` counts the instructions the gateway
executes instead: the same code, calls and settings give the same count within a fraction
of a percent, whatever else the machine is doing. It is the A/B test of a change to the
call path: run it on two trees (``--tree`` twice, e.g. a ``git worktree`` of the previous
commit beside this one) and compare.

For each tree, two runs of a fresh gateway under callgrind, the same length:

    idle     the gateway starts, waits ``calls / rate`` seconds, stops (SIGTERM)
    calls    the same, while ``sipp uac -> gateway -> sipp uas`` places ``--calls`` calls
             at ``--rate`` calls/s (``bench/scenarios/uac_rtd.xml`` / ``uas_rtd.xml``,
             0-second calls, as in ``cps_bench.py``)

instructions per call = (calls run - idle run) / calls. Start-up, shutdown and the timers
of an idle node cancel out; what is left is what the calls cost, their transactions'
timers included. The rate is low (5 calls/s) because the gateway runs 50-100 times slower
under callgrind. The gateway runs as ``gateway run`` does (the C allocator:
``PYTHONMALLOC=malloc``, set here so that it does not re-execute itself), with the
embedded MQTT broker, JSON logs at ``--log-level`` (INFO, the default of ``make run``).

    .venv/bin/python bench/instructions_bench.py [--tree PATH ...] [--calls 100]
        [--rate 5] [--log-level INFO] [--gateway-env KEY=VALUE ...] [--quick]

About 2.5 minutes per tree at the defaults on a 2-core VM (most of it the gateway's
start-up under callgrind, twice).

A tree other than this one needs the compiled parser (``gateway/sip/*.so`` and
``_native.json``, e.g. copied from this tree when the parser sources are the same).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run as `python bench/instructions_bench.py`: the project root holds testkit/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.processes import LOOPBACK, HarnessError, free_port, start_gateway
from testkit.sipp import Sipp

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "bench" / "scenarios"
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 300.0

DIALPLAN = """\
version: 1
node: {{ name: instructions-bench }}
listen:
  - {{ transport: udp, host: {host}, port: {port} }}
trunks:
  carrier:
    gateways:
      - {{ host: {host}, port: {uas_port}, transport: udp }}
registrar:
  unauthenticated_outbound_from: ["{host}/32"]
outbound:
  - {{ name: catch-all, match: '.*', trunk: carrier }}
"""


def run_once(
    tree: Path, workdir: Path, calls: int, args: argparse.Namespace, extra: dict[str, str]
) -> int:
    """Instructions the gateway of ``tree`` executed, start to stop, with ``calls`` calls
    at ``args.rate`` (0: idle for as long as ``args.calls`` calls take)."""
    port, uas_port = free_port(), free_port()
    out = workdir / "callgrind.out"
    env = {
        "PYTHONMALLOC": "malloc",  # as `gateway run` re-executes itself, without the exec
        "GATEWAY_LOG_LEVEL": args.log_level,
        "GATEWAY_MQTT_EMBEDDED_PORT": str(free_port()),
        **extra,
    }
    try:
        gateway = start_gateway(
            DIALPLAN.format(host=LOOPBACK, port=port, uas_port=uas_port),
            workdir,
            listen_port=port,
            env=env,
            ready_timeout=READY_TIMEOUT_S,
            wrapper=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
            cwd=tree,
        )
    except HarnessError as exc:
        raise SystemExit(f"gateway under callgrind did not start:\n{exc}") from None
    try:
        seconds = args.calls / args.rate
        if calls:
            sipp = Sipp(workdir / "sipp", host=LOOPBACK)
            uas = sipp.uas(SCENARIOS / "uas_rtd.xml", uas_port, calls=calls, timeout=seconds + 60)
            uac = sipp.uac(
                SCENARIOS / "uac_rtd.xml",
                gateway.address,
                calls,
                args.rate,
                timeout=seconds + 60,
            )
            uas.wait(10.0)
            if uac.successful_calls != calls:
                raise SystemExit(
                    f"{uac.successful_calls} of {calls} calls succeeded: see {workdir}"
                )
        else:
            time.sleep(seconds)
    finally:
        gateway.stop(timeout=STOP_TIMEOUT_S)
    match = re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no callgrind summary in {out}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="default: this tree")
    parser.add_argument("--calls", type=int, default=100, help="at least 1")
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--quick", action="store_true", help="10 calls: proves it works")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 10
    if args.calls < 1 or args.rate <= 0:
        parser.error("--calls must be at least 1 and --rate positive")
    for tool in ("valgrind", "sipp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make deps installs it)")
    extra = dict(item.split("=", 1) for item in args.gateway_env)
    trees = [path.resolve() for path in (args.tree or [ROOT])]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="instructions-bench-"))
    print(
        f"instructions bench: {args.calls} calls at {args.rate:g} calls/s, logs at "
        f"{args.log_level}, callgrind; files in {workdir}",
        flush=True,
    )
    rows = []
    for index, tree in enumerate(trees):
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        label = f"{tree.name} ({head}{' + changes' if dirty else ''})"
        idle = run_once(tree, workdir / f"{index}-idle", 0, args, extra)
        busy = run_once(tree, workdir / f"{index}-calls", args.calls, args, extra)
        per_call = (busy - idle) / args.calls
        rows.append((label, idle, busy, per_call))
        print(f"{label}: idle {idle:,}  with calls {busy:,}  per call {per_call:,.0f}", flush=True)
    print()
    print("| tree | idle run | calls run | instructions per call | vs first |")
    print("|---|---|---|---|---|")
    for label, idle, busy, per_call in rows:
        print(f"| {label} | {idle:,} | {busy:,} | {per_call:,.0f} | {per_call / rows[0][3]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
