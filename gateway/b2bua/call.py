"""A call: two legs that talk only through call-control steps (sippy/b2bua layering).

Theory of operation
-------------------
An INVITE from outside (the A-leg, where we are the UAS) creates a :class:`Call`. Routing
gives an ordered list of next hops (a trunk's gateways); the call places the B-leg (where we
are the UAC) at the first one and moves to the next on a failover code, a transaction
timeout, a transport failure (an ICMP port unreachable included), when no provisional
response arrives in time, or, on emergency hops (``NextHop.setup_timeout``), when a 100
Trying is followed by no 18x or 2xx in time (the stuck leg is CANCELled). Each failed
attempt is a :class:`LegFailure`; how the call ended is a :class:`CallOutcome`.

State of a call: :data:`CALL_TRANSITIONS`, state -> input -> next state, as in the
transaction layer (an input missing from a state's row is absorbed: nothing changes).
:meth:`Call.step` applies one input; the B2BUA parts do the actions around it:

=========  ===========  ==========  ==========================================
state      input        next state  when
=========  ===========  ==========  ==========================================
routing    place        trying      the B-leg INVITE goes to a hop (or an agent)
trying     place        trying      failover: the next gateway, the next agent
trying     progress     early       a 1xx other than 100 from B (relayed to A)
trying     answer       confirmed   a 2xx from B (relayed to A)
early      place        trying      failover after ringing (a queue's next agent)
early      answer       confirmed   a 2xx from B
any        end          ended       final error, CANCEL from A, BYE, no ACK
=========  ===========  ==========  ==========================================

The legs have independent Call-IDs, tags and CSeqs; bodies (SDP, multipart) pass through
untouched. Offer/answer: when A's INVITE carries the offer, B's 2xx is ACKed at once; when
A's INVITE has no body (delayed offer), the ACK to B waits for A's ACK and carries its body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Literal, Protocol

from gateway.b2bua.timers import Timer
from gateway.config.trunk_auth import TrunkCredentials
from gateway.sip.dialog import Dialog
from gateway.sip.message import REASON_PHRASES, Request, Response
from gateway.sip.transaction import Address, ClientTransaction, ServerTransaction

__all__ = [
    "CALL_TRANSITIONS",
    "Call",
    "CallInput",
    "CallOutcome",
    "CallState",
    "EmergencyFacts",
    "EndKind",
    "FailureKind",
    "Leg",
    "LegFailure",
    "LegSession",
    "NextHop",
    "RelayedRequest",
    "Side",
]


class CallState(Enum):
    ROUTING = "routing"
    TRYING = "trying"
    EARLY = "early"
    CONFIRMED = "confirmed"
    ENDED = "ended"


class CallInput(Enum):
    """What moves a call on (the inputs of :data:`CALL_TRANSITIONS`)."""

    PLACE = "place"
    PROGRESS = "progress"
    ANSWER = "answer"
    END = "end"


#: state -> input -> next state (the table in this module's docstring)
CALL_TRANSITIONS: dict[CallState, dict[CallInput, CallState]] = {
    CallState.ROUTING: {CallInput.PLACE: CallState.TRYING, CallInput.END: CallState.ENDED},
    CallState.TRYING: {
        CallInput.PLACE: CallState.TRYING,
        CallInput.PROGRESS: CallState.EARLY,
        CallInput.ANSWER: CallState.CONFIRMED,
        CallInput.END: CallState.ENDED,
    },
    CallState.EARLY: {
        CallInput.PLACE: CallState.TRYING,
        CallInput.ANSWER: CallState.CONFIRMED,
        CallInput.END: CallState.ENDED,
    },
    CallState.CONFIRMED: {CallInput.END: CallState.ENDED},
    CallState.ENDED: {},
}

#: which side of the call a leg is: "a" (we are its UAS) or "b" (we are its UAC)
Side = Literal["a", "b"]


class EmergencyFacts(Protocol):
    """What the call layer reads of an emergency call's facts.

    The emergency package's ``EmergencyCall`` has these (and more); the call layer hands
    the object back to the emergency hooks and observers without looking further.
    """

    @property
    def callback(self) -> bool:
        """An emergency callback (services -> agent) rather than an agent's call."""
        ...

    @property
    def agent(self) -> str | None:
        """The agent on the call, when identified."""
        ...


