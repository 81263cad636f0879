"""RFC 3261 section 17 transactions, sans-I/O (with RFC 6026 Accepted states).

API CONTRACT (stub: implementation in progress). Everything here takes ``now`` (seconds, a
float from the injected clock) and never touches a socket or the system clock.

Usage by the adapter (transport) and the transaction user (TU, the B2BUA):

    layer = TransactionLayer(TimerConfig(), ids=IdGenerator(random.Random()))
    layer.receive(message, source, now)            # every parsed message from the wire
    tx = layer.send_request(request, destination, now)   # new client transaction
    layer.send_response(server_tx, response, now)  # answer a server transaction
    layer.send_ack(client_tx, ack, destination, now)     # ACK for a 2xx (end to end)
    layer.send_stateless(message, destination)     # e.g. stray responses, 2xx ACK w/o tx
    layer.transport_error(destination, now)        # a send to destination failed
    while (out := layer.next_outgoing()) is not None: send out.data to out.destination
    while (ev := layer.next_event()) is not None: handle ev (events below)
    deadline = layer.get_timer()   # earliest deadline or None; arm ONE loop.call_at
    layer.handle_timer(now)        # fire every expired timer
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

from gateway.sip.message import Request, Response

__all__ = [
    "Address",
    "TimerConfig",
    "IdGenerator",
    "Outgoing",
    "ClientTransaction",
    "ServerTransaction",
    "TransactionLayer",
    "RequestReceived",
    "ResponseReceived",
    "TransactionTimeout",
    "TransportFailure",
    "AckReceived",
    "AckTimeout",
    "StrayResponse",
    "BRANCH_COOKIE",
]

BRANCH_COOKIE = "z9hG4bK"


class Address(NamedTuple):
    """Where a message goes or came from. ``transport`` is "udp", "tcp" or "tls"."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 timer values in seconds (Kamailio tm names and defaults)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_b: float | None = None  # default 64*T1
    timer_f: float | None = None  # default 64*T1
    send_trying_immediately: bool = True


class IdGenerator:
    """Branches, tags and Call-IDs from an injected random source."""

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.SystemRandom()

    def token(self, nbytes: int = 8) -> str:
        return f"{self._rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"

    def branch(self) -> str:
        return BRANCH_COOKIE + self.token(8)

    def tag(self) -> str:
        return self.token(6)

    def call_id(self, host: str) -> str:
        return f"{self.token(10)}@{host}"


class Outgoing(NamedTuple):
    """Bytes to put on the wire, and where."""

    data: bytes
    destination: Address


# -- events for the transaction user (frozen facts) ----------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created a server transaction (or an ACK/CANCEL arrived, see fields).

    For CANCEL, ``cancelled`` is the INVITE server transaction it matches (or None).
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
    """Sending for this transaction failed (treat as 503, RFC 3261 section 8.1.3.1)."""

    transaction: ClientTransaction | ServerTransaction


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


class ClientTransaction:
    """One client transaction. ``state`` is one of calling/trying/proceeding/accepted/completed/terminated."""

    request: Request
    destination: Address
    state: str
    key: tuple[str, str]
    last_response: Response | None
    #: free slot for the TU (e.g. the call leg that owns it)
    owner: object


class ServerTransaction:
    """One server transaction. ``state`` is one of trying/proceeding/accepted/completed/confirmed/terminated."""

    request: Request
    source: Address
    state: str
    key: tuple[str, ...]
    last_response: Response | None
    owner: object


class TransactionLayer:
    """All transactions of one SIP element, keyed per RFC 3261 section 17.1.3 / 17.2.3."""

    def __init__(self, timers: TimerConfig, ids: IdGenerator): ...
