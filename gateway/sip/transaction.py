"""RFC 3261 section 17 transactions, sans-I/O (with RFC 6026 Accepted states).

Everything here takes ``now`` (seconds, a float from the injected clock)
and never touches a socket or the system clock.

Usage by the adapter (transport) and the transaction user (TU, the B2BUA):

    layer = TransactionLayer(TimerConfig(), ids=IdGenerator(random.Random()))
    layer.receive(message, source, now)            # every parsed message from the wire
    tx = layer.send_request(request, destination, now)   # new client transaction
    cancel = layer.cancel_request(tx)              # build the CANCEL for a client INVITE
    layer.send_request(cancel, tx.destination, now)      # ...and send it (section 9.1)
    layer.send_response(server_tx, response, now)  # answer a server transaction
    layer.send_ack(client_tx, ack, destination, now)     # ACK for a 2xx (end to end)
    layer.send_stateless(message, destination)     # e.g. stray responses, 2xx ACK w/o tx
    layer.transport_error(destination, now, detail, refused=False)  # a send there failed
    layer.find_server(request)                     # the server transaction a request matches
    layer.client_count, layer.server_count         # live transactions (0 when idle)
    while (out := layer.next_outgoing()) is not None: send out.data to out.destination
    while (ev := layer.next_event()) is not None: handle ev (events below)
    deadline = layer.get_timer()   # earliest deadline or None; arm ONE loop.call_at
    layer.handle_timer(now)        # fire every expired timer

Events (frozen dataclasses, pulled with ``next_event``): RequestReceived, ResponseReceived,
TransactionTimeout, TransportFailure, AckReceived, AckTimeout, StrayResponse, StrayAck.

Contract details the TU relies on:

* ``receive`` never raises. A request that cannot be handled is dropped and, unless it is an
  ACK, answered statelessly with the status its :class:`SipError` carries (400, 505, ...).
* ``send_request`` adds a fresh ``z9hG4bK`` branch to the top Via when it has none (the TU
  pushes the Via, since only it knows the local address). It raises ``ValueError`` for an
  ACK (use ``send_ack``/``send_stateless``) or a branch already in use.
* ``send_response`` ignores a response the transaction can no longer send (the transaction
  terminated, or a final response was already sent; RFC 6026 allows further 2xx only).
* The layer retransmits a 2xx to an INVITE itself (section 13.3.1.4, T1 doubling to T2,
  UDP only) until the ACK arrives (``AckReceived``) or Timer L fires (``AckTimeout``).
* Timer B only runs in the Calling state (section 17.1.1.2): after a 1xx the TU owns the
  ringing timeout. Sending a CANCEL for an INVITE re-arms Timer B for 64*T1 (section 9.1:
  with no final response by then the INVITE is considered cancelled: TransactionTimeout).
* ``transport_error`` terminates every transaction sending to that address, whatever its
  state, with ``TransportFailure``; the TU ignores it for transactions it considers done.
* ``send_ack`` always sends; it remembers the ACK (by the To tag of the ACK) only while the
  client INVITE is Accepted. Without a remembered ACK every 2xx goes to the TU.
* ACKs never come as ``RequestReceived``: an ACK for a 300-699 stays in its transaction,
  the first ACK for a 2xx is ``AckReceived`` (later copies are absorbed), and an ACK that
  matches nothing is ``StrayAck``.
* Fields beyond the first contract: ``ClientTransaction.is_invite/method/branch/
  cancel_sent``, ``ServerTransaction.is_invite/method/reply_to/ack_received``,
  ``TimerConfig.timer_d`` (32 s), the ``Event`` union and the ``StrayAck`` event.

Theory of operation
-------------------
Each transaction is a small state machine; its transitions are the tables below
(``CLIENT_INVITE``, ``CLIENT_NON_INVITE``, ``SERVER_INVITE``, ``SERVER_NON_INVITE``): state ->
input -> next state, h11 style. An input missing from a state's row is absorbed (it changes
nothing and emits nothing). The code that applies an input looks the transition up, then does
the actions the RFC attaches to it (send, arm/cancel timers, emit an event).

The layer owns three things besides the transactions:

* the maps: client transactions by (branch, CSeq method) (section 17.1.3), server
  transactions by (branch, sent-by, method with ACK -> INVITE) (section 17.2.3), or by the
  RFC 2543 tuple when the branch lacks the magic cookie; 2xx-ACK matching by (Call-ID, CSeq
  number, From tag, To tag of the 2xx) (section 13.3.1.4); RFC 2543 ACK aliases (the tuple
  with the To tag of the non-2xx final response);
* one heap of timers, each entry a list ``[deadline, seq, transaction, timer name]``, with
  lazy deletion: a transaction has two timer slots, ``_rtx`` for its retransmission timer
  (A, E, G, the 2xx resend) and ``_wait`` for its other timer (B, D, F, H, I, J, K, L, M;
  never two of those at once), each holding its live entry; cancelling or re-arming a
  timer empties the old entry's transaction (so a cancelled entry keeps nothing alive)
  and the stale entry is skipped when popped;
* two FIFO queues: bytes to send (``Outgoing``) and events for the TU.

A message is serialised once per send; retransmissions resend the same bytes. A terminated
transaction leaves every map at once, so counts return to 0 when traffic stops.

Memory: a finished transaction waits out Timer D, H, I, J, K, L or M (up to 64*T1 = 32 s)
to absorb retransmissions, so at a few hundred calls/s most transactions alive are finished
ones. Once a transaction has its final response (sent or received) and the TU has pulled
every event (``next_event`` returned None), it keeps only what that wait needs: its key,
address, timer, and the bytes it resends (the last response of a server transaction; the
ACK of a client INVITE). The parsed request and response go (``request`` then raises
:class:`MessageReleased`, ``last_response`` is None); a client INVITE answered 2xx keeps
its request until the TU calls ``release(tx)``, because another 2xx (a fork) reaches the
TU, which needs the request to ACK it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from heapq import heapify, heappop, heappush
from typing import Any, NamedTuple, TypeAlias, TypeVar

from gateway.sip.address import BRANCH_COOKIE, Address, IdGenerator
from gateway.sip.errors import SipError, SipParseError
from gateway.sip.headers import Via
from gateway.sip.message import Request, Response, make_response

__all__ = [
    "BRANCH_COOKIE",
    "CLIENT_INVITE",
    "CLIENT_NON_INVITE",
    "SERVER_INVITE",
    "SERVER_NON_INVITE",
    "AckReceived",
    "AckTimeout",
    "Address",
    "ClientTransaction",
    "Event",
    "IdGenerator",
    "MessageReleased",
    "Outgoing",
    "RequestReceived",
    "ResponseReceived",
    "ServerTransaction",
    "StrayAck",
    "StrayResponse",
    "TimerConfig",
    "TransactionLayer",
    "TransactionTimeout",
    "TransportFailure",
]


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 timer values in seconds (Kamailio tm names and defaults)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_b: float | None = None  # default 64*T1
    timer_f: float | None = None  # default 64*T1
    send_trying_immediately: bool = True
    timer_d: float = 32.0  # client INVITE Completed over UDP ("at least 32 s", 17.1.1.2)

    def __post_init__(self) -> None:
        if not self.t1 > 0 or self.t2 < self.t1 or self.t4 < 0 or self.timer_d < 0:
            raise ValueError(f"bad SIP timers {self!r}: need T1 > 0, T2 >= T1, T4 >= 0")
        for value in (self.timer_b, self.timer_f):
            if value is not None and not value > 0:
                raise ValueError(f"bad SIP timers {self!r}: Timer B/F must be > 0")


class MessageReleased(Exception):
    """A finished transaction's request was read after the layer let it go.

    (An ``Exception``: mypyc compiles this module, and a compiled class can derive from no
    other built-in exception.)

    Once a transaction has its final response and the TU has pulled every event, it keeps
    only what its absorbing state resends (see "Memory" in the module docstring).
    """


class Outgoing(NamedTuple):
    """Bytes to put on the wire, and where."""

    data: bytes
    destination: Address


# -- states, inputs and the transition tables ----------------------------------------------

CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
ACCEPTED = "accepted"
COMPLETED = "completed"
CONFIRMED = "confirmed"
TERMINATED = "terminated"

# inputs: responses (client) or responses sent by the TU (server), by class
PROVISIONAL = "1xx"
SUCCESS = "2xx"
FAILURE = "300-699"
FINAL = "200-699"  # non-INVITE: every final response is alike
REQUEST = "request retransmission"
ACK = "ACK"
TRANSPORT_ERROR = "transport error"

# timer names (RFC 3261 section 17 / RFC 6026); RETRANSMIT_2XX is section 13.3.1.4's
TIMER_A, TIMER_B, TIMER_D, TIMER_M = "A", "B", "D", "M"
TIMER_E, TIMER_F, TIMER_K = "E", "F", "K"
TIMER_G, TIMER_H, TIMER_I, TIMER_L = "G", "H", "I", "L"
TIMER_J = "J"
RETRANSMIT_2XX = "2xx"

Table: TypeAlias = dict[str, dict[str, str]]

#: Client INVITE, RFC 3261 figure 5 as amended by RFC 6026 figure 5.
CLIENT_INVITE: Table = {
    CALLING: {
        PROVISIONAL: PROCEEDING,  # stop A (and B), pass up
        SUCCESS: ACCEPTED,  # stop A, B; start M; pass up
        FAILURE: COMPLETED,  # stop A, B; send ACK; start D; pass up
        TIMER_A: CALLING,  # retransmit INVITE, double A (UDP only)
        TIMER_B: TERMINATED,  # TransactionTimeout
        TRANSPORT_ERROR: TERMINATED,  # TransportFailure
    },
    PROCEEDING: {
        PROVISIONAL: PROCEEDING,  # pass up
        SUCCESS: ACCEPTED,
        FAILURE: COMPLETED,
        TIMER_B: TERMINATED,  # only armed again by a CANCEL (section 9.1)
        TRANSPORT_ERROR: TERMINATED,
    },
    ACCEPTED: {
        SUCCESS: ACCEPTED,  # pass up, or resend the TU's ACK for that To tag
        TIMER_M: TERMINATED,
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {
        FAILURE: COMPLETED,  # resend our ACK
        TIMER_D: TERMINATED,
        TRANSPORT_ERROR: TERMINATED,
    },
    TERMINATED: {},
}

#: Client non-INVITE, RFC 3261 figure 6.
CLIENT_NON_INVITE: Table = {
    TRYING: {
        PROVISIONAL: PROCEEDING,  # pass up
        FINAL: COMPLETED,  # stop E, F; start K; pass up
        TIMER_E: TRYING,  # retransmit, E = min(2E, T2) (UDP only)
        TIMER_F: TERMINATED,  # TransactionTimeout
        TRANSPORT_ERROR: TERMINATED,
    },
    PROCEEDING: {
        PROVISIONAL: PROCEEDING,
        FINAL: COMPLETED,
        TIMER_E: PROCEEDING,  # retransmit, E = T2
        TIMER_F: TERMINATED,
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {TIMER_K: TERMINATED, TRANSPORT_ERROR: TERMINATED},
    TERMINATED: {},
}

#: Server INVITE, RFC 3261 figure 7 as amended by RFC 6026 figure 7. Inputs PROVISIONAL,
#: SUCCESS and FAILURE are responses the TU sends.
SERVER_INVITE: Table = {
    PROCEEDING: {
        REQUEST: PROCEEDING,  # resend the last provisional response
        PROVISIONAL: PROCEEDING,  # send
        SUCCESS: ACCEPTED,  # send; start 2xx retransmission (UDP) and L
        FAILURE: COMPLETED,  # send; start G (UDP) and H
        TRANSPORT_ERROR: TERMINATED,
    },
    ACCEPTED: {
        REQUEST: ACCEPTED,  # resend the 2xx
        SUCCESS: ACCEPTED,  # send (RFC 6026 lets the TU send more 2xx)
        ACK: ACCEPTED,  # first ACK: stop retransmitting, AckReceived; later ones absorbed
        RETRANSMIT_2XX: ACCEPTED,  # resend the 2xx, double up to T2
        TIMER_L: TERMINATED,  # AckTimeout when no ACK came
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {
        REQUEST: COMPLETED,  # resend the final response
        ACK: CONFIRMED,  # stop G, H; start I
        TIMER_G: COMPLETED,  # resend the final response, G = min(2G, T2)
        TIMER_H: TERMINATED,  # TransactionTimeout (no ACK)
        TRANSPORT_ERROR: TERMINATED,
    },
    CONFIRMED: {TIMER_I: TERMINATED, TRANSPORT_ERROR: TERMINATED},
    TERMINATED: {},
}

#: Server non-INVITE, RFC 3261 figure 8.
SERVER_NON_INVITE: Table = {
    TRYING: {
        PROVISIONAL: PROCEEDING,  # send (a retransmitted request is absorbed here)
        FINAL: COMPLETED,  # send; start J
        TRANSPORT_ERROR: TERMINATED,
    },
    PROCEEDING: {
        REQUEST: PROCEEDING,  # resend the last provisional response
        PROVISIONAL: PROCEEDING,
        FINAL: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {
        REQUEST: COMPLETED,  # resend the final response
        TIMER_J: TERMINATED,
        TRANSPORT_ERROR: TERMINATED,
    },
    TERMINATED: {},
}


# -- events for the transaction user (frozen facts) ----------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created a server transaction.

    For CANCEL, ``cancelled`` is the INVITE server transaction it matches (section 9.2: same
    key with method INVITE) while that one has sent no final response yet, else None. The
    TU answers the CANCEL (200 or 481) and the INVITE (487). ACKs never come as this event.
    """

    transaction: ServerTransaction
    request: Request
    source: Address
    cancelled: ServerTransaction | None = None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for a client transaction (retransmitted 2xx included, while Accepted)."""

    transaction: ClientTransaction
    response: Response
    source: Address


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B or F fired (treat as 408), or Timer H with no ACK for a server INVITE."""

    transaction: ClientTransaction | ServerTransaction


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """Sending for this transaction failed (treat as 503, RFC 3261 section 8.1.3.1).

    ``detail`` is what the adapter saw (for logs and Warning texts); ``refused`` says the
    peer's host answered that nothing listens there (ICMP port unreachable, a TCP reset):
    no point waiting for Timer B.
    """

    transaction: ClientTransaction | ServerTransaction
    detail: str = ""
    refused: bool = False


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx that this layer sent (matched to an Accepted server INVITE)."""

    transaction: ServerTransaction
    request: Request
    source: Address


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """A 2xx to an INVITE was retransmitted for 64*T1 without an ACK (section 13.3.1.4)."""

    transaction: ServerTransaction


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction (a proxy would forward it statelessly)."""

    response: Response
    source: Address


