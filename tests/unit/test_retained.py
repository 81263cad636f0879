"""Unit tests of gateway.events.retained: the retained-state registry and the republish
plan a (re)connection follows (issue 16), and the publisher's recording of retained topics."""

from __future__ import annotations

import json
from typing import Any

from gateway.events.mqtt import MqttPublisher, MqttSettings
from gateway.events.ports import Topics
from gateway.events.retained import (
    RetainedState,
    agent_of_topic,
    newer_timestamp,
    stale_topics,
)

PREFIX = "acme/gw"


def doc(status: str, timestamp: str = "2025-01-31T12:00:00.000Z") -> bytes:
    return json.dumps({"status": status, "timestamp": timestamp}).encode()


def plan_topics(state: RetainedState, held: dict[str, bytes] | None = None) -> list[str]:
    return [item.topic for item in state.republish_plan(held)]


def test_latest_payload_per_topic_is_kept_in_first_recorded_order() -> None:
    state = RetainedState()
    state.record("p/a", doc("Available"))
    state.record("p/b", doc("Away"))
    state.record("p/a", doc("Busy"))
    assert state.topics() == ["p/a", "p/b"]
    assert state.payload("p/a") == doc("Busy")
    assert [item.payload for item in state.republish_plan()] == [doc("Busy"), doc("Away")]


def test_an_empty_payload_clears_and_forgets_the_topic() -> None:
    state = RetainedState()
    state.record("p/a", doc("Available"))
    state.record("p/a", b"")
    assert "p/a" not in state and len(state) == 0
    assert plan_topics(state) == []


def test_only_topics_whose_latest_state_was_not_delivered_on_this_connection_are_resent() -> None:
    state = RetainedState()
    first = state.record("p/a", doc("Available"))
    state.record("p/b", doc("Away"))
    state.new_connection()
    state.delivered("p/a", first)  # the backlog carried a's latest state
    assert plan_topics(state) == ["p/b"]
    newer = state.record("p/a", doc("Busy"))  # a changed again, not yet delivered
    assert plan_topics(state) == ["p/a", "p/b"]
    state.delivered("p/a", newer)
    state.delivered("p/a", first)  # a late, older ack does not undo it
    assert plan_topics(state) == ["p/b"]


def test_a_new_connection_forgets_what_the_previous_one_delivered() -> None:
    state = RetainedState()
    seq = state.record("p/a", doc("Available"))
    state.new_connection()
    state.delivered("p/a", seq)
    assert plan_topics(state) == []
    state.new_connection()  # the broker restarted without persistence
    assert plan_topics(state) == ["p/a"]


def test_what_the_broker_holds_already_is_not_resent() -> None:
    state = RetainedState()
    state.record("p/same", doc("Available"))
    state.record("p/older", doc("Away", "2025-01-31T12:00:00.000Z"))
    state.record("p/newer", doc("Away", "2025-01-31T12:00:00.000Z"))
    state.record("p/missing", doc("Available"))
    held = {
        "p/same": doc("Available"),
        "p/older": doc("Busy", "2025-01-31T11:59:59.999Z"),  # ours is newer: resend
        "p/newer": doc("Busy", "2025-01-31T12:00:00.001Z"),  # another node's is newer
    }
    assert plan_topics(state, held) == ["p/older", "p/missing"]
    assert plan_topics(state, None) == ["p/same", "p/older", "p/newer", "p/missing"]


def test_newer_timestamp_needs_two_gateway_timestamps() -> None:
    early, late = doc("A", "2025-01-31T12:00:00.000Z"), doc("A", "2025-01-31T12:00:01.000Z")
    assert newer_timestamp(late, early) and not newer_timestamp(early, late)
    assert not newer_timestamp(early, early)
    assert not newer_timestamp(b"not json", early) and not newer_timestamp(late, b"[1]")
    assert not newer_timestamp(json.dumps({"timestamp": 5}).encode(), early)


def test_agent_of_topic_takes_exactly_agents_agent_kind() -> None:
    assert agent_of_topic(PREFIX, f"{PREFIX}/agents/alice/presence") == "alice"
    assert agent_of_topic(PREFIX, f"{PREFIX}/agents/alice/location") == "alice"
    assert agent_of_topic(PREFIX, f"{PREFIX}/agents/alice/presence/set") is None
    assert agent_of_topic(PREFIX, f"{PREFIX}/agents//presence") is None
    assert agent_of_topic(PREFIX, f"{PREFIX}/nodes/gw1/status") is None
    assert agent_of_topic(PREFIX, "other/agents/alice/presence") is None


def test_stale_topics_are_those_of_agents_no_longer_configured() -> None:
    state = RetainedState()
    state.record(f"{PREFIX}/agents/alice/presence", doc("Available"))
    held = [
        f"{PREFIX}/agents/alice/presence",
        f"{PREFIX}/agents/alice/location",  # configured, not published yet: kept
        f"{PREFIX}/agents/zed/presence",  # removed from the dialplan
        f"{PREFIX}/agents/zed/lockdown",
        f"{PREFIX}/nodes/gw2/status",  # not an agent topic
    ]
    configured = {"alice", "bob"}
    assert stale_topics(PREFIX, held, state, configured.__contains__) == [
        f"{PREFIX}/agents/zed/presence",
        f"{PREFIX}/agents/zed/lockdown",
    ]


def test_the_publisher_records_retained_topics_and_never_events() -> None:
    publisher = MqttPublisher(MqttSettings("mqtt://127.0.0.1:1"), Topics(PREFIX, "gw1"))
    event: dict[str, Any] = {"version": 1, "event": "dialled"}
    publisher.publish("emergency/c1", event, retain=False)
    publisher.publish("agents/alice/presence", {"status": "Available"}, retain=True)
    publisher.publish("agents/bob/presence", {"status": "Away"}, retain=True)
    publisher.publish("agents/bob/presence", {}, retain=True)  # clear
    assert publisher.retained_topics == [f"{PREFIX}/agents/alice/presence"]
    queued = [
        (topic, payload, retain) for topic, payload, retain, _ in publisher._buffer.peek_all()
    ]
    assert queued[-1] == (f"{PREFIX}/agents/bob/presence", b"", True)  # a zero-length clear
    assert queued[0][1] == json.dumps(event, separators=(",", ":")).encode()
    publisher.publish("emergency/c1", {}, retain=False)  # not retained: an ordinary "{}"
    assert publisher._buffer.peek_all()[-1].payload == b"{}"
