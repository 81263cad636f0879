"""Store ports (SPEC O-2): every method of every store, on every adapter.

Each contract test runs against an in-memory SQLite database, a file database and a real
redis-server (one per module, started on a free loopback port, flushed before each test);
the clock is a plain ``now`` argument moved by hand. Restart and crash durability are in
``tests/loopback/test_sqlite_store.py``; Redis across nodes and outages in
``tests/loopback/test_redis_cluster_store.py``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.emergency.reservations import choose_callback_did
from gateway.stores import (
    DEFAULT_SQLITE_FILE,
    Binding,
    Cdr,
    EmptyPoolError,
    PresenceRecord,
    Reservation,
    StoreClosedError,
    Stores,
    StoreUnavailableError,
    open_stores,
    sqlite_path,
)
from gateway.stores.sqlite import MIGRATIONS, SqliteDatabase
from testkit.processes import HarnessError
from testkit.redisserver import RedisServer

NOW = 1_700_000_000.0
TTL = 3600.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def _flush(server: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(16).startswith(b"+OK")


@pytest.fixture(params=["memory", "file", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        _flush(server)
        url = server.url
    else:
        url = "sqlite://:memory:" if request.param == "memory" else "sqlite"
    opened = await open_stores(url, tmp_path / "data", timeout=5.0)
    try:
        yield opened
    finally:
        await opened.close()


def binding(
    agent: str = "alice",
    contact: str = "sip:alice@192.0.2.10:5060",
    expires_at: float = NOW + 300,
    q: float = 1.0,
    instance: str | None = None,
) -> Binding:
    return Binding(
        agent_id=agent,
        contact_uri=contact,
        expires_at=expires_at,
        call_id=f"reg-{agent}",
        cseq=7,
        source="udp:192.0.2.10:5060",
        user_agent="Softphone/1.0",
        q=q,
        instance=instance,
    )


def presence(agent: str = "alice", chosen: str = "Available", **changes: object) -> PresenceRecord:
    record = PresenceRecord(
        agent_id=agent,
        chosen=chosen,
        effective=chosen,
        previous=None,
        reason="agent",
        updated_at=NOW,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def cdr(call_id: str, answered_at: float | None = NOW + 2) -> Cdr:
    return Cdr(
        call_id=call_id,
        direction="inbound",
        caller="+15550001111",
        callee="+15550002222",
        queue="support",
        agent="alice",
        route=None,
        started_at=NOW,
        answered_at=answered_at,
        ended_at=NOW + 60,
        result="answered" if answered_at is not None else "no-answer",
    )


# --------------------------------------------------------------------------------------------
# RegistrationStore


async def test_put_and_bindings_round_trip_highest_q_first(stores: Stores) -> None:
    low = binding(contact="sip:alice@192.0.2.10", q=0.5)
    high = binding(contact="sip:alice@192.0.2.11", q=0.9, instance='"<urn:uuid:1>"')
    await stores.registrations.put(low)
    await stores.registrations.put(high)
    assert await stores.registrations.bindings("alice", NOW) == [high, low]
    assert await stores.registrations.bindings("bob", NOW) == []


async def test_put_replaces_the_same_agent_and_contact(stores: Stores) -> None:
    first = binding()
    refreshed = replace(first, expires_at=NOW + 600, cseq=8, source="tcp:192.0.2.10:40000")
    await stores.registrations.put(first)
    await stores.registrations.put(refreshed)
    assert await stores.registrations.bindings("alice", NOW) == [refreshed]


async def test_expired_bindings_are_invisible(stores: Stores) -> None:
    await stores.registrations.put(binding(expires_at=NOW + 10))
    assert len(await stores.registrations.bindings("alice", NOW + 9.9)) == 1
    # expires_at <= now is expired.
    assert await stores.registrations.bindings("alice", NOW + 10) == []
    assert await stores.registrations.all_bindings(NOW + 10) == []


async def test_remove_one_binding_and_missing_is_not_an_error(stores: Stores) -> None:
    keep = binding(contact="sip:alice@192.0.2.10")
    drop = binding(contact="sip:alice@192.0.2.11")
    await stores.registrations.put(keep)
    await stores.registrations.put(drop)
    await stores.registrations.remove("alice", drop.contact_uri)
    await stores.registrations.remove("alice", "sip:nobody@192.0.2.99")
    assert await stores.registrations.bindings("alice", NOW) == [keep]


async def test_remove_all_touches_only_that_agent(stores: Stores) -> None:
    await stores.registrations.put(binding(contact="sip:alice@192.0.2.10"))
    await stores.registrations.put(binding(contact="sip:alice@192.0.2.11"))
    bob = binding(agent="bob", contact="sip:bob@192.0.2.20")
    await stores.registrations.put(bob)
    await stores.registrations.remove_all("alice")
    assert await stores.registrations.bindings("alice", NOW) == []
    assert await stores.registrations.all_bindings(NOW) == [bob]


async def test_contacts_with_quotes_slashes_and_non_ascii_round_trip(stores: Stores) -> None:
    odd = binding(contact='sip:ålice@192.0.2.10;x="a/b"\\c', expires_at=NOW + 5)
    await stores.registrations.put(odd)
    assert await stores.registrations.all_bindings(NOW) == [odd]
    assert await stores.registrations.purge_expired(NOW + 5) == [odd]
    await stores.registrations.put(odd)
    await stores.registrations.remove_all("alice")
    assert await stores.registrations.purge_expired(NOW + 5) == []
    assert await stores.registrations.all_bindings(0) == []


async def test_all_bindings_by_agent_then_q(stores: Stores) -> None:
    bob = binding(agent="bob", contact="sip:bob@192.0.2.20")
    alice_low = binding(contact="sip:alice@192.0.2.10", q=0.1)
    alice_high = binding(contact="sip:alice@192.0.2.11", q=1.0)
    stale = binding(agent="carol", contact="sip:carol@192.0.2.30", expires_at=NOW - 1)
    for item in (bob, alice_low, stale, alice_high):
        await stores.registrations.put(item)
    assert await stores.registrations.all_bindings(NOW) == [alice_high, alice_low, bob]


async def test_purge_expired_returns_what_it_removed(stores: Stores) -> None:
    live = binding(agent="alice", expires_at=NOW + 100)
    gone_now = binding(agent="bob", contact="sip:bob@192.0.2.20", expires_at=NOW)
    gone_before = binding(agent="carol", contact="sip:carol@192.0.2.30", expires_at=NOW - 50)
    for item in (live, gone_now, gone_before):
        await stores.registrations.put(item)
    assert await stores.registrations.purge_expired(NOW) == [gone_now, gone_before]
    assert await stores.registrations.purge_expired(NOW) == []
    assert await stores.registrations.all_bindings(NOW - 1000) == [live]


# --------------------------------------------------------------------------------------------
# PresenceStore


async def test_presence_get_put_replace_and_all(stores: Stores) -> None:
    assert await stores.presence.get("alice") is None
    assert await stores.presence.all() == []
    alice = presence("alice", "Away")
    bob = presence("bob")
    await stores.presence.put(bob)
    await stores.presence.put(alice)
    assert await stores.presence.get("alice") == alice
    dnd = presence(
        "alice",
        "Away",
        effective="DoNotDisturb",
        previous="Away",
        reason="emergency",
        updated_at=NOW + 5,
        saved_before_emergency="Away",
    )
    await stores.presence.put(dnd)
    assert await stores.presence.get("alice") == dnd
    assert await stores.presence.all() == [dnd, bob]


# --------------------------------------------------------------------------------------------
# CdrStore


async def test_cdr_recent_is_newest_first_and_limited(stores: Stores) -> None:
    assert await stores.cdrs.recent(10) == []
    records = [cdr("c1"), cdr("c2", answered_at=None), cdr("c3")]
    outbound = replace(cdr("c4"), direction="outbound", queue=None, route="trunk-a")
    for record in [*records, outbound]:
        await stores.cdrs.add(record)
    assert await stores.cdrs.recent(10) == [outbound, records[2], records[1], records[0]]
    assert await stores.cdrs.recent(2) == [outbound, records[2]]
    assert await stores.cdrs.recent(0) == []


async def test_cdr_batch_is_appended_in_order(stores: Stores) -> None:
    await stores.cdrs.add(cdr("c0"))
    await stores.cdrs.add(cdr("c1"), cdr("c2"), cdr("c3"))
    await stores.cdrs.add()  # nothing: no write
    assert [r.call_id for r in await stores.cdrs.recent(10)] == ["c3", "c2", "c1", "c0"]


async def test_cdr_rows_are_appended_even_with_the_same_call_id(stores: Stores) -> None:
    await stores.cdrs.add(cdr("same"))
    await stores.cdrs.add(replace(cdr("same"), result="failed"))
    assert [r.result for r in await stores.cdrs.recent(5)] == ["failed", "answered"]


# --------------------------------------------------------------------------------------------
# ReservationStore


POOL = ["+15550000001", "+15550000002", "+15550000003"]


async def test_reserve_takes_free_dids_in_pool_order(stores: Stores) -> None:
    first, reused_first = await stores.reservations.reserve(
        "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    second, reused_second = await stores.reservations.reserve(
        "bob", POOL, NOW, TTL, "c2", True, choose=choose_callback_did
    )
    assert first == Reservation(POOL[0], "alice", NOW, NOW + TTL, "c1", False)
    assert second == Reservation(POOL[1], "bob", NOW, NOW + TTL, "c2", True)
    assert not reused_first and not reused_second
    assert await stores.reservations.lookup(POOL[0], NOW) == first
    assert await stores.reservations.lookup(POOL[2], NOW) is None
    assert await stores.reservations.live(NOW) == [first, second]


async def test_reserve_again_inside_the_window_renews_the_same_did(stores: Stores) -> None:
    await stores.reservations.reserve(
        "alice", POOL, NOW, TTL, "c1", True, choose=choose_callback_did
    )
    later = NOW + TTL - 1
    renewed, reused = await stores.reservations.reserve(
        "alice", POOL, later, TTL, "c2", False, choose=choose_callback_did
    )
    assert renewed == Reservation(POOL[0], "alice", later, later + TTL, "c2", False)
    assert not reused
    assert await stores.reservations.live(NOW + TTL + 1) == [renewed]


async def test_reservations_expire(stores: Stores) -> None:
    await stores.reservations.reserve(
        "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    assert await stores.reservations.lookup(POOL[0], NOW + TTL) is None
    assert await stores.reservations.live(NOW + TTL) == []
    assert len(await stores.reservations.live(NOW + TTL - 0.001)) == 1


async def test_expired_did_goes_back_to_its_last_holder_if_free(stores: Stores) -> None:
    await stores.reservations.reserve(
        "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    await stores.reservations.reserve(
        "bob", POOL, NOW + 1, TTL, "c2", False, choose=choose_callback_did
    )
    after = NOW + 2 * TTL
    again, reused = await stores.reservations.reserve(
        "bob", POOL, after, TTL, "c3", False, choose=choose_callback_did
    )
    assert (again.did, reused) == (POOL[1], False)


async def test_free_dids_prefer_never_reserved_then_least_recently_reserved(
    stores: Stores,
) -> None:
    pool = POOL[:2]
    await stores.reservations.reserve(
        "alice", pool, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    after = NOW + 2 * TTL  # alice's DID expired; POOL[1] never reserved
    bob, _ = await stores.reservations.reserve(
        "bob", pool, after, TTL, "c2", False, choose=choose_callback_did
    )
    assert bob.did == POOL[1]
    later = after + 2 * TTL  # both expired; POOL[0] is the least recently reserved
    carol, reused = await stores.reservations.reserve(
        "carol", pool, later, TTL, "c3", False, choose=choose_callback_did
    )
    assert (carol.did, reused) == (POOL[0], False)


async def test_exhausted_pool_takes_over_the_least_recently_reserved(stores: Stores) -> None:
    pool = POOL[:2]
    await stores.reservations.reserve(
        "alice", pool, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    await stores.reservations.reserve(
        "bob", pool, NOW + 1, TTL, "c2", False, choose=choose_callback_did
    )
    carol, reused = await stores.reservations.reserve(
        "carol", pool, NOW + 2, TTL, "c3", False, choose=choose_callback_did
    )
    assert (carol.did, carol.agent_id, reused) == (POOL[0], "carol", True)
    assert await stores.reservations.lookup(POOL[0], NOW + 2) == carol
    # alice lost hers, so she takes over bob's, now the least recently reserved.
    alice, reused = await stores.reservations.reserve(
        "alice", pool, NOW + 3, TTL, "c4", False, choose=choose_callback_did
    )
    assert (alice.did, reused) == (POOL[1], True)
    assert [r.agent_id for r in await stores.reservations.live(NOW + 3)] == ["carol", "alice"]


async def test_an_expired_did_is_used_before_any_takeover(stores: Stores) -> None:
    pool = POOL[:2]
    await stores.reservations.reserve(
        "alice", pool, NOW, 10, "c1", False, choose=choose_callback_did
    )
    await stores.reservations.reserve(
        "bob", pool, NOW + 1, TTL, "c2", False, choose=choose_callback_did
    )
    carol, reused = await stores.reservations.reserve(
        "carol", pool, NOW + 20, TTL, "c3", False, choose=choose_callback_did
    )
    assert (carol.did, reused) == (POOL[0], False)


async def test_a_did_dropped_from_the_pool_is_not_renewed(stores: Stores) -> None:
    await stores.reservations.reserve(
        "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    moved, reused = await stores.reservations.reserve(
        "alice", POOL[1:], NOW + 1, TTL, "c2", False, choose=choose_callback_did
    )
    assert (moved.did, reused) == (POOL[1], False)


async def test_reserve_rejects_an_empty_pool_and_a_bad_ttl(stores: Stores) -> None:
    with pytest.raises(EmptyPoolError):
        await stores.reservations.reserve(
            "alice", [], NOW, TTL, "c1", False, choose=choose_callback_did
        )
    with pytest.raises(ValueError, match="ttl"):
        await stores.reservations.reserve(
            "alice", POOL, NOW, 0, "c1", False, choose=choose_callback_did
        )
    assert await stores.reservations.live(NOW) == []


async def test_duplicate_pool_entries_count_once(stores: Stores) -> None:
    pool = [POOL[0], POOL[0]]
    await stores.reservations.reserve(
        "alice", pool, NOW, TTL, "c1", False, choose=choose_callback_did
    )
    _, reused = await stores.reservations.reserve(
        "bob", pool, NOW + 1, TTL, "c2", False, choose=choose_callback_did
    )
    assert reused


async def test_concurrent_reserves_never_share_a_did(stores: Stores) -> None:
    pool = [f"+1555100{n:04d}" for n in range(100)]
    agents = [f"agent-{n}" for n in range(60)]
    results = await asyncio.gather(
        *(
            stores.reservations.reserve(
                agent, pool, NOW, TTL, f"call-{agent}", False, choose=choose_callback_did
            )
            for agent in agents
        )
    )
    dids = [reservation.did for reservation, _ in results]
    assert len(set(dids)) == len(agents)
    assert not any(reused for _, reused in results)
    live = await stores.reservations.live(NOW)
    assert {r.did: r.agent_id for r in live} == {r.did: r.agent_id for r, _ in results}


async def test_concurrent_reserves_on_a_small_pool_take_over_one_at_a_time(
    stores: Stores,
) -> None:
    pool = [f"+1555200{n:04d}" for n in range(10)]
    agents = [f"agent-{n}" for n in range(35)]
    results = await asyncio.gather(
        *(
            stores.reservations.reserve(
                agent, pool, NOW + n, TTL, f"call-{n}", False, choose=choose_callback_did
            )
            for n, agent in enumerate(agents)
        )
    )
    assert sum(reused for _, reused in results) == len(agents) - len(pool)
    # Each DID is held by exactly one agent: the last one handed it.
    last_holder = {r.did: r.agent_id for r, _ in sorted(results, key=lambda x: x[0].reserved_at)}
    live = await stores.reservations.live(NOW + len(agents))
    assert len(live) == len(pool)
    assert {r.did: r.agent_id for r in live} == last_holder


async def test_concurrent_reserves_by_one_agent_share_its_did(stores: Stores) -> None:
    results = await asyncio.gather(
        *(
            stores.reservations.reserve(
                "alice", POOL, NOW + n, TTL, f"c{n}", False, choose=choose_callback_did
            )
            for n in range(20)
        )
    )
    assert {r.did for r, _ in results} == {POOL[0]}
    assert len(await stores.reservations.live(NOW + 20)) == 1


# --------------------------------------------------------------------------------------------
# open_stores and lifetime


async def test_default_url_creates_the_file_under_a_new_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    async with await open_stores("sqlite", data_dir) as stores:
        await stores.presence.put(presence())
    assert (data_dir / DEFAULT_SQLITE_FILE).is_file()


def test_sqlite_urls_name_paths(tmp_path: Path) -> None:
    assert sqlite_path("sqlite", tmp_path) == tmp_path / "gateway.sqlite3"
    assert sqlite_path("sqlite:///var/lib/gw/x.db", tmp_path) == Path("/var/lib/gw/x.db")
    assert sqlite_path("sqlite://sub/x.db", tmp_path) == tmp_path / "sub" / "x.db"
    assert sqlite_path("sqlite://:memory:", tmp_path) == ":memory:"
    for bad in ("sqlite://", "sqlite:x.db", "postgres://db"):
        with pytest.raises(ValueError):
            sqlite_path(bad, tmp_path)


async def test_absolute_sqlite_url(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "gw.db"
    async with await open_stores(f"sqlite://{target}", tmp_path / "data") as stores:
        await stores.cdrs.add(cdr("c1"))
    assert target.is_file()
    assert not (tmp_path / "data").exists()


async def test_an_unreachable_redis_fails_fast_and_hides_credentials(tmp_path: Path) -> None:
    # Nothing listens on port 1: the store opens (a node starts during an outage) and
    # each operation raises StoreUnavailableError, without the password in the message.
    async with await open_stores("redis://user:secret@127.0.0.1:1/0", tmp_path) as stores:
        with pytest.raises(StoreUnavailableError) as caught:
            await stores.presence.all()
    assert "secret" not in str(caught.value)
    assert (tmp_path / "gateway-outbox.sqlite3").is_file()  # the node-local outbox


async def test_unknown_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown store url"):
        await open_stores("mysql://db", tmp_path)


async def test_use_after_close_raises_and_close_is_idempotent(tmp_path: Path) -> None:
    stores = await open_stores("sqlite", tmp_path)
    await stores.close()
    await stores.close()
    with pytest.raises(StoreClosedError):
        await stores.presence.all()
    with pytest.raises(StoreClosedError):
        await stores.reservations.reserve(
            "alice", POOL, NOW, TTL, "c1", False, choose=choose_callback_did
        )


async def test_operations_run_in_the_one_dedicated_thread(tmp_path: Path) -> None:
    database = await SqliteDatabase.open(tmp_path / "x.sqlite3")
    try:
        names = await asyncio.gather(
            *(database.run(lambda _conn: threading.current_thread().name) for _ in range(10))
        )
        assert len(set(names)) == 1
        assert names[0].startswith("gateway-sqlite")
        assert names[0] != threading.current_thread().name
        assert database.journal_mode == "wal"
        assert database.schema_version == len(MIGRATIONS)
    finally:
        await database.close()
