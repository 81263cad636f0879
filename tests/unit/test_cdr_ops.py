"""Call history for operators (issue 11, SPEC R-5): both SIP Call-IDs and the final SIP
code in each row, an existing database migrated forward with its rows kept, a time range
to list, and a retention that purges."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from b2bua_peers import CALLER, GW1, Net, hop, outbound

from gateway.b2bua.call import Call
from gateway.b2bua.decisions import CallObserverBase
from gateway.b2bua.history import CallHistory, cdr_of
from gateway.cli import _when, main
from gateway.stores import open_stores
from gateway.stores.ports import Cdr
from gateway.stores.sqlite import SqliteCdrStore
from gateway.stores.sqlite_database import MIGRATIONS, SqliteDatabase


def row(call_id: str, ended_at: float, **more: object) -> Cdr:
    fields: dict[str, object] = {
        "call_id": call_id, "direction": "outbound", "caller": "alice", "callee": "5551234",
        "queue": None, "agent": "alice", "route": "carrier:192.0.2.1:5060",
        "started_at": ended_at - 10, "answered_at": ended_at - 8, "ended_at": ended_at,
        "result": "completed",
    }  # fmt: skip
    fields.update(more)
    return Cdr(**fields)  # type: ignore[arg-type]


class Ended(CallObserverBase):
    def __init__(self) -> None:
        self.calls: list[Call] = []

    def call_ended(self, call: Call) -> None:
        self.calls.append(call)


def test_a_row_has_both_call_ids_and_the_final_code() -> None:
    ended = Ended()
    net = Net(outbound(hop(GW1), hop(GW1)), observers=[ended])
    caller, callee = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite()
    a_call_id = tx.request.call_id  # the finished transaction lets its request go
    first, *_ = callee.requests("INVITE")
    callee.answer(first, 486)  # not a failover code of the hop (503): the call fails
    (call,) = ended.calls
    cdr = cdr_of(call, 0.0)
    assert cdr.a_call_id == a_call_id
    assert cdr.b_call_id == first.request.call_id and cdr.b_call_id != cdr.a_call_id
    assert cdr.sip_code == 486 and cdr.result.startswith("failed")

    tx = caller.invite()
    second = callee.requests("INVITE")[-1]
    callee.answer(second, 200)
    caller.ack(tx, caller.uac_dialog(tx))
    caller.request(caller.uac_dialog(tx), "BYE")
    answered = cdr_of(ended.calls[-1], 0.0)
    assert answered.sip_code == 200 and answered.b_call_id == second.request.call_id


async def test_an_old_database_is_migrated_forward_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    old = await SqliteDatabase.open(path, migrations=MIGRATIONS[:-1])
    await old.run(
        lambda conn: conn.execute(
            "INSERT INTO cdrs (call_id, direction, caller, callee, started_at, ended_at,"
            " result) VALUES ('old', 'outbound', 'a', 'b', 1.0, 2.0, 'completed')"
        )
    )
    await old.close()
    stores = await open_stores("sqlite", tmp_path)
    try:
        await stores.cdrs.add(row("new", 100.0, a_call_id="a@x", b_call_id="b@y", sip_code=200))
        new, kept = await stores.cdrs.recent(10)
    finally:
        await stores.close()
    assert (kept.call_id, kept.a_call_id, kept.b_call_id, kept.sip_code) == (
        "old",
        None,
        None,
        None,
    )
    assert (new.a_call_id, new.b_call_id, new.sip_code) == ("a@x", "b@y", 200)
    with sqlite3.connect(path) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_a_range_lists_by_end_time_and_the_retention_purges(tmp_path: Path) -> None:
    database = await SqliteDatabase.open(tmp_path / "db.sqlite3")
    store = SqliteCdrStore(database)
    try:
        for n, ended in enumerate((1000.0, 2000.0, 3000.0, 4000.0)):
            await store.add(row(f"c{n}", ended))
        since = await store.recent(10, since=2000.0, until=4000.0)
        assert [r.call_id for r in since] == ["c2", "c1"]  # [since, until), newest first
        history = CallHistory(store, lambda: 0.0, lambda: 5000.0, retention_s=2500.0)
        assert await history.purge() == 2  # ended before 2500
        assert [r.call_id for r in await store.recent(10)] == ["c3", "c2"]
    finally:
        await database.close()


def test_since_and_until_take_iso_times_or_ages() -> None:
    assert _when("2025-01-31") == 1738281600.0  # UTC unless it says
    assert _when("2025-01-31T12:00:00+01:00") == 1738321200.0
    assert 7 * 86400 - 5 < time.time() - _when("7d") < 7 * 86400 + 5


def test_a_bad_time_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["cdr", "--since", "last tuesday"])
    assert done.value.code == 2
    assert "neither an ISO date/time" in capsys.readouterr().err
