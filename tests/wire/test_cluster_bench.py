"""The cluster bench's set-ups work (issue #12): calls through a record-routing Kamailio
complete on both SIPp sides, and ``bench/cluster_bench.py`` runs every column and the
emergency run end to end.

These check that calls complete and are counted, never how fast: speed is the bench's to
print (its p99 pass rule is left out here on purpose, the shared box decides it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import PROJECT_ROOT, Sipp, free_port

from testkit.kamailio import start_relay

BENCH_SCENARIOS = PROJECT_ROOT / "bench" / "scenarios"


def test_bench_calls_complete_through_a_record_routing_relay(sipp: Sipp, tmp_path: Path) -> None:
    # the relay record-routes: the uas must copy Record-Route so that the uac's ACK and
    # BYE come back through it (before, every BYE got the relay's 404 "Not here")
    calls = 200
    uas = sipp.uas(BENCH_SCENARIOS / "uas_rtd.xml", calls=calls, timeout=30, max_recv_loops=1000)
    relay = start_relay(tmp_path / "relay", free_port(), uas.address)
    try:
        result = sipp.uac(
            BENCH_SCENARIOS / "uac_rtd.xml",
            relay.address,
            calls,
            100,
            timeout=20,
            recv_timeout=5,
            max_recv_loops=1000,
        )
        assert result.successful_calls == calls, result.describe()
        assert result.failed_calls == 0, result.describe()
        served = uas.wait()
        assert served.successful_calls == calls and served.failed_calls == 0, served.describe()
    finally:
        relay.stop()
    assert "Not here" not in relay.log_tail(1000)


def test_the_cluster_bench_runs_every_column_and_the_emergency_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable, str(PROJECT_ROOT / "bench" / "cluster_bench.py"),
        "--rates", "40", "--step-seconds", "1", "--columns", "two,one,kamailio",
        "--emergency-seconds", "1", "--load-rate", "20",
        "--json", str(out), "--workdir", str(tmp_path / "run"),
    ]  # fmt: skip
    run = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=150, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    for column in ("two", "one", "kamailio"):
        (step,) = figures["columns"][column]["steps"]
        assert step["calls"] == 40
        assert (step["successful"], step["failed"], step["uas_failed"]) == (40, 0, 0), column
        assert step["p99_ms"] is not None
    # both nodes took calls in the two-node column (the front hashes Call-IDs over them),
    # one node's CPU is read in the one-node column, none in the front-only column
    two = figures["columns"]["two"]["steps"][0]["node_cpu_pct"]
    assert len(two) == 2 and all(cpu is not None and cpu > 0 for cpu in two)
    assert len(figures["columns"]["one"]["steps"][0]["node_cpu_pct"]) == 1
    assert figures["columns"]["kamailio"]["steps"][0]["node_cpu_pct"] == []
    emergency = figures["emergency"]
    assert emergency["emergency_calls"] == 2
    assert (emergency["emergency_ok"], emergency["emergency_failed"]) == (2, 0), emergency
    assert (emergency["sbc_ok"], emergency["sbc_failed"]) == (2, 0), emergency
    assert emergency["load_calls"] == 100 and emergency["load_ok"] > 0
    assert emergency["emergency_p99_ms"] is not None
    assert any("sustained" in line for line in figures["summary"])