@dataclass(frozen=True, slots=True)
class StrayAck:
    """An ACK matching no server transaction and no 2xx this layer is waiting an ACK for.

    Typically an ACK for a 2xx whose server transaction already ended (after Timer L), or
    one the TU sent statelessly; a B2BUA may still match it to a dialog, or drop it.
    """

    request: Request
    source: Address


Event: TypeAlias = (
    RequestReceived
    | ResponseReceived
    | TransactionTimeout
    | TransportFailure
    | AckReceived
    | AckTimeout
    | StrayResponse
    | StrayAck
)


# -- transactions ---------------------------------------------------------------------------


class ClientTransaction:
    """One client transaction (created by :meth:`TransactionLayer.send_request`).

    ``state`` is one of calling/trying/proceeding/accepted/completed/terminated.
    """

    __slots__ = (
        "_ack",
        "_acks",
        "_data",
        "_final",
        "_interval",
        "_released",
        "_request",
        "_rtx",
        "_wait",
        "cancel_sent",
        "destination",
        "is_invite",
        "key",
        "last_response",
        "owner",
        "state",
    )

    destination: Address
    state: str
    key: tuple[str, str]
    last_response: Response | None
    #: free slot for the TU (e.g. the call leg that owns it)
    owner: object
    is_invite: bool
    #: the live retransmission timer's heap entry, and the other live timer's
    _rtx: _TimerEntry | None
    _wait: _TimerEntry | None
    #: a CANCEL for this INVITE was sent (Timer B guards it, section 9.1)
    cancel_sent: bool

    def __init__(self, request: Request, destination: Address, key: tuple[str, str], data: bytes):
        self._request: Request | None = request
        self.destination = destination
        self.key = key
        self.is_invite = key[1] == "INVITE"
        self.state = CALLING if self.is_invite else TRYING
        self.last_response = None
        self.owner = None
        self._rtx = self._wait = None
        self.cancel_sent = False
        self._data = data  # the request as sent, for retransmissions
        self._interval = 0.0  # current Timer A/E interval
        self._ack: Outgoing | None = None  # our ACK for a non-2xx final response
        # the TU's ACK for a 2xx: (To tag, ACK) for the first; To tag -> ACK once forks add
        self._acks: tuple[str, Outgoing] | dict[str, Outgoing] | None = None
        self._final = False  # a final response arrived
        self._released = False  # the TU let go (TransactionLayer.release)

    @property
    def request(self) -> Request:
        """The request sent; :class:`MessageReleased` once the transaction let it go."""
        request = self._request
        if request is None:
            raise MessageReleased(f"{self!r} kept no request (final response received)")
        return request

    @property
    def method(self) -> str:
        """The CSeq method of the request (INVITE, BYE, CANCEL, ...)."""
        return self.key[1]

    @property
    def branch(self) -> str:
        """The branch of our top Via: this transaction's id (section 17.1.3)."""
        return self.key[0]

    @property
    def armed(self) -> tuple[str, ...]:
        """The names of the timers running now."""
        return _armed(self)

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.key[1]} {self.key[0]} {self.state}>"


