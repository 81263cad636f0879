"""Versioned MQTT payloads (SPEC M-1) and the functions that build them.

Theory of operation
-------------------
Every payload is a JSON object with ``"version": 1``. The JSON Schemas (draft 2020-12)
that desktops can validate against live in ``docs/schemas/*.v1.json``; the builders here
produce dicts that satisfy them and raise :class:`ValueError` on arguments that would not.
Adding an optional field keeps version 1 (consumers must ignore fields they do not know);
a breaking change bumps ``version`` and the topic stays the same.

Timestamps are RFC 3339 strings in UTC with millisecond precision
(``2025-01-31T12:00:00.123Z``). The caller passes the time in (no hidden clock).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

__all__ = [
    "AGENT_SETTABLE_STATUSES",
    "EMERGENCY_EVENTS",
    "LOCKDOWN_ACTIONS",
    "MAX_NOTE_LENGTH",
    "PRESENCE_REASONS",
    "PRESENCE_STATUSES",
    "SCHEMA_VERSION",
    "EmergencyEvent",
    "LockdownAction",
    "LockdownReason",
    "NodeStatus",
    "PresenceReason",
    "PresenceStatus",
    "check_note",
    "emergency_payload",
    "lockdown_payload",
    "node_status_payload",
    "presence_payload",
    "rfc3339",
]

SCHEMA_VERSION: Final = 1

PresenceStatus = Literal["Available", "Busy", "Away", "DoNotDisturb", "Offline"]
PRESENCE_STATUSES: Final[tuple[str, ...]] = (
    "Available",
    "Busy",
    "Away",
    "DoNotDisturb",
    "Offline",
)
AGENT_SETTABLE_STATUSES: Final[tuple[str, ...]] = ("Available", "Away", "DoNotDisturb")
"""What an agent may ask for on ``.../presence/set``; Busy and Offline are derived (R-4)."""


class PresenceReason(StrEnum):
    """Why an agent's presence changed: the ``reason`` of ``presence.v1`` (SPEC M-1, R-4).

    The one list of reasons: the code publishes these, ``docs/schemas/presence.v1.json``
    has them as its ``reason`` enum and ``docs/mqtt.md`` describes each (a unit test fails
    when they drift). A desktop's own words go in the payload's ``note``, never here.
    """

    GATEWAY_STARTED = "gateway_started"
    """The gateway (re)started and republishes the status it restored."""
    DESKTOP = "desktop"
    """The agent's desktop asked for a status on ``.../presence/set``."""
    REGISTERED = "registered"
    """The agent's phone registered (it was Offline)."""
    REGISTRATION_EXPIRED = "registration_expired"
    """The agent's last registration expired (the phone stopped refreshing it): Offline."""
    UNREGISTERED = "unregistered"
    """The agent's phone removed its last registration (REGISTER with Expires 0): Offline."""
    CALL_STARTED = "call_started"
    """A call of the agent started (Busy at capacity)."""
    CALL_ENDED = "call_ended"
    """A call of the agent ended."""
    EMERGENCY_CALL = "emergency_call"
    """The agent dialled an emergency call or an emergency callback rings: DND (E-5)."""
    EMERGENCY_ENDED = "emergency_ended"
    """The emergency call ended: the status from before (or chosen during) it (E-5)."""


PRESENCE_REASONS: Final[tuple[str, ...]] = tuple(reason.value for reason in PresenceReason)
MAX_NOTE_LENGTH: Final = 200
"""Longest ``note`` (a desktop's free text) a presence payload carries, in characters."""


class LockdownReason(StrEnum):
    """Why an agent's phone is locked down (``lockdown.v1``, SPEC E-8, C-4)."""

    EMERGENCY_CALL = "emergency_call"
    """The agent dialled an emergency call."""
    EMERGENCY_CALLBACK = "emergency_callback"
    """The emergency services called the agent back (C-4)."""


class LockdownAction(StrEnum):
    """What a desktop may still offer while the agent's phone is locked down (E-8)."""

    END_CALL = "end_call"
    """Hang up the emergency call (the only thing the agent side may do)."""


LOCKDOWN_ACTIONS: Final[tuple[str, ...]] = (LockdownAction.END_CALL.value,)
"""``allowed_actions`` of an active lock-down: only ending the call (E-8)."""

NodeStatus = Literal["online", "offline"]
NODE_STATUSES: Final[tuple[str, ...]] = ("online", "offline")

EmergencyEvent = Literal[
    "dialled",
    "route_chosen",
    "trying",
    "failover",
    "answered",
    "failed",
    "ended",
    "callback_reserved",
    "callback_ringing",
    "callback_answered",
    "notification_sent",
    "notification_failed",
    "notification_retrying",
]
EMERGENCY_EVENTS: Final[tuple[str, ...]] = (
    "dialled",
    "route_chosen",
    "trying",
    "failover",
    "answered",
    "failed",
    "ended",
    "callback_reserved",
    "callback_ringing",
    "callback_answered",
    "notification_sent",
    "notification_failed",
    "notification_retrying",
)

_EMERGENCY_CORE_KEYS: Final = frozenset(
    {"version", "call", "event", "agent", "did", "route", "test", "timestamp"}
)


