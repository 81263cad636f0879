"""Run every benchmark with its defaults and print everything: what ``make bench`` does.

    1. bench/parse_bench.py     - SIP parse + serialise throughput, ours against sipmessage
    2. bench/cps_bench.py       - calls/s and call set-up latency: gateway against a Kamailio
                                  tm relay and sipp->sipp
    3. bench/presence_bench.py  - queued calls to 20 agents with presence published: MQTT
                                  off, on, and on with 20 subscribers, side by side
    4. bench/emergency_bench.py - 911 call set-up latency (INVITE in -> INVITE out), alone
                                  and under 400 ordinary calls/s, and with no, a fast and a
                                  slow (2 s per mail) SMTP server for the E-6 e-mails
    5. bench/overload_bench.py  - ordinary calls at 1x, 2x, 3x capacity with 911 calls from
                                  a registered agent and PSAP callbacks at 2/s (issue 10)
    6. bench/memory_bench.py    - RSS at start, under 20,000 calls at 500/s, 60 s after,
                                  and with 10,000 calls held (issue 10)
    7. bench/store_bench.py     - callback DID reservations on SQLite and Redis, with a
                                  saturated event loop and with Redis down
    8. bench/cluster_bench.py   - calls/s behind the Kamailio front: two nodes on Redis, one
                                  node, the front alone; then 911 at 2/s under 80 % load
    9. bench/instructions_bench.py - instructions per call under callgrind (the figure the
                                  machine's noise leaves alone; logs at INFO)

Each runs as its own process (``sys.executable``, the project root as working directory),
one after the other, so that they do not compete for the CPU. Extra arguments go to
cps_bench.py, e.g. ``bench/run_all.py --transport tcp --json cps.json``. The exit code is
the first non-zero exit code of a benchmark (a benchmark that ran and reported a low
figure still exits 0).

    .venv/bin/python bench/run_all.py [cps_bench.py options]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH.parent


def run(title: str, command: list[str]) -> int:
    print(f"==== {title}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    code = subprocess.run(command, cwd=PROJECT_ROOT, check=False).returncode
    print(f"==== {title}: exit {code}, {time.monotonic() - started:.0f} s\n", flush=True)
    return code


def main() -> int:
    python = sys.executable
    codes = [
        run("parse_bench", [python, str(BENCH / "parse_bench.py")]),
        run("cps_bench", [python, str(BENCH / "cps_bench.py"), *sys.argv[1:]]),
        run("presence_bench", [python, str(BENCH / "presence_bench.py")]),
        run("emergency_bench", [python, str(BENCH / "emergency_bench.py")]),
        run("overload_bench", [python, str(BENCH / "overload_bench.py")]),
        run("memory_bench", [python, str(BENCH / "memory_bench.py")]),
        run("store_bench", [python, str(BENCH / "store_bench.py")]),
        run("cluster_bench", [python, str(BENCH / "cluster_bench.py")]),
        run("instructions_bench", [python, str(BENCH / "instructions_bench.py")]),
    ]
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    raise SystemExit(main())