class ServerTransaction:
    """One server transaction (created by :meth:`TransactionLayer.receive`).

    ``state`` is one of trying/proceeding/accepted/completed/confirmed/terminated (an
    INVITE starts in proceeding, a non-INVITE in trying).
    """

    __slots__ = (
        "_ack_keys",
        "_aliases",
        "_data",
        "_final",
        "_interval",
        "_request",
        "_rtx",
        "_wait",
        "ack_received",
        "is_invite",
        "key",
        "last_response",
        "owner",
        "reply_to",
        "source",
        "state",
    )

    source: Address
    state: str
    key: tuple[str, ...]
    last_response: Response | None
    owner: object
    is_invite: bool
    #: where responses go (RFC 3261 section 18.2.2, RFC 3581), fixed at creation
    reply_to: Address
    _rtx: _TimerEntry | None
    _wait: _TimerEntry | None
    #: an ACK for our 2xx arrived (Accepted state)
    ack_received: bool

    def __init__(self, request: Request, source: Address, key: tuple[str, ...], reply_to: Address):
        self._request: Request | None = request
        self.source = source
        self.key = key
        self.is_invite = request.method == "INVITE"
        self.state = PROCEEDING if self.is_invite else TRYING
        self.last_response = None
        self.owner = None
        self.reply_to = reply_to
        self._rtx = self._wait = None
        self.ack_received = False
        self._data = b""  # last response as sent, for retransmissions
        self._interval = 0.0  # current Timer G / 2xx retransmission interval
        self._aliases: tuple[tuple[str, ...], ...] = ()  # RFC 2543 ACK keys
        self._ack_keys: tuple[tuple[str, int, str, str], ...] = ()  # 2xx ACK keys
        self._final = False  # a final response was sent

    @property
    def request(self) -> Request:
        """The request received; :class:`MessageReleased` once a final response was sent
        and the TU had every event about it (the transaction keeps only what it resends)."""
        request = self._request
        if request is None:
            raise MessageReleased(f"{self!r} kept no request (final response sent)")
        return request

    @property
    def method(self) -> str:
        """The method of the request that created the transaction (ACK -> INVITE aside)."""
        return self.key[-1]

    @property
    def armed(self) -> tuple[str, ...]:
        """The names of the timers running now."""
        return _armed(self)

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.key[-1]} {self.key[0]} {self.state}>"


