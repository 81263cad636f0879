"""The B2BUA transaction user: turns transaction events into calls with two legs.

Theory of operation
-------------------
:class:`B2BUA` receives every event of the transaction layer (through the transport
adapter's ``pump``) and acts on it with the layer's methods; it never touches a socket.
Out-of-dialog INVITEs create a :class:`Call`; in-dialog requests are found by
``(Call-ID, our tag)`` and relayed to the other leg's dialog; responses find their call
through the client transaction's ``owner``.

What each request gets when it is not part of a call (RFC 3261 sections 8.2, 12.2.2):

============================  ======================================
request                       answer
============================  ======================================
OPTIONS (no To tag)           200 with Allow/Accept/Supported
INVITE, Max-Forwards 0        483
INVITE, no route              404 (or the router's refusal)
in-dialog, unknown dialog     481
CANCEL matching nothing       481
REGISTER/SUBSCRIBE/...        405 with Allow
unknown method                501
============================  ======================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.b2bua.call import (
    Call,
    CallOutcome,
    CallState,
    EndKind,
    FailureKind,
    Leg,
    LegFailure,
    NextHop,
    RelayedRequest,
)
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.errors import SipParseError, warning_value
from gateway.sip.headers import NameAddr
from gateway.sip.message import REASON_PHRASES, Request, Response, make_response
from gateway.sip.routing import resolve_next_hop
from gateway.sip.transaction import (
    AckReceived,
    AckTimeout,
    Address,
    ClientTransaction,
    IdGenerator,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionLayer,
    TransactionTimeout,
    TransportFailure,
)
from gateway.sip.uri import SipUri, TelUri

__all__ = ["B2BUA", "CallObserver", "RouteRefusal", "Router"]

log = structlog.get_logger("gateway.b2bua")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER, NOTIFY"
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "CANCEL",
        "BYE",
        "OPTIONS",
        "UPDATE",
        "INFO",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "REFER",
        "MESSAGE",
        "PUBLISH",
    }
)
RELAYED_IN_DIALOG = frozenset({"INVITE", "UPDATE", "INFO", "OPTIONS", "MESSAGE", "NOTIFY", "REFER"})


@dataclass(frozen=True, slots=True)
class RouteRefusal:
    """The router's answer when the call cannot go anywhere (or must authenticate first)."""

    status: int
    reason: str
    warning: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Outbound:
    """Place the B-leg at these hops, in order; ``agent`` is the calling agent, if any."""

    hops: list[NextHop]
    agent: str | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """The call waits in ``queue`` (SPEC R-3)."""

    queue: str
    priority: int
    trunk: str | None = None


@dataclass(frozen=True, slots=True)
class Emergency:
    """An emergency call or callback: hops in order, never refused (SPEC E-1..E-3, C-1).

    ``call`` is the emergency facts the hooks get back; ``warning`` is the Warning of the
    503 when there is no hop at all.
    """

    call: Any
    hops: list[NextHop]
    warning: str | None = None


Decision = Outbound | Queued | Emergency | RouteRefusal


class Router(Protocol):
    """Chooses where the B-leg of a call goes."""

    def route(
        self, request: Request, dialled: str, source: Address
    ) -> list[NextHop] | Decision: ...


class CallObserver(Protocol):
    """Told about call milestones (CDRs, metrics, queues). Must not block."""

    def call_started(self, call: Call) -> None: ...

    def call_ended(self, call: Call) -> None: ...


class EmergencyHooks(Protocol):
    """The emergency edge as the B2BUA sees it (DND, reservations, events, location)."""

    async def reserve(self, call_id: str, emergency: Any) -> None: ...

    def started(self, call_id: str, emergency: Any) -> None: ...

    def b_leg_try(self, call_id: str, emergency: Any, hop: NextHop) -> None: ...

    def b_leg_failed(self, call_id: str, emergency: Any, failure: LegFailure) -> None: ...

    def answered(self, call_id: str, emergency: Any) -> None: ...

    def ended(self, call_id: str, emergency: Any, outcome: CallOutcome) -> None: ...

    def decorate_b_invite(
        self, emergency: Any, hop: NextHop, invite: Request, host: str
    ) -> None: ...

    def in_dialog_allowed(
        self, emergency: Any, from_agent: bool, request: Request
    ) -> tuple[bool, str]: ...


class QueuePort(Protocol):
    """The queue dispatcher as the B2BUA sees it."""

    def enqueue(self, call: Call, queue: str, priority: int) -> None: ...

    def answered(self, call: Call) -> None: ...

    def offer_failed(self, call: Call, status: int) -> None: ...


def dialled_number(request: Request) -> str:
    """The user part of the Request-URI (escapes decoded), or the whole URI when none."""
    uri = request.uri
    if isinstance(uri, (SipUri, TelUri)):
        user = uri.user_unescaped
        if user:
            return user
    return str(uri)


