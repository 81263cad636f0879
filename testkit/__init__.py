"""The harness shared by the wire tests (tests/wire) and the benchmarks (bench/).

Both put real peers around the gateway on loopback - SIPp, the gateway itself as a
process, Kamailio, Mosquitto - and need the same pieces: find a tool, pick free ports,
tell when a process has bound its port, start the gateway on a dialplan and wait until it
answers OPTIONS, run SIPp bounded in time and read back its statistics.

    processes   tools, ports, /proc readings (CPU, RSS), ``Child`` (a process whose CPU
                time is known when it ends), ``start_gateway`` / ``GatewayProcess``
    sipp        ``Sipp``: SIPp runs, each bounded by ``-m`` and ``-timeout``, with their
                trace files; ``SippResult``; readers for SIPp's statistics and rtt CSVs
    redisserver ``RedisServer``: a redis-server on a free loopback port (stores, cluster)
    kamailio    Kamailio for the benchmarks: the cluster front (``cluster.cfg``) before
                given destinations, or the tm relay; its CPU with its workers'
    ladder      the benchmarks' rising-rate steps: one step's figures (``LadderStep``),
                CPU over a step (``CpuMeter``), the pass rule, the rate ladder, tables

Why a package of its own at the project root: neither consumer owns it. It must not
import pytest (the benchmarks run without it), so a failure is a ``HarnessError``; the
wire tests' conftest turns one into a clean ``pytest.fail``. It is not part of the
installed ``gateway`` distribution (setuptools includes ``gateway*`` only). Wire tests
find it through pytest's ``pythonpath`` (pyproject.toml); a benchmark run as
``python bench/x.py`` puts the project root on ``sys.path`` first.
"""
