"""gateway.cluster without a Redis: what a node publishes and measures about its shared
store, and how its outage share follows a reload (issue #12)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.cli import main
from gateway.cluster import (
    is_shared_store,
    store_gauges,
    store_health_payload,
    use_dialplan_for_stores,
)
from gateway.config.loader import load_dialplan_text
from gateway.stores import open_stores
from gateway.stores.outage import OutageGuard, StoreHealth
from gateway.stores.ports import StoreUnavailableError

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "docs" / "schemas" / "node-store.v1.json").read_text()
)
DIALPLAN = """
version: 1
listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]
emergency:
  callback: { dids: ['+15550000001'], outage_dids: ['+15550000009'] }
"""


def test_the_store_payload_follows_its_schema_up_and_down() -> None:
    up = store_health_payload("gw1", StoreHealth(True, 1_700_000_000.0, 0, 0, 0))
    down = store_health_payload(
        "gw1", StoreHealth(False, 1_700_000_001.5, 2, 7, 1, "no answer in time")
    )
    for payload in (up, down):
        jsonschema.validate(payload, SCHEMA)
    assert (up["state"], "error" in up) == ("up", False)
    assert (down["state"], down["since"], down["error"]) == (
        "down",
        "2023-11-14T22:13:21.500Z",
        "no answer in time",
    )


def test_only_redis_urls_are_shared() -> None:
    for url in ("redis://h:1/0", "rediss://h/0", "unix:///s.sock", "redis+sentinel://h:1/m"):
        assert is_shared_store(url)
    for url in ("sqlite", "sqlite:///x.db"):
        assert not is_shared_store(url)


async def test_gauges_and_the_outage_share_follow_the_guard(tmp_path: Path) -> None:
    # nothing listens on port 1: the store opens, and the guard is told of an outage
    shared = await open_stores("redis://127.0.0.1:1/0", tmp_path, timeout=0.1)
    guard = OutageGuard(shared, outage_dids=[], timeout=0.1)
    try:
        registry = CollectorRegistry()
        store_gauges(registry, guard.stores)
        assert b"gateway_store_up 1.0" in generate_latest(registry)
        guard.went_down(StoreUnavailableError("refused"))
        text = generate_latest(registry)
        assert b"gateway_store_up 0.0" in text and b"gateway_store_outages 1.0" in text
        use_dialplan_for_stores(guard.stores, load_dialplan_text(DIALPLAN))
        assert guard.outage_dids == ("+15550000009",)
    finally:
        await guard.close()


async def test_the_embedded_store_has_no_guard_and_only_its_pending_writes(
    tmp_path: Path,
) -> None:
    async with await open_stores("sqlite://:memory:", tmp_path) as stores:
        registry = CollectorRegistry()
        store_gauges(registry, stores)
        lines = [
            line
            for line in generate_latest(registry).decode().splitlines()
            if line.startswith("gateway_store")
        ]
        assert lines == ["gateway_store_pending 0.0"]  # reservations not written yet
        use_dialplan_for_stores(stores, load_dialplan_text(DIALPLAN))  # nothing to do


def test_the_cli_says_in_one_line_that_redis_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_STORE", "redis://u:secret@127.0.0.1:1/0")  # nothing there
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    for command in ("cdr", "reservations"):
        assert main([command]) == 1
        err = capsys.readouterr().err
        assert err.startswith("gateway: the store cannot be read: ") and "secret" not in err
        assert err.count("\n") == 1