class B2BUA:
    """Back-to-back user agent over one :class:`TransactionLayer`."""

    def __init__(
        self,
        layer: TransactionLayer,
        router: Router,
        ids: IdGenerator,
        *,
        via_for: Callable[[Address, str], Any],
        contact_for: Callable[[Address], str],
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], asyncio.TimerHandle],
        user_agent: str = "gateway/0.1",
        observers: list[CallObserver] | None = None,
        ring_timeout: float = 180.0,
    ):
        self.layer = layer
        self.router = router
        self.ids = ids
        self.via_for = via_for
        self.contact_for = contact_for
        self.clock = clock
        self.call_later = call_later
        self.user_agent = user_agent
        self.observers = observers or []
        #: Timer C (RFC 3261 section 16.6 step 11): longest a B-leg may ring after a 1xx
        self.ring_timeout = ring_timeout
        self.legs: dict[tuple[str, str], Leg] = {}
        self.calls: dict[str, Call] = {}
        self.completed = 0
        self.failed = 0
        #: set by the adapter: sends what the layer queued after a step we took on our own
        self.pump: Callable[[], None] = lambda: None
        #: the inbound queue dispatcher, when the dialplan has queues
        self.queues: QueuePort | None = None
        #: out-of-dialog methods handled elsewhere (REGISTER: the registrar)
        self.request_handlers: dict[str, Callable[[RequestReceived], None]] = {}
        #: the emergency edge (DND, callback DIDs, events, location), when configured
        self.emergency: EmergencyHooks | None = None
        #: runs a coroutine beside the call (set by the app: loop.create_task)
        self.spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, event: object) -> None:
        """Entry point for every transaction-layer event; nothing escapes from here."""
        try:
            self._dispatch(event)
        except SipParseError as exc:
            log.info("unusable_message", event_type=type(event).__name__, error=exc.detail)
            self._answer_unusable(event, exc)
        except Exception:
            log.exception("event_failed", event_type=type(event).__name__)
            self._answer_unusable(event, None)

    def _answer_unusable(self, event: object, exc: SipParseError | None) -> None:
        """Answer a request we could not act on, and fail a call a bad response broke."""
        try:
            if isinstance(event, RequestReceived) and event.request.method != "ACK":
                tx = event.transaction
                if tx.state in ("trying", "proceeding"):
                    if exc is not None:
                        self._respond(
                            tx,
                            exc.status,
                            exc.reason,
                            extra=(("Warning", warning_value(exc.detail)),),
                        )
                    else:
                        self._respond(tx, 500)
                owner = tx.owner
                if isinstance(owner, Call) and not owner.ended:
                    self._end(owner, CallOutcome(EndKind.FAILED, 500))
            elif isinstance(event, ResponseReceived) and isinstance(event.transaction.owner, Call):
                call = event.transaction.owner
                b = call.b
                if (
                    not call.ended
                    and b is not None
                    and b.client_tx is event.transaction
                    and not b.got_final
                ):
                    b.got_final = True
                    self._stop_timer(call)
                    detail = exc.detail if exc is not None else "unusable response"
                    self._try_next_hop(call, self._failure(call, FailureKind.BAD_RESPONSE, detail))
        except Exception:
            log.exception("answer_unusable_failed")

    def _dispatch(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self._on_response(event)
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            self._on_ack(event.transaction, event.request)
        elif isinstance(event, TransactionTimeout):
            self._on_tx_failure(event.transaction, FailureKind.TIMEOUT, "no response (timer B)")
        elif isinstance(event, TransportFailure):
            kind = FailureKind.REFUSED if event.refused else FailureKind.TRANSPORT
            self._on_tx_failure(event.transaction, kind, event.detail or "transport error")
        elif isinstance(event, AckTimeout):
            self._on_ack_timeout(event.transaction)
        # StrayResponse / StrayAck: nothing to do for a UA

    # -- requests ------------------------------------------------------------------------

    def _on_request(self, ev: RequestReceived) -> None:
        request = ev.request
        tx = ev.transaction
        method = request.method
        if method == "CANCEL":
            self._on_cancel(tx, request, ev.cancelled)
            return
        to_tag = request.to_tag
        if to_tag is not None:
            leg = self.legs.get((request.call_id, to_tag))
            if leg is None:
                self._respond(tx, 481)
                return
            self._on_in_dialog(leg, tx, request)
            return
        handler = self.request_handlers.get(method)
        if handler is not None:
            handler(ev)
        elif method == "INVITE":
            self._on_new_invite(tx, request, ev.source)
        elif method == "OPTIONS":
            self._respond(
                tx,
                200,
                extra=(
                    ("Allow", ALLOW),
                    ("Accept", "application/sdp"),
                    ("Supported", ""),
                    ("Server", self.user_agent),
                ),
            )
        elif method == "ACK":
            pass
        elif method in ("BYE", "UPDATE", "INFO", "PRACK"):
            self._respond(tx, 481)
        elif method in KNOWN_METHODS:
            self._respond(tx, 405, extra=(("Allow", ALLOW),))
        else:
            self._respond(tx, 501, extra=(("Allow", ALLOW),))

    def _respond(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Response:
        response = make_response(
            tx.request,
            status,
            reason,
            to_tag=to_tag or (self.ids.tag() if status > 100 else None),
            extra=extra,
        )
        self.layer.send_response(tx, response, self.clock())
        return response

    def _on_new_invite(self, tx: ServerTransaction, request: Request, source: Address) -> None:
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            self._respond(tx, 483)
            return
        if not request.contacts:
            # RFC 3261 section 8.1.1.8: an INVITE must carry a Contact to reach the caller
            self._respond(
                tx,
                400,
                "Missing Contact",
                extra=(("Warning", warning_value("INVITE without Contact")),),
            )
            return
        now = self.clock()
        a = Leg("a", request.call_id, self.ids.tag(), source, invite=request, server_tx=tx)
        dialled = dialled_number(request)
        call = Call(id=self.ids.token(6), a=a, dialled=dialled, started_at=now)
        tx.owner = call
        structlog.contextvars.bind_contextvars(call_id=call.id)
        try:
            decision = self.router.route(request, dialled, source)
            if isinstance(decision, list):
                decision = Outbound(decision)
            if isinstance(decision, RouteRefusal):
                log.info(
                    "call_refused", dialled=dialled, status=decision.status, reason=decision.reason
                )
                extra = decision.headers
                if decision.warning:
                    extra = (*extra, ("Warning", warning_value(decision.warning)))
                self._respond(tx, decision.status, decision.reason, to_tag=a.local_tag, extra=extra)
                call.state = CallState.ENDED
                call.result = f"{decision.status}"
                return
            self.calls[call.id] = call
            self.legs[(a.call_id, a.local_tag)] = a
            a.dialog = Dialog.as_uas(request, a.local_tag, self.contact_for(a.flow))
            if isinstance(decision, Emergency):
                self._start_emergency(call, decision)
                return
            if isinstance(decision, Queued):
                call.direction = "inbound"
                call.source_trunk = decision.trunk
                log.info(
                    "call_start",
                    direction="inbound",
                    dialled=dialled,
                    a_call_id=a.call_id,
                    queue=decision.queue,
                )
                self._notify_started(call)
                if self.queues is None:
                    self._fail_a(call, 480, "Temporarily Unavailable")
                    return
                # the caller waits in early dialog (RFC 3261 section 21.1.4: 182 Queued)
                queued = make_response(request, 182, to_tag=a.local_tag)
                queued.add("Contact", self.contact_for(a.flow))
                self.layer.send_response(tx, queued, self.clock())
                self.queues.enqueue(call, decision.queue, decision.priority)
                return
            call.hops = decision.hops
            call.agent = decision.agent
            log.info(
                "call_start",
                direction="outbound",
                dialled=dialled,
                a_call_id=a.call_id,
                hops=len(decision.hops),
                agent=decision.agent,
            )
            self._notify_started(call)
            self._try_next_hop(call)
        finally:
            structlog.contextvars.unbind_contextvars("call_id")

    def _start_emergency(self, call: Call, decision: Emergency) -> None:
        """SPEC E-2..E-9: private, DND and events now; the DID, then the B-leg at once."""
        em = decision.call
        call.private = True  # E-9: no CDR, no recording
        call.emergency = em
        call.hops = decision.hops
        call.direction = "inbound" if getattr(em, "callback", False) else "outbound"
        log.info(
            "emergency_call_start",
            dialled=call.dialled,
            agent=getattr(em, "agent", None),
            hops=len(decision.hops),
            callback=getattr(em, "callback", False),
        )
        self._notify_started(call)
        hooks = self.emergency
        if hooks is not None:
            hooks.started(call.id, em)
        if not decision.hops:
            warning = decision.warning or "no route to emergency services"
            out = make_response(call.a.invite, 503, to_tag=call.a.local_tag)  # type: ignore[arg-type]
            out.add("Warning", warning_value(warning))
            if call.a.server_tx is not None:
                self.layer.send_response(call.a.server_tx, out, self.clock())
            self._end(call, CallOutcome(EndKind.FAILED, 503))
            return
        if hooks is None or self.spawn is None or getattr(em, "callback", False):
            self._try_next_hop(call)
            return

        async def reserve_then_place() -> None:
            try:
                await hooks.reserve(call.id, em)
            finally:
                if not call.ended and not call.cancelled:
                    self._try_next_hop(call)
                self._flush()

        self.spawn(reserve_then_place())

    def _notify_started(self, call: Call) -> None:
        for observer in self.observers:
            try:
                observer.call_started(call)
            except Exception:
                log.exception("observer_failed")

    # -- B-leg placement and failover ------------------------------------------------------

    def _failure(
        self, call: Call, kind: FailureKind, detail: str, code: int | None = None
    ) -> LegFailure:
        """The failure of the current attempt (its hop's path and gateway)."""
        hop = call.b.hop if call.b is not None and call.b.hop is not None else call.current_hop
        if hop is None:
            return LegFailure("-", "-", code, kind, detail)
        return LegFailure(hop.trunk, hop.gateway, code, kind, detail)

    def _record_failure(self, call: Call, failure: LegFailure) -> None:
        """One attempt failed: keep it for the Warning and tell the emergency edge."""
        call.failures.append(failure)
        log.info(
            "b_leg_failed",
            path=failure.path,
            gateway=failure.gateway,
            code=failure.code,
            error=failure.kind.value,
            detail=failure.detail,
            attempt=call.hop_index + 1,
            call_id=call.id,
        )
        if call.emergency is not None and self.emergency is not None:
            self.emergency.b_leg_failed(call.id, call.emergency, failure)

    def _try_next_hop(self, call: Call, failure: LegFailure | None = None) -> None:
        """The current attempt failed (``failure``; None: no attempt yet): the next hop."""
        if failure is not None:
            self._record_failure(call, failure)
        self._drop_b_leg(call)
        status = failure.status if failure is not None else 503
        if call.queue is not None and self.queues is not None and not call.cancelled:
            # a queue offer failed: the dispatcher picks the next agent
            self.queues.offer_failed(call, status)
            return
        call.hop_index += 1
        hop = call.current_hop
        if hop is None or call.cancelled:
            if not call.cancelled:
                reason = failure.reason if failure is not None else "Service Unavailable"
                self._fail_a(call, status, reason)
            return
        self._place_b_leg(call, hop)

    def _drop_b_leg(self, call: Call) -> None:
        if call.b is not None:
            self.legs.pop((call.b.call_id, call.b.local_tag), None)
            call.b = None

    def _place_b_leg(self, call: Call, hop: NextHop) -> None:
        a_invite = call.a.invite
        assert a_invite is not None
        dest = hop.address
        our_host = self._host_for(dest)
        b = Leg("b", self.ids.call_id(our_host), self.ids.tag(), dest)
        invite = self._build_b_invite(call, a_invite, b, hop, our_host)
        b.invite = invite
        call.b = b
        call.state = CallState.TRYING
        call.attempts.append(f"{hop.trunk}:{dest.host}:{dest.port}")
        self.legs[(b.call_id, b.local_tag)] = b
        log.info(
            "b_leg_try",
            trunk=hop.trunk,
            gateway=f"{dest.transport}:{dest.host}:{dest.port}",
            attempt=len(call.attempts),
            call_id=call.id,
        )
        if call.emergency is not None and self.emergency is not None:
            self.emergency.b_leg_try(call.id, call.emergency, hop)
        ctx = self.layer.send_request(invite, dest, self.clock())
        ctx.owner = call
        b.client_tx = ctx
        b.hop = hop
        self._stop_timer(call)
        call.provisional_timer = self.call_later(
            hop.provisional_timeout, lambda: self._on_provisional_timeout(call, ctx)
        )

    # -- the queue dispatcher's port (CallPlacer) -------------------------------------------

    def offer(self, call: Call, hop: NextHop) -> None:
        """Ring one agent for a queued call."""
        if call.ended or call.cancelled:
            return
        self._drop_b_leg(call)
        self._place_b_leg(call, hop)
        self._flush()

    def abandon_offer(self, call: Call) -> None:
        """Stop ringing the agent of a queued call (CANCEL once it has rung)."""
        b = call.b
        if b is None or b.client_tx is None:
            return
        self._stop_timer(call)
        abandoned = _Abandoned(call)
        if not b.got_final:
            if b.got_provisional:
                abandoned.cancel_sent = True
                cancel = self.layer.cancel_request(b.client_tx)
                self.layer.send_request(cancel, b.client_tx.destination, self.clock()).owner = None
            b.client_tx.owner = abandoned
        self._drop_b_leg(call)
        self._flush()

    def overflow_to(self, call: Call, hops: list[NextHop]) -> None:
        """Send a call that waited too long to fixed hops."""
        call.queue = None
        call.hops = hops
        call.hop_index = -1
        self._try_next_hop(call)
        self._flush()

    def fail_caller(self, call: Call, status: int, reason: str | None) -> None:
        """Give up on a call: final ``status`` to the caller."""
        call.queue = None
        if call.b is not None and not call.b.got_final:
            self.abandon_offer(call)
        self._fail_a(call, status, reason or REASON_PHRASES.get(status, "Unavailable"))
        self._flush()

    def _stop_timer(self, call: Call) -> None:
        if call.provisional_timer is not None:
            call.provisional_timer.cancel()
            call.provisional_timer = None

    def _on_ring_timeout(self, call: Call, tx: ClientTransaction) -> None:
        call.provisional_timer = None
        b = call.b
        if call.ended or call.cancelled or b is None or b.client_tx is not tx or b.got_final:
            return
        log.info("b_leg_ring_timeout", call_id=call.id)
        if call.queue is not None and self.queues is not None:
            self.abandon_offer(call)
            self.queues.offer_failed(call, 408)
            self._flush()
            return
        hop = call.current_hop
        ring = hop.ring_timeout if hop is not None and hop.ring_timeout else self.ring_timeout
        failure = self._failure(call, FailureKind.RING_TIMEOUT, f"no answer within {ring:g} s")
        if hop is not None and 408 in hop.failover_codes and call.hop_index + 1 < len(call.hops):
            # e.g. an emergency callback the agent does not answer: its fallback (SPEC C-3)
            self.abandon_offer(call)
            self._try_next_hop(call, failure)
            self._flush()
            return
        call.cancelled = True
        self._send_cancel(call)
        self._record_failure(call, failure)
        self._fail_a(call, failure.status, failure.reason)
        self._flush()

    def _on_setup_timeout(self, call: Call, tx: ClientTransaction) -> None:
        """A 100 Trying, then no 18x or 2xx in time: the next path (emergency, SPEC E-2).

        The stuck leg is CANCELled (RFC 3261 section 9.1: a provisional came, so a CANCEL
        may go); a 200 that crosses the CANCEL is ACKed and BYEd by ``_Abandoned``, never
        connected to the caller.
        """
        call.provisional_timer = None
        b = call.b
        if (
            call.ended
            or call.cancelled
            or b is None
            or b.client_tx is not tx
            or b.got_final
            or b.got_progress
            or b.hop is None
        ):
            return
        log.info("b_leg_setup_timeout", attempt=call.hop_index + 1, call_id=call.id)
        failure = self._failure(
            call,
            FailureKind.SETUP_TIMEOUT,
            f"no 18x or 2xx within {b.hop.setup_timeout:g} s of 100 Trying",
        )
        self.abandon_offer(call)
        self._try_next_hop(call, failure)
        self._flush()

    def _host_for(self, dest: Address) -> str:
        via = self.via_for(dest, "x")
        return str(via.host)

    def _build_b_invite(
        self, call: Call, a_invite: Request, b: Leg, hop: NextHop, our_host: str
    ) -> Request:
        dest = hop.address
        host = f"[{dest.host}]" if ":" in dest.host else dest.host
        target = f"{host}:{dest.port}"
        transport = "" if dest.transport == "udp" else f";transport={dest.transport}"
        user = hop.user
        ruri = hop.request_uri or f"sip:{user}@{target}{transport}"
        a_from = a_invite.from_
        from_user = _user_of(a_from)
        display = f"{a_from.display} " if a_from.display else ""
        max_forwards = a_invite.max_forwards
        mf = 70 if max_forwards is None else max(max_forwards - 1, 0)
        headers: list[tuple[str, str, str]] = [
            ("via", "Via", str(self.via_for(dest, self.ids.branch()))),
            ("max-forwards", "Max-Forwards", str(mf)),
            ("from", "From", f"{display}<sip:{from_user}@{our_host}>;tag={b.local_tag}"),
            ("to", "To", f"<{hop.request_uri}>" if hop.request_uri else f"<sip:{user}@{target}>"),
            ("call-id", "Call-ID", b.call_id),
            ("cseq", "CSeq", "1 INVITE"),
            ("contact", "Contact", self.contact_for(dest)),
            ("allow", "Allow", ALLOW),
            ("user-agent", "User-Agent", self.user_agent),
        ]
        invite = Request("INVITE", ruri, headers)
        # kept only when the router let them through (trusted trunks, SPEC C-2)
        for name in ("Priority", "Resource-Priority", "Geolocation", "Geolocation-Routing"):
            for value in a_invite.get_all(name):
                invite.add(name, value)
        if a_invite.body:
            invite.set_body(a_invite.body, a_invite.content_type)
        call.ack_waits_for_a = not a_invite.body
        if call.emergency is not None and self.emergency is not None:
            self.emergency.decorate_b_invite(call.emergency, hop, invite, our_host)
        return invite

    def _on_provisional_timeout(self, call: Call, tx: ClientTransaction) -> None:
        call.provisional_timer = None
        if call.ended or call.b is None or call.b.client_tx is not tx or call.b.got_provisional:
            return
        log.info("b_leg_no_provisional", attempt=call.hop_index + 1, call_id=call.id)
        # RFC 3261 section 9.1: no CANCEL before a provisional; abandon the attempt and
        # clean up if it answers late (see _on_abandoned_response).
        hop = call.b.hop
        waited = hop.provisional_timeout if hop is not None else 0.0
        failure = self._failure(
            call,
            FailureKind.PROVISIONAL_TIMEOUT,
            f"no provisional response within {waited:g} s",
        )
        tx.owner = _Abandoned(call)
        self._try_next_hop(call, failure)
        self._flush()

    def _flush(self) -> None:
        """Outside an event dispatch (timers of our own), the adapter must pump."""
        self.pump()

    # -- responses ---------------------------------------------------------------------------

    def _on_response(self, ev: ResponseReceived) -> None:
        tx = ev.transaction
        owner = tx.owner
        response = ev.response
        if isinstance(owner, Call):
            structlog.contextvars.bind_contextvars(call_id=owner.id)
            try:
                self._on_b_invite_response(owner, tx, response)
            finally:
                structlog.contextvars.unbind_contextvars("call_id")
        elif isinstance(owner, RelayedRequest):
            self._on_relayed_response(owner, tx, response)
        elif isinstance(owner, _Abandoned):
            self._on_abandoned_response(owner, tx, response)

    def _on_b_invite_response(self, call: Call, tx: ClientTransaction, response: Response) -> None:
        b = call.b
        if b is None or b.client_tx is not tx:
            return
        status = response.status
        if status < 200:
            was_provisional, was_progress = b.got_provisional, b.got_progress
            b.got_provisional = True
            b.got_progress = was_progress or status > 100
            hop = b.hop
            setup = hop.setup_timeout if hop is not None else None
            if setup is not None and not b.got_progress:
                # an emergency hop: a 100 Trying alone is no progress (SPEC E-2)
                if not was_provisional:
                    self._stop_timer(call)
                    call.provisional_timer = self.call_later(
                        setup, lambda: self._on_setup_timeout(call, tx)
                    )
            elif not was_provisional or (setup is not None and not was_progress):
                # the first provisional (the first 18x on an emergency hop): Timer C
                self._stop_timer(call)
                ring = (
                    hop.ring_timeout if hop is not None and hop.ring_timeout else self.ring_timeout
                )
                call.provisional_timer = self.call_later(
                    ring, lambda: self._on_ring_timeout(call, tx)
                )
            if call.cancelled:
                self._send_cancel(call)
                return
            if status == 100:
                return
            if response.to_tag is not None and b.dialog is None:
                b.dialog = Dialog.as_uac(b.invite, response)  # type: ignore[arg-type]
            self._relay_response_to_a(call, response)
            if call.state is CallState.TRYING:
                call.state = CallState.EARLY
            return
        if status < 300:
            if b.got_final:
                return  # a 2xx from another fork: ACKed by the layer when registered
            b.got_final = True
            self._stop_timer(call)
            b.dialog = Dialog.as_uac(b.invite, response)  # type: ignore[arg-type]
            b.dialog.local_contact = self.contact_for(b.flow)
            if call.cancelled or call.ended:
                self._ack_b(call, response, b"", None)
                self._send_bye(call, b)
                self._end(call, CallOutcome(EndKind.CANCELLED))
                return
            if not call.ack_waits_for_a:
                self._ack_b(call, response, b"", None)
            else:
                call.pending_b_2xx = response
            self._relay_response_to_a(call, response)
            call.state = CallState.CONFIRMED
            call.answered_at = self.clock()
            if call.queue is not None and self.queues is not None:
                self.queues.answered(call)
                call.queue = None
            if call.emergency is not None and self.emergency is not None:
                self.emergency.answered(call.id, call.emergency)
            log.info(
                "call_answered",
                status=status,
                setup_ms=round((call.answered_at - call.started_at) * 1000, 1),
            )
            return
        # final error
        b.got_final = True
        self._stop_timer(call)
        if call.cancelled:
            self._end(call, CallOutcome(EndKind.CANCELLED))
            return
        hop = call.current_hop
        failure = self._failure(call, FailureKind.STATUS, response.reason, status)
        if hop is not None and status in hop.failover_codes and call.hop_index + 1 < len(call.hops):
            log.info("b_leg_failover", status=status, attempt=call.hop_index + 1)
            self._try_next_hop(call, failure)
            return
        self._record_failure(call, failure)
        self._fail_a(call, status, response.reason, response)

    def _relay_response_to_a(self, call: Call, response: Response) -> None:
        a = call.a
        tx = a.server_tx
        invite = a.invite
        if tx is None or invite is None or tx.state not in ("trying", "proceeding"):
            return
        out = make_response(invite, response.status, response.reason, to_tag=a.local_tag)
        out.add("Contact", self.contact_for(a.flow))
        if response.status >= 200:
            out.add("Allow", ALLOW)
        out.add("Server", self.user_agent)
        if response.body:
            out.set_body(response.body, response.content_type)
        if a.dialog is None:
            a.dialog = Dialog.as_uas(invite, a.local_tag, self.contact_for(a.flow))
        if response.status >= 200:
            a.dialog.state = "confirmed"
        self.layer.send_response(tx, out, self.clock())

    def _fail_a(
        self, call: Call, status: int, reason: str, response: Response | None = None
    ) -> None:
        a = call.a
        tx = a.server_tx
        if call.emergency is not None and not getattr(call.emergency, "callback", False):
            # SPEC E-3: never a far end's 404/424/403... to an emergency caller. 503 says
            # "this server could not, try another" (RFC 3261 section 21.5.4): a phone with
            # a backup proxy tries it. The Warning names every path tried and why it failed.
            status, reason = 503, "Service Unavailable"
        if tx is not None and a.invite is not None and tx.state in ("trying", "proceeding"):
            out = make_response(a.invite, status, reason, to_tag=a.local_tag)
            if call.emergency is not None:
                out.add("Warning", self._attempts_warning(call))
            elif response is not None:
                for name in ("Warning", "Retry-After", "Reason"):
                    for value in response.get_all(name):
                        out.add(name, value)
            self.layer.send_response(tx, out, self.clock())
        self._end(call, CallOutcome(EndKind.FAILED, status, tuple(call.failures)))

    def _attempts_warning(self, call: Call) -> str:
        """RFC 3261 section 20.43 Warning: each path tried and why it failed (SPEC E-2)."""
        tried = "; ".join(failure.describe() for failure in call.failures)
        text = f"every path failed: {tried}" if tried else "no path answered"
        return warning_value(text, agent=self._host_for(call.a.flow), limit=800)

    def _ack_b(self, call: Call, response: Response, body: bytes, content_type: str | None) -> None:
        b = call.b
        assert (
            b is not None
            and b.dialog is not None
            and b.invite is not None
            and b.client_tx is not None
        )
        ack = b.dialog.create_ack(b.invite, response, self.ids)
        dest = self._next_hop(b)
        ack.push_via(self.via_for(dest, self.ids.branch()))
        if body:
            ack.set_body(body, content_type)
        self.layer.send_ack(b.client_tx, ack, dest, self.clock())

    def _on_abandoned_response(
        self, owner: _Abandoned, tx: ClientTransaction, response: Response
    ) -> None:
        if response.status < 200:
            if not owner.cancel_sent:
                owner.cancel_sent = True
                cancel = self.layer.cancel_request(tx)
                self.layer.send_request(cancel, tx.destination, self.clock()).owner = None
        elif response.status < 300 and response.to_tag is not None:
            dialog = Dialog.as_uac(tx.request, response)
            ack = dialog.create_ack(tx.request, response, self.ids)
            ack.push_via(self.via_for(tx.destination, self.ids.branch()))
            self.layer.send_ack(tx, ack, tx.destination, self.clock())
            bye = dialog.create_request("BYE", self.ids)
            bye.push_via(self.via_for(tx.destination, self.ids.branch()))
            self.layer.send_request(bye, tx.destination, self.clock()).owner = None

    # -- CANCEL, ACK, BYE and other in-dialog requests --------------------------------------------

    def _on_cancel(
        self, tx: ServerTransaction, request: Request, cancelled: ServerTransaction | None
    ) -> None:
        if cancelled is None or not isinstance(cancelled.owner, Call):
            self._respond(tx, 481)
            return
        self._respond(tx, 200)
        call = cancelled.owner
        if call.ended or call.cancelled:
            return
        call.cancelled = True
        a = call.a
        if (
            a.server_tx is not None
            and a.invite is not None
            and a.server_tx.state in ("trying", "proceeding")
        ):
            out = make_response(a.invite, 487, to_tag=a.local_tag)
            self.layer.send_response(a.server_tx, out, self.clock())
        log.info("call_cancelled_by_caller", call_id=call.id)
        b = call.b
        if b is None or b.got_final:
            self._end(call, CallOutcome(EndKind.CANCELLED))
            return
        if b.got_provisional:
            self._send_cancel(call)
        # else: CANCEL goes out when the first provisional arrives (RFC 3261 section 9.1)

    def _send_cancel(self, call: Call) -> None:
        b = call.b
        if call.cancel_sent or b is None or b.client_tx is None:
            return
        call.cancel_sent = True
        cancel = self.layer.cancel_request(b.client_tx)
        self.layer.send_request(cancel, b.client_tx.destination, self.clock()).owner = None

    def _on_ack(self, tx: ServerTransaction, ack: Request) -> None:
        owner = tx.owner
        if isinstance(owner, Call):
            call = owner
            pending = call.pending_b_2xx
            if pending is not None and call.b is not None and call.b.dialog is not None:
                call.pending_b_2xx = None
                self._ack_b(call, pending, ack.body, ack.content_type)
        elif isinstance(owner, RelayedRequest):
            relay = owner
            pending = relay.pending_2xx
            if pending is not None:
                self._ack_relayed(relay, pending, ack.body, ack.content_type)

    def _on_in_dialog(self, leg: Leg, tx: ServerTransaction, request: Request) -> None:
        call = self._call_of(leg)
        if call is None or leg.dialog is None:
            self._respond(tx, 481)
            return
        method = request.method
        if method == "ACK":
            return
        try:
            leg.dialog.check_request(request)
        except DialogError as exc:
            self._respond(tx, exc.status, exc.reason, to_tag=leg.local_tag)
            return
        other = call.other(leg)
        if call.emergency is not None and self.emergency is not None:
            from_agent = (leg.side == "a") != bool(getattr(call.emergency, "callback", False))
            allowed, warning = self.emergency.in_dialog_allowed(call.emergency, from_agent, request)
            if not allowed:
                # SPEC E-8: during an emergency call the agent can only end it
                self._respond(
                    tx,
                    403,
                    to_tag=leg.local_tag,
                    extra=(("Warning", warning_value(warning)),),
                )
                return
        if method == "BYE":
            self._respond(tx, 200, to_tag=leg.local_tag)
            log.info("call_hangup", by="caller" if leg.side == "a" else "callee", call_id=call.id)
            if other is not None:
                if other.side == "b" and not other.got_final:
                    call.cancelled = True
                    if other.got_provisional:
                        self._send_cancel(call)
                else:
                    self._send_bye(call, other)
            self._end(
                call, CallOutcome(EndKind.COMPLETED if call.answered_at else EndKind.CANCELLED)
            )
            return
        if other is None or other.dialog is None or method not in RELAYED_IN_DIALOG:
            if method in ("INFO", "OPTIONS", "NOTIFY", "MESSAGE") and (
                other is None or other.dialog is None
            ):
                self._respond(tx, 200, to_tag=leg.local_tag)
            else:
                self._respond(
                    tx,
                    501 if method not in KNOWN_METHODS else 405,
                    to_tag=leg.local_tag,
                    extra=(("Allow", ALLOW),),
                )
            return
        if method in ("INVITE", "UPDATE"):
            leg.dialog.update_target(request)
        out = other.dialog.create_request(
            method, self.ids, body=request.body, content_type=request.content_type
        )
        for name in (
            "Event",
            "Subscription-State",
            "Info-Package",
            "Content-Disposition",
            # REFER (RFC 3515): the transfer target and who asked; the agent's phone does
            # the transfer, and its NOTIFYs come back through the same relay
            "Refer-To",
            "Referred-By",
            "Refer-Sub",
        ):
            value = request.get(name)
            if value is not None:
                out.set(name, value)
        dest = self._next_hop(other)
        out.push_via(self.via_for(dest, self.ids.branch()))
        relay = RelayedRequest(call, tx, other, leg, out)
        tx.owner = relay
        ctx = self.layer.send_request(out, dest, self.clock())
        ctx.owner = relay
        relay.client_tx = ctx

    def _on_relayed_response(
        self, relay: RelayedRequest, tx: ClientTransaction, response: Response
    ) -> None:
        server_tx = relay.server_tx
        status = response.status
        if status == 100 or server_tx is None:
            return
        if (
            relay.request.method in ("INVITE", "UPDATE")
            and 200 <= status < 300
            and relay.to_leg.dialog is not None
        ):
            relay.to_leg.dialog.update_target(response)
        if relay.request.method == "INVITE" and 200 <= status < 300:
            if relay.acked:
                return
            if relay.request.body:
                self._ack_relayed(relay, response, b"", None)
            else:
                relay.pending_2xx = response
        if server_tx.state not in ("trying", "proceeding"):
            return
        out = make_response(
            server_tx.request, status, response.reason, to_tag=relay.from_leg.local_tag
        )
        if relay.request.method in ("INVITE", "UPDATE") and status < 300:
            out.add("Contact", self.contact_for(relay.from_leg.flow))
        if response.body:
            out.set_body(response.body, response.content_type)
        for name in ("Warning", "Retry-After"):
            for value in response.get_all(name):
                out.add(name, value)
        self.layer.send_response(server_tx, out, self.clock())
        if status >= 200 and (relay.request.method != "INVITE" or relay.acked or status >= 300):
            self._release_relay(relay, tx)

    @staticmethod
    def _release_relay(relay: RelayedRequest, tx: ClientTransaction | None) -> None:
        """Break the relay <-> transaction cycle once the relay has nothing left to do."""
        if tx is not None and tx.owner is relay:
            tx.owner = None
        if relay.server_tx is not None and relay.server_tx.owner is relay:
            relay.server_tx.owner = None
        relay.client_tx = None

    def _ack_relayed(
        self, relay: RelayedRequest, response: Response, body: bytes, content_type: str | None
    ) -> None:
        leg = relay.to_leg
        if leg.dialog is None:
            return
        relay.acked = True
        relay.pending_2xx = None
        ack = leg.dialog.create_ack(relay.request, response, self.ids)
        dest = self._next_hop(leg)
        ack.push_via(self.via_for(dest, self.ids.branch()))
        if body:
            ack.set_body(body, content_type)
        client_tx = relay.client_tx
        if client_tx is not None:
            self.layer.send_ack(client_tx, ack, dest, self.clock())
        else:
            self.layer.send_stateless(ack, dest)
        if relay.server_tx is None or relay.server_tx.state not in ("trying", "proceeding"):
            self._release_relay(relay, client_tx)

    def _send_bye(self, call: Call, leg: Leg) -> None:
        if leg.dialog is None:
            return
        bye = leg.dialog.create_request("BYE", self.ids)
        dest = self._next_hop(leg)
        bye.push_via(self.via_for(dest, self.ids.branch()))
        self.layer.send_request(bye, dest, self.clock()).owner = None

    def _next_hop(self, leg: Leg) -> Address:
        """Where in-dialog requests to ``leg`` go: its route set's first hop, else its flow."""
        dialog = leg.dialog
        if dialog is not None and dialog.route_set:
            first = dialog.route_set[0]
            try:
                return resolve_next_hop(first.uri, default_transport=leg.flow.transport)
            except (SipParseError, ValueError):
                return leg.flow
        return leg.flow

    def _call_of(self, leg: Leg) -> Call | None:
        if leg.side == "a":
            owner = leg.server_tx.owner if leg.server_tx is not None else None
        else:
            owner = leg.client_tx.owner if leg.client_tx is not None else None
        if isinstance(owner, Call):
            return owner
        for call in self.calls.values():
            if call.a is leg or call.b is leg:
                return call
        return None

    # -- failures ----------------------------------------------------------------------------

    def _on_tx_failure(
        self, tx: ClientTransaction | ServerTransaction, kind: FailureKind, detail: str
    ) -> None:
        owner = tx.owner
        if isinstance(owner, Call) and isinstance(tx, ClientTransaction):
            call = owner
            b = call.b
            if b is None or b.client_tx is not tx or b.got_final or call.ended:
                return
            b.got_final = True
            self._stop_timer(call)
            if call.cancelled:
                self._end(call, CallOutcome(EndKind.CANCELLED))
                return
            self._try_next_hop(call, self._failure(call, kind, detail))
        elif isinstance(owner, RelayedRequest) and isinstance(tx, ClientTransaction):
            relay = owner
            if relay.server_tx is not None and relay.server_tx.state in ("trying", "proceeding"):
                status = 408 if kind is FailureKind.TIMEOUT else 503
                out = make_response(
                    relay.server_tx.request, status, to_tag=relay.from_leg.local_tag
                )
                self.layer.send_response(relay.server_tx, out, self.clock())

    def _on_ack_timeout(self, tx: ServerTransaction) -> None:
        owner = tx.owner
        if isinstance(owner, Call) and not owner.ended:
            call = owner
            log.info("no_ack_from_caller", call_id=call.id)
            self._send_bye(call, call.a)
            if call.b is not None:
                self._send_bye(call, call.b)
            self._end(call, CallOutcome(EndKind.NO_ACK))

    def _end(self, call: Call, outcome: CallOutcome) -> None:
        if call.ended:
            return
        result = outcome.text
        call.state = CallState.ENDED
        call.result = result
        call.ended_at = self.clock()
        self._stop_timer(call)
        self.calls.pop(call.id, None)
        self.legs.pop((call.a.call_id, call.a.local_tag), None)
        if call.b is not None:
            self.legs.pop((call.b.call_id, call.b.local_tag), None)
        if outcome.failed:
            self.failed += 1
        else:
            self.completed += 1
        log.info(
            "call_end",
            call_id=call.id,
            result=result,
            duration_s=round(call.ended_at - call.answered_at, 3) if call.answered_at else 0.0,
            attempts=call.attempts,
        )
        for observer in self.observers:
            try:
                observer.call_ended(call)
            except Exception:
                log.exception("observer_failed")
        if call.emergency is not None and self.emergency is not None:
            try:
                self.emergency.ended(call.id, call.emergency, outcome)
            except Exception:
                log.exception("emergency_end_failed")
        self._release(call)

    @staticmethod
    def _release(call: Call) -> None:
        """Drop the transactions' references to an ended call.

        Finished transactions linger for up to 64*T1 to absorb retransmissions; through
        ``owner`` they would keep the whole call (legs, dialogs, messages) alive and in a
        reference cycle that only a full garbage collection frees - a pause that grows with
        the call rate. A B-leg INVITE still waiting for its final response keeps an owner
        that ACKs and BYEs a late 2xx, without the call.
        """
        a_tx = call.a.server_tx
        if a_tx is not None:
            a_tx.owner = None
        b = call.b
        if b is not None and b.client_tx is not None and b.client_tx.owner is call:
            if b.got_final:
                b.client_tx.owner = None
            else:
                late = _Abandoned(None)
                late.cancel_sent = call.cancel_sent
                b.client_tx.owner = late


class _Abandoned:
    """Owner of a B-leg INVITE given up: CANCELs it on a 1xx, ACKs and BYEs a late 2xx."""

    __slots__ = ("call", "cancel_sent")

    def __init__(self, call: Call | None):
        self.call = call
        self.cancel_sent = False


def _user_of(name_addr: NameAddr) -> str:
    try:
        uri = name_addr.uri
    except SipParseError:
        return "anonymous"
    if isinstance(uri, (SipUri, TelUri)) and uri.user:
        return uri.user
    return "anonymous"