class FailureKind(StrEnum):
    """Why one attempt (the B-leg at one gateway) failed.

    The values are the ``error`` of the emergency ``failover`` event and of each entry of
    the ``failed`` event's ``attempts`` (docs/schemas/emergency-event.v1.json takes them
    from here; a unit test fails when they drift).
    """

    #: a final response 300-699 (its status is the failure's ``code``)
    STATUS = "status"
    #: no response at all (Timer B, RFC 3261 section 17.1.1.2)
    TIMEOUT = "timeout"
    #: no provisional response within the hop's provisional timeout (SPEC E-2)
    PROVISIONAL_TIMEOUT = "provisional_timeout"
    #: a 100 Trying, then no 18x or 2xx within the hop's setup timeout (emergency hops)
    SETUP_TIMEOUT = "setup_timeout"
    #: it rang, and no answer came within Timer C (RFC 3261 section 16.6 step 11)
    RING_TIMEOUT = "ring_timeout"
    #: nothing listens there (ICMP port unreachable, TCP connection refused)
    REFUSED = "refused"
    #: the send failed otherwise (no route to host, name not resolved, connection lost)
    TRANSPORT = "transport"
    #: a response we could not use (malformed): treated as 502
    BAD_RESPONSE = "bad_response"


#: the status a caller gets when an attempt that failed this way was the last one
_FAILURE_STATUS = {
    FailureKind.TIMEOUT: 408,
    FailureKind.PROVISIONAL_TIMEOUT: 408,
    FailureKind.SETUP_TIMEOUT: 408,
    FailureKind.RING_TIMEOUT: 408,
    FailureKind.REFUSED: 503,
    FailureKind.TRANSPORT: 503,
    FailureKind.BAD_RESPONSE: 502,
}


@dataclass(frozen=True, slots=True)
class LegFailure:
    """One failed attempt: the path (route or trunk), the gateway, and why.

    ``gateway`` is ``transport:host:port``; ``code`` is the far end's final status (only
    for :attr:`FailureKind.STATUS`, else None); ``detail`` says it in words (the reason
    phrase, or what timed out or failed).
    """

    path: str
    gateway: str
    code: int | None
    kind: FailureKind
    detail: str

    @property
    def status(self) -> int:
        """The status to answer the caller with if nothing else is tried."""
        if self.code is not None:
            return self.code
        return _FAILURE_STATUS.get(self.kind, 503)

    @property
    def reason(self) -> str:
        if self.kind is FailureKind.STATUS and self.detail:
            return self.detail
        return REASON_PHRASES.get(self.status, "Service Unavailable")

    def describe(self) -> str:
        """``<path> <gateway> <code> <detail>``: one item of a Warning text."""
        code = f"{self.code} " if self.code is not None else ""
        return f"{self.path} {self.gateway} {code}{self.detail}"

    def as_event(self) -> dict[str, Any]:
        """The fields of a ``failover`` event / an ``attempts`` entry (JSON)."""
        return {
            "path": self.path,
            "gateway": self.gateway,
            "code": self.code,
            "error": self.kind.value,
            "detail": self.detail,
        }


class EndKind(StrEnum):
    """How a call ended (the ``result`` of the emergency ``ended``/``failed`` events)."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    NO_ACK = "no_ack"
    #: the gateway hung up on stopping (ordinary calls after the drain time, SPEC O-7;
    #: every call on a second stop signal)
    DRAINED = "drained"
    #: a leg's session expired unrefreshed, or its refresh failed (RFC 4028 section 10):
    #: the far end vanished, BYE on both legs (an emergency call: only both legs dead)
    SESSION_EXPIRED = "session_expired"


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How a call ended, as a value: the kind, the final status the caller got when it
    failed, and every failed attempt in order."""

    kind: EndKind
    status: int | None = None
    attempts: tuple[LegFailure, ...] = ()

    @property
    def failed(self) -> bool:
        return self.kind is EndKind.FAILED

    @property
    def text(self) -> str:
        """The call-history (CDR) form: ``failed 503``, ``completed``, ``no ACK``..."""
        if self.kind is EndKind.FAILED:
            return f"failed {self.status}" if self.status is not None else "failed"
        if self.kind is EndKind.NO_ACK:
            return "no ACK"
        return self.kind.value


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
    #: after a 100 Trying, longest wait for an 18x or 2xx before the next hop (emergency
    #: hops, SPEC E-2); None: a 100 is progress enough (ordinary calls)
    setup_timeout: float | None = None
    #: a trusted trunk: P-Asserted-Identity goes there even with Privacy: id (RFC 3325)
    trusted: bool = False
    #: digest credentials for the trunk's 401/407 (answered once per request, issue 13)
    credentials: TrunkCredentials | None = None
    #: Route headers of the INVITE (a registered contact's Path, RFC 3327; ``address`` is
    #: then their first hop)
    route: tuple[str, ...] = ()

    @property
    def gateway(self) -> str:
        """``transport:host:port``, as events and Warning texts name a gateway."""
        return f"{self.address.transport}:{self.address.host}:{self.address.port}"


