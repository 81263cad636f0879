"""The event-publishing port (SPEC M-1, E-7) and the MQTT topic layout.

Theory of operation
-------------------
Code that raises events (presence changes, emergency-call progress) depends only on the
:class:`Publisher` protocol. ``publish()`` is synchronous and never blocks and never
raises: an adapter merely enqueues the event and delivers it later from its own task, so a
slow or absent broker can never delay SIP handling (E-7). Topics are given as a *suffix*
(``agents/alice/presence``); the adapter prepends the configured prefix.

:class:`Topics` is the single place where the topic layout is spelled out::

    <prefix>/agents/<agent>/presence       retained, QoS 1   (gateway -> desktops)
    <prefix>/agents/<agent>/presence/set   QoS 1             (desktops -> gateway)
    <prefix>/agents/<agent>/lockdown       retained, QoS 1   (gateway -> desktops)
    <prefix>/agents/<agent>/location       retained, QoS 1   (gateway -> desktops)
    <prefix>/agents/<agent>/location/set   QoS 1             (desktops -> gateway)
    <prefix>/agents/<agent>/location/ack   QoS 1             (gateway -> desktops)
    <prefix>/emergency/<call>              QoS 1             (gateway -> desktops)
    <prefix>/nodes/<node>/status           retained, QoS 1, last will "offline"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Publisher", "Topics", "check_topic_segment"]

_FORBIDDEN_IN_SEGMENT = frozenset("/+#\x00")


@runtime_checkable
class Publisher(Protocol):
    """Where events go. Implementations enqueue and return at once."""

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        """Queue ``payload`` (a JSON-serialisable dict) for ``<prefix>/<topic_suffix>``.

        Must not block, must not raise: an event that cannot be queued (bad topic,
        payload that is not JSON) is logged and dropped. Events are delivered in the order
        they were published, with QoS 1; ``retain`` asks the broker to keep the last one.
        With ``retain``, ``payload`` is the topic's current state (the MQTT adapter sends it
        again after a broker lost it) and an empty ``payload`` (``{}``) clears the topic.
        """
        ...


def check_topic_segment(value: str, what: str) -> str:
    """Return ``value`` if it can be one MQTT topic level, else raise :class:`ValueError`.

    A level must be non-empty and may not contain ``/``, the wildcards ``+``/``#`` or NUL.
    """
    if not value or any(ch in _FORBIDDEN_IN_SEGMENT for ch in value):
        raise ValueError(f"{what} {value!r} cannot be used as an MQTT topic level")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic layout under ``prefix`` for the gateway node ``node``.

    Methods named ``*_suffix`` return the part after the prefix (what
    :meth:`Publisher.publish` takes); methods named ``*_topic`` return full topic names.
    Identifiers that cannot be a topic level raise :class:`ValueError`.
    """

    prefix: str
    node: str

    def __post_init__(self) -> None:
        prefix = self.prefix.strip("/")
        if not prefix or any(ch in "+#\x00" for ch in prefix) or "//" in prefix:
            raise ValueError(f"MQTT topic prefix {self.prefix!r} is not a valid topic")
        object.__setattr__(self, "prefix", prefix)
        check_topic_segment(self.node, "node name")

    # -- suffixes (what Publisher.publish takes) -------------------------------------------

    @staticmethod
    def presence_suffix(agent: str) -> str:
        """``agents/<agent>/presence``: an agent's current presence (retained)."""
        return f"agents/{check_topic_segment(agent, 'agent id')}/presence"

    @staticmethod
    def lockdown_suffix(agent: str) -> str:
        """``agents/<agent>/lockdown``: whether the agent's phone is locked down (E-8)."""
        return f"agents/{check_topic_segment(agent, 'agent id')}/lockdown"

    @staticmethod
    def location_suffix(agent: str) -> str:
        """``agents/<agent>/location``: an agent's dispatchable location (retained, E-10)."""
        return f"agents/{check_topic_segment(agent, 'agent id')}/location"

    @staticmethod
    def location_ack_suffix(agent: str) -> str:
        """``agents/<agent>/location/ack``: the answer to each location command."""
        return f"{Topics.location_suffix(agent)}/ack"

    @staticmethod
    def emergency_suffix(call: str) -> str:
        """``emergency/<call>``: progress events of one emergency call."""
        return f"emergency/{check_topic_segment(call, 'call id')}"

    def node_status_suffix(self) -> str:
        """``nodes/<node>/status``: this node's online/offline status (retained)."""
        return f"nodes/{self.node}/status"

    # -- full topic names --------------------------------------------------------------------

    def full(self, suffix: str) -> str:
        """Prepend the prefix to ``suffix``."""
        return f"{self.prefix}/{suffix}"

    def presence_topic(self, agent: str) -> str:
        """``<prefix>/agents/<agent>/presence`` (retained)."""
        return self.full(self.presence_suffix(agent))

    def presence_set_topic(self, agent: str) -> str:
        """``<prefix>/agents/<agent>/presence/set``: where an agent's desktop sends commands."""
        return f"{self.presence_topic(agent)}/set"

    @property
    def presence_set_filter(self) -> str:
        """``<prefix>/agents/+/presence/set``: the subscription for every agent's commands."""
        return self.full("agents/+/presence/set")

    def lockdown_topic(self, agent: str) -> str:
        """``<prefix>/agents/<agent>/lockdown`` (retained)."""
        return self.full(self.lockdown_suffix(agent))

    def location_set_topic(self, agent: str) -> str:
        """``<prefix>/agents/<agent>/location/set``: where a desktop confirms a location."""
        return f"{self.full(self.location_suffix(agent))}/set"

    @property
    def location_set_filter(self) -> str:
        """``<prefix>/agents/+/location/set``: the subscription for location commands."""
        return self.full("agents/+/location/set")

    def agent_from_location_set_topic(self, topic: str) -> str | None:
        """The agent id in a ``.../agents/<agent>/location/set`` topic, or ``None``."""
        return self._agent_in(topic, "/location/set")

    def emergency_topic(self, call: str) -> str:
        """``<prefix>/emergency/<call>``."""
        return self.full(self.emergency_suffix(call))

    @property
    def node_status_topic(self) -> str:
        """``<prefix>/nodes/<node>/status`` (retained; the connection's last will)."""
        return self.full(self.node_status_suffix())

    def agent_from_set_topic(self, topic: str) -> str | None:
        """The agent id in a ``.../agents/<agent>/presence/set`` topic, or ``None``."""
        return self._agent_in(topic, "/presence/set")

    def _agent_in(self, topic: str, tail: str) -> str | None:
        """The agent id of ``<prefix>/agents/<agent><tail>``, or ``None``."""
        head = f"{self.prefix}/agents/"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        agent = topic[len(head) : len(topic) - len(tail)]
        if not agent or any(ch in _FORBIDDEN_IN_SEGMENT for ch in agent):
            return None
        return agent
