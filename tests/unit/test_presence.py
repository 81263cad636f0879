"""The presence state machine (SPEC R-4, E-5) and the queue dispatcher's choices (R-3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.b2bua.call import Call, Leg, NextHop
from gateway.b2bua.queues import QueueManager
from gateway.config.loader import load_dialplan_text
from gateway.events.ports import Topics
from gateway.events.schema import MAX_NOTE_LENGTH, PresenceReason
from gateway.presence.service import PresenceService
from gateway.presence.state import AgentPresence, PresenceChanged, Status
from gateway.sip.message import Request
from gateway.sip.transaction import Address
from gateway.stores.ports import Binding, PresenceRecord

# -- the state machine -------------------------------------------------------------------------


def effective(agent: AgentPresence) -> Status:
    """``agent.effective`` read afresh: mypy keeps an attribute narrowed by an earlier
    ``assert ... is`` across the method calls that change it."""
    return agent.effective


def test_offline_until_registered_then_the_chosen_status() -> None:
    agent = AgentPresence("alice")
    assert agent.derive() is Status.OFFLINE
    change = agent.set_registered(True, 1.0)
    assert change == PresenceChanged(
        "alice", Status.AVAILABLE, Status.OFFLINE, PresenceReason.REGISTERED, 1.0
    )
    assert agent.set_registered(True, 2.0) is None  # no change, no event


def test_busy_is_derived_from_capacity() -> None:
    agent = AgentPresence("alice", capacity=2, registered=True, effective=Status.AVAILABLE)
    assert agent.call_started(1.0) is None
    change = agent.call_started(2.0)
    assert change is not None and change.status is Status.BUSY
    change = agent.call_ended(3.0)
    assert change is not None and change.status is Status.AVAILABLE
    assert agent.idle_since == 0.0  # still on one call
    agent.call_ended(4.0)
    assert agent.idle_since == 4.0


@pytest.mark.parametrize("status", [Status.BUSY, Status.OFFLINE])
def test_derived_statuses_cannot_be_chosen(status: Status) -> None:
    with pytest.raises(ValueError):
        AgentPresence("alice").choose(status, 1.0)


def test_dnd_wins_over_busy_and_away_is_kept_when_registered_again() -> None:
    agent = AgentPresence("alice", registered=True, effective=Status.AVAILABLE)
    agent.choose(Status.DND, 1.0)
    agent.call_started(2.0)
    assert agent.effective is Status.DND
    agent.call_ended(3.0)
    agent.choose(Status.AWAY, 4.0)
    agent.set_registered(False, 5.0)
    assert effective(agent) is Status.OFFLINE
    agent.set_registered(True, 6.0)
    assert effective(agent) is Status.AWAY


def test_emergency_dnd_restores_the_status_chosen_during_the_call() -> None:
    """SPEC E-5: DND on dial whatever the status; the status chosen meanwhile is restored."""
    agent = AgentPresence("alice", registered=True, effective=Status.AVAILABLE)
    agent.choose(Status.AWAY, 1.0)
    change = agent.emergency_started(2.0)
    assert change is not None and change.status is Status.DND and change.previous is Status.AWAY
    assert agent.choose(Status.AVAILABLE, 3.0) is None  # still DND while the call is up
    change = agent.emergency_ended(4.0)
    assert change is not None and change.status is Status.AVAILABLE


def test_queue_eligibility() -> None:
    agent = AgentPresence("alice", capacity=1, registered=True, effective=Status.AVAILABLE)
    assert agent.can_take_queue_call
    agent.call_started(1.0)
    assert not agent.can_take_queue_call
    agent.call_ended(2.0)
    agent.choose(Status.AWAY, 3.0)
    assert not agent.can_take_queue_call


# -- the published changes ---------------------------------------------------------------------

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_every_change_is_published_with_a_reason_from_the_enum_and_the_desktop_note() -> None:
    """Issue 8 hole 7: reasons are the documented kinds; the desktop's own words survive."""
    publisher = FakePublisher()
    clock = Clock()
    presence = PresenceService(
        {"alice": 1}, FakeStore(), publisher, Topics("p", "gw1"), "gw1", wall_clock=clock
    )
    presence.set_registered("alice", True)
    assert presence.choose("alice", Status.AWAY, note="lunch")
    presence.call_started("alice")
    presence.call_ended("alice")
    presence.emergency_started("alice")
    presence.emergency_ended("alice")
    presence.set_registered("alice", False)
    presence.announce()
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "presence.v1.json").read_text(encoding="utf-8"))
    )
    for _topic, payload, retain in publisher.published:
        validator.validate(payload)
        assert retain
    assert [(p["status"], p["reason"], p.get("note")) for _, p, _ in publisher.published] == [
        ("Available", PresenceReason.REGISTERED, None),
        ("Away", PresenceReason.DESKTOP, "lunch"),
        ("Busy", PresenceReason.CALL_STARTED, None),
        ("Away", PresenceReason.CALL_ENDED, None),
        ("DoNotDisturb", PresenceReason.EMERGENCY_CALL, None),
        ("Away", PresenceReason.EMERGENCY_ENDED, None),
        ("Offline", PresenceReason.REGISTRATION_EXPIRED, None),
        ("Offline", PresenceReason.GATEWAY_STARTED, None),
    ]


