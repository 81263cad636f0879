"""Agent presence as an explicit state machine (SPEC R-4, and E-5 for emergency DND).

Theory of operation
-------------------
An agent's presence is derived, never stored as a free-form value. Four facts go in:

* ``chosen``: what the agent (or its desktop, over MQTT) asked for: Available, Away or
  DoNotDisturb;
* ``registered``: whether the agent has at least one live registration;
* ``active_calls`` against ``capacity``: the calls the agent is on;
* ``emergency``: the agent is on an emergency call (SPEC E-5: DND whatever it chose),
  on this node or, in a cluster, on another node that is alive (``emergency_elsewhere``).

and one status comes out, by the first row that applies:

==========================  ==============
condition                   effective
==========================  ==============
emergency call up           DoNotDisturb
not registered              Offline
chosen DoNotDisturb         DoNotDisturb
active_calls >= capacity    Busy
otherwise                   chosen
==========================  ==============

Every input is a method that returns a :class:`PresenceChanged` fact when the effective
status moved (or ``None``), with the previous status and the reason; the caller persists
and publishes it. Because ``chosen`` is kept apart from the emergency override, the status
an agent chooses during an emergency call is the one that holds after it (E-5), and a
restart cannot leave an agent in DND: the emergency flag is not persisted as a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.events.schema import PresenceReason

__all__ = ["CHOOSABLE", "AgentPresence", "PresenceChanged", "Status"]


class Status(StrEnum):
    """The five presence statuses of SPEC R-4 (MQTT payload values)."""

    AVAILABLE = "Available"
    BUSY = "Busy"
    AWAY = "Away"
    DND = "DoNotDisturb"
    OFFLINE = "Offline"


#: statuses an agent may choose; Busy and Offline are derived
CHOOSABLE: frozenset[Status] = frozenset({Status.AVAILABLE, Status.AWAY, Status.DND})


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """The effective status of an agent moved."""

    agent_id: str
    status: Status
    previous: Status
    reason: PresenceReason
    at: float
    #: the desktop's own words for a ``desktop`` change (checked, bounded), else None
    note: str | None = None


@dataclass(slots=True)
class AgentPresence:
    """The presence inputs of one agent and the status they give."""

    agent_id: str
    capacity: int = 1
    chosen: Status = Status.AVAILABLE
    registered: bool = False
    active_calls: int = 0
    emergency_calls: int = 0
    effective: Status = Status.OFFLINE
    #: unix time of the end of the agent's last call (longest idle first, SPEC R-3)
    idle_since: float = 0.0
    #: the other cluster node on which the agent's emergency call is up, if any (issue #12)
    emergency_elsewhere: str | None = None

    def derive(self) -> Status:
        """The effective status the inputs give (see the table above)."""
        if self.emergency_calls > 0 or self.emergency_elsewhere is not None:
            return Status.DND
        if not self.registered:
            return Status.OFFLINE
        if self.chosen is Status.DND:
            return Status.DND
        if self.active_calls >= self.capacity:
            return Status.BUSY
        return self.chosen

    def _update(
        self, reason: PresenceReason, now: float, note: str | None = None
    ) -> PresenceChanged | None:
        new = self.derive()
        if new is self.effective:
            return None
        previous = self.effective
        self.effective = new
        return PresenceChanged(self.agent_id, new, previous, reason, now, note)

    # -- inputs ------------------------------------------------------------------------

    def choose(
        self,
        status: Status,
        now: float,
        reason: PresenceReason = PresenceReason.DESKTOP,
        note: str | None = None,
    ) -> PresenceChanged | None:
        """The agent asks for ``status`` (Available, Away or DoNotDisturb); ``note`` is its
        own words (e.g. "lunch"), carried on the change it causes."""
        if status not in CHOOSABLE:
            raise ValueError(f"{status} cannot be chosen; it is derived")
        self.chosen = status
        return self._update(reason, now, note)

    def set_registered(
        self, registered: bool, now: float, *, removed: bool = False
    ) -> PresenceChanged | None:
        """Registered or not; ``removed``: the phone itself unregistered (Expires 0)."""
        self.registered = registered
        if registered:
            reason = PresenceReason.REGISTERED
        elif removed:
            reason = PresenceReason.UNREGISTERED
        else:
            reason = PresenceReason.REGISTRATION_EXPIRED
        return self._update(reason, now)

    def call_started(self, now: float) -> PresenceChanged | None:
        self.active_calls += 1
        return self._update(PresenceReason.CALL_STARTED, now)

    def call_ended(self, now: float) -> PresenceChanged | None:
        self.active_calls = max(0, self.active_calls - 1)
        if self.active_calls == 0:
            self.idle_since = now
        return self._update(PresenceReason.CALL_ENDED, now)

    def emergency_started(self, now: float) -> PresenceChanged | None:
        """An emergency call (or callback) of this agent is up: DND (E-5)."""
        self.emergency_calls += 1
        return self._update(PresenceReason.EMERGENCY_CALL, now)

    def emergency_ended(self, now: float) -> PresenceChanged | None:
        """The emergency call ended: back to what the inputs say (E-5)."""
        self.emergency_calls = max(0, self.emergency_calls - 1)
        return self._update(PresenceReason.EMERGENCY_ENDED, now)

    # -- queue eligibility -------------------------------------------------------------

    @property
    def can_take_queue_call(self) -> bool:
        """Available and under capacity (SPEC R-3)."""
        return self.derive() is Status.AVAILABLE and self.active_calls < self.capacity
