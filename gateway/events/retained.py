"""The retained state the gateway owns on the broker, and what to resend on (re)connect.

Theory of operation
-------------------
A broker that restarts without persistence forgets every retained message: a desktop or
wallboard that subscribes afterwards gets no presence for an agent whose status did not
change during the outage, and cannot tell whether she is Available. So the publisher keeps
:class:`RetainedState`, the *latest* payload of every retained topic it has published
(presence and lock-down per agent, per-agent location, whatever is added later: any
``publish(..., retain=True)`` is recorded, nothing registers by hand). Publishing an empty
retained payload clears the topic on the broker and forgets it here.

Each recorded payload carries a sequence number. The sender reports, per connection, which
sequence of each topic the broker acknowledged (:meth:`RetainedState.delivered`). When a
connection's outage backlog has drained, :meth:`RetainedState.republish_plan` lists the
topics whose latest payload has *not* gone over this connection -- they are sent once, and
nothing else is: the buffered history still goes out once, in order, and a retained topic
whose latest payload was in that history is not sent again. Emergency events are never
retained, so they are never in this registry and never repeated by it.

What the broker already holds (learned on connect from a brief subscription, see
:mod:`gateway.events.mqtt`) refines the plan: a topic the broker holds with the same
payload is not resent (a network blip with a persistent broker costs nothing), and a topic
the broker holds with a *newer* ``timestamp`` is left alone (in a cluster another node may
have published a later state for the same agent). :func:`stale_topics` names the retained
agent topics the broker holds that should no longer exist: those of agents that are not
configured any more.

Pure data, no I/O and no clock: the MQTT adapter feeds it and acts on its answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Republish", "RetainedState", "agent_of_topic", "newer_timestamp", "stale_topics"]


@dataclass(frozen=True, slots=True)
class Republish:
    """One retained topic to send again: its full name, latest payload and sequence."""

    topic: str
    payload: bytes
    seq: int


class RetainedState:
    """The latest payload of every retained topic the gateway owns (full topic names)."""

    __slots__ = ("_delivered", "_latest", "_seq")

    def __init__(self) -> None:
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._delivered: dict[str, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._latest)

    def __contains__(self, topic: object) -> bool:
        return topic in self._latest

    def record(self, topic: str, payload: bytes) -> int:
        """Remember ``payload`` as ``topic``'s current retained state; an empty payload
        (a clear) forgets the topic. Returns the sequence number of this state."""
        self._seq += 1
        if payload:
            self._latest[topic] = (self._seq, payload)
        else:
            self._latest.pop(topic, None)
        return self._seq

    def payload(self, topic: str) -> bytes | None:
        """The current payload of ``topic``, or ``None`` when the gateway does not own it."""
        entry = self._latest.get(topic)
        return None if entry is None else entry[1]

    def topics(self) -> list[str]:
        """Every owned topic, in the order first recorded."""
        return list(self._latest)

    def new_connection(self) -> None:
        """A new broker connection: nothing has been delivered over it yet."""
        self._delivered.clear()

    def delivered(self, topic: str, seq: int) -> None:
        """The broker acknowledged state ``seq`` of ``topic`` over the current connection."""
        if seq > self._delivered.get(topic, 0):
            self._delivered[topic] = seq

    def forget(self, topic: str) -> None:
        """Stop owning ``topic`` (its clear is sent by the caller)."""
        self._latest.pop(topic, None)

    def republish_plan(self, held: Mapping[str, bytes] | None = None) -> list[Republish]:
        """Owned topics whose latest state has not been delivered over this connection,
        in the order first recorded.

        ``held`` is what the broker retained when this connection opened (``None`` if it
        could not be learned): a topic held with the same payload, or with a newer
        ``timestamp`` than ours, is left out.
        """
        plan: list[Republish] = []
        for topic, (seq, payload) in self._latest.items():
            if self._delivered.get(topic, 0) >= seq:
                continue
            if held is not None:
                on_broker = held.get(topic)
                if on_broker == payload or (
                    on_broker is not None and newer_timestamp(on_broker, payload)
                ):
                    continue
            plan.append(Republish(topic, payload, seq))
        return plan


def newer_timestamp(candidate: bytes, ours: bytes) -> bool:
    """Whether the JSON payload ``candidate`` has a later ``timestamp`` than ``ours``.

    Gateway timestamps are RFC 3339 UTC with milliseconds and a ``Z`` (one fixed width),
    so they order as strings. A payload that is not such JSON is never newer.
    """
    theirs, mine = _timestamp(candidate), _timestamp(ours)
    return theirs is not None and mine is not None and theirs > mine


def _timestamp(payload: bytes) -> str | None:
    try:
        decoded = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(decoded, dict):
        return None
    value = decoded.get("timestamp")
    return value if isinstance(value, str) and value.endswith("Z") else None


def agent_of_topic(prefix: str, topic: str) -> str | None:
    """The agent in ``<prefix>/agents/<agent>/<kind>`` (exactly that shape), else ``None``."""
    head = f"{prefix}/agents/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) != 2 or not all(levels):
        return None
    return levels[0]


def stale_topics(
    prefix: str,
    held: Iterable[str],
    state: RetainedState,
    is_current_agent: Callable[[str], bool],
) -> list[str]:
    """Retained ``<prefix>/agents/<agent>/<kind>`` topics on the broker (``held``) that
    should no longer exist: their agent is not configured any more (removed from the
    dialplan) and the gateway does not own them now. Topics of configured agents are left
    alone even when this process has not published them (yet), so that nothing current
    flickers off while start-up publishes it.
    """
    stale: list[str] = []
    for topic in held:
        agent = agent_of_topic(prefix, topic)
        if agent is None or topic in state or is_current_agent(agent):
            continue
        stale.append(topic)
    return stale
