"""A two-ended harness for the call layer (h11 style): no sockets, a hand-moved clock.

:class:`Net` is the gateway -- a :class:`TransactionLayer` and the :class:`B2BUA` over it --
and fake peers, each with its own transaction layer, exchanging parsed messages in memory.
``net.exchange()`` moves every queued message and event until nothing moves;
``net.advance(seconds)`` moves the clock, firing every timer due on the way (the gateway's
layer, the B2BUA's heap, the peers' layers) in deadline order. ``net.drop`` loses messages.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.b2bua.admission import Admission
from gateway.b2bua.b2bua import B2BUA
from gateway.b2bua.call import NextHop
from gateway.b2bua.decisions import CallObserver, Decision, EmergencyHooks, Outbound, Router
from gateway.sip.dialog import Dialog
from gateway.sip.headers import Via
from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.transaction import (
    Address,
    ClientTransaction,
    Event,
    IdGenerator,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionLayer,
)

GATEWAY = Address("udp", "192.0.2.1", 5060)
CALLER = Address("udp", "192.0.2.10", 5060)
GW1 = Address("udp", "192.0.2.21", 5060)
GW2 = Address("udp", "192.0.2.22", 5060)
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
ANSWER = b"v=0\r\no=- 2 2 IN IP4 192.0.2.21\r\ns=-\r\nc=IN IP4 192.0.2.21\r\nt=0 0\r\n"

Message = Request | Response


def hop(address: Address, *, codes: Sequence[int] = (503,), **kw: Any) -> NextHop:
    """A trunk gateway hop: failover on ``codes``, 5 s to a provisional."""
    return NextHop("carrier", address, "15551230000", frozenset(codes), 5.0, **kw)


class FixedRouter:
    """Every call goes to ``decision`` (hops, or any decision)."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.asked: list[str] = []

    def route(self, request: Request, dialled: str, source: Address) -> Decision:
        self.asked.append(dialled)
        return self.decision


class Peer:
    """A fake phone or trunk gateway with its own transaction layer."""

    def __init__(self, net: Net, address: Address, seed: int) -> None:
        self.net = net
        self.address = address
        self.ids = IdGenerator(random.Random(seed))
        self.layer = TransactionLayer(TimerConfig(), self.ids)
        self.events: list[Event] = []
        self.tag = self.ids.tag()

    # -- what it saw ---------------------------------------------------------------------

    def requests(self, method: str) -> list[RequestReceived]:
        return [
            e for e in self.events if isinstance(e, RequestReceived) and e.request.method == method
        ]

    def statuses(self, method: str = "INVITE") -> list[int]:
        return [
            e.response.status
            for e in self.events
            if isinstance(e, ResponseReceived) and e.response.cseq.method == method
        ]

    def final(self, method: str = "INVITE") -> Response:
        finals = [
            e.response
            for e in self.events
            if isinstance(e, ResponseReceived)
            and e.response.cseq.method == method
            and e.response.status >= 200
        ]
        assert finals, f"no final response to {method} at {self.address}"
        return finals[-1]

    # -- what it does --------------------------------------------------------------------

    def via(self) -> Via:
        return Via("UDP", self.address.host, self.address.port, {"branch": self.ids.branch()})

    def invite(
        self,
        user: str = "15551230000",
        body: bytes = SDP,
        *,
        contact: bool = True,
        max_forwards: str = "70",
    ) -> ClientTransaction:
        """A new call to the gateway (the A-leg); ``contact=False``, or a garbled
        ``max_forwards``: a broken phone's INVITE."""
        host = self.address.host
        headers = [
            ("via", "Via", str(self.via())),
            ("max-forwards", "Max-Forwards", max_forwards),
            ("from", "From", f"<sip:alice@{host}>;tag={self.tag}"),
            ("to", "To", f"<sip:{user}@{GATEWAY.host}>"),
            ("call-id", "Call-ID", self.ids.call_id(host)),
            ("cseq", "CSeq", "1 INVITE"),
            ("contact", "Contact", f"<sip:alice@{host}:{self.address.port}>"),
        ]
        if not contact:
            headers.pop()
        request = Request("INVITE", f"sip:{user}@{GATEWAY.host}", headers)
        if body:
            request.set_body(body, "application/sdp")
        tx = self.layer.send_request(request, GATEWAY, self.net.now)
        self.net.exchange()
        return tx

    def answer(
        self, ev: RequestReceived, status: int, body: bytes = b"", *, reason: str | None = None
    ) -> Response:
        """Respond to a request it received (with its tag and Contact)."""
        host = self.address.host
        contact = (("Contact", f"<sip:peer@{host}:{self.address.port}>"),)
        response = make_response(ev.request, status, reason, to_tag=self.tag, extra=contact)
        if body:
            response.set_body(body, "application/sdp")
        self.layer.send_response(ev.transaction, response, self.net.now)
        self.net.exchange()
        return response

    def uac_dialog(self, tx: ClientTransaction) -> Dialog:
        """Its dialog as the caller, from the 2xx it got."""
        return Dialog.as_uac(tx.request, self.final())

    def uas_dialog(self, ev: RequestReceived, sent: Response) -> Dialog:
        """Its dialog as the callee, from the INVITE and the 2xx it sent."""
        contact = f"<sip:peer@{self.address.host}:{self.address.port}>"
        dialog = Dialog.as_uas(ev.request, self.tag, contact)
        dialog.confirm(sent)
        return dialog

    def ack(self, tx: ClientTransaction, dialog: Dialog, body: bytes = b"") -> None:
        """ACK the 2xx of ``tx`` (with an answer on a delayed offer)."""
        ack = dialog.create_ack(tx.request, self.final(), self.ids)
        ack.push_via(self.via())
        if body:
            ack.set_body(body, "application/sdp")
        self.layer.send_ack(tx, ack, GATEWAY, self.net.now)
        self.net.exchange()

    def request(self, dialog: Dialog, method: str, body: bytes = b"") -> ClientTransaction:
        """An in-dialog request (BYE, re-INVITE, REFER...)."""
        kind = "application/sdp" if body else None
        request = dialog.create_request(method, self.ids, body=body, content_type=kind)
        request.push_via(self.via())
        if method == "REFER":
            request.set("Refer-To", "<sip:bob@192.0.2.99>")
        tx = self.layer.send_request(request, GATEWAY, self.net.now)
        self.net.exchange()
        return tx

    def cancel(self, tx: ClientTransaction) -> None:
        self.layer.send_request(self.layer.cancel_request(tx), GATEWAY, self.net.now)
        self.net.exchange()