_K = TypeVar("_K")
_V = TypeVar("_V")
Transaction: TypeAlias = ClientTransaction | ServerTransaction
#: ``[deadline, seq, transaction or None once cancelled, timer name]``
_TimerEntry: TypeAlias = list[Any]
#: the timers that resend (slot ``_rtx``); every other timer uses slot ``_wait``
_RETRANSMIT_TIMERS = frozenset((TIMER_A, TIMER_E, TIMER_G, RETRANSMIT_2XX))


def _armed(tx: Transaction) -> tuple[str, ...]:
    return tuple(str(e[3]) for e in (tx._rtx, tx._wait) if e is not None)


# -- helpers --------------------------------------------------------------------------------

_DEFAULT_PORTS = {"TLS": 5061, "WSS": 443, "WS": 80}


def _response_class(status: int) -> str:
    """The INVITE input for a response status."""
    if status < 200:
        return PROVISIONAL
    if status < 300:
        return SUCCESS
    return FAILURE


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@lru_cache(maxsize=4096)
def _sent_by(host: str, port: int) -> str:
    """A Via sent-by's "host:port" key text, one string per peer: a finished transaction
    keeps its key for 64*T1 (issue 10)."""
    return f"{host.lower()}:{port}"


def _server_key(request: Request, via: Via, method: str) -> tuple[str, ...]:
    """Section 17.2.3: the key a request matches on (``method`` with ACK already -> INVITE)."""
    branch = via.params.get("branch")
    if branch and branch.startswith(BRANCH_COOKIE):
        port = via.port or _DEFAULT_PORTS.get(via.transport, 5060)
        return (branch, _sent_by(via.host, port), method)
    # RFC 2543 fallback (last paragraph of 17.2.3)
    return (
        "rfc2543",
        request.uri_text,
        request.to_tag or "",
        request.from_tag or "",
        request.call_id,
        str(request.cseq.number),
        str(via),
        method,
    )


def _reply_address(via: Via, source: Address) -> Address:
    """Section 18.2.2 with RFC 3581: where responses to a request with this top Via go."""
    if source.reliable:
        return source
    params = via.params
    rport = params.get("rport")
    if rport and rport.isdigit() and 0 < int(rport) < 65536:
        return Address(source.transport, params.get("received") or source.host, int(rport))
    maddr = params.get("maddr")
    port = via.port or 5060
    if maddr:
        return Address(source.transport, _unbracket(maddr), port)
    return Address(source.transport, params.get("received") or via.host_unbracketed, port)


def _ack_for(tx: ClientTransaction, to_tag: str) -> Outgoing | None:
    """The ACK the TU sent for the 2xx with this To tag, if any."""
    acks = tx._acks
    if isinstance(acks, tuple):
        return acks[1] if acks[0] == to_tag else None
    return acks.get(to_tag) if acks else None


def _right_size(table: dict[_K, _V]) -> None:
    """Give ``table`` a hash table sized for its present entries (in place, order kept)."""
    items = list(table.items())
    table.clear()
    table.update(items)


def _build_non2xx_ack(invite: Request, response: Response) -> Request:
    """Section 17.1.1.3: the ACK the client INVITE transaction sends for a 300-699."""
    headers: list[tuple[str, str, str]] = [("via", "Via", str(invite.top_via))]
    headers.extend(h for h in invite.headers if h[0] == "route")
    headers.append(("max-forwards", "Max-Forwards", "70"))
    for h in invite.headers:
        if h[0] in ("from", "call-id"):
            headers.append(h)
    to = response.get("to")
    if to is None:
        to = invite.get("to") or ""
    headers.append(("to", "To", to))
    headers.append(("cseq", "CSeq", f"{invite.cseq.number} ACK"))
    return Request("ACK", invite.uri_text, headers)


# -- the layer -----------------------------------------------------------------------------