@dataclass(slots=True)
class LegSession:
    """The session timer of one leg (RFC 4028; :mod:`gateway.b2bua.sessions`).

    ``interval`` is the negotiated Session-Expires in seconds; ``we_refresh``: we send the
    refreshes (else the peer does and we watch for them). ``timer`` is the refresh or the
    expiry deadline; ``dead``: the leg expired or a refresh of ours failed (408, 481, no
    answer). ``stated``: the peer was told the interval (so our requests repeat it).
    """

    interval: int
    we_refresh: bool
    allows_update: bool
    stated: bool
    timer: Timer | None = None
    dead: bool = False


@dataclass(slots=True)
class Leg:
    """One side of a call and its dialog.

    ``flow`` is the address requests to this side go to when its dialog has no route set:
    the source of the A-leg INVITE (so replies reach a peer behind NAT or over its own TCP
    connection) or the gateway the B-leg went to.
    """

    side: Side
    call_id: str
    local_tag: str
    flow: Address
    #: the INVITE of this leg: received (A) or sent (B)
    invite: Request
    dialog: Dialog | None = None
    server_tx: ServerTransaction | None = None  # A-leg INVITE
    client_tx: ClientTransaction | None = None  # B-leg INVITE
    got_provisional: bool = False
    #: an 18x came (more than a 100 Trying: the far end is working on the call)
    got_progress: bool = False
    got_final: bool = False
    hop: NextHop | None = None
    #: the session timer of the leg once the call is answered (RFC 4028)
    session: LegSession | None = None
    #: the last SDP we sent on this leg (a refresh re-INVITE repeats it unchanged)
    sdp_sent: bytes = b""
    #: this leg's INVITE was challenged (401/407) and sent again with credentials
    challenge_answered: bool = False


@dataclass(slots=True)
class RelayedRequest:
    """Ties a client transaction on one leg to the server transaction it relays.

    Without a server transaction (``server_tx`` None) it is a request of our own on the
    leg (a BYE to a trunk with credentials), kept to answer a 401/407 to it (issue 13).
    """

    call: Call | None
    server_tx: ServerTransaction | None
    to_leg: Leg
    from_leg: Leg
    request: Request
    client_tx: ClientTransaction | None = None
    pending_2xx: Response | None = None
    acked: bool = False
    #: the far end challenged the request and it went again with credentials (once)
    challenge_answered: bool = False


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
    #: the B-leg timer running now (provisional, setup or ring timeout)
    provisional_timer: Timer | None = None
    attempts: list[str] = field(default_factory=list)
    #: every failed attempt, in order (the Warning of an emergency call that failed)
    failures: list[LegFailure] = field(default_factory=list)
    pending_b_2xx: Response | None = None
    #: "outbound" (from an agent or a lab source) or "inbound" (from a trunk)
    direction: str = "outbound"
    #: the queue the call waits in (inbound), None once it has left it
    queue: str | None = None
    #: the agent on this call: the caller (outbound) or the one who answered (inbound)
    agent: str | None = None
    #: the E.164 number an ordinary outbound call presents (From, P-Asserted-Identity);
    #: None: anonymous. Chosen by the dialplan, never taken from the phone's headers
    caller_id: str | None = None
    #: the trunk an inbound call came from
    source_trunk: str | None = None
    #: the first queue an inbound call waited in (kept for the call history)
    history_queue: str | None = None
    #: emergency calls and callbacks: no call history, no recording (SPEC E-9)
    private: bool = False
    #: the emergency facts (gateway.emergency.service.EmergencyCall) of such a call
    emergency: EmergencyFacts | None = None
    #: how the call ended, once it has (observers read it in ``call_ended``)
    outcome: CallOutcome | None = None

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

    @property
    def is_emergency_callback(self) -> bool:
        return self.emergency is not None and self.emergency.callback

    def step(self, event: CallInput) -> CallState:
        """Apply one input of :data:`CALL_TRANSITIONS`; a missing one is absorbed."""
        self.state = CALL_TRANSITIONS[self.state].get(event, self.state)
        return self.state
