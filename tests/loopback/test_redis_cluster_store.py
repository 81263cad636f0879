"""The Redis store as two nodes use it, on a real redis-server (issue #12).

Two ``open_stores`` on one server have two clients and two connection pools, which is what
two gateway nodes have. The DID race must never give one DID to two agents; an outage
(the server stopped, or frozen with SIGSTOP so that it accepts and never answers) must give
an emergency call a DID from the node's outage share without waiting, and the writes made
meanwhile reach Redis when it is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import redis.asyncio as aioredis

from gateway.cluster import store_health_payload
from gateway.config.loader import load_dialplan_text
from gateway.emergency.reservations import choose_callback_did
from gateway.emergency.service import EmergencyCall, EmergencyService
from gateway.events.ports import Topics
from gateway.presence.service import PresenceService
from gateway.stores import Binding, PresenceRecord, Stores, StoreUnavailableError, open_stores
from gateway.stores.outage import OutageGuard, StoreHealth
from testkit.processes import HarnessError
from testkit.redisserver import RedisSentinel, RedisServer

pytestmark = pytest.mark.loopback

NOW = 1_700_000_000.0
TTL = 3600.0
POOL = ["+15550000001", "+15550000002", "+15550000003"]
OUTAGE_SHARE = ["+15550009001", "+15550009002"]
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "docs" / "schemas" / "node-store.v1.json").read_text()
)


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


@pytest.fixture
async def two_nodes(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[list[Stores]]:
    nodes = [
        await open_stores(redis_server.url, tmp_path / f"node-{n}", timeout=5.0) for n in (1, 2)
    ]
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.close()


async def test_two_nodes_racing_for_three_dids_never_give_one_to_two_agents(
    two_nodes: list[Stores],
) -> None:
    agents = [f"agent-{n}" for n in range(10)]
    for round_number in range(5):  # several rounds: a lucky ordering proves nothing
        now = NOW + round_number * 10 * TTL  # every earlier reservation has expired
        results = await asyncio.gather(
            *(
                two_nodes[n % 2].reservations.reserve(
                    agent, POOL, now, TTL, f"call-{round_number}-{n}", False,
                    choose=choose_callback_did,
                )
                for n, agent in enumerate(agents)
            )
        )  # fmt: skip
        granted_free = [r.did for r, taken_over in results if not taken_over]
        # Three agents got a free DID, each a different one; the seven others took one over
        # (SPEC E-4: the least recently reserved), which the event reports.
        assert sorted(granted_free) == POOL, round_number
        assert sum(taken_over for _, taken_over in results) == len(agents) - len(POOL)
        # Each DID has one holder inside the window, as both nodes see it.
        for node in two_nodes:
            live = await node.reservations.live(now)
            assert sorted(r.did for r in live) == POOL
            assert len({r.agent_id for r in live}) == len(POOL)
        holders = Counter(r.did for r, _ in results)
        assert all(holders[did] >= 1 for did in POOL)


async def test_an_agent_renews_her_did_whichever_node_she_calls_through(
    two_nodes: list[Stores],
) -> None:
    first, _ = await two_nodes[0].reservations.reserve(
        "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    again, taken_over = await two_nodes[1].reservations.reserve(
        "alice", POOL, NOW + 60, TTL, "c2", False, choose=choose_callback_did
    )
    assert (again.did, taken_over) == (first.did, False)
    assert await two_nodes[0].reservations.lookup(first.did, NOW + 61) == again


def presence(agent: str, status: str, at: float) -> PresenceRecord:
    return PresenceRecord(agent, status, status, None, "desktop", at)


class Health:
    def __init__(self) -> None:
        self.seen: list[StoreHealth] = []

    def __call__(self, health: StoreHealth) -> None:
        jsonschema.validate(store_health_payload("gw1", health), SCHEMA)
        self.seen.append(health)

    async def wait_up(self) -> None:
        async with asyncio.timeout(20):
            while not (self.seen and self.seen[-1].up):
                await asyncio.sleep(0.02)


async def guarded(
    server: RedisServer, tmp_path: Path, health: Health, timeout: float = 0.2
) -> OutageGuard:
    shared = await open_stores(server.url, tmp_path / "guarded", timeout=timeout)
    guard = OutageGuard(
        shared, outage_dids=OUTAGE_SHARE, timeout=timeout, probe_interval=0.05, on_change=health
    )
    return await guard.__aenter__()


async def test_a_frozen_redis_costs_one_timeout_then_dids_come_from_the_outage_share(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    health = Health()
    guard = await guarded(redis_server, tmp_path, health, timeout=1.0)
    try:
        stores = guard.stores
        before, _ = await stores.reservations.reserve(
            "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
        )
        assert before.did == POOL[0]
        redis_server.pause()  # accepts, never answers
        # The first call meets the outage: it waits one store timeout, then gets a DID of
        # this node's share; the next ones do not wait for Redis at all.
        during, _ = await stores.reservations.reserve(
            "bob", POOL, NOW + 1, TTL, "c2", False, choose=choose_callback_did
        )
        assert during.did == OUTAGE_SHARE[0]
        assert not guard.up and health.seen[-1].outages == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        carol, _ = await stores.reservations.reserve(
            "carol", POOL, NOW + 2, TTL, "c3", False, choose=choose_callback_did
        )
        # with Redis frozen, anything that touched it would take the whole 1 s timeout
        assert loop.time() - started < 0.5
        assert carol.did == OUTAGE_SHARE[1]
        await stores.presence.put(presence("bob", "Away", NOW + 3))
        assert guard.health.pending == 3
        assert await stores.reservations.lookup(during.did, NOW + 4) == during
        redis_server.resume()
        await health.wait_up()
    finally:
        await guard.close()
    # Another node sees what was written during the outage.
    async with await open_stores(redis_server.url, tmp_path / "other", timeout=5) as other:
        assert await other.reservations.lookup(during.did, NOW + 5) == during
        assert await other.presence.get("bob") == presence("bob", "Away", NOW + 3)
        assert await other.reservations.lookup(before.did, NOW + 5) == before


async def test_a_stopped_redis_reconciles_into_the_restarted_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    health = Health()
    guard = await guarded(redis_server, tmp_path, health)
    try:
        redis_server.stop()  # connection refused
        taken, _ = await guard.stores.reservations.reserve(
            "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
        )
        assert taken.did == OUTAGE_SHARE[0]
        await guard.stores.presence.put(presence("alice", "Busy", NOW))
        with pytest.raises(StoreUnavailableError):
            await guard.stores.registrations.purge_expired(NOW)
        redis_server.run()  # the same port, empty
        await health.wait_up()
        assert [h.up for h in health.seen] == [False, True]
        assert health.seen[0].error is not None and health.seen[-1].pending == 0
        async with await open_stores(redis_server.url, tmp_path / "other", timeout=5) as other:
            assert await other.reservations.live(NOW + 1) == [taken]
            assert (await other.presence.get("alice")) == presence("alice", "Busy", NOW)
        # Up again: the shared pool serves the next call.
        after, _ = await guard.stores.reservations.reserve(
            "bob", POOL, NOW + 2, TTL, "c2", False, choose=choose_callback_did
        )
        assert after.did == POOL[0]
    finally:
        await guard.close()


async def test_without_an_outage_share_the_call_learns_the_store_is_down(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = await open_stores(redis_server.url, tmp_path / "n", timeout=0.2)
    async with OutageGuard(shared, outage_dids=[], timeout=0.2, probe_interval=0.05) as guard:
        redis_server.stop()
        with pytest.raises(StoreUnavailableError, match="no outage DIDs"):
            await guard.stores.reservations.reserve(
                "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
            )


async def test_a_full_journal_drops_the_oldest_write_and_counts_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    health = Health()
    shared = await open_stores(redis_server.url, tmp_path / "n", timeout=0.2)
    guard = OutageGuard(
        shared, outage_dids=[], timeout=0.2, probe_interval=0.05, journal_size=2, on_change=health
    )
    async with guard:
        redis_server.stop()
        for n, status in enumerate(("Away", "Busy", "Available")):
            await guard.stores.presence.put(presence(f"agent-{n}", status, NOW + n))
        assert (guard.health.pending, guard.health.dropped) == (2, 1)
        assert await guard.stores.reservations.lookup(POOL[0], NOW) is None  # no wait, no error
        redis_server.run()
        await health.wait_up()
        async with await open_stores(redis_server.url, tmp_path / "o", timeout=5) as other:
            assert [r.agent_id for r in await other.presence.all()] == ["agent-1", "agent-2"]


async def test_a_sentinel_url_reaches_the_master_it_names(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    try:
        sentinel = RedisSentinel.watching(tmp_path / "sentinel", redis_server)
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        async with await open_stores(sentinel.url, tmp_path / "s", timeout=5) as via_sentinel:
            await via_sentinel.presence.put(presence("alice", "Away", NOW))
        async with await open_stores(redis_server.url, tmp_path / "d", timeout=5) as direct:
            assert await direct.presence.get("alice") == presence("alice", "Away", NOW)
    finally:
        sentinel.stop()


def test_sentinel_urls_are_checked() -> None:
    from gateway.stores.redis_store import redis_client

    for bad in (
        "redis+sentinel://",
        "redis+sentinel://h:1",
        "redis+sentinel://h/x",
        "redis+sentinel://h:1/m/x",
    ):
        with pytest.raises(ValueError):
            redis_client(bad, 1.0)


CLUSTER_DIALPLAN = """
version: 1
listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]
trunks:
  carrier:
    gateways: [ { host: 192.0.2.20, port: 5060 } ]
    trusted: true
emergency:
  callback: { dids: ['+15550000001', '+15550000002'] }
agents:
  alice: { password: pw }
"""


class Published:
    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        pass


def emergency_node(stores: Stores, clock: list[float]) -> EmergencyService:
    return EmergencyService(
        load_dialplan_text(CLUSTER_DIALPLAN),
        stores.reservations,
        cast(PresenceService, None),
        Published(),
        Topics("t", "gw"),
        lambda agent: [],
        wall_clock=lambda: clock[0],
    )


async def test_a_callback_is_recognised_on_the_node_that_did_not_reserve(
    two_nodes: list[Stores],
) -> None:
    clock = [NOW]
    first, second = (emergency_node(node, clock) for node in two_nodes)
    call = EmergencyCall(None, "alice", None, False)
    await first.reserve("call-1", call)
    assert call.did == "+15550000001"
    assert not second.callback_for("+15550000001", "carrier").callback  # not yet seen
    await second.refresh_reservations()
    decision = second.callback_for("+15550000001", "carrier")
    assert (decision.callback, decision.agent_id) == (True, "alice")
    clock[0] = NOW + 3601  # the window is over: dropped on the next refresh
    await second.refresh_reservations()
    assert second.live == {}


async def test_a_write_that_fails_on_replay_is_dropped_and_the_rest_go_through(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    health = Health()
    shared = await open_stores(redis_server.url, tmp_path / "n", timeout=0.2)
    guard = OutageGuard(shared, outage_dids=[], timeout=0.2, probe_interval=0.05, on_change=health)
    async with guard:
        redis_server.stop()
        await guard.stores.presence.put(presence("alice", "Busy", NOW))  # meets the outage
        unwritable = presence("bob", "Away", NOW)
        object.__setattr__(unwritable, "reason", object())  # no JSON for it
        await guard.stores.presence.put(unwritable)
        await guard.stores.presence.put(presence("carol", "Away", NOW))
        redis_server.run()
        await health.wait_up()
        async with await open_stores(redis_server.url, tmp_path / "o", timeout=5) as other:
            assert [r.agent_id for r in await other.presence.all()] == ["alice", "carol"]


async def test_a_bindings_path_is_shared_and_an_older_record_reads_without_one(
    two_nodes: list[Stores], redis_server: RedisServer
) -> None:
    """RFC 3327: the Path a node stored is what the other node reads (the route set of its
    calls to that contact); a record written before Path existed reads back with none."""
    first, second = two_nodes
    fronted = Binding(
        agent_id="alice",
        contact_uri="sip:alice@192.0.2.10:5060",
        expires_at=NOW + 300,
        call_id="reg-1",
        cseq=1,
        source="udp:192.0.2.10:5060",
        user_agent="UA",
        path=("<sip:192.0.2.5:5060;lr;received=sip:192.0.2.10:5060>",),
    )
    await first.registrations.put(fronted)
    assert await second.registrations.bindings("alice", NOW) == [fronted]
    older = {k: v for k, v in dataclasses.asdict(fronted).items() if k != "path"}
    older["agent_id"], older["contact_uri"] = "bob", "sip:bob@192.0.2.11:5060"
    client = aioredis.from_url(redis_server.url)
    try:
        await client.hset("gateway:reg:bob", older["contact_uri"], json.dumps(older))
        await client.zadd("gateway:reg:expiry", {f"bob\n{older['contact_uri']}": NOW + 300})
    finally:
        await client.aclose()
    [bob] = await second.registrations.bindings("bob", NOW)
    assert bob.path == () and bob.source == fronted.source
