"""Desktop-confirmed agent locations in the SQLite store survive a restart (SPEC E-10, O-2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.stores import PresenceRecord, open_stores
from gateway.stores.ports import ConfirmedLocation, MemoryLocationStore
from gateway.stores.sqlite import MIGRATIONS, SqliteDatabase

pytestmark = pytest.mark.loopback

NOW = 1_700_000_000.0
HOME = ConfirmedLocation(
    "alice",
    {"street": "Elm St", "house_number": "12", "city": "Zürich & Co <x>", "country": "CH"},
    NOW,
)
OFFICE = ConfirmedLocation("alice", {"street": "Main St", "country": "US"}, NOW + 60)
BOB = ConfirmedLocation("bob", {"country": "GB", "floor": "3"}, NOW + 1)


async def test_locations_survive_close_and_reopen(tmp_path: Path) -> None:
    async with await open_stores("sqlite", tmp_path) as stores:
        await stores.locations.put(HOME)
        await stores.locations.put(BOB)
        await stores.locations.put(OFFICE)  # replaces alice's
    async with await open_stores("sqlite", tmp_path) as stores:
        assert await stores.locations.all() == [OFFICE, BOB]
        await stores.locations.remove("alice")
        await stores.locations.remove("nobody")  # not an error
    async with await open_stores("sqlite", tmp_path) as stores:
        assert await stores.locations.all() == [BOB]


async def test_text_is_kept_exactly(tmp_path: Path) -> None:
    async with await open_stores("sqlite", tmp_path) as stores:
        await stores.locations.put(HOME)
    async with await open_stores("sqlite", tmp_path) as stores:
        assert (await stores.locations.all())[0].civic["city"] == "Zürich & Co <x>"


async def test_a_file_from_before_locations_is_upgraded_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    old = await SqliteDatabase.open(path, migrations=MIGRATIONS[:2])
    await old.close()
    async with await open_stores(f"sqlite://{path}", tmp_path) as stores:
        await stores.presence.put(PresenceRecord("alice", "Away", "Away", None, "agent", NOW))
        await stores.locations.put(HOME)
    async with await open_stores(f"sqlite://{path}", tmp_path) as stores:
        assert await stores.locations.all() == [HOME]
        assert (await stores.presence.get("alice")) is not None


async def test_the_memory_store_behaves_the_same() -> None:
    store = MemoryLocationStore()
    await store.put(BOB)
    await store.put(HOME)
    await store.put(OFFICE)
    assert await store.all() == [OFFICE, BOB]
    await store.remove("alice")
    await store.remove("alice")
    assert await store.all() == [BOB]
