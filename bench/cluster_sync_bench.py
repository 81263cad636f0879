"""How fast one node's registrations and presence reach another node, and what the full
resync costs (issue #12: "within well under a second").

Two cluster nodes (:func:`testkit.cluster.cluster_node`: each its own Redis client, outage
guard, presence and registrar services and :class:`gateway.cluster.ClusterSync`) share a
redis-server started here, with ``--agents`` agents. Measured:

* ``registration``: node 1 writes a binding (what its registrar's writer does after a
  REGISTER); time until node 2's identity index names the agent. ``--changes`` times.
* ``presence``: node 1 takes a desktop command; time until node 2 shows the status.
* ``resync``: node 2's full resync with every agent registered (all bindings and all
  presence records read and applied), its duration, and the longest the event loop was
  held meanwhile (a 1 ms ticker's worst lateness): what the calls on that node can wait.
  A full garbage collection that falls inside a round shows there too (the count is
  printed; the gateway paces those itself, ``gateway/gcpolicy.py``, this bench does not).

Prints p50/p99/max in ms. The machine is shared: the figures are provisional, compare rows
of one run.

    .venv/bin/python bench/cluster_sync_bench.py [--agents 1000] [--changes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.logs import configure_logging
from gateway.presence.state import Status
from gateway.sip.address import Address
from gateway.stores import Binding
from testkit.cluster import ClusterNode, cluster_node
from testkit.redisserver import RedisServer

SOURCE_HOST = "127.0.0.1"


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{name:<14} n={len(samples):<5} p50={statistics.median(ordered) * 1000:7.2f} ms  "
        f"p99={p99 * 1000:7.2f} ms  max={ordered[-1] * 1000:7.2f} ms"
    )


async def until(check: object, timeout: float = 5.0) -> float:
    start = time.perf_counter()
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0)
    return time.perf_counter() - start


async def registrations(a: ClusterNode, b: ClusterNode, agents: list[str], count: int) -> str:
    samples = []
    for n in range(count):
        agent = agents[n % len(agents)]
        port = 10000 + n
        binding = Binding(
            agent, f"sip:{agent}@h:{port}", time.time() + 600, "c", 1,
            f"udp:{SOURCE_HOST}:{port}", "bench",
        )  # fmt: skip
        source = Address("udp", SOURCE_HOST, port)
        start = time.perf_counter()
        await a.guard.stores.registrations.put(binding)
        await until(lambda: b.registrar.agent_at(source) == agent)  # noqa: B023
        samples.append(time.perf_counter() - start)
    return row("registration", samples)


async def presence(a: ClusterNode, b: ClusterNode, agents: list[str], count: int) -> str:
    samples = []
    for n in range(count):
        agent = agents[n % len(agents)]
        status = (
            Status.AWAY if b.presence.agents[agent].chosen is not Status.AWAY else Status.AVAILABLE
        )
        start = time.perf_counter()
        a.presence.choose(agent, status)
        await until(lambda: b.presence.agents[agent].chosen is status)  # noqa: B023
        samples.append(time.perf_counter() - start)
    return row("presence", samples)


async def resync(b: ClusterNode, rounds: int) -> list[str]:
    durations: list[float] = []
    worst_lateness = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst_lateness
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.001)
            worst_lateness = max(worst_lateness, loop.time() - before - 0.001)

    tick = asyncio.create_task(ticker())
    full_collections = gc.get_stats()[2]["collections"]
    for _ in range(rounds):
        start = time.perf_counter()
        await b.sync.resync()
        durations.append(time.perf_counter() - start)
    stop.set()
    await tick
    full_collections = gc.get_stats()[2]["collections"] - full_collections
    return [
        row("resync", durations),
        f"{'loop held':<14} max={worst_lateness * 1000:7.2f} ms "
        f"(full GC passes meanwhile: {full_collections})",
    ]


async def main(args: argparse.Namespace) -> None:
    agents = [f"agent-{n}" for n in range(args.agents)]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer.start(Path(tmp) / "redis")
        try:
            async with (
                cluster_node(server.url, Path(tmp), "gw1", agents, resync_interval=3600) as a,
                cluster_node(server.url, Path(tmp), "gw2", agents, resync_interval=3600) as b,
            ):
                await until(lambda: a.sync.resyncs >= 1 and b.sync.resyncs >= 1)
                print(f"agents={args.agents} (periodic resync off while measuring)")
                print(await registrations(a, b, agents, args.changes))
                print(await presence(a, b, agents, args.changes))
                for agent in agents:  # every agent registered: the resync's worst case
                    binding = Binding(
                        agent, f"sip:{agent}@h", time.time() + 600, "c", 1,
                        f"udp:{SOURCE_HOST}:5060", "bench",
                    )  # fmt: skip
                    await a.guard.stores.registrations.put(binding)
                for line in await resync(b, args.rounds):
                    print(line)
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    configure_logging("console", "ERROR")  # "registrations_synced" per change otherwise
    asyncio.run(main(parser.parse_args()))
