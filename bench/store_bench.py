"""Callback DID reservations per second and their latency: SQLite, Redis, two nodes on Redis.

What is measured: ``ReservationStore.reserve`` with the real policy
(:func:`gateway.emergency.reservations.choose_callback_did`) as the emergency service calls
it, ``--concurrency`` callers at a time for ``--seconds``, on

* ``sqlite``: the embedded store, a file in a temporary directory, as the command-line
  tools open it (each choice a transaction in the store's worker thread);
* ``sqlite-node``: the same file as a running node owns it (chosen in memory, written
  behind: :class:`gateway.stores.sqlite.SqliteReservationStore`);
* ``redis``: one node on a redis-server started here (WATCH/EXEC, one choice at a time);
* ``redis-2``: two nodes (two clients) on the same server, the callers split between them,
  so that EXEC conflicts and retries happen as in a cluster;
* ``outage``: the outage guard over a frozen Redis (SIGSTOP) once it has seen the outage,
  i.e. what an emergency call pays while Redis is down.

Then ``busy loop``: the two SQLite rows again, one reservation every 5 ms, while the event
loop (uvloop, as the gateway runs) is saturated by other work, as under overload. There the
worker thread can starve for the GIL, and the thread row's maximum shows it.

Each agent calls once per round, so renewals and takeovers both occur (the pool is smaller
than the agents). Prints reservations/s and p50/p99/max latency in ms. The figures are the
reference for issue #12; the machine is shared, so compare rows of one run.

    .venv/bin/python bench/store_bench.py [--seconds 3] [--concurrency 10] [--pool 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.emergency.reservations import choose_callback_did
from gateway.logs import configure_logging
from gateway.stores import Stores, open_stores
from gateway.stores.outage import OutageGuard
from testkit.redisserver import RedisServer


async def drive(nodes: list[Stores], seconds: float, concurrency: int, pool: list[str]) -> str:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    agents = [f"agent-{n}" for n in range(len(pool) * 2)]

    async def caller(index: int) -> None:
        node = nodes[index % len(nodes)]
        turn = 0
        while time.perf_counter() < deadline:
            agent = agents[(index + turn * concurrency) % len(agents)]
            turn += 1
            started = time.perf_counter()
            await node.reservations.reserve(
                agent, pool, time.time(), 3600, f"c-{index}-{turn}", False,
                choose=choose_callback_did,
            )  # fmt: skip
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - began
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{len(ms) / elapsed:9.0f}/s  p50 {statistics.median(ms):6.2f} ms  "
        f"p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms  ({len(ms)} reservations)"
    )


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "ERROR")  # the outage row would log every reservation
    pool = [f"+1555000{n:04d}" for n in range(args.pool)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = RedisServer.start(root / "redis")
        try:
            async with await open_stores("sqlite", root / "sqlite") as sqlite:
                print("sqlite   ", await drive([sqlite], args.seconds, args.concurrency, pool))
            node = await open_stores("sqlite", root / "sqlite-node", exclusive=True)
            async with node:
                print("sqlite-node", await drive([node], args.seconds, args.concurrency, pool))
            async with await open_stores(server.url, root / "r1", timeout=1.0) as one:
                print("redis    ", await drive([one], args.seconds, args.concurrency, pool))
            first = await open_stores(server.url, root / "n1", timeout=1.0)
            second = await open_stores(server.url, root / "n2", timeout=1.0)
            async with first, second:
                two = [first, second]
                print("redis-2  ", await drive(two, args.seconds, args.concurrency, pool))
            shared = await open_stores(server.url, root / "g", timeout=0.2)
            async with OutageGuard(shared, outage_dids=pool[:3], timeout=0.2) as guard:
                server.pause()
                await guard.stores.reservations.reserve(
                    "first", pool, time.time(), 3600, "c", False, choose=choose_callback_did
                )  # this one sees the outage (0.2 s); the rest do not wait
                print(
                    "outage   ",
                    await drive([guard.stores], args.seconds, args.concurrency, pool),
                )
        finally:
            server.resume()
            server.stop()


def saturate(stop: asyncio.Event) -> None:
    """Keep the running loop busy: four callbacks of 0.3 ms of Python each, back to back."""
    loop = asyncio.get_running_loop()

    def work() -> None:
        began = time.perf_counter()
        while time.perf_counter() - began < 0.0003:
            pass
        if not stop.is_set():
            loop.call_soon(work)

    for _ in range(4):
        loop.call_soon(work)


async def busy(exclusive: bool, seconds: float, pool: list[str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        async with await open_stores("sqlite", Path(tmp), exclusive=exclusive) as stores:
            stop = asyncio.Event()
            saturate(stop)
            latencies: list[float] = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                agent = f"agent-{len(latencies) % 10}"
                await stores.reservations.reserve(
                    agent, pool, time.time(), 3600, "c", False, choose=choose_callback_did
                )
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)
            stop.set()
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"p50 {statistics.median(ms):7.2f} ms  p99 {p99:8.2f} ms  max {ms[-1]:8.2f} ms  ({len(ms)})"
    )


def busy_rows(seconds: float, pool: list[str]) -> None:
    import uvloop

    print(f"busy loop (uvloop saturated, {seconds:.0f} s each):")
    print("  sqlite      ", uvloop.run(busy(False, seconds, pool)))
    print("  sqlite-node ", uvloop.run(busy(True, seconds, pool)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--busy-seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments))
    busy_rows(arguments.busy_seconds, [f"+1555000{n:04d}" for n in range(arguments.pool)])