class TransactionLayer:
    """All transactions of one SIP element, keyed per RFC 3261 section 17.1.3 / 17.2.3."""

    def __init__(self, timers: TimerConfig, ids: IdGenerator):
        self.config = timers
        self.ids = ids
        t1 = timers.t1
        self._t1 = t1
        self._t2 = timers.t2
        self._t4 = timers.t4
        self._timer_b = timers.timer_b if timers.timer_b is not None else 64 * t1
        self._timer_f = timers.timer_f if timers.timer_f is not None else 64 * t1
        self._64t1 = 64 * t1
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[tuple[str, ...], ServerTransaction] = {}
        self._server_aliases: dict[tuple[str, ...], ServerTransaction] = {}
        self._ack_waiters: dict[tuple[str, int, str, str], ServerTransaction] = {}
        self._outgoing: deque[Outgoing] = deque()
        self._events: deque[Event] = deque()
        self._heap: list[_TimerEntry] = []
        #: transactions with their final response: slimmed once the TU has every event
        self._finished: list[Transaction] = []
        self._seq = 0
        self._live_timers = 0
        self._client_timers: dict[str, Callable[[ClientTransaction, float], None]] = {
            TIMER_A: self._timer_a,
            TIMER_B: self._client_timeout,
            TIMER_D: self._client_end,
            TIMER_M: self._client_end,
            TIMER_E: self._timer_e,
            TIMER_F: self._client_timeout,
            TIMER_K: self._client_end,
        }
        self._server_timers: dict[str, Callable[[ServerTransaction, float], None]] = {
            TIMER_G: self._server_retransmit,
            RETRANSMIT_2XX: self._server_retransmit,
            TIMER_H: self._timer_h,
            TIMER_I: self._server_end,
            TIMER_J: self._server_end,
            TIMER_L: self._timer_l,
        }

    # -- pulled output ----------------------------------------------------------------------

    def next_outgoing(self) -> Outgoing | None:
        """The next datagram/stream message to send, or None."""
        out = self._outgoing
        return out.popleft() if out else None

    def next_event(self) -> Event | None:
        """The next event for the TU, or None (then finished transactions are slimmed)."""
        events = self._events
        if events:
            return events.popleft()
        if self._finished:
            self._slim_finished()
        return None

    def release(self, tx: Transaction) -> None:
        """The TU needs nothing more from ``tx``: its owner goes, and once it has its final
        response it keeps only what its absorbing state resends (a client INVITE answered
        2xx lets its request go too). Retransmissions are still absorbed as before."""
        tx.owner = None
        if isinstance(tx, ClientTransaction):
            tx._released = True
        if tx._final:
            self._finished.append(tx)

    def compact(self) -> None:
        """Rebuild the lookup tables for what they hold now (an idle moment after a load).

        CPython never shrinks a dict's hash table on deletion: after 20,000 calls the maps
        keep tables sized for the peak (megabytes) until traffic refills them. Same
        objects, same contents, same order; only the tables' size changes.
        """
        _right_size(self._clients)
        _right_size(self._servers)
        _right_size(self._server_aliases)
        _right_size(self._ack_waiters)
        self._heap = [e for e in self._heap if e[2] is not None]
        heapify(self._heap)

    def _slim_finished(self) -> None:
        for tx in self._finished:
            tx.last_response = None
            if isinstance(tx, ServerTransaction):
                tx._request = None
                continue
            tx._data = b""  # a request is never retransmitted after its final response
            # only an Accepted INVITE the TU still owns needs it: a 2xx from another fork
            # reaches the TU, which builds that fork's ACK from it
            if not tx.is_invite or tx._released or tx.state != ACCEPTED:
                tx._request = None
        self._finished.clear()

    @property
    def client_count(self) -> int:
        """Live client transactions."""
        return len(self._clients)

    @property
    def awaiting_response(self) -> int:
        """Client transactions still waiting for a final response (a BYE sent on stopping)."""
        return sum(1 for tx in self._clients.values() if tx.state in (CALLING, TRYING, PROCEEDING))

    @property
    def server_count(self) -> int:
        """Live server transactions."""
        return len(self._servers)

    # -- timers -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest live timer deadline, or None when no timer runs."""
        heap = self._heap
        while heap:
            if heap[0][2] is not None:
                deadline: float = heap[0][0]
                return deadline
            heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is ``now`` or earlier."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            tx: Transaction | None = entry[2]
            if tx is None:
                continue  # cancelled or re-armed: lazy deletion
            name: str = entry[3]
            if tx._rtx is entry:
                tx._rtx = None
            else:
                tx._wait = None
            self._live_timers -= 1
            if isinstance(tx, ClientTransaction):
                self._client_timers[name](tx, now)
            else:
                self._server_timers[name](tx, now)

    @property
    def timer_count(self) -> int:
        """Timers running now (each transaction has at most two)."""
        return self._live_timers

    def _arm(self, tx: Transaction, name: str, delay: float, now: float) -> None:
        self._seq = seq = self._seq + 1
        entry = [now + delay, seq, tx, name]
        if name in _RETRANSMIT_TIMERS:
            old, tx._rtx = tx._rtx, entry
        else:
            old, tx._wait = tx._wait, entry
        if old is None:
            self._live_timers += 1
        else:
            old[2] = None  # re-armed: the old entry is skipped when popped
        heap = self._heap
        heappush(heap, entry)
        if len(heap) > 2 * self._live_timers + 1024:
            # many cancelled entries (Timers B and F end with the final response): drop them
            heap[:] = [e for e in heap if e[2] is not None]
            heapify(heap)

    def _arm_or_end(self, tx: Transaction, name: str, delay: float, now: float) -> None:
        """Arm a wait-then-terminate timer; a zero wait (reliable transport) ends at once."""
        if delay > 0:
            self._arm(tx, name, delay, now)
        else:
            self._terminate(tx)

    def _cancel(self, tx: Transaction, name: str) -> None:
        if name in _RETRANSMIT_TIMERS:
            entry = tx._rtx
            if entry is not None and entry[3] == name:
                entry[2] = tx._rtx = None
                self._live_timers -= 1
        else:
            entry = tx._wait
            if entry is not None and entry[3] == name:
                entry[2] = tx._wait = None
                self._live_timers -= 1

    # -- sending requests (client transactions) ---------------------------------------------

    def send_request(self, request: Request, destination: Address, now: float) -> ClientTransaction:
        """Start a client transaction for ``request`` and send it to ``destination``.

        The TU has pushed its Via; a missing or pre-RFC 3261 branch is replaced by a new one.
        Raises ``ValueError`` for ACK or for a branch already in use, and ``SipError`` when
        the request has no Via or CSeq.
        """
        method = request.method
        if method == "ACK":
            raise ValueError("ACK is not a transaction: use send_ack() or send_stateless()")
        via = request.top_via
        branch = via.params.get("branch")
        if not branch or not branch.startswith(BRANCH_COOKIE):
            branch = self.ids.branch()
            params = dict(via.params)
            params["branch"] = branch
            request.set_top_via(Via(via.transport, via.host, via.port, params))
        key = (branch, request.cseq.method)
        if key in self._clients:
            raise ValueError(f"a client transaction {key!r} already exists")
        data = request.to_bytes()
        tx = ClientTransaction(request, destination, key, data)
        self._clients[key] = tx
        self._outgoing.append(Outgoing(data, destination))
        unreliable = not destination.reliable
        if tx.is_invite:
            if unreliable:
                tx._interval = self._t1
                self._arm(tx, TIMER_A, self._t1, now)
            self._arm(tx, TIMER_B, self._timer_b, now)
        else:
            if unreliable:
                tx._interval = self._t1
                self._arm(tx, TIMER_E, self._t1, now)
            self._arm(tx, TIMER_F, self._timer_f, now)
            if method == "CANCEL":
                invite = self._clients.get((branch, "INVITE"))
                if invite is not None and invite.state in (CALLING, PROCEEDING):
                    # section 9.1: no final response 64*T1 after the CANCEL -> give up
                    invite.cancel_sent = True
                    if TIMER_B not in invite.armed:
                        self._arm(invite, TIMER_B, self._64t1, now)
        return tx

    def cancel_request(self, tx: ClientTransaction) -> Request:
        """Build the CANCEL for a client INVITE (section 9.1); send it with ``send_request``.

        Same Request-URI, Call-ID, From, To and CSeq number (method CANCEL), the single top
        Via of the INVITE (same branch), its Route headers, Max-Forwards 70. Section 9.1 says
        to send it only once a provisional response arrived (``tx.state == "proceeding"``).
        """
        if not tx.is_invite:
            raise ValueError("only an INVITE client transaction can be cancelled")
        invite = tx.request
        headers: list[tuple[str, str, str]] = [("via", "Via", str(invite.top_via))]
        headers.extend(h for h in invite.headers if h[0] == "route")
        headers.append(("max-forwards", "Max-Forwards", "70"))
        headers.extend(h for h in invite.headers if h[0] in ("from", "to", "call-id"))
        headers.append(("cseq", "CSeq", f"{invite.cseq.number} CANCEL"))
        return Request("CANCEL", invite.uri_text, headers)

    def send_ack(
        self, tx: ClientTransaction, ack: Request, destination: Address, now: float
    ) -> None:
        """Send the TU's ACK for a 2xx and remember it (section 13.2.2.4, RFC 6026).

        While ``tx`` is Accepted, a 2xx retransmission with the ACK's To tag is answered by
        resending these bytes, without an event.
        """
        if not tx.is_invite:
            raise ValueError("ACK belongs to an INVITE client transaction")
        out = Outgoing(ack.to_bytes(), destination)
        self._outgoing.append(out)
        if tx.state == ACCEPTED:
            tag = ack.to_tag or ""
            acks = tx._acks
            if acks is None or (isinstance(acks, tuple) and acks[0] == tag):
                tx._acks = (tag, out)  # the one 2xx of a call that did not fork
            elif isinstance(acks, tuple):
                tx._acks = {acks[0]: acks[1], tag: out}
            else:
                acks[tag] = out

    def send_stateless(self, message: Request | Response, destination: Address) -> None:
        """Send a message outside any transaction."""
        self._outgoing.append(Outgoing(message.to_bytes(), destination))

    # -- sending responses (server transactions) --------------------------------------------

    def send_response(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """Send a response on a server transaction (to ``tx.reply_to``).

        A response the transaction cannot send any more (see the tables) is ignored.
        """
        status = response.status
        kind = _response_class(status)
        if tx.is_invite:
            old = tx.state
            new = SERVER_INVITE[old].get(kind)
            if new is None:
                return
            data = response.to_bytes()
            tx.state = new
            tx.last_response = response
            tx._data = data
            self._outgoing.append(Outgoing(data, tx.reply_to))
            if kind != PROVISIONAL and not tx._final:
                tx._final = True
                self._finished.append(tx)
            if kind == SUCCESS:
                self._expect_ack(tx, response)
                if old == PROCEEDING:
                    if not tx.reply_to.reliable:
                        tx._interval = self._t1
                        self._arm(tx, RETRANSMIT_2XX, self._t1, now)
                    self._arm(tx, TIMER_L, self._64t1, now)
            elif kind == FAILURE:
                if not tx.reply_to.reliable:
                    tx._interval = self._t1
                    self._arm(tx, TIMER_G, self._t1, now)
                self._arm(tx, TIMER_H, self._64t1, now)
                if tx.key[0] == "rfc2543":
                    self._add_2543_alias(tx, response)
        else:
            kind = PROVISIONAL if status < 200 else FINAL
            new = SERVER_NON_INVITE[tx.state].get(kind)
            if new is None:
                return
            data = response.to_bytes()
            tx.state = new
            tx.last_response = response
            tx._data = data
            self._outgoing.append(Outgoing(data, tx.reply_to))
            if new == COMPLETED:
                tx._final = True
                self._finished.append(tx)
                self._arm_or_end(tx, TIMER_J, 0.0 if tx.reply_to.reliable else self._64t1, now)

    def _expect_ack(self, tx: ServerTransaction, response: Response) -> None:
        """Register the (Call-ID, CSeq, From tag, To tag) an ACK for this 2xx carries."""
        try:
            key = (
                response.call_id,
                response.cseq.number,
                response.from_tag or "",
                response.to_tag or "",
            )
        except SipError:
            return  # a 2xx the TU built without these cannot be ACKed by dialog match
        if key not in self._ack_waiters:
            self._ack_waiters[key] = tx
            tx._ack_keys = (*tx._ack_keys, key)

    def _add_2543_alias(self, tx: ServerTransaction, response: Response) -> None:
        """RFC 2543 ACKs carry the To tag of our final response: match that key too."""
        try:
            tag = response.to_tag or ""
        except SipError:
            return
        key = tx.key
        if tag != key[2]:
            alias = (*key[:2], tag, *key[3:])
            self._server_aliases[alias] = tx
            tx._aliases = (*tx._aliases, alias)

    # -- receiving --------------------------------------------------------------------------

    def receive(self, message: Request | Response, source: Address, now: float) -> None:
        """Feed one message from the wire. Never raises (see the contract above)."""
        if isinstance(message, Response):
            # a response we cannot match is dropped (section 18.1.2)
            with suppress(SipError):
                self._receive_response(message, source, now)
            return
        try:
            self._receive_request(message, source, now)
        except SipError as exc:
            if message.method != "ACK":
                self._reject(message, source, exc)

    def _reject(self, request: Request, source: Address, exc: SipError) -> None:
        """Answer a request we could not handle, statelessly (400 or what ``exc`` says)."""
        try:
            destination = source
            if not source.reliable:
                with suppress(SipError):
                    destination = _reply_address(request.top_via, source)
            try:
                response = make_response(request, exc.status, exc.reason, to_tag=self.ids.tag())
            except SipError:
                response = make_response(request, exc.status, exc.reason)
            self._outgoing.append(Outgoing(response.to_bytes(), destination))
        except SipError:
            pass

    def _receive_request(self, request: Request, source: Address, now: float) -> None:
        via = request.top_via
        method = request.method
        key = _server_key(request, via, "INVITE" if method == "ACK" else method)
        via = self._fix_via(request, via, source)
        if method == "ACK":
            self._receive_ack(request, key, source, now)
            return
        tx = self._servers.get(key)
        if tx is not None:
            # a retransmission: resend the last response where the table says so
            table = SERVER_INVITE if tx.is_invite else SERVER_NON_INVITE
            if REQUEST in table[tx.state] and tx._data and not tx.ack_received:
                self._outgoing.append(Outgoing(tx._data, tx.reply_to))
            return
        # what the TU and our responses rely on (parse_message checked it for wire input)
        request.call_id, request.from_, request.to  # noqa: B018
        if request.cseq.method != method:
            raise SipParseError("CSeq method does not match the request method")
        tx = ServerTransaction(request, source, key, _reply_address(via, source))
        self._servers[key] = tx
        cancelled: ServerTransaction | None = None
        if method == "CANCEL":
            invite = self._servers.get((*key[:-1], "INVITE"))
            if invite is not None and invite.state in (TRYING, PROCEEDING):
                cancelled = invite
        self._events.append(RequestReceived(tx, request, source, cancelled))
        if tx.is_invite and self.config.send_trying_immediately:
            trying = make_response(request, 100)
            tx.last_response = trying
            tx._data = data = trying.to_bytes()
            self._outgoing.append(Outgoing(data, tx.reply_to))

    @staticmethod
    def _fix_via(request: Request, via: Via, source: Address) -> Via:
        """Section 18.2.1 and RFC 3581: add ``received`` and fill an empty ``rport``."""
        params = via.params
        empty_rport = "rport" in params and params["rport"] is None
        source_host = _unbracket(source.host)
        if not empty_rport and via.host_unbracketed == source_host:
            return via
        params = dict(params)
        # RFC 3581 section 4: with rport, received is added even when the host matches
        params["received"] = source_host
        if empty_rport:
            params["rport"] = str(source.port)
        fixed = Via(via.transport, via.host, via.port, params)
        request.set_top_via(fixed)
        return fixed

    def _receive_ack(self, ack: Request, key: tuple[str, ...], source: Address, now: float) -> None:
        tx = self._servers.get(key) or self._server_aliases.get(key)
        if tx is None or tx.state == ACCEPTED:
            # an ACK for a 2xx: a new branch, matched by dialog (section 13.3.1.4);
            # an ACK reusing the INVITE branch for a 2xx lands here too
            match_key = (ack.call_id, ack.cseq.number, ack.from_tag or "", ack.to_tag or "")
            waiter = self._ack_waiters.get(match_key) or tx
            if waiter is None:
                self._events.append(StrayAck(ack, source))
                return
            tx = waiter
        new = SERVER_INVITE[tx.state].get(ACK)
        if new is None:
            return  # e.g. an ACK before any final response, or a retransmitted one
        if tx.state == ACCEPTED:
            if not tx.ack_received:
                tx.ack_received = True
                tx._data = b""  # the 2xx is never resent once ACKed (RFC 6026 section 7.1)
                self._cancel(tx, RETRANSMIT_2XX)
                self._events.append(AckReceived(tx, ack, source))
            return
        # Completed -> Confirmed: the ACK for our 300-699
        tx.state = new
        self._cancel(tx, TIMER_G)
        self._cancel(tx, TIMER_H)
        self._arm_or_end(tx, TIMER_I, 0.0 if tx.reply_to.reliable else self._t4, now)

    def _receive_response(self, response: Response, source: Address, now: float) -> None:
        branch = response.top_via.params.get("branch") or ""
        tx = self._clients.get((branch, response.cseq.method))
        if tx is None:
            self._events.append(StrayResponse(response, source))
            return
        status = response.status
        if not tx.is_invite:
            kind = PROVISIONAL if status < 200 else FINAL
            new = CLIENT_NON_INVITE[tx.state].get(kind)
            if new is None:
                return  # absorbed (Completed)
            tx.state = new
            tx.last_response = response
            self._events.append(ResponseReceived(tx, response, source))
            if new == COMPLETED:
                tx._final = True
                self._finished.append(tx)
                self._cancel(tx, TIMER_E)
                self._cancel(tx, TIMER_F)
                self._arm_or_end(tx, TIMER_K, 0.0 if tx.destination.reliable else self._t4, now)
            return
        self._receive_invite_response(tx, response, source, now)

    def _receive_invite_response(
        self, tx: ClientTransaction, response: Response, source: Address, now: float
    ) -> None:
        kind = _response_class(response.status)
        old = tx.state
        new = CLIENT_INVITE[old].get(kind)
        if new is None:
            return  # e.g. a 1xx after a final response
        if kind == PROVISIONAL:
            tx.state = new
            tx.last_response = response
            if old == CALLING:
                self._cancel(tx, TIMER_A)
                if not tx.cancel_sent:
                    self._cancel(tx, TIMER_B)
            self._events.append(ResponseReceived(tx, response, source))
        elif kind == SUCCESS:
            if old == ACCEPTED:
                ack = _ack_for(tx, response.to_tag or "")
                if ack is not None:
                    self._outgoing.append(ack)  # the same ACK bytes (section 13.2.2.4)
                    return
            else:
                tx.state = new
                tx._final = True
                self._cancel(tx, TIMER_A)
                self._cancel(tx, TIMER_B)
                self._arm(tx, TIMER_M, self._64t1, now)
            tx.last_response = response
            self._finished.append(tx)  # (again for a 2xx the TU gets in Accepted)
            self._events.append(ResponseReceived(tx, response, source))
        elif old == COMPLETED:
            if tx._ack is not None:
                self._outgoing.append(tx._ack)  # absorb the retransmission, resend our ACK
        else:
            ack = Outgoing(_build_non2xx_ack(tx.request, response).to_bytes(), tx.destination)
            tx.state = new
            tx.last_response = response
            tx._ack = ack
            tx._final = True
            self._finished.append(tx)
            self._outgoing.append(ack)
            self._cancel(tx, TIMER_A)
            self._cancel(tx, TIMER_B)
            self._events.append(ResponseReceived(tx, response, source))
            delay = 0.0 if tx.destination.reliable else self.config.timer_d
            self._arm_or_end(tx, TIMER_D, delay, now)

    # -- lookups ----------------------------------------------------------------------------

    def find_server(self, request: Request) -> ServerTransaction | None:
        """The server transaction ``request`` matches (for an ACK: its INVITE), or None."""
        try:
            method = request.method
            key = _server_key(request, request.top_via, "INVITE" if method == "ACK" else method)
            tx = self._servers.get(key)
            if tx is None and method == "ACK":
                tx = self._server_aliases.get(key) or self._ack_waiters.get(
                    (
                        request.call_id,
                        request.cseq.number,
                        request.from_tag or "",
                        request.to_tag or "",
                    )
                )
            return tx
        except SipError:
            return None

    # -- transport failures -----------------------------------------------------------------

    def transport_error(
        self, destination: Address, now: float, detail: str = "", *, refused: bool = False
    ) -> None:
        """A send to ``destination`` failed: every transaction sending there fails.

        Client transactions whose ``destination`` and server transactions whose
        ``reply_to`` is that address terminate with ``TransportFailure`` (section 17.1.4,
        17.2.4), carrying ``detail`` and ``refused`` (see the event). The adapter calls
        this for a failed send and for an ICMP error it can tie to the destination
        (section 18.4: unreachable errors are send failures).
        """
        events = self._events
        for ctx in [t for t in self._clients.values() if t.destination == destination]:
            self._terminate(ctx)
            events.append(TransportFailure(ctx, detail, refused))
        for stx in [t for t in self._servers.values() if t.reply_to == destination]:
            self._terminate(stx)
            events.append(TransportFailure(stx, detail, refused))

    # -- timer actions ----------------------------------------------------------------------

    def _timer_a(self, tx: ClientTransaction, now: float) -> None:
        # Calling: retransmit the INVITE, double the interval (17.1.1.2)
        if TIMER_A in CLIENT_INVITE[tx.state]:
            self._outgoing.append(Outgoing(tx._data, tx.destination))
            tx._interval *= 2
            self._arm(tx, TIMER_A, tx._interval, now)

    def _timer_e(self, tx: ClientTransaction, now: float) -> None:
        # Trying: E = min(2E, T2); Proceeding: E = T2 (17.1.2.2)
        state = tx.state
        if TIMER_E in CLIENT_NON_INVITE[state]:
            self._outgoing.append(Outgoing(tx._data, tx.destination))
            t2 = self._t2
            tx._interval = t2 if state == PROCEEDING else min(2 * tx._interval, t2)
            self._arm(tx, TIMER_E, tx._interval, now)

    def _client_timeout(self, tx: ClientTransaction, now: float) -> None:
        # Timer B or F: the request was never answered
        self._terminate(tx)
        self._events.append(TransactionTimeout(tx))

    def _client_end(self, tx: ClientTransaction, now: float) -> None:
        # Timer D, K or M: the absorption window ended
        self._terminate(tx)

    def _server_retransmit(self, tx: ServerTransaction, now: float) -> None:
        # Timer G (Completed) or the 2xx retransmission (Accepted): min(2*interval, T2)
        name = TIMER_G if tx.state == COMPLETED else RETRANSMIT_2XX
        if name in SERVER_INVITE[tx.state]:
            self._outgoing.append(Outgoing(tx._data, tx.reply_to))
            tx._interval = min(2 * tx._interval, self._t2)
            self._arm(tx, name, tx._interval, now)

    def _timer_h(self, tx: ServerTransaction, now: float) -> None:
        # Completed and no ACK within 64*T1 (17.2.1)
        self._terminate(tx)
        self._events.append(TransactionTimeout(tx))

    def _timer_l(self, tx: ServerTransaction, now: float) -> None:
        # Accepted for 64*T1 (RFC 6026): AckTimeout unless the ACK came
        self._terminate(tx)
        if not tx.ack_received:
            self._events.append(AckTimeout(tx))

    def _server_end(self, tx: ServerTransaction, now: float) -> None:
        # Timer I or J: the absorption window ended
        self._terminate(tx)

    # -- termination ------------------------------------------------------------------------

    def _terminate(self, tx: Transaction) -> None:
        """Enter Terminated: forget every timer and leave every map."""
        tx.state = TERMINATED
        for entry in (tx._rtx, tx._wait):
            if entry is not None:
                entry[2] = None  # the stale heap entry keeps nothing alive
                self._live_timers -= 1
        tx._rtx = tx._wait = None
        if isinstance(tx, ClientTransaction):
            if self._clients.get(tx.key) is tx:
                del self._clients[tx.key]
            tx._acks = None
            tx._ack = None
            tx._data = b""
            return
        if self._servers.get(tx.key) is tx:
            del self._servers[tx.key]
        for alias in tx._aliases:
            if self._server_aliases.get(alias) is tx:
                del self._server_aliases[alias]
        for ack_key in tx._ack_keys:
            if self._ack_waiters.get(ack_key) is tx:
                del self._ack_waiters[ack_key]
        # a call keeps its ended INVITE transaction: without the keys it no longer needs
        tx._aliases = ()
        tx._ack_keys = ()
        tx._data = b""
