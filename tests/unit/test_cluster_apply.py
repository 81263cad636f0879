"""Another node's changes taken in silently (issue #12), without a Redis: the rules of
``PresenceService.apply_remote`` and ``RegistrarService.apply_remote``/``expire``."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from gateway.cluster import ClusterSync
from gateway.config.loader import load_dialplan_text
from gateway.events.ports import Topics
from gateway.presence.service import PresenceService
from gateway.presence.state import AgentPresence, Status
from gateway.registrar.service import RegistrarService
from gateway.sip.address import Address
from gateway.stores.outage import OutageGuard
from gateway.stores.ports import Binding, ClusterFeed, PresenceRecord

NOW = 1_700_000_000.0
DIALPLAN = (
    "version: 1\nlisten: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
    "agents:\n  alice: { password: a }\n"
)


class Publisher:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.published.append(payload)


class PresenceStore:
    def __init__(self) -> None:
        self.records: list[PresenceRecord] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def get(self, agent_id: str) -> PresenceRecord | None:
        return None

    async def put(self, record: PresenceRecord) -> None:
        await self.gate.wait()
        self.records.append(record)

    async def all(self) -> list[PresenceRecord]:
        return []


class RegistrationStore:
    """Purges return what ``purged`` holds (as if this node won the purge)."""

    def __init__(self) -> None:
        self.purged: list[Binding] = []
        self.down = False

    async def put(self, binding: Binding) -> None:
        pass

    async def remove(self, agent_id: str, contact_uri: str) -> None:
        pass

    async def all_bindings(self, now: float) -> list[Binding]:
        return []

    async def purge_expired(self, now: float) -> list[Binding]:
        if self.down:
            raise RuntimeError("down")
        purged, self.purged = self.purged, []
        return purged


def presence(node: str = "gw2") -> tuple[PresenceService, Publisher, PresenceStore]:
    publisher, store = Publisher(), PresenceStore()
    service = PresenceService(
        {"alice": 1}, store, publisher, Topics("t", node), node, wall_clock=lambda: NOW
    )
    service.agents["alice"].registered = True
    service.agents["alice"].effective = Status.AVAILABLE
    return service, publisher, store


def record(chosen: str = "Available", emergency_node: str | None = None) -> PresenceRecord:
    saved = chosen if emergency_node is not None else None
    return PresenceRecord("alice", chosen, chosen, None, "desktop", NOW, saved, emergency_node)


def test_an_emergency_call_on_another_node_is_dnd_here_and_chosen_status_comes_back() -> None:
    agent = AgentPresence("alice", registered=True, effective=Status.AVAILABLE)
    agent.emergency_elsewhere = "gw1"
    assert agent.derive() is Status.DND
    agent.chosen = Status.AWAY
    agent.emergency_elsewhere = None
    assert agent.derive() is Status.AWAY


async def test_a_remote_record_changes_the_status_silently_and_tells_the_listeners() -> None:
    service, publisher, store = presence()
    told: list[Status] = []
    service.listeners.append(lambda change: told.append(change.status))
    assert service.apply_remote(record("Away"), service.mark("alice"))
    assert service.status("alice") is Status.AWAY
    assert told == [Status.AWAY]
    assert publisher.published == [] and store.records == []  # silent: nothing published


async def test_a_live_nodes_emergency_holds_dnd_a_dead_ones_does_not() -> None:
    service, _, _ = presence()
    assert service.apply_remote(record(emergency_node="gw1"), 0, lambda node: node == "gw1")
    assert service.status("alice") is Status.DND
    assert service.apply_remote(record(emergency_node="gw1"), 0, lambda node: False)
    assert service.status("alice") is Status.AVAILABLE  # gw1 crashed: no DND left (E-5)


async def test_this_nodes_own_emergency_is_not_counted_twice() -> None:
    service, _, _ = presence("gw1")
    await service.start()
    service.emergency_started("alice")
    service.emergency_ended("alice")
    await service.close()
    assert service.apply_remote(record(emergency_node="gw1"), service.mark("alice"))
    assert service.status("alice") is Status.AVAILABLE


async def test_a_record_read_across_a_local_change_is_not_applied() -> None:
    service, _, store = presence()
    await service.start()
    store.gate.clear()  # this node's write is on its way
    mark = service.mark("alice")
    assert service.choose("alice", Status.AWAY)
    assert not service.apply_remote(record("Available"), mark)  # changed since the mark
    assert not service.apply_remote(record("Available"), service.mark("alice"))  # pending
    assert service.status("alice") is Status.AWAY
    store.gate.set()
    await service.close()
    assert service.apply_remote(record("Available"), service.mark("alice"))


def registrar(store: RegistrationStore, now: list[float]) -> RegistrarService:
    service = RegistrarService(
        load_dialplan_text(DIALPLAN, "t.yaml"),
        None,  # type: ignore[arg-type]  # no REGISTER handled: no transactions
        store,  # type: ignore[arg-type]
        presence()[0],
        loop_clock=lambda: 0.0,
        wall_clock=lambda: now[0],
        claim_expiry=True,
    )
    service.presence.agents["alice"].effective = Status.OFFLINE
    service.presence.agents["alice"].registered = False
    return service


def binding(expires_at: float) -> Binding:
    return Binding("alice", "sip:alice@h", expires_at, "c", 1, "udp:127.0.0.1:5060", "ua")


def test_remote_bindings_identify_the_agent_and_register_her_silently() -> None:
    now = [NOW]
    service = registrar(RegistrationStore(), now)
    publisher = service.presence.publisher
    assert service.apply_remote("alice", [binding(NOW + 60)], service.mark("alice"))
    assert service.agent_at(Address("udp", "127.0.0.1", 5060)) == "alice"
    assert service.presence.status("alice") is Status.AVAILABLE
    assert publisher.published == []  # type: ignore[attr-defined]


async def test_expiry_is_published_by_the_node_whose_purge_took_it_only() -> None:
    now = [NOW]
    store = RegistrationStore()
    winner, loser = registrar(store, now), registrar(RegistrationStore(), now)
    for node in (winner, loser):
        node.apply_remote("alice", [binding(NOW + 10)], node.mark("alice"))
    now[0] = NOW + 11
    # a resync after the expiry lists no live binding: the expired one waits for expire()
    assert loser.apply_remote("alice", [], loser.mark("alice"))
    assert loser.presence.status("alice") is Status.AVAILABLE
    store.purged = [binding(NOW + 10)]
    await winner.expire(now[0])
    await loser.expire(now[0])
    statuses = [
        p["status"]
        for node in (winner, loser)
        for p in node.presence.publisher.published  # type: ignore[attr-defined]
    ]
    assert statuses == ["Offline"]
    assert winner.presence.status("alice") is loser.presence.status("alice") is Status.OFFLINE


async def test_while_the_store_is_down_each_node_acts_on_its_own_clock() -> None:
    now = [NOW]
    store = RegistrationStore()
    store.down = True
    service = registrar(store, now)
    service.apply_remote("alice", [binding(NOW + 10)], service.mark("alice"))
    now[0] = NOW + 11
    await service.expire(now[0])
    published = service.presence.publisher.published  # type: ignore[attr-defined]
    assert [p["status"] for p in published] == ["Offline"]


async def test_a_restarted_node_rewrites_the_record_of_its_lost_emergency_call() -> None:
    service, publisher, store = presence("gw1")

    async def stored() -> list[PresenceRecord]:
        return [record("Away", emergency_node="gw1")]

    store.all = stored  # type: ignore[method-assign]
    await service.start()
    await service.close()
    assert [(r.chosen, r.emergency_node) for r in store.records] == [("Away", None)]
    assert publisher.published == []  # the restart's announcement says the status


async def test_one_node_says_that_a_dead_nodes_call_is_over() -> None:
    service, publisher, store = presence()
    await service.start()
    lost = record(emergency_node="gw1")
    assert service.apply_remote(lost, service.mark("alice"), lambda node: node == "gw1")
    assert not service.lost_emergency(lost, lambda node: node == "gw1")
    assert service.apply_remote(lost, service.mark("alice"), lambda node: False)
    assert service.lost_emergency(lost, lambda node: False)
    service.recover("alice")
    await service.close()
    assert [(p["status"], p["previous"], p["reason"]) for p in publisher.published] == [
        ("Available", "DoNotDisturb", "emergency_ended")
    ]
    assert store.records[-1].emergency_node is None


def test_a_node_is_alive_by_the_age_of_its_beat_when_it_was_read() -> None:
    class Feed:
        node = "gw2"

    class Guard:
        @staticmethod
        def wall_clock() -> float:
            return NOW + 100  # long after the read: must not matter

    sync = ClusterSync(
        cast(ClusterFeed, Feed()),
        cast(OutageGuard, Guard()),
        cast(RegistrarService, None),
        cast(PresenceService, None),
        node_lost_s=5.0,
    )
    sync.seen, sync._seen_at = {"gw1": NOW - 1}, NOW
    assert sync.alive("gw1") and sync.alive("gw2")  # itself, always
    sync.seen = {"gw1": NOW - 6}
    assert not sync.alive("gw1") and not sync.alive("gw9")
