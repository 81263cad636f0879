"""The SQLite store on real files: restart, abrupt process end, migrations, two connections.

Two :class:`SqliteDatabase` objects on one file have two threads and two connections, which
is what two processes sharing the file would have; the atomic ``reserve`` must hold there
too.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from gateway import tasks
from gateway.emergency.reservations import choose_callback_did
from gateway.stores import (
    Binding,
    Cdr,
    PresenceRecord,
    StoreError,
    open_stores,
)
from gateway.stores.sqlite import (
    MIGRATIONS,
    Migration,
    SqliteCdrStore,
    SqliteDatabase,
    open_sqlite_stores,
)
from gateway.stores.sqlite_database import _split_statements
from gateway.stores.sqlite_reservations import SqliteReservationStore

pytestmark = pytest.mark.loopback

NOW = 1_700_000_000.0
TTL = 3600.0
POOL = ["+15550000001", "+15550000002"]
CHOOSE = choose_callback_did

BINDING = Binding(
    agent_id="alice",
    contact_uri="sip:alice@192.0.2.10:5060;transport=tcp",
    expires_at=NOW + 300,
    call_id="reg-1",
    cseq=3,
    source="tcp:192.0.2.10:40001",
    user_agent="Softphone/1.0",
    q=0.7,
    instance='"<urn:uuid:00000000-0000-0000-0000-000000000001>"',
)
PRESENCE = PresenceRecord(
    agent_id="alice",
    chosen="Available",
    effective="DoNotDisturb",
    previous="Available",
    reason="emergency",
    updated_at=NOW,
    saved_before_emergency="Available",
)
CDR = Cdr(
    call_id="c-1",
    direction="outbound",
    caller="alice",
    callee="+15550009999",
    queue=None,
    agent="alice",
    route="trunk-a",
    started_at=NOW,
    answered_at=None,
    ended_at=NOW + 30,
    result="busy",
)


async def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    async with await open_stores("sqlite", tmp_path) as stores:
        await stores.registrations.put(BINDING)
        await stores.presence.put(PRESENCE)
        await stores.cdrs.add(CDR)
        reservation, _ = await stores.reservations.reserve(
            "alice", POOL, NOW, TTL, "e-1", test=True, choose=choose_callback_did
        )
    async with await open_stores("sqlite", tmp_path) as stores:
        assert await stores.registrations.bindings("alice", NOW) == [BINDING]
        assert await stores.presence.get("alice") == PRESENCE
        assert await stores.cdrs.recent(5) == [CDR]
        assert await stores.reservations.lookup(POOL[0], NOW) == reservation
        renewed, reused = await stores.reservations.reserve(
            "alice", POOL, NOW + 60, TTL, "e-2", test=False, choose=choose_callback_did
        )
        assert (renewed.did, reused) == (POOL[0], False)


CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from gateway.emergency.reservations import choose_callback_did
    from gateway.stores import Binding, PresenceRecord, open_stores

    async def main() -> None:
        stores = await open_stores("sqlite", Path(sys.argv[1]))
        await stores.presence.put(PresenceRecord(
            "alice", "Away", "DoNotDisturb", "Away", "emergency", 1.0, "Away"))
        await stores.reservations.reserve(
            "alice", ["+15550000001"], 1.0, 3600.0, "e-1", False, choose=choose_callback_did)
        for n in range(50):
            await stores.registrations.put(Binding(
                f"agent-{n}", f"sip:agent-{n}@192.0.2.1", 100.0, "r", 1, "udp:192.0.2.1:5060",
                "ua", 1.0, None))
        print("written", flush=True)
        os._exit(0)  # no close, no checkpoint, no atexit: like kill -9 after the writes

    asyncio.run(main())
    """
)


async def test_committed_writes_survive_an_abrupt_process_end(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_WRITER,
        str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stdout == b"written\n"
    # The writes are still in the WAL: the writer never checkpointed.
    assert (tmp_path / "gateway.sqlite3-wal").stat().st_size > 0
    async with await open_stores("sqlite", tmp_path) as stores:
        saved = await stores.presence.get("alice")
        assert saved is not None and saved.saved_before_emergency == "Away"
        reservation = await stores.reservations.lookup("+15550000001", 2.0)
        assert reservation is not None and reservation.agent_id == "alice"
        assert len(await stores.registrations.all_bindings(0.0)) == 50


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql).fetchall())