def rfc3339(moment: datetime) -> str:
    """Format an aware ``datetime`` as RFC 3339 UTC with milliseconds and a ``Z``."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _enum_value(value: object) -> object:
    """Accept plain strings and ``Enum`` members whose value is the string."""
    return value.value if isinstance(value, enum.Enum) else value


def _one_of(value: object, allowed: tuple[str, ...], what: str) -> str:
    value = _enum_value(value)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _text(value: object, what: str, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


def check_note(value: object, what: str = "note") -> str | None:
    """A desktop's free-text reason as a payload ``note``: ``None`` or a string of at most
    :data:`MAX_NOTE_LENGTH` characters without control characters; else :class:`ValueError`.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r}")
    if len(value) > MAX_NOTE_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NOTE_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"{what} contains control characters")
    return value


def presence_payload(
    *,
    agent: str,
    status: str,
    previous: str | None,
    reason: str,
    node: str,
    timestamp: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    """Payload for ``<prefix>/agents/<agent>/presence`` (schema ``presence.v1.json``).

    ``status``/``previous`` are presence statuses (``previous`` is ``None`` for the first
    one); ``reason`` is a :class:`PresenceReason` (or its value) saying why it changed;
    ``note`` (included when not ``None``) is the desktop's own words for a ``desktop``
    change, see :func:`check_note`; ``node`` is the gateway node that made the change.
    """
    payload: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "agent": _text(agent, "agent"),
        "status": _one_of(status, PRESENCE_STATUSES, "status"),
        "previous": (
            None if previous is None else _one_of(previous, PRESENCE_STATUSES, "previous")
        ),
        "reason": _one_of(reason, PRESENCE_REASONS, "reason"),
        "timestamp": rfc3339(timestamp),
        "node": _text(node, "node"),
    }
    checked_note = check_note(note)
    if checked_note is not None:
        payload["note"] = checked_note
    return payload


def node_status_payload(
    *,
    node: str,
    status: str,
    timestamp: datetime,
    dropped_events: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Payload for ``<prefix>/nodes/<node>/status`` (schema ``node-status.v1.json``).

    ``dropped_events`` (included when not ``None``) is the number of events this process
    has dropped from its full buffer since it started; ``reason`` is an optional hint
    (``"shutdown"``, ``"connection_lost"``).
    """
    payload: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "node": _text(node, "node"),
        "status": _one_of(status, NODE_STATUSES, "status"),
        "timestamp": rfc3339(timestamp),
    }
    if dropped_events is not None:
        if isinstance(dropped_events, bool) or not isinstance(dropped_events, int):
            raise ValueError(f"dropped_events must be an integer, not {dropped_events!r}")
        if dropped_events < 0:
            raise ValueError("dropped_events cannot be negative")
        payload["dropped_events"] = dropped_events
    if reason is not None:
        payload["reason"] = _text(reason, "reason")
    return payload


def emergency_payload(
    *,
    call: str,
    event: str,
    timestamp: datetime,
    agent: str | None = None,
    did: str | None = None,
    route: str | None = None,
    test: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Payload for ``<prefix>/emergency/<call>`` (schema ``emergency-event.v1.json``).

    ``did`` is the callback DID, ``route`` the route/trunk taken, ``test`` marks E-12 test
    calls. ``extra`` adds event-specific fields (``"reason"``, ``"code"``,
    ``"reused_oldest": true``, ...); it may not replace the core fields.
    """
    if not isinstance(test, bool):
        raise ValueError(f"test must be a boolean, not {test!r}")
    payload: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "call": _text(call, "call"),
        "event": _one_of(event, EMERGENCY_EVENTS, "event"),
        "agent": _text(agent, "agent", nullable=True),
        "did": _text(did, "did", nullable=True),
        "route": _text(route, "route", nullable=True),
        "test": test,
        "timestamp": rfc3339(timestamp),
    }
    if extra:
        clash = _EMERGENCY_CORE_KEYS.intersection(extra)
        if clash:
            raise ValueError(f"extra fields may not replace {', '.join(sorted(clash))}")
        payload.update(extra)
    return payload


def lockdown_payload(
    *,
    agent: str,
    active: bool,
    timestamp: datetime,
    call: str | None = None,
    since: datetime | None = None,
    reason: str | None = None,
    test: bool = False,
) -> dict[str, Any]:
    """Payload for ``<prefix>/agents/<agent>/lockdown`` (schema ``lockdown.v1.json``).

    Active (an emergency call or callback of the agent is up, E-8): ``call`` is that call,
    ``since`` when it started, ``reason`` a :class:`LockdownReason`, ``test`` marks E-12
    test calls, and ``allowed_actions`` is :data:`LOCKDOWN_ACTIONS`. Inactive: ``call`` is
    the call whose end lifted it (``None`` at start-up); nothing else.
    """
    if not isinstance(active, bool) or not isinstance(test, bool):
        raise ValueError("active and test must be booleans")
    payload: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "agent": _text(agent, "agent"),
        "active": active,
        "call": _text(call, "call", nullable=not active),
        "timestamp": rfc3339(timestamp),
    }
    if active:
        if since is None:
            raise ValueError("an active lock-down needs since")
        payload["since"] = rfc3339(since)
        payload["reason"] = _one_of(reason, tuple(LockdownReason), "reason")
        payload["allowed_actions"] = list(LOCKDOWN_ACTIONS)
        payload["test"] = test
    return payload
