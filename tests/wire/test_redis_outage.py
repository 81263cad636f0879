"""A Redis outage during an emergency call, end to end (issue #12, SPEC E-3/E-4).

A gateway node keeps its state in a real redis-server started here; SIPp plays alice's
phone and the carrier's SBC; Mosquitto carries the events. Redis is stopped (SIGSTOP: it
accepts connections and never answers, the worst kind of outage) while alice is on a 911
call; her next 911 call must still go out with a callback DID, from the node's outage
share, and what the node wrote meanwhile must be in Redis once it is back.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import jsonschema
import pytest
from broker import Mosquitto
from harness import PROJECT_ROOT, GatewayFactory, GatewayProcess, HarnessError, Sipp
from test_emergency import DIDS, dial, dialplan, open_site

from gateway.stores import Reservation, open_stores
from testkit.redisserver import RedisServer

OUTAGE_DIDS = ("+15555550290", "+15555550291")
SCHEMA = json.loads((PROJECT_ROOT / "docs" / "schemas" / "node-store.v1.json").read_text())


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


def from_users(messages: str) -> list[str]:
    """The From user of each INVITE the SBC received, in order."""
    return re.findall(r"^INVITE .*?^From: <sip:([^@>]+)@", messages, re.M | re.S)


def stored(server: RedisServer, tmp_path: Path) -> tuple[list[Reservation], str | None, int]:
    """The live reservations, alice's presence and the number of CDRs, read from Redis."""

    async def read() -> tuple[list[Reservation], str | None, int]:
        async with await open_stores(server.url, tmp_path / "reader", timeout=5) as stores:
            presence = await stores.presence.get("alice")
            live = await stores.reservations.live(0)
            cdrs = await stores.cdrs.recent(10)
            return live, presence.effective if presence is not None else None, len(cdrs)

    return asyncio.run(read())


def test_redis_stopped_during_a_911_call_then_the_next_one_still_gets_a_did(
    sipp: Sipp,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    sbc = sipp.uas("uas_basic.xml", calls=2, timeout=60)
    carrier = sipp.uas("uas_basic.xml", calls=1, timeout=60)  # ordinary calls go there
    host, _, port = carrier.address.rpartition(":")
    text = dialplan(sbc=(sbc.address,))
    assert "{ host: 127.0.0.2, port: 5999 }" in text
    text = text.replace("{ host: 127.0.0.2, port: 5999 }", f"{{ host: {host}, port: {port} }}")
    text = text.replace(
        "window_s: 3600 }",
        f"window_s: 3600, outage_dids: [{', '.join(repr(d) for d in OUTAGE_DIDS)}] }}",
    )
    assert "outage_dids" in text

    def on_redis(
        dialplan_text: str,
        *,
        listen_port: int | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        ready_timeout: float = 10.0,
    ) -> GatewayProcess:
        return gateway_factory(
            dialplan_text,
            listen_port=listen_port,
            env={**(env or {}), "GATEWAY_STORE": redis_server.url},
            args=args,
            ready_timeout=ready_timeout,
        )

    site = open_site(sipp, on_redis, mosquitto, text)
    store_topic = f"{site.prefix}/nodes/gw1/store"
    site.recorder.wait_for(lambda: site.recorder.on(store_topic), "the store's state")

    first = sipp.start_uac(
        "uac_basic.xml", site.gw.address, 1, service="911", local_port=site.port,
        timeout=30, call_length=2.0,
    )  # fmt: skip
    site.recorder.wait_for(lambda: "answered" in site.names(), "the first call answered")
    redis_server.pause()  # Redis stops answering in the middle of the call
    first.wait(timeout=30).assert_calls(1)
    site.recorder.wait_for(lambda: site.names().count("ended") == 1, "the first call ended")

    dial(sipp, site, "911", call_length=0.5).assert_calls(1)  # at once, with a DID
    sbc.wait(timeout=30).assert_calls(2)
    dids = from_users(sbc.result().files.messages.read_text())
    assert dids[0] == DIDS[0]  # from the shared pool, in Redis
    assert dids[1] == OUTAGE_DIDS[0]  # from this node's outage share
    site.recorder.wait_for(lambda: site.names().count("ended") == 2, "the second call ended")
    assert site.names().count("callback_reserved") == 2
    states = [p["state"] for p in site.recorder.on(store_topic)]
    assert states[-1] == "down"
    # an ordinary call does not wait for Redis either; its CDR waits in the journal
    dial(sipp, site, "915555550123", call_length=0.3).assert_calls(1)
    carrier.wait(timeout=30).assert_calls(1)

    redis_server.resume()
    site.recorder.wait_for(
        lambda: site.recorder.on(store_topic)[-1]["state"] == "up", "the store back", timeout=20
    )
    for payload in site.recorder.on(store_topic):
        jsonschema.validate(payload, SCHEMA)
    assert site.recorder.on(store_topic)[-1]["pending"] == 0
    live, presence, cdrs = stored(redis_server, tmp_path)
    # Reconciled: the outage reservation is shared now, and so are alice's restored presence
    # and the ordinary call's CDR (the emergency calls have none, E-9).
    assert {r.did: r.agent_id for r in live} == {DIDS[0]: "alice", OUTAGE_DIDS[0]: "alice"}
    assert presence == "Available"
    assert cdrs == 1