async def test_schema_version_table_describes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    for _ in range(2):  # reopening applies nothing twice
        database = await SqliteDatabase.open(path)
        await database.close()
    rows = _rows(path, "SELECT version, description, applied_at FROM schema_version")
    assert [(v, d) for v, d, _ in rows] == [
        (version, migration.description) for version, migration in enumerate(MIGRATIONS, 1)
    ]
    applied_at = rows[0][2]
    assert isinstance(applied_at, float) and applied_at > NOW


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    await (await SqliteDatabase.open(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    with pytest.raises(StoreError, match="newer"):
        await SqliteDatabase.open(path)


async def test_a_failing_migration_leaves_the_schema_untouched(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    await (await SqliteDatabase.open(path)).close()
    broken = (*MIGRATIONS, Migration("broken", "CREATE TABLE half (a); SELECT * FROM missing;"))
    with pytest.raises(sqlite3.OperationalError):
        await SqliteDatabase.open(path, migrations=broken)
    assert _rows(path, "SELECT max(version) FROM schema_version") == [(len(MIGRATIONS),)]
    assert _rows(path, "SELECT name FROM sqlite_master WHERE name = 'half'") == []


async def test_a_later_migration_is_applied_on_open(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    await (await SqliteDatabase.open(path)).close()
    trigger = Migration(
        "cdr audit trigger",
        """
        CREATE TABLE cdr_audit (call_id TEXT);
        CREATE TRIGGER cdr_audit_insert AFTER INSERT ON cdrs BEGIN
            INSERT INTO cdr_audit (call_id) VALUES (new.call_id);
        END;
        """,
    )
    database = await SqliteDatabase.open(path, migrations=(*MIGRATIONS, trigger))
    try:
        assert database.schema_version == len(MIGRATIONS) + 1
        await SqliteCdrStore(database).add(CDR)
    finally:
        await database.close()
    assert _rows(path, "SELECT call_id FROM cdr_audit") == [("c-1",)]
    # A gateway that only knows the current schema must refuse the newer file.
    with pytest.raises(StoreError, match="newer"):
        await open_stores(f"sqlite://{path}", tmp_path)


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    script = "CREATE TABLE a (x); CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END; ;"
    assert list(_split_statements(script)) == [
        "CREATE TABLE a (x);",
        " CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;",
    ]
    with pytest.raises(StoreError, match="incomplete"):
        list(_split_statements("CREATE TRIGGER u AFTER INSERT ON a BEGIN SELECT 1;"))


async def test_two_connections_never_hand_out_the_same_did(tmp_path: Path) -> None:
    first = await open_stores("sqlite", tmp_path)
    second = await open_stores("sqlite", tmp_path)
    try:
        pool = [f"+1555300{n:04d}" for n in range(80)]
        calls = [
            (first if n % 2 else second).reservations.reserve(
                f"agent-{n}", pool, NOW, TTL, f"call-{n}", False, choose=choose_callback_did
            )
            for n in range(80)
        ]
        results = await asyncio.gather(*calls)
        assert len({r.did for r, _ in results}) == 80
        assert not any(reused for _, reused in results)
    finally:
        await first.close()
        await second.close()


async def test_urgent_work_goes_ahead_of_the_queued_writes(tmp_path: Path) -> None:
    # Under load the history and presence writes queue up in the one worker thread; an
    # emergency call's callback DID (urgent) must not wait behind them.
    database = await SqliteDatabase.open(tmp_path / "gateway.sqlite3")
    release = threading.Event()
    order: list[str] = []

    def blocking(conn: sqlite3.Connection) -> None:
        release.wait(5)

    def record(name: str) -> Callable[[sqlite3.Connection], None]:
        return lambda conn: order.append(name)

    busy = asyncio.ensure_future(database.run(blocking))
    await asyncio.sleep(0.05)  # the worker is inside ``blocking`` now
    queued = [asyncio.ensure_future(database.run(record(f"cdr-{i}"))) for i in range(5)]
    urgent = asyncio.ensure_future(database.run(record("did"), urgent=True))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(busy, *queued, urgent)
    assert order == ["did"] + [f"cdr-{i}" for i in range(5)]
    await database.close()


async def test_a_second_node_on_the_same_file_is_refused(tmp_path: Path) -> None:
    owner = await open_stores("sqlite", tmp_path, exclusive=True)
    try:
        with pytest.raises(
            StoreError, match=rf"in use by another gateway process \(pid {os.getpid()}\)"
        ):
            await open_stores("sqlite", tmp_path, exclusive=True)
        # the command-line tools still read it
        async with await open_stores("sqlite", tmp_path) as reader:
            assert await reader.reservations.live(NOW) == []
    finally:
        await owner.close()
    again = await open_stores("sqlite", tmp_path, exclusive=True)  # the lock went with close
    await again.close()


async def test_the_owner_chooses_a_did_while_the_worker_thread_is_stuck(tmp_path: Path) -> None:
    # The worker thread can starve for the GIL under a busy loop (seconds, measured): the
    # node that owns the file must hand out the DID without waiting for that thread.
    seed = await open_stores("sqlite", tmp_path)
    await seed.reservations.reserve(
        "bob", POOL, NOW - 10, TTL, "e-0", False, choose=choose_callback_did
    )
    await seed.close()
    stores = await open_stores("sqlite", tmp_path, exclusive=True)
    database = stores.reservations._db  # type: ignore[attr-defined]
    release = threading.Event()
    stuck = asyncio.ensure_future(database.run(lambda conn: release.wait(10)))
    await asyncio.sleep(0.05)
    try:
        reservation, taken_over = await asyncio.wait_for(
            stores.reservations.reserve(
                "alice", POOL, NOW, TTL, "e-1", False, choose=choose_callback_did
            ),
            timeout=1.0,
        )
        # bob's live DID (read from the file at open) is not handed to alice
        assert (reservation.did, reservation.agent_id, taken_over) == (POOL[1], "alice", False)
        renewed, _ = await stores.reservations.reserve(
            "alice", POOL, NOW + 5, TTL, "e-2", False, choose=choose_callback_did
        )
        assert renewed.did == POOL[1] and renewed.call_id == "e-2"
    finally:
        release.set()
        await stuck
        await stores.close()
    # written behind, before close returned
    async with await open_stores("sqlite", tmp_path) as reopened:
        live = {r.did: (r.agent_id, r.call_id) for r in await reopened.reservations.live(NOW + 6)}
        assert live == {POOL[0]: ("bob", "e-0"), POOL[1]: ("alice", "e-2")}


async def test_the_owner_chooses_as_the_transaction_does(tmp_path: Path) -> None:
    # The same policy on the in-memory rows as in the SQL transaction: same DIDs, same
    # take-overs, over a sequence that exhausts a 3-DID pool and reuses expired ones.
    pool = ["+15550000011", "+15550000012", "+15550000013"]
    calls = [(f"agent-{n % 5}", NOW + 100 * n, 250.0 if n % 3 else TTL) for n in range(14)]
    outcomes = []
    for name, exclusive in (("shared", False), ("owned", True)):
        async with await open_stores("sqlite", tmp_path / name, exclusive=exclusive) as stores:
            seen = []
            for n, (agent, now, ttl) in enumerate(calls):
                r, taken = await stores.reservations.reserve(
                    agent, pool, now, ttl, f"e-{n}", False, choose=choose_callback_did
                )
                seen.append((r.did, r.agent_id, taken))
            outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert any(taken for _, _, taken in outcomes[0])  # the sequence does exhaust the pool


async def test_a_file_from_before_path_is_upgraded_and_keeps_its_bindings(tmp_path: Path) -> None:
    """Schema 5 (RFC 3327 Path) on a file written by schema 4: the registrations already
    there read back with no Path, and a binding with a Path round-trips."""
    path = tmp_path / "gw.sqlite3"
    old = await SqliteDatabase.open(path, migrations=MIGRATIONS[:4])
    await old.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO registrations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "alice",
                "sip:alice@192.0.2.10",
                NOW + 300,
                "r",
                1,
                "udp:192.0.2.10:5060",
                "UA",
                1.0,
                None,
            ),
        )
    conn.close()
    fronted = Binding(
        agent_id="bob",
        contact_uri="sip:bob@192.0.2.11:5060",
        expires_at=NOW + 300,
        call_id="reg-2",
        cseq=1,
        source="udp:192.0.2.11:5060",
        user_agent="UA",
        path=("<sip:192.0.2.5:5060;lr;received=sip:192.0.2.11:5060>", "<sip:edge.example;lr>"),
    )
    async with await open_stores(f"sqlite://{path}", tmp_path) as stores:
        [before] = await stores.registrations.bindings("alice", NOW)
        assert before.path == () and before.source == "udp:192.0.2.10:5060"
        await stores.registrations.put(fronted)
    assert _rows(path, "SELECT max(version) FROM schema_version") == [(len(MIGRATIONS),)]
    async with await open_stores(f"sqlite://{path}", tmp_path) as stores:
        assert await stores.registrations.bindings("bob", NOW) == [fronted]


async def _until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


def _lock_exclusively(path: Path) -> sqlite3.Connection:
    """Another process's connection holding the write lock (a backup tool, a shell)."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


async def test_a_reservation_write_that_fails_is_tried_again_until_it_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC E-4: a reservation survives a restart, even when its first write failed (the
    database locked by someone else beyond busy_timeout); the latest one of each DID lands,
    never an older one after it."""
    monkeypatch.setattr(tasks, "RETRY_FIRST_S", 0.02)
    path = tmp_path / "gw.sqlite3"
    stores = await open_sqlite_stores(path, busy_timeout=0.05, exclusive=True)
    store = stores.reservations
    assert isinstance(store, SqliteReservationStore)
    blocker = _lock_exclusively(path)
    try:
        first, _ = await store.reserve("alice", POOL, NOW, TTL, "e-1", False, choose=CHOOSE)
        second, _ = await store.reserve("bob", POOL, NOW + 1, TTL, "e-2", False, choose=CHOOSE)
        renewed, _ = await store.reserve("alice", POOL, NOW + 2, TTL, "e-3", False, choose=CHOOSE)
        assert renewed.did == first.did != second.did  # the calls went on at once
        await _until(lambda: store._failures >= 3, "the retries fail while locked")
        assert store.unwritten == 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await _until(lambda: store.unwritten == 0, "written once the lock is gone")
    rows = _rows(path, "SELECT did, agent_id, call_id FROM reservations ORDER BY did")
    assert rows == sorted([(first.did, "alice", "e-3"), (second.did, "bob", "e-2")])
    await stores.close()


async def test_a_reservation_still_unwritten_at_close_gets_a_last_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "RETRY_FIRST_S", 60.0)  # close comes first
    path = tmp_path / "gw.sqlite3"
    for lock_held_at_close in (False, True):
        stores = await open_sqlite_stores(path, busy_timeout=0.05, exclusive=True)
        store = stores.reservations
        assert isinstance(store, SqliteReservationStore)
        blocker = _lock_exclusively(path)
        call = f"e-{int(lock_held_at_close)}"
        await store.reserve("alice", POOL[:1], NOW, TTL, call, False, choose=CHOOSE)
        await _until(lambda: store._failures >= 1, "the write fails")  # noqa: B023
        if not lock_held_at_close:
            blocker.execute("ROLLBACK")
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(5):
                await stores.close()
        blocker.close()
        lost = [e for e in logs if e["event"] == "reservation_not_written"]
        if lock_held_at_close:  # said, with what a restart will not know
            assert [(e["did"], e["agent"]) for e in lost] == [(POOL[0], "alice")], logs
        else:
            assert lost == []
            assert _rows(path, "SELECT agent_id, call_id FROM reservations") == [("alice", call)]
