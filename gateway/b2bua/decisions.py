"""What the call layer decides with, and whom it tells: decisions and ports, typed.

Theory of operation
-------------------
The B2BUA asks its :class:`Router` where a new call goes and gets a :data:`Decision`:

* :class:`Outbound` -- place the B-leg at these hops, in order (failover);
* :class:`Queued` -- the caller waits in a queue, the :class:`QueuePort` offers it to agents;
* :class:`Emergency` -- an emergency call or callback, never refused (SPEC E-1..E-3, C-1);
* :class:`RouteRefusal` -- a final answer now (404, 407 challenge, 403...).

While a call runs, the B2BUA tells every :class:`CallObserver` neutral facts about it --
started, a B-leg attempt tried, an attempt failed (a typed :class:`LegFailure`), answered,
ended (``call.outcome``) -- and the observers (queues, call history, the emergency edge) do
their part; the B2BUA has no branch of theirs. Two decisions must be taken inside a step and
stay explicit, typed hooks of :class:`EmergencyHooks`: the B-leg INVITE's decoration
(identity, priority, location) and the in-dialog lock-down verdict (SPEC E-8); the callback
DID reservation (SPEC E-4) is the one awaited step before an emergency B-leg leaves.

This module imports nothing above the call layer: the emergency facts are the
:class:`~gateway.b2bua.call.EmergencyFacts` protocol, which the emergency package's
``EmergencyCall`` satisfies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.b2bua.call import Call, EmergencyFacts, LegFailure, NextHop
from gateway.sip.message import Request
from gateway.sip.transaction import Address

__all__ = [
    "CallObserver",
    "CallObserverBase",
    "Decision",
    "Emergency",
    "EmergencyHooks",
    "Outbound",
    "QueuePort",
    "Queued",
    "RouteRefusal",
    "Router",
]


@dataclass(frozen=True, slots=True)
class RouteRefusal:
    """The router's answer when the call cannot go anywhere (or must authenticate first)."""

    status: int
    reason: str
    warning: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Outbound:
    """Place the B-leg at these hops, in order; ``agent`` is the calling agent, if any;
    ``caller_id`` the E.164 number to present (None: anonymous)."""

    hops: list[NextHop]
    agent: str | None = None
    caller_id: str | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """The call waits in ``queue`` (SPEC R-3)."""

    queue: str
    priority: int
    trunk: str | None = None


@dataclass(frozen=True, slots=True)
class Emergency:
    """An emergency call or callback: hops in order, never refused (SPEC E-1..E-3, C-1).

    ``call`` is the emergency facts the hooks and observers get back; ``warning`` is the
    Warning of the 503 when there is no hop at all.
    """

    call: EmergencyFacts
    hops: list[NextHop]
    warning: str | None = None


Decision = Outbound | Queued | Emergency | RouteRefusal


class Router(Protocol):
    """Chooses where the B-leg of a call goes."""

    def route(
        self, request: Request, dialled: str, source: Address
    ) -> list[NextHop] | Decision: ...


class CallObserver(Protocol):
    """Told the neutral facts of every call, in order; must not block, may not refuse.

    An observer that raises is logged and the call goes on.
    """

    def call_started(self, call: Call) -> None:
        """The call was routed (not refused): it is going somewhere or waiting."""

    def attempt_tried(self, call: Call, hop: NextHop) -> None:
        """A B-leg INVITE is about to leave for ``hop``."""

    def attempt_failed(self, call: Call, failure: LegFailure) -> None:
        """The current attempt failed (a failover may follow)."""

    def call_answered(self, call: Call) -> None:
        """The B-leg answered (2xx) and the answer went to the caller."""

    def call_ended(self, call: Call) -> None:
        """The call is over; ``call.outcome`` says how."""


class CallObserverBase:
    """A :class:`CallObserver` that ignores everything: subclass it and keep what you need."""

    def call_started(self, call: Call) -> None:
        pass

    def attempt_tried(self, call: Call, hop: NextHop) -> None:
        pass

    def attempt_failed(self, call: Call, failure: LegFailure) -> None:
        pass

    def call_answered(self, call: Call) -> None:
        pass

    def call_ended(self, call: Call) -> None:
        pass


class EmergencyHooks(Protocol):
    """The decisions the emergency edge takes inside a step of an emergency call."""

    async def reserve(self, call_id: str, emergency: EmergencyFacts) -> None:
        """Reserve (or renew) the caller's callback DID before the B-leg leaves (E-4)."""

    def decorate_b_invite(
        self, emergency: EmergencyFacts, hop: NextHop, invite: Request, host: str
    ) -> None:
        """Identity, priority and location of the emergency B-leg INVITE (E-4, E-10)."""

    def in_dialog_allowed(
        self, emergency: EmergencyFacts, from_agent: bool, request: Request
    ) -> tuple[bool, str]:
        """SPEC E-8: may this in-dialog request pass, and the Warning when it may not."""
        ...


class QueuePort(Protocol):
    """The queue dispatcher as the B2BUA sees it (it answers via the B2BUA's placer port)."""

    def enqueue(self, call: Call, queue: str, priority: int) -> None: ...

    def offer_failed(self, call: Call, status: int, *, refused: bool = False) -> None: ...
