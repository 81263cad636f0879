"""Two nodes' registrations and presence kept in step through a real redis-server (issue #12).

Each "node" here is what ``gateway.app`` builds for a shared store, in one process: its own
Redis client (``open_stores`` with the node's name), its outage guard, its presence and
registrar services and its :class:`~gateway.cluster.ClusterSync`. What one node writes must
reach the other's caches within a second, silently (published once, by the writer); expiry
must be acted on by one node; an emergency call on one node must hold DND on the other
while that node lives, and the status chosen meanwhile on the other must be the one
restored (E-5); a Redis outage pauses the sync and the resync heals it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.presence.state import Status
from gateway.sip.address import Address
from gateway.stores import Binding, PresenceRecord, open_stores
from testkit.cluster import ClusterNode as Node
from testkit.cluster import cluster_node
from testkit.processes import HarnessError
from testkit.redisserver import RedisServer

pytestmark = pytest.mark.loopback

AGENTS = ("alice", "bob")
FRONT = "udp:127.0.0.1:5060"  # behind the front, every binding's source is the front


@contextlib.asynccontextmanager
async def running_node(
    server: RedisServer, tmp_path: Path, name: str, *, node_lost_s: float = 5.0
) -> AsyncIterator[Node]:
    async with cluster_node(server.url, tmp_path, name, AGENTS, node_lost_s=node_lost_s) as node:
        yield node


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path / "redis")
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.resume()
        server.stop()


async def eventually(what: str, check: Callable[[], bool], timeout: float = 3.0) -> float:
    """Seconds until ``check()`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
    return time.monotonic() - start


def binding(agent: str, port: int, expires_in: float) -> Binding:
    return Binding(
        agent, f"sip:{agent}@127.0.0.1:{port}", time.time() + expires_in, "c", 1, FRONT, "ua"
    )


async def seed(server: RedisServer, tmp_path: Path, *bindings: Binding) -> None:
    """Bindings registered before the nodes start (each loads them)."""
    async with await open_stores(server.url, tmp_path / "seed", timeout=5.0) as stores:
        for item in bindings:
            await stores.registrations.put(item)


def shows(node: Node, status: Status) -> Callable[[], bool]:
    return lambda: node.presence.status("alice") is status


def available(a: Node, b: Node, agent: str) -> bool:
    return a.presence.status(agent) is b.presence.status(agent) is Status.AVAILABLE


async def subscribed(*nodes: Node) -> None:
    await eventually("subscribed", lambda: all(n.sync.resyncs >= 1 for n in nodes))


async def test_a_registration_on_one_node_identifies_the_agent_on_the_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        running_node(redis_server, tmp_path, "gw1") as a,
        running_node(redis_server, tmp_path, "gw2") as b,
    ):
        await subscribed(a, b)
        front = Address("udp", "127.0.0.1", 5060)
        assert b.registrar.agent_at(front) is None
        # what gw1's registrar writer does after a REGISTER it accepted
        await a.guard.stores.registrations.put(binding("alice", 7001, 60))
        took = await eventually("gw2 knows", lambda: b.registrar.agent_at(front) == "alice")
        assert took < 1.0  # by the announcement, not by the resync
        assert [c.contact_uri for c in b.registrar.contacts("alice")] == [
            "sip:alice@127.0.0.1:7001"
        ]
        assert b.presence.status("alice") is Status.AVAILABLE
        assert b.publisher.statuses("alice") == []  # silently: gw1 handled it
        # gone on gw1 (an un-REGISTER there): gone on gw2 too, silently
        await a.guard.stores.registrations.remove("alice", "sip:alice@127.0.0.1:7001")
        await eventually("gw2 forgets", lambda: b.registrar.agent_at(front) is None)
        assert b.presence.status("alice") is Status.OFFLINE
        assert b.publisher.statuses("alice") == []


async def test_a_presence_change_on_one_node_is_seen_on_the_other_and_published_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    await seed(redis_server, tmp_path, binding("bob", 7002, 60))
    async with (
        running_node(redis_server, tmp_path, "gw1") as a,
        running_node(redis_server, tmp_path, "gw2") as b,
    ):
        await subscribed(a, b)
        await eventually("bob registered on both", lambda: available(a, b, "bob"))
        before_a, before_b = len(a.publisher.published), len(b.publisher.published)
        assert a.presence.choose("bob", Status.AWAY)
        await eventually("gw2 sees Away", lambda: b.presence.status("bob") is Status.AWAY)
        await asyncio.sleep(0.7)  # a resync too: still nothing published on gw2
        assert a.publisher.statuses("bob")[-1:] == ["Away"]
        assert len(a.publisher.published) == before_a + 1
        assert len(b.publisher.published) == before_b


async def test_an_emergency_call_on_one_node_holds_dnd_on_the_other_and_e5_restores_its_choice(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    await seed(redis_server, tmp_path, binding("alice", 7001, 60))
    async with (
        running_node(redis_server, tmp_path, "gw1") as a,
        running_node(redis_server, tmp_path, "gw2") as b,
    ):
        await subscribed(a, b)
        await eventually("registered", lambda: b.presence.status("alice") is Status.AVAILABLE)
        a.presence.emergency_started("alice")  # the 911 call is on gw1
        await eventually("DND on gw2", lambda: b.presence.status("alice") is Status.DND)
        assert b.presence.emergency_elsewhere("alice") == "gw1"  # E-8 on gw2 keys on it
        # her desktop asks for Away during the call; gw2 takes it (no change shown: DND)
        assert b.presence.choose("alice", Status.AWAY)
        agent = a.presence.agents["alice"]
        await eventually("gw1 knows the choice", lambda: agent.chosen is Status.AWAY)
        assert a.presence.status("alice") is Status.DND
        a.presence.emergency_ended("alice")
        assert a.presence.status("alice") is Status.AWAY  # E-5: the status asked for meanwhile
        await eventually("gw2 restored", lambda: b.presence.status("alice") is Status.AWAY)
        assert b.presence.emergency_elsewhere("alice") is None
        assert a.publisher.statuses("alice")[-2:] == ["DoNotDisturb", "Away"]
        assert "DoNotDisturb" not in b.publisher.statuses("alice")
        assert b.publisher.statuses("alice") == []


async def test_a_crashed_nodes_emergency_call_leaves_no_dnd_behind_said_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    await seed(redis_server, tmp_path, binding("alice", 7001, 60))
    async with (
        running_node(redis_server, tmp_path, "gw2", node_lost_s=1.0) as b,
        running_node(redis_server, tmp_path, "gw3", node_lost_s=1.0) as c,
    ):
        async with running_node(redis_server, tmp_path, "gw1") as a:
            await subscribed(a, b, c)
            a.presence.emergency_started("alice")
            for node in (b, c):
                await eventually("DND", shows(node, Status.DND))
            # gw1 stops here without ending the call: its heartbeat stops (a crash)
        # gw1's record still names its call; gw1 is silent, so the call is over (E-5),
        # and one of the survivors says so on MQTT (the retained DND was gw1's)
        for node in (b, c):
            await eventually("DND gone", shows(node, Status.AVAILABLE), 5.0)
        await eventually(
            "said", lambda: bool(b.publisher.statuses("alice") + c.publisher.statuses("alice")), 3.0
        )
        await asyncio.sleep(1.0)  # a second node's word would be here by now
        said = b.publisher.statuses("alice") + c.publisher.statuses("alice")
        assert said == ["Available"]
    # gw1 restarts: its record of the lost call is rewritten, so nobody shows DND again
    async with (
        running_node(redis_server, tmp_path, "gw1") as a,
        running_node(redis_server, tmp_path, "gw2") as b,
    ):
        await subscribed(a, b)
        await asyncio.sleep(0.6)
        assert a.presence.status("alice") is b.presence.status("alice") is Status.AVAILABLE


async def test_expiry_is_acted_on_by_one_node_only(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    await seed(redis_server, tmp_path, binding("alice", 7001, 2.5))
    async with (
        running_node(redis_server, tmp_path, "gw1") as a,
        running_node(redis_server, tmp_path, "gw2") as b,
    ):
        await subscribed(a, b)
        await eventually("registered on both", lambda: available(a, b, "alice"))
        await eventually(
            "Offline on both",
            lambda: (
                a.presence.status("alice") is Status.OFFLINE
                and b.presence.status("alice") is Status.OFFLINE
            ),
            6.0,
        )
        await asyncio.sleep(0.7)
        offline = a.publisher.statuses("alice") + b.publisher.statuses("alice")
        assert offline.count("Offline") == 1, (a.publisher.published, b.publisher.published)


async def test_a_redis_outage_pauses_the_sync_and_the_resync_heals_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    await seed(redis_server, tmp_path, binding("alice", 7001, 60))
    async with (
        running_node(redis_server, tmp_path, "gw1") as a,
        running_node(redis_server, tmp_path, "gw2") as b,
    ):
        await subscribed(a, b)
        await eventually("registered", lambda: b.presence.status("alice") is Status.AVAILABLE)
        redis_server.pause()
        # gw1 takes a desktop command while Redis is frozen: it publishes at once and
        # journals the write; nothing waits
        started = time.monotonic()
        assert a.presence.choose("alice", Status.AWAY)
        assert time.monotonic() - started < 0.05
        await eventually("gw1 sees the outage", lambda: not a.guard.up, 3.0)
        await eventually("gw2 sees the outage", lambda: not b.guard.up, 3.0)
        assert b.presence.status("alice") is Status.AVAILABLE  # not yet: Redis is down
        redis_server.resume()
        await eventually("gw2 healed", lambda: b.presence.status("alice") is Status.AWAY, 10.0)
        assert b.publisher.statuses("alice") == []


async def test_after_redis_restarts_the_announcements_flow_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        running_node(redis_server, tmp_path, "gw1") as a,
        running_node(redis_server, tmp_path, "gw2") as b,
    ):
        await subscribed(a, b)
        redis_server.stop()  # connections refused: the subscription is lost
        await eventually("gw2 sees the outage", lambda: not b.guard.up, 5.0)
        redis_server.run()  # back (empty: no persistence here)
        # each pooled connection of the old server fails once more (a short outage each,
        # and what it was reading is left to the resync): try a few writes
        for attempt in range(6):
            await eventually("both up", lambda: a.guard.up and b.guard.up, 10.0)
            heard = b.sync.applied
            await a.guard.stores.registrations.put(binding("alice", 7001 + attempt, 60))
            try:
                await eventually("announced again", lambda: b.sync.applied > heard, 1.0)  # noqa: B023
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("no announcement reached gw2 after Redis restarted")
        assert b.registrar.agent_at(Address("udp", "127.0.0.1", 5060)) == "alice"


async def test_an_older_presence_record_never_replaces_a_newer_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """What an outage's replay relies on: gw2's journaled record (older) arrives after gw1
    wrote a later change; the later one stays."""
    async with await open_stores(redis_server.url, tmp_path / "w", timeout=5, node="gw1") as w:
        newer = PresenceRecord("alice", "Away", "Away", "Available", "desktop", 2000.0)
        older = PresenceRecord("alice", "Available", "Available", None, "call_ended", 1000.0)
        await w.presence.put(newer)
        await w.presence.put(older)
        assert await w.presence.get("alice") == newer
        later = PresenceRecord("alice", "Available", "Available", "Away", "desktop", 3000.0)
        await w.presence.put(later)
        assert await w.presence.get("alice") == later