@pytest.mark.parametrize("note", ["x" * (MAX_NOTE_LENGTH + 1), "lunch\nbreak", "\x00", 5])
def test_a_bad_desktop_note_refuses_the_whole_command(note: Any) -> None:
    publisher = FakePublisher()
    presence = PresenceService({"alice": 1}, FakeStore(), publisher, Topics("p", "gw1"), "gw1")
    presence.set_registered("alice", True)
    assert not presence.choose("alice", Status.AWAY, note=note)
    assert presence.status("alice") is Status.AVAILABLE
    assert len(publisher.published) == 1  # only the registration
    assert presence.choose("alice", Status.AWAY, note="x" * MAX_NOTE_LENGTH)


# -- the queue dispatcher, with a fake placer ---------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.records: list[PresenceRecord] = []

    async def get(self, agent_id: str) -> PresenceRecord | None:
        return None

    async def put(self, record: PresenceRecord) -> None:
        self.records.append(record)

    async def all(self) -> list[PresenceRecord]:
        return []


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], bool]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.published.append((topic_suffix, payload, retain))


class FakePlacer:
    def __init__(self) -> None:
        self.offers: list[tuple[str, str | None]] = []
        self.failed: list[tuple[str, int]] = []
        self.timers: list[Any] = []

    def offer(self, call: Call, hop: NextHop) -> None:
        self.offers.append((call.id, hop.agent))

    def abandon_offer(self, call: Call) -> None:
        pass

    def overflow_to(self, call: Call, hops: list[NextHop]) -> None:
        pass

    def fail_caller(self, call: Call, status: int, reason: str | None) -> None:
        self.failed.append((call.id, status))

    def call_later(self, delay: float, callback: Any) -> object:
        self.timers.append(callback)
        return None


