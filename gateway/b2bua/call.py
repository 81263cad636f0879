"""A call: two legs that talk only through call-control steps (sippy/b2bua layering).

Theory of operation
-------------------
An INVITE from outside (the A-leg, where we are the UAS) creates a :class:`Call`. Routing
gives an ordered list of next hops (a trunk's gateways); the call places the B-leg (where we
are the UAC) at the first one and moves to the next on a failover code, a transaction
timeout, a transport failure, or when no provisional response arrives in time.

State of a call, and the step that moves it on:

=========  ===========================  ==========
state      step                         next state
=========  ===========================  ==========
routing    B-leg INVITE sent            trying
trying     1xx from B (relayed to A)    early
trying     failover step                trying (next gateway)
early      2xx from B (relayed to A)    confirmed
trying     final error, no more hops    ended
early      final error                  ended
any        CANCEL from A                ended (487 to A, CANCEL to B)
confirmed  BYE from either leg          ended
=========  ===========================  ==========

The legs have independent Call-IDs, tags and CSeqs; bodies (SDP, multipart) pass through
untouched. Offer/answer: when A's INVITE carries the offer, B's 2xx is ACKed at once; when
A's INVITE has no body (delayed offer), the ACK to B waits for A's ACK and carries its body.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.sip.dialog import Dialog
from gateway.sip.message import Request, Response
from gateway.sip.transaction import Address, ClientTransaction, ServerTransaction

__all__ = ["Call", "CallState", "Leg", "NextHop", "RelayedRequest"]


class CallState(Enum):
    ROUTING = "routing"
    TRYING = "trying"
    EARLY = "early"
    CONFIRMED = "confirmed"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class NextHop:
    """One place to send the B-leg: a trunk gateway."""

    trunk: str
    address: Address
    user: str
    failover_codes: frozenset[int]
    provisional_timeout: float
    #: Request-URI to use instead of ``sip:<user>@<address>`` (a registered Contact)
    request_uri: str | None = None
    #: Timer C for this hop (longest ringing after a 1xx); None: the B2BUA's default
    ring_timeout: float | None = None
    #: the agent this hop rings (queue offers)
    agent: str | None = None
    #: the hop takes the caller's location by value (RFC 6442, SPEC E-10)
    accepts_location: bool = False


@dataclass(slots=True)
class Leg:
    """One side of a call and its dialog.

    ``flow`` is the address requests to this side go to when its dialog has no route set:
    the source of the A-leg INVITE (so replies reach a peer behind NAT or over its own TCP
    connection) or the gateway the B-leg went to.
    """

    side: str  # "a" or "b"
    call_id: str
    local_tag: str
    flow: Address
    invite: Request | None = None
    dialog: Dialog | None = None
    server_tx: ServerTransaction | None = None  # A-leg INVITE
    client_tx: ClientTransaction | None = None  # B-leg INVITE
    got_provisional: bool = False
    got_final: bool = False
    hop: NextHop | None = None


@dataclass(slots=True)
class RelayedRequest:
    """Ties a client transaction on one leg to the server transaction it relays."""

    call: Call
    server_tx: ServerTransaction | None
    to_leg: Leg
    from_leg: Leg
    request: Request
    client_tx: ClientTransaction | None = None
    pending_2xx: Response | None = None
    acked: bool = False


@dataclass(slots=True)
class Call:
    """Both legs of one B2BUA call and where it stands."""

    id: str
    a: Leg
    dialled: str
    started_at: float
    hops: list[NextHop] = field(default_factory=list)
    hop_index: int = -1
    b: Leg | None = None
    state: CallState = CallState.ROUTING
    cancelled: bool = False
    cancel_sent: bool = False
    answered_at: float | None = None
    ended_at: float | None = None
    result: str = ""
    ack_waits_for_a: bool = False
    provisional_timer: asyncio.TimerHandle | None = None
    attempts: list[str] = field(default_factory=list)
    pending_b_2xx: Response | None = None
    #: "outbound" (from an agent or a lab source) or "inbound" (from a trunk)
    direction: str = "outbound"
    #: the queue the call waits in (inbound), None once it has left it
    queue: str | None = None
    #: the agent on this call: the caller (outbound) or the one who answered (inbound)
    agent: str | None = None
    #: the trunk an inbound call came from
    source_trunk: str | None = None
    #: the first queue an inbound call waited in (kept for the call history)
    history_queue: str | None = None
    #: emergency calls and callbacks: no call history, no recording (SPEC E-9)
    private: bool = False
    #: the emergency facts (gateway.emergency.service.EmergencyCall) of such a call
    emergency: Any = None

    @property
    def current_hop(self) -> NextHop | None:
        if 0 <= self.hop_index < len(self.hops):
            return self.hops[self.hop_index]
        return None

    def other(self, leg: Leg) -> Leg | None:
        return self.b if leg is self.a else self.a

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED
