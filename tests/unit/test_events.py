"""Unit tests of gateway.events without a broker: payload schemas, topics, the outage
buffer, the reconnect backoff and the publisher's enqueue path."""

from __future__ import annotations

import gc
import json
import re
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.events.buffer import Backoff, EventBuffer, backoff_delay
from gateway.events.commands import decode_presence_command
from gateway.events.mqtt import (
    MqttPublisher,
    MqttSettings,
    parse_broker_url,
)
from gateway.events.ports import Publisher, Topics
from gateway.events.schema import (
    EMERGENCY_EVENTS,
    LOCKDOWN_ACTIONS,
    MAX_NOTE_LENGTH,
    PRESENCE_REASONS,
    PRESENCE_STATUSES,
    LockdownReason,
    PresenceReason,
    emergency_payload,
    lockdown_payload,
    node_status_payload,
    presence_payload,
    rfc3339,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
MQTT_DOC = SCHEMAS.parent / "mqtt.md"
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
NOW = datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def _valid(name: str, payload: object) -> bool:
    return bool(_validator(name).is_valid(payload))


# -- schemas and builders --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "presence.v1.json",
        "node-status.v1.json",
        "presence-set.v1.json",
        "emergency-event.v1.json",
        "lockdown.v1.json",
    ],
)
def test_schema_files_are_valid_2020_12_and_their_examples_pass(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = _validator(name)
    assert schema["examples"]
    for example in schema["examples"]:
        validator.validate(example)


@pytest.mark.parametrize("status", PRESENCE_STATUSES)
@pytest.mark.parametrize("previous", [None, "Available", "Offline"])
def test_presence_payload_matches_schema(status: str, previous: str | None) -> None:
    payload = presence_payload(
        agent="alice",
        status=status,
        previous=previous,
        reason="desktop",
        node="gw1",
        timestamp=NOW,
    )
    _validator("presence.v1.json").validate(payload)
    assert payload == {
        "version": 1,
        "agent": "alice",
        "status": status,
        "previous": previous,
        "reason": "desktop",
        "timestamp": "2025-01-31T12:00:00.123Z",
        "node": "gw1",
    }


def test_presence_payload_rejects_unknown_status_like_the_schema() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        presence_payload(
            agent="a", status="Lunch", previous=None, reason="desktop", node="gw1", timestamp=NOW
        )
    bad = presence_payload(
        agent="a", status="Away", previous=None, reason="desktop", node="gw1", timestamp=NOW
    )
    bad["status"] = "Lunch"
    assert not _valid("presence.v1.json", bad)


def test_presence_payload_accepts_enum_members() -> None:
    import enum

    class Status(enum.StrEnum):
        AWAY = "Away"

    payload = presence_payload(
        agent="a", status=Status.AWAY, previous=None, reason="desktop", node="n", timestamp=NOW
    )
    assert payload["status"] == "Away"


def _documented_presence_reasons() -> list[str]:
    """The ``reason`` table rows of the presence section of docs/mqtt.md."""
    text = MQTT_DOC.read_text(encoding="utf-8")
    section = text.split("### Presence — ", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"^\s*\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_presence_reasons_are_one_enumeration_for_code_schema_and_docs() -> None:
    """Issue 8 hole 7: the enum, the schema's ``reason`` enum and the docs' table agree."""
    schema = json.loads((SCHEMAS / "presence.v1.json").read_text(encoding="utf-8"))
    assert schema["properties"]["reason"]["enum"] == list(PRESENCE_REASONS)
    for reason in PRESENCE_REASONS:
        assert reason in schema["properties"]["reason"]["description"]
    assert _documented_presence_reasons() == list(PRESENCE_REASONS)
    examples = [example["reason"] for example in schema["examples"]]
    assert set(examples) <= set(PRESENCE_REASONS)


def test_presence_payload_refuses_a_reason_outside_the_enum_like_the_schema() -> None:
    with pytest.raises(ValueError, match="reason must be one of"):
        presence_payload(
            agent="a", status="Away", previous=None, reason="lunch", node="n", timestamp=NOW
        )
    payload = presence_payload(
        agent="a",
        status="Away",
        previous=None,
        reason=PresenceReason.EMERGENCY_CALL,
        node="n",
        timestamp=NOW,
    )
    assert payload["reason"] == "emergency_call" and "note" not in payload
    assert not _valid("presence.v1.json", dict(payload, reason="emergency call"))


def test_presence_payload_carries_a_bounded_note_like_the_schema() -> None:
    def build(note: object) -> dict[str, Any]:
        return presence_payload(
            agent="a",
            status="Away",
            previous="Available",
            reason=PresenceReason.DESKTOP,
            node="n",
            timestamp=NOW,
            note=note,  # type: ignore[arg-type]
        )

    payload = build("lunch")
    assert payload["note"] == "lunch" and _valid("presence.v1.json", payload)
    assert _valid("presence.v1.json", build("é" * MAX_NOTE_LENGTH))
    for bad in ("x" * (MAX_NOTE_LENGTH + 1), "a\tb", "\x7f", 3):
        with pytest.raises(ValueError, match="note"):
            build(bad)
        assert not _valid("presence.v1.json", dict(payload, note=bad))


def test_lockdown_payloads_match_the_schema_and_its_enums() -> None:
    """SPEC E-8: active (call, since, reason, only end_call) and lifted; schema in step."""
    schema = json.loads((SCHEMAS / "lockdown.v1.json").read_text(encoding="utf-8"))
    assert schema["properties"]["reason"]["enum"] == [r.value for r in LockdownReason]
    assert schema["properties"]["allowed_actions"]["items"]["enum"] == list(LOCKDOWN_ACTIONS)
    assert LOCKDOWN_ACTIONS == ("end_call",)
    active = lockdown_payload(
        agent="alice",
        active=True,
        timestamp=NOW,
        call="c-1",
        since=NOW,
        reason=LockdownReason.EMERGENCY_CALLBACK,
        test=True,
    )
    assert active == {
        "version": 1,
        "agent": "alice",
        "active": True,
        "call": "c-1",
        "since": "2025-01-31T12:00:00.123Z",
        "reason": "emergency_callback",
        "allowed_actions": ["end_call"],
        "test": True,
        "timestamp": "2025-01-31T12:00:00.123Z",
    }
    lifted = lockdown_payload(agent="alice", active=False, timestamp=NOW, call="c-1")
    at_start = lockdown_payload(agent="alice", active=False, timestamp=NOW)
    for payload in (active, lifted, at_start):
        _validator("lockdown.v1.json").validate(payload)
    assert at_start["call"] is None and "allowed_actions" not in lifted
    # the schema refuses what the builder refuses
    assert not _valid("lockdown.v1.json", dict(active, call=None))
    assert not _valid("lockdown.v1.json", {k: v for k, v in active.items() if k != "since"})
    assert not _valid("lockdown.v1.json", dict(lifted, allowed_actions=["end_call"]))
    assert not _valid("lockdown.v1.json", dict(active, allowed_actions=["transfer"]))
    with pytest.raises(ValueError):
        lockdown_payload(agent="alice", active=True, timestamp=NOW, since=NOW, reason="x")
    with pytest.raises(ValueError):
        lockdown_payload(agent="alice", active=True, timestamp=NOW, call="c", reason="x")
    with pytest.raises(ValueError):
        lockdown_payload(
            agent="alice", active=True, timestamp=NOW, call="c", since=NOW, reason="lunch"
        )


def test_lockdown_is_documented_with_its_topic_and_schema() -> None:
    assert Topics("p", "gw1").lockdown_topic("alice") == "p/agents/alice/lockdown"
    text = MQTT_DOC.read_text(encoding="utf-8")
    assert "`<prefix>/agents/<agent>/lockdown`" in text
    assert "(schemas/lockdown.v1.json)" in text
    for word in [r.value for r in LockdownReason] + list(LOCKDOWN_ACTIONS):
        assert f"`{word}`" in text


class _Recording:
    """A Publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], bool]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.published.append((topic_suffix, payload, retain))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [payload for topic, payload, _ in self.published if topic == suffix]


async def test_emergency_hooks_lock_an_agent_down_from_the_first_call_to_the_last() -> None:
    """SPEC E-8: overlapping emergency calls (a second 911 is allowed) give one active and
    one lifted lock-down; every agent starts unlocked; a callback says so."""
    from gateway.b2bua.call import CallOutcome, EndKind
    from gateway.config.loader import load_dialplan_text
    from gateway.emergency.service import EmergencyCall, EmergencyService
    from gateway.presence.service import PresenceService

    dialplan = load_dialplan_text(
        "version: 1\n"
        "listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
        "agents:\n  alice: { password: a }\n  bob: { password: b }\n",
        "t.yaml",
    )
    publisher = _Recording()
    topics = Topics("p", "gw1")

    class NoReservations:
        async def live(self, now: float) -> list[Any]:
            return []

    presence = PresenceService({"alice": 1, "bob": 1}, _NoStore(), publisher, topics, "gw1")
    service = EmergencyService(
        dialplan,
        NoReservations(),  # type: ignore[arg-type]
        presence,
        publisher,
        topics,
        lambda agent: [],
    )
    await service.start()
    alice, bob = Topics.lockdown_suffix("alice"), Topics.lockdown_suffix("bob")
    assert [p["active"] for p in publisher.on(alice) + publisher.on(bob)] == [False, False]
    first = EmergencyCall(None, "alice", None, test=False)
    second = EmergencyCall(None, "alice", None, test=True)
    service.started("c-1", first)
    service.started("c-2", second)
    service.ended("c-1", first, CallOutcome(EndKind.COMPLETED))
    assert [(p["active"], p["call"]) for p in publisher.on(alice)[1:]] == [(True, "c-1")]
    service.ended("c-2", second, CallOutcome(EndKind.COMPLETED))
    assert [(p["active"], p["call"]) for p in publisher.on(alice)[1:]] == [
        (True, "c-1"),
        (False, "c-2"),
    ]
    callback = EmergencyCall(None, "bob", None, test=False, callback=True)
    service.started("c-3", callback)
    assert publisher.on(bob)[-1]["reason"] == "emergency_callback"
    for topic, payload, retain in publisher.published:
        if topic.endswith("/lockdown"):
            assert retain
            _validator("lockdown.v1.json").validate(payload)
    await presence.close()


class _NoStore:
    async def get(self, agent_id: str) -> None:
        return None

    async def put(self, record: Any) -> None:
        pass

    async def all(self) -> list[Any]:
        return []


@pytest.mark.parametrize("dropped", [None, 0, 3])
@pytest.mark.parametrize("status", ["online", "offline"])
def test_node_status_payload_matches_schema(status: str, dropped: int | None) -> None:
    payload = node_status_payload(node="gw1", status=status, timestamp=NOW, dropped_events=dropped)
    _validator("node-status.v1.json").validate(payload)
    assert ("dropped_events" in payload) is (dropped is not None)


def test_node_status_payload_refuses_bad_counts() -> None:
    with pytest.raises(ValueError):
        node_status_payload(node="gw1", status="online", timestamp=NOW, dropped_events=-1)
    with pytest.raises(ValueError):
        node_status_payload(node="gw1", status="up", timestamp=NOW)


_ATTEMPT: dict[str, object] = {
    "path": "direct-offer",
    "gateway": "udp:192.0.2.20:5060",
    "code": None,
    "error": "timeout",
    "detail": "no response (timer B)",
}
#: the fields the schema requires of some events (failover, failed)
REQUIRED_FOR: dict[str, dict[str, object]] = {
    "failover": _ATTEMPT,
    "failed": {"result": "failed", "status": 503, "attempts": [_ATTEMPT]},
}


@pytest.mark.parametrize("event", EMERGENCY_EVENTS)
def test_emergency_payload_matches_schema(event: str) -> None:
    payload = emergency_payload(
        call="c-1",
        event=event,
        timestamp=NOW,
        agent="alice",
        did="+15551230001",
        route="carrier-a",
        test=event == "trying",
        extra={"reason": "503 from carrier-a", **REQUIRED_FOR.get(event, {})},
    )
    _validator("emergency-event.v1.json").validate(payload)
    assert payload["reason"] == "503 from carrier-a"


def test_emergency_payload_nulls_and_guards() -> None:
    payload = emergency_payload(call="c-2", event="dialled", timestamp=NOW)
    _validator("emergency-event.v1.json").validate(payload)
    assert payload["agent"] is None and payload["did"] is None and payload["route"] is None
    assert payload["test"] is False
    with pytest.raises(ValueError, match="extra fields may not replace"):
        emergency_payload(call="c", event="dialled", timestamp=NOW, extra={"event": "x"})
    with pytest.raises(ValueError):
        emergency_payload(call="c", event="exploded", timestamp=NOW)
    wrong = dict(payload, event="exploded")
    assert not _valid("emergency-event.v1.json", wrong)


def test_rfc3339_is_utc_with_milliseconds() -> None:
    plus_two = datetime(2025, 6, 1, 14, 0, 0, 5000, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(plus_two) == "2025-06-01T12:00:00.005Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        rfc3339(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("raw", "accepted"),
    [
        (b'{"status": "Available"}', True),
        (b'{"status": "Away", "reason": "lunch", "version": 1, "x": [1]}', True),
        (b'{"status": "DoNotDisturb"}', True),
        (b'{"status": "Busy"}', False),
        (b'{"status": "Offline"}', False),
        (b'{"status": "available"}', False),
        (b'{"reason": "no status"}', False),
        (b'{"status": "Away", "version": 2}', False),
        (b'{"status": "Away", "reason": 5}', False),
        (b'{"status": "Away", "reason": "' + b"x" * MAX_NOTE_LENGTH + b'"}', True),
        (b'{"status": "Away", "reason": "' + b"x" * (MAX_NOTE_LENGTH + 1) + b'"}', False),
        (b'{"status": "Away", "reason": "lunch\\nbreak"}', False),
        (b'{"status": "Away", "reason": "\\u0000"}', False),
        (b'["Away"]', False),
        (b"Away", False),
        (b"\xff\xfe", False),
    ],
)
def test_presence_command_checks_agree_with_the_schema(raw: bytes, accepted: bool) -> None:
    decoded = decode_presence_command(raw)
    assert isinstance(decoded, dict) is accepted
    try:
        document: Any = json.loads(raw)
    except ValueError:
        return
    assert _valid("presence-set.v1.json", document) is accepted


def test_presence_command_size_and_depth_limits() -> None:
    assert isinstance(decode_presence_command(b" " * 5000 + b'{"status":"Away"}'), str)
    assert isinstance(decode_presence_command(b"[" * 3000), str)
    assert isinstance(decode_presence_command("not bytes"), str)


# -- topics ----------------------------------------------------------------------------------


def test_topic_layout() -> None:
    topics = Topics("/acme/gw/", "node-1")
    assert topics.prefix == "acme/gw"
    assert topics.presence_topic("alice") == "acme/gw/agents/alice/presence"
    assert topics.presence_set_topic("alice") == "acme/gw/agents/alice/presence/set"
    assert topics.presence_set_filter == "acme/gw/agents/+/presence/set"
    assert topics.emergency_topic("c-9") == "acme/gw/emergency/c-9"
    assert topics.node_status_topic == "acme/gw/nodes/node-1/status"
    assert Topics.presence_suffix("bob@example.com") == "agents/bob@example.com/presence"
    assert topics.full(Topics.emergency_suffix("c-9")) == topics.emergency_topic("c-9")
    assert topics.agent_from_set_topic("acme/gw/agents/alice/presence/set") == "alice"
    assert topics.agent_from_set_topic("acme/gw/agents/alice/presence") is None
    assert topics.agent_from_set_topic("other/agents/alice/presence/set") is None
    assert topics.agent_from_set_topic("acme/gw/agents/a/b/presence/set") is None


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x\x00"])
def test_topic_segments_are_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        Topics.presence_suffix(bad)
    with pytest.raises(ValueError):
        Topics("p", bad)


@pytest.mark.parametrize("bad", ["", "/", "a/+/b", "a/#", "a//b"])
def test_topic_prefix_is_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        Topics(bad, "n")


# -- broker settings -------------------------------------------------------------------------


def test_broker_urls() -> None:
    plain = parse_broker_url("mqtt://broker.local")
    assert plain == ("broker.local", 1883, None, None, False)
    tls = parse_broker_url("mqtts://gw%40acme:p%3Ass@[::1]:18883")
    assert tls == ("::1", 18883, "gw@acme", "p:ss", True)
    assert parse_broker_url("mqtts://h").port == 8883
    for bad in ("http://h", "mqtt://", "mqtt://h:99999", "mqtt://h/topic", "h:1883"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def test_settings_validation_and_tls_context() -> None:
    assert MqttSettings("mqtt://h").tls_context() is None
    assert MqttSettings("mqtts://h").tls_context() is not None
    with pytest.raises(ValueError):
        MqttSettings("mqtt://h", ca_file=Path("/etc/ssl/certs/ca-certificates.crt"))
    with pytest.raises(ValueError):
        MqttSettings("mqtt://h", buffer_size=0)


# -- the outage buffer -----------------------------------------------------------------------


def test_buffer_drops_oldest_and_counts() -> None:
    buffer: EventBuffer[int] = EventBuffer(5)
    dropped = [buffer.append(i) for i in range(8)]
    assert dropped == [False] * 5 + [True] * 3
    assert buffer.dropped == 3
    assert buffer.peek_all() == [3, 4, 5, 6, 7]
    assert len(buffer) == 5


def test_buffer_batches_ack_and_requeue_keep_order() -> None:
    buffer: EventBuffer[int] = EventBuffer(10)
    for i in range(6):
        buffer.append(i)
    assert buffer.take(4) == [0, 1, 2, 3]
    assert buffer.in_flight == 4 and len(buffer) == 6
    with pytest.raises(RuntimeError):
        buffer.take(1)
    buffer.append(6)
    buffer.requeue()  # connection lost before the PUBACKs
    assert buffer.peek_all() == [0, 1, 2, 3, 4, 5, 6]
    assert buffer.take(3) == [0, 1, 2]
    buffer.ack()
    assert buffer.published == 3
    assert buffer.peek_all() == [3, 4, 5, 6]
    assert buffer.take(100) == [3, 4, 5, 6]
    buffer.ack()
    assert buffer.take(5) == [] and len(buffer) == 0


def test_buffer_requeue_over_capacity_drops_the_oldest() -> None:
    buffer: EventBuffer[int] = EventBuffer(3)
    for i in range(3):
        buffer.append(i)
    assert buffer.take(2) == [0, 1]
    buffer.append(3)
    buffer.append(4)  # queue [2, 3, 4] is full; 0 and 1 are in flight
    assert buffer.dropped == 0
    buffer.requeue()
    assert buffer.peek_all() == [2, 3, 4]
    assert buffer.dropped == 2


# -- reconnect backoff -----------------------------------------------------------------------


def test_backoff_sequence_with_injected_random() -> None:
    low = Backoff(base=0.5, cap=30.0, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(9)] == [
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        15.0,
        15.0,
        15.0,
    ]
    values = iter([0.5, 0.999, 0.0, 0.25])
    mixed = Backoff(base=0.5, cap=30.0, rand=lambda: next(values))
    assert [mixed.next_delay() for _ in range(3)] == pytest.approx([0.375, 0.9995, 1.0])
    mixed.reset()
    assert mixed.attempt == 0
    assert mixed.next_delay() == pytest.approx(0.3125)


def test_backoff_never_exceeds_cap_and_survives_huge_attempts() -> None:
    assert backoff_delay(10_000, 0.999999, base=0.5, cap=30.0) <= 30.0
    assert backoff_delay(0, 0.999999, base=0.5, cap=30.0) < 0.5
    with pytest.raises(ValueError):
        Backoff(base=0.0, cap=1.0, rand=lambda: 0.0)


# -- the publisher's enqueue path (no broker) ------------------------------------------------


def _publisher(buffer_size: int = 10_000) -> MqttPublisher:
    return MqttPublisher(
        MqttSettings("mqtt://127.0.0.1:1", buffer_size=buffer_size), Topics("t", "gw1")
    )


def test_publisher_satisfies_the_port() -> None:
    assert isinstance(_publisher(), Publisher)


def test_publish_never_raises_and_drops_oldest_when_full() -> None:
    publisher = _publisher(buffer_size=5)
    for i in range(8):
        publisher.publish(f"emergency/c{i}", {"n": i}, retain=False)
    publisher.publish("emergency/+", {"n": "bad topic"}, retain=False)
    publisher.publish("", {"n": "empty topic"}, retain=False)
    publisher.publish("emergency/x", {"n": object()}, retain=False)
    publisher.publish("emergency/x", {"n": float("nan")}, retain=False)
    stats = publisher.stats
    assert (stats.queued, stats.dropped, stats.published, stats.connected) == (5, 3, 0, False)
    held = publisher._buffer.peek_all()
    assert [json.loads(item.payload)["n"] for item in held] == [3, 4, 5, 6, 7]
    assert held[0].topic == "t/emergency/c3"


def _timed(call: Callable[[], None]) -> tuple[float, float, int]:
    """Wall time, thread CPU time and voluntary context switches (blocking) of ``call``."""
    before = resource.getrusage(_RUSAGE).ru_nvcsw
    cpu = time.thread_time()
    wall = time.perf_counter()
    call()
    wall = time.perf_counter() - wall
    cpu = time.thread_time() - cpu
    return wall, cpu, resource.getrusage(_RUSAGE).ru_nvcsw - before


def test_publish_is_fast() -> None:
    """publish() stays under 1 ms. A call over 1 ms of wall time is excused only if it never
    blocked (no voluntary context switch) and used under 1 ms of CPU: that is the scheduler
    running someone else on a busy machine, not publish() waiting."""
    publisher = _publisher()
    payload = presence_payload(
        agent="alice",
        status="Away",
        previous="Available",
        reason="desktop",
        node="gw1",
        timestamp=NOW,
    )
    gc.disable()  # a collection pause is not publish() blocking
    try:
        samples = [
            _timed(lambda: publisher.publish("agents/alice/presence", payload, retain=True))
            for _ in range(2000)
        ]
    finally:
        gc.enable()
    slow = [s for s in samples if s[0] >= 0.001 and (s[1] >= 0.001 or s[2] > 0)]
    assert slow == []
    assert sorted(s[0] for s in samples)[len(samples) // 2] < 0.0001  # median under 100 us
    assert publisher.stats.queued == 2000


def test_commands_are_checked_before_the_callback() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def on_command(agent: str, status: str, raw: dict[str, Any]) -> None:
        seen.append((agent, status, raw))
        if status == "Away":
            raise RuntimeError("handler bug")

    publisher = MqttPublisher(MqttSettings("mqtt://h"), Topics("t", "gw1"), on_command=on_command)
    handle = publisher._handle_command
    handle("t/agents/a1/presence/set", b'{"status":"Busy"}', retained=False)
    handle("t/agents/a1/presence/set", b'{"status":"Available"}', retained=True)
    handle("t/agents/a1/presence", b'{"status":"Available"}', retained=False)
    handle("t/agents/a1/presence/set", b"garbage", retained=False)
    assert seen == []
    handle("t/agents/a1/presence/set", b'{"status":"Away"}', retained=False)  # handler raises
    handle("t/agents/a2/presence/set", b'{"status":"DoNotDisturb"}', retained=False)
    assert seen == [
        ("a1", "Away", {"status": "Away"}),
        ("a2", "DoNotDisturb", {"status": "DoNotDisturb"}),
    ]