class Net:
    """The gateway's transaction layer and B2BUA, and the fake peers around it."""

    def __init__(
        self,
        router: Router,
        *,
        emergency: EmergencyHooks | None = None,
        observers: Sequence[CallObserver] = (),
        spawn: Callable[[Coroutine[Any, Any, None], str], object] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.now = 1000.0
        ids = IdGenerator(random.Random(1))
        self.layer = TransactionLayer(TimerConfig(), ids)
        self.b2bua = B2BUA(
            self.layer,
            router,
            ids,
            via_for=lambda dest, branch: Via(
                "UDP", GATEWAY.host, GATEWAY.port, {"branch": branch, "rport": None}
            ),
            contact_for=lambda dest: f"<sip:gw@{GATEWAY.host}:{GATEWAY.port}>",
            clock=lambda: self.now,
            pump=self.exchange,
            spawn=spawn,
            emergency=emergency,
            observers=observers,
            admission=admission,
        )
        self.peers: dict[Address, Peer] = {}
        #: every message that left the gateway or a peer: (source, destination, message)
        self.wire: list[tuple[Address, Address, Message]] = []
        #: return True to lose a message (source, destination, message)
        self.drop: Callable[[Address, Address, Message], bool] = lambda s, d, m: False
        self._busy = False

    def peer(self, address: Address) -> Peer:
        peer = self.peers.get(address)
        if peer is None:
            peer = self.peers[address] = Peer(self, address, len(self.peers) + 10)
        return peer

    def sent(self, source: Address, destination: Address, method: str) -> list[Request]:
        """The requests ``method`` that went from ``source`` to ``destination``."""
        return [
            m
            for s, d, m in self.wire
            if s == source and d == destination and isinstance(m, Request) and m.method == method
        ]

    def exchange(self) -> None:
        """Move messages and events until nothing moves."""
        if self._busy:
            return
        self._busy = True
        try:
            while self._step():
                pass
        finally:
            self._busy = False

    def _step(self) -> bool:
        moved = False
        while (out := self.layer.next_outgoing()) is not None:
            moved = True
            self._deliver(GATEWAY, out.destination, out.data)
        while (event := self.layer.next_event()) is not None:
            moved = True
            self.b2bua.handle(event, self.now)
        for peer in list(self.peers.values()):
            while (out := peer.layer.next_outgoing()) is not None:
                moved = True
                self._deliver(peer.address, out.destination, out.data)
            while (event := peer.layer.next_event()) is not None:
                moved = True
                peer.events.append(event)
        return moved

    def _deliver(self, source: Address, destination: Address, data: bytes) -> None:
        message = parse_message(data)
        self.wire.append((source, destination, message))
        if self.drop(source, destination, message):
            return
        if destination == GATEWAY:
            self.layer.receive(message, source, self.now)
        else:
            self.peer(destination).layer.receive(message, GATEWAY, self.now)

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds``, firing every timer due on the way, in order."""
        target = self.now + seconds
        while True:
            deadlines = [
                d
                for d in (
                    self.layer.get_timer(),
                    self.b2bua.get_timer(),
                    *(p.layer.get_timer() for p in self.peers.values()),
                )
                if d is not None and d <= target
            ]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            self.layer.handle_timer(self.now)
            self.b2bua.handle_timer(self.now)
            for peer in list(self.peers.values()):
                peer.layer.handle_timer(self.now)
            self.exchange()
        self.now = target


def outbound(*hops: NextHop) -> FixedRouter:
    return FixedRouter(Outbound(list(hops)))