DIALPLAN = """
version: 1
listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]
agents:
  alice: { password: a, queues: [support] }
  bob: { password: b, queues: [support] }
  carol: { password: c, queues: [sales] }
queues:
  support: { max_wait_s: 30, overflow: { status: 486 } }
  sales: {}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup() -> tuple[QueueManager, PresenceService, FakePlacer, Clock]:
    dialplan = load_dialplan_text(DIALPLAN, "t.yaml")
    clock = Clock()
    presence = PresenceService(
        {a: 1 for a in dialplan.agents},
        FakeStore(),
        FakePublisher(),
        Topics("p", "gw1"),
        "gw1",
        wall_clock=clock,
    )
    placer = FakePlacer()

    def contacts(agent: str) -> list[Binding]:
        return [
            Binding(agent, f"sip:{agent}@127.0.0.1:5070", 2e9, "c", 1, "udp:127.0.0.1:5070", "ua")
        ]

    queues = QueueManager(dialplan, presence, contacts, placer)
    return queues, presence, placer, clock


def _call(n: int) -> Call:
    invite = Request("INVITE", "sip:+15555550100@127.0.0.1", [])
    leg = Leg("a", f"cid{n}", f"tag{n}", Address("udp", "127.0.0.2", 5060), invite)
    return Call(id=f"call{n}", a=leg, dialled="+15555550100", started_at=0.0)


def test_no_offer_until_an_agent_is_available(setup: Any) -> None:
    queues, presence, placer, _clock = setup
    queues.enqueue(_call(1), "support", 0)
    assert placer.offers == []
    presence.set_registered("carol", True)  # serves another queue
    assert placer.offers == []
    presence.set_registered("bob", True)
    assert placer.offers == [("call1", "bob")]


def test_priority_then_arrival_and_longest_idle(setup: Any) -> None:
    queues, presence, placer, _clock = setup
    low, high, later_high = _call(1), _call(2), _call(3)
    queues.enqueue(low, "support", 0)
    queues.enqueue(high, "support", 5)
    queues.enqueue(later_high, "support", 5)
    presence.agents["bob"].idle_since = 10.0
    presence.agents["alice"].idle_since = 20.0
    presence.set_registered("alice", True)  # only alice: the best call goes to her
    assert placer.offers == [("call2", "alice")]
    presence.set_registered("bob", True)
    assert placer.offers[-1] == ("call3", "bob")


def test_a_refused_offer_moves_to_the_next_agent_and_back(setup: Any) -> None:
    queues, presence, placer, _clock = setup
    presence.agents["alice"].idle_since = 1.0
    presence.agents["bob"].idle_since = 2.0
    presence.set_registered("alice", True)
    presence.set_registered("bob", True)
    call = _call(1)
    queues.enqueue(call, "support", 0)
    assert placer.offers == [("call1", "alice")]
    queues.offer_failed(call, 408)
    assert placer.offers[-1] == ("call1", "bob")
    queues.offer_failed(call, 486)
    assert placer.offers[-1] == ("call1", "alice")  # both tried: another turn


def test_answered_call_makes_the_agent_busy_and_its_end_frees_it(setup: Any) -> None:
    queues, presence, placer, clock = setup
    presence.set_registered("alice", True)
    first, second = _call(1), _call(2)
    queues.enqueue(first, "support", 0)
    queues.enqueue(second, "support", 0)
    assert placer.offers == [("call1", "alice")]
    queues.answered(first)
    assert presence.status("alice") is Status.BUSY
    clock.now = 1005.0
    queues.call_ended(first)
    assert presence.status("alice") is Status.AVAILABLE
    assert presence.agents["alice"].idle_since == 1005.0
    assert placer.offers[-1] == ("call2", "alice")


def test_overflow_status_after_max_wait(setup: Any) -> None:
    queues, _presence, placer, _clock = setup
    call = _call(1)
    queues.enqueue(call, "support", 0)
    placer.timers[-1]()  # the max-wait timer fires
    assert placer.failed == [("call1", 486)]
    assert call.id not in queues.waiting


def test_caller_hangs_up_while_waiting(setup: Any) -> None:
    queues, presence, placer, _clock = setup
    call = _call(1)
    queues.enqueue(call, "support", 0)
    queues.call_ended(call)
    presence.set_registered("alice", True)
    assert placer.offers == []


def test_an_agent_who_refused_is_not_offered_the_call_again_until_it_has_rested(
    setup: Any,
) -> None:
    queues, presence, placer, _clock = setup
    presence.set_registered("alice", True)
    call = _call(1)
    queues.enqueue(call, "support", 0)
    assert placer.offers == [("call1", "alice")]
    queues.offer_failed(call, 486, refused=True)
    assert placer.offers == [("call1", "alice")]  # the only agent, and she said no
    presence.set_registered("bob", True)
    assert placer.offers[-1] == ("call1", "bob")  # another agent gets it at once
    queues.offer_failed(call, 408)  # bob lets it ring out: alice still rests
    assert placer.offers[1:] == [("call1", "bob"), ("call1", "bob")]
    placer.timers[1]()  # alice's rest is over (bob is ringing: nothing moves yet)
    assert len(placer.offers) == 3
    queues.offer_failed(call, 486, refused=True)  # bob says no: now he rests
    assert placer.offers[-1] == ("call1", "alice")


def test_an_explicit_unregister_says_so_and_an_expiry_says_expired() -> None:
    """Issue 15 hole 8: Expires 0 from the phone is ``unregistered``, not an expiry."""
    publisher = FakePublisher()
    presence = PresenceService(
        {"alice": 1}, FakeStore(), publisher, Topics("p", "gw1"), "gw1", wall_clock=Clock()
    )
    presence.set_registered("alice", True)
    presence.set_registered("alice", False, removed=True)
    presence.set_registered("alice", True)
    presence.set_registered("alice", False)
    reasons = [(p["status"], p["reason"]) for _, p, _ in publisher.published]
    assert reasons == [
        ("Available", "registered"),
        ("Offline", "unregistered"),
        ("Available", "registered"),
        ("Offline", "registration_expired"),
    ]
