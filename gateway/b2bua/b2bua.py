"""The B2BUA transaction user: turns transaction events into calls with two legs.

Theory of operation
-------------------
:class:`B2BUA` is sans-I/O like the layers below it: every entry point takes ``now``
(``handle(event, now)``, ``handle_timer(now)``), it never touches a socket, and it exposes
``get_timer()`` so the adapter arms one loop timer for the transaction layer and the call
layer together (aioquic pattern). Each event of the transaction layer goes to one part
with one job:

===================  ========================================================================
part                 job
===================  ========================================================================
:mod:`.answers`      out-of-dialog answers (OPTIONS, 405, 481, 483, the router's refusals)
:mod:`.placement`    the B-leg INVITE at each hop, its responses, timers and failover, the
                     caller's CANCEL, the queue dispatcher's placer port
:mod:`.relay`        in-dialog requests relayed between the legs, ACKs, BYE
:mod:`.core`         what they share: sending on a leg, failing and ending a call
:mod:`.decisions`    the router's decisions, the observer and hook ports
:mod:`.timers`       the call layer's timer heap
===================  ========================================================================

Out-of-dialog INVITEs create a :class:`~gateway.b2bua.call.Call` and ask the router for a
decision; in-dialog requests find their leg by ``(Call-ID, our tag)``; responses find their
call through the client transaction's ``owner``. Queues, the call history and the emergency
edge observe neutral call events (:class:`~gateway.b2bua.decisions.CallObserver`).

An emergency call's B-leg waits for one asynchronous step, the callback DID reservation
(SPEC E-4, bounded by the emergency edge): the B2BUA hands that coroutine to the injected
``spawn`` (an owner that keeps the task and awaits it on close) and places the B-leg as
soon as the reservation returns, in the same loop iteration. The placer port (called by
the queue dispatcher on presence changes, outside any step) reads the injected ``clock``
and asks the adapter to ``pump``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.b2bua.admission import Admission
from gateway.b2bua.answers import (
    answer_out_of_dialog,
    caller_dialog,
    dialled_number,
    refuse_extensions,
    refuse_invite,
    unfit_invite,
    unsupported_extensions,
)
from gateway.b2bua.call import (
    Call,
    CallOutcome,
    EmergencyFacts,
    EndKind,
    FailureKind,
    Leg,
    NextHop,
    RelayedRequest,
)
from gateway.b2bua.core import Abandoned, CallCore, answerable, call_context, log
from gateway.b2bua.decisions import (
    CallObserver,
    Decision,
    Emergency,
    EmergencyHooks,
    Outbound,
    Queued,
    QueuePort,
    Router,
    RouteRefusal,
)
from gateway.b2bua.placement import Placement
from gateway.b2bua.relay import InDialogRelay
from gateway.b2bua.sessions import SessionRefresh, SessionTimerConfig, SessionTimers
from gateway.b2bua.sips import apply_sips_policy
from gateway.b2bua.timers import Timer
from gateway.sip.errors import SipParseError, warning_value
from gateway.sip.headers import Via
from gateway.sip.message import Request, make_response
from gateway.sip.owners import ClientOwner
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

__all__ = [
    "B2BUA",
    "CallObserver",
    "Decision",
    "Emergency",
    "EmergencyHooks",
    "Outbound",
    "QueuePort",
    "Queued",
    "RouteRefusal",
    "Router",
    "Spawn",
    "dialled_number",
]

#: runs a coroutine beside the calls under an owner that keeps it and awaits it on close
Spawn = Callable[[Coroutine[Any, Any, None], str], object]


class B2BUA:
    """Back-to-back user agent over one :class:`TransactionLayer`."""

    def __init__(
        self,
        layer: TransactionLayer,
        router: Router,
        ids: IdGenerator,
        *,
        via_for: Callable[[Address, str], Via],
        contact_for: Callable[[Address], str],
        clock: Callable[[], float],
        pump: Callable[[], None] = lambda: None,
        spawn: Spawn | None = None,
        user_agent: str = "gateway/0.1",
        observers: Sequence[CallObserver] = (),
        emergency: EmergencyHooks | None = None,
        queues: QueuePort | None = None,
        request_handlers: dict[str, Callable[[RequestReceived], None]] | None = None,
        ring_timeout: float = 180.0,
        admission: Admission | None = None,
        session_timer: SessionTimerConfig | None = None,
    ):
        self.layer = layer
        self.router = router
        self.ids = ids
        #: the time source of the placer port and of the step after a reservation
        self.clock = clock
        #: the adapter's pump: sends what the layer queued after a step outside an event
        self.pump = pump
        self.spawn = spawn
        self.core = CallCore(
            layer,
            ids,
            via_for=via_for,
            contact_for=contact_for,
            user_agent=user_agent,
            observers=[*observers, admission] if admission is not None else observers,
            emergency=emergency,
            queues=queues,
        )
        self.sessions = SessionTimers(self.core, session_timer)
        self.placement = Placement(self.core, ring_timeout=ring_timeout, sessions=self.sessions)
        self.relay = InDialogRelay(self.core, self.sessions)
        #: overload control (SPEC O-4): asked about new ordinary calls only
        self.admission = admission
        #: out-of-dialog methods handled elsewhere (REGISTER: the registrar)
        self.request_handlers = dict(request_handlers or {})
        #: stopping (SPEC O-7): new ordinary calls get 503 + Retry-After
        self.draining = False
        #: the Retry-After (seconds) of the drain's 503s
        self.retry_after = 30

    # -- what the parts share, for the adapter, tests and benchmarks ----------------------

    @property
    def calls(self) -> dict[str, Call]:
        return self.core.calls

    @property
    def legs(self) -> dict[tuple[str, str], Leg]:
        return self.core.legs

    @property
    def completed(self) -> int:
        return self.core.completed

    @property
    def failed(self) -> int:
        return self.core.failed

    @property
    def observers(self) -> list[CallObserver]:
        return self.core.observers

    @property
    def queues(self) -> QueuePort | None:
        return self.core.queues

    @queues.setter
    def queues(self, queues: QueuePort | None) -> None:
        """The queue dispatcher takes the B2BUA as its placer, so it comes second."""
        self.core.queues = queues

    @property
    def emergency(self) -> EmergencyHooks | None:
        return self.core.emergency

    # -- time ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of the call layer's timers, or None."""
        return self.core.timers.get_timer()

    def handle_timer(self, now: float) -> None:
        """Fire every call-layer timer due at ``now``; the adapter pumps afterwards."""
        self.core.now = now
        while True:
            try:
                self.core.timers.handle_timer(now)
                return
            except Exception:  # that timer is spent; the others still fire
                log.exception("timer_failed")

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """A timer of the call layer (the queue dispatcher's waiting time)."""
        core = self.core
        return core.timers.at(core.now + delay, lambda _now: callback())

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, event: object, now: float) -> None:
        """Entry point for every transaction-layer event; nothing escapes from here."""
        self.core.now = now
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
        core = self.core
        try:
            if isinstance(event, RequestReceived) and event.request.method != "ACK":
                tx = event.transaction
                if answerable(tx):
                    if exc is not None:
                        warning = (("Warning", warning_value(exc.detail)),)
                        core.respond(tx, exc.status, exc.reason, extra=warning)
                    else:
                        core.respond(tx, 500)
                owner = tx.owner
                if isinstance(owner, Call) and not owner.ended:
                    core.end(owner, CallOutcome(EndKind.FAILED, 500))
            elif isinstance(event, ResponseReceived) and isinstance(event.transaction.owner, Call):
                detail = exc.detail if exc is not None else "unusable response"
                call = event.transaction.owner
                self.placement.on_unusable_response(call, event.transaction, detail)
        except Exception:
            log.exception("answer_unusable_failed")

    def _dispatch(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self._on_response(event)
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            self.relay.on_ack(event.transaction.owner, event.request)
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
            self._on_cancel(tx, ev.cancelled)
            return
        to_tag = request.to_tag
        if to_tag is not None:
            leg = self.core.legs.get((request.call_id, to_tag))
            if leg is None:
                self.core.respond(tx, 481)
            else:
                self._in_dialog(leg, tx, request, to_tag)
            return
        if method != "INVITE":  # a garbled Max-Forwards: 400 (an emergency INVITE goes on)
            request.max_forwards  # noqa: B018 - raises SipParseError, answered by handle()
        handler = self.request_handlers.get(method)
        if handler is not None:
            handler(ev)
        elif method == "INVITE":
            self._on_new_invite(tx, request, ev.source)
        elif not self._refused_extensions(tx, request, None, None):
            answer_out_of_dialog(self.core, tx, method)

    def _in_dialog(self, leg: Leg, tx: ServerTransaction, request: Request, to_tag: str) -> None:
        call = self.core.call_of(leg)
        with call_context(call) if call is not None else contextlib.nullcontext():
            if not self._refused_extensions(tx, request, call, to_tag):
                self.relay.on_request(leg, tx, request)

    def _refused_extensions(
        self, tx: ServerTransaction, request: Request, call: Call | None, to_tag: str | None
    ) -> bool:
        """RFC 3261 s. 8.2.2.3: 420 for a required extension we lack (True: answered).

        An emergency call's requests are never refused for it (SPEC E-3): the Require is
        ignored, logged, and not passed on (see :mod:`.answers`)."""
        tags = unsupported_extensions(request)
        if not tags:
            return False
        if call is not None and call.emergency is not None:
            log.warning("require_ignored_on_emergency_call", method=request.method, tags=tags)
            return False
        refuse_extensions(self.core, tx, tags, to_tag)
        return True

    def _on_cancel(self, tx: ServerTransaction, cancelled: ServerTransaction | None) -> None:
        if cancelled is None or not isinstance(cancelled.owner, Call):
            self.core.respond(tx, 481)
            return
        self.core.respond(tx, 200)
        self.placement.on_cancel(cancelled.owner)

    def _on_new_invite(self, tx: ServerTransaction, request: Request, source: Address) -> None:
        core = self.core
        if unfit_invite(core, tx, request):
            return
        a = Leg("a", request.call_id, self.ids.tag(), source, request, server_tx=tx)
        dialled = dialled_number(request)
        call = Call(id=self.ids.token(6), a=a, dialled=dialled, started_at=core.now)
        tx.owner = call
        with call_context(call):
            self._route_new_call(tx, call, request, source)

    def _route_new_call(
        self, tx: ServerTransaction, call: Call, request: Request, source: Address
    ) -> None:
        core, a, dialled = self.core, call.a, call.dialled
        decision = self.router.route(request, dialled, source)
        if isinstance(decision, list):
            decision = Outbound(decision)
        decision = apply_sips_policy(request, source, decision, core.host_for(source))
        if self._refuse_unsupported_invite(tx, call, decision):
            return
        if self.sessions.refuse_too_small(tx, call, isinstance(decision, Emergency)):
            return
        if self.draining and isinstance(decision, (Outbound, Queued)):
            decision = self._drain_refusal()
        if isinstance(decision, RouteRefusal):
            refuse_invite(core, tx, decision, dialled, a.local_tag)
            call.result = f"{decision.status}"
            core.end_refused(call)
            return
        if self._shed(tx, call, decision):
            return
        a_dialog = caller_dialog(core, tx, call, source, isinstance(decision, Emergency))
        if a_dialog is None:
            return
        core.calls[call.id] = call
        core.legs[(a.call_id, a.local_tag)] = a
        a.dialog = a_dialog
        if isinstance(decision, Emergency):
            self._start_emergency(call, decision)
        elif isinstance(decision, Queued):
            self._start_queued(call, decision)
        else:
            self._start_outbound(call, decision)

    def _refuse_unsupported_invite(
        self, tx: ServerTransaction, call: Call, decision: Decision
    ) -> bool:
        """RFC 3261 section 8.2.2.3: a new call requiring an extension we do not support
        gets 420; an emergency call is placed anyway (E-3), the tags logged and dropped."""
        tags = unsupported_extensions(call.a.invite)
        if not tags:
            return False
        if isinstance(decision, Emergency):
            log.warning("require_ignored_on_emergency_call", method="INVITE", tags=tags)
            return False
        refuse_extensions(self.core, tx, tags, call.a.local_tag)
        call.result = "420"
        self.core.end_refused(call)
        return True

    def _shed(self, tx: ServerTransaction, call: Call, decision: Decision) -> bool:
        """SPEC O-4: a new ordinary call under overload gets 503 + Retry-After from its
        server transaction (which absorbs the retransmissions); emergency calls and
        callbacks (the ``Emergency`` decision) are never asked about."""
        admission = self.admission
        if admission is None or isinstance(decision, Emergency):
            return False
        if not admission.shed(self.core.now):
            return False
        self.core.respond(tx, 503, to_tag=call.a.local_tag, extra=admission.retry_after)
        call.result = "503"
        self.core.end_refused(call)
        return True

    def _start_queued(self, call: Call, decision: Queued) -> None:
        """SPEC R-3: the caller waits in early dialog (182 Queued, RFC 3261 s. 21.1.4)."""
        core, a = self.core, call.a
        call.direction = "inbound"
        call.source_trunk = decision.trunk
        log.info(
            "call_start",
            direction="inbound",
            dialled=call.dialled,
            a_call_id=a.call_id,
            queue=decision.queue,
        )
        core.started(call)
        if core.queues is None or a.server_tx is None:
            core.fail_a(call, 480, "Temporarily Unavailable")
            return
        queued = make_response(a.invite, 182, to_tag=a.local_tag)
        queued.add("Contact", core.contact_for(a.flow))
        core.layer.send_response(a.server_tx, queued, core.now)
        core.queues.enqueue(call, decision.queue, decision.priority)

    def _start_outbound(self, call: Call, decision: Outbound) -> None:
        call.hops = decision.hops
        call.agent = decision.agent
        call.caller_id = decision.caller_id
        log.info(
            "call_start",
            direction="outbound",
            dialled=call.dialled,
            a_call_id=call.a.call_id,
            hops=len(decision.hops),
            agent=decision.agent,
        )
        self.core.started(call)
        self.placement.try_next_hop(call)

    def _start_emergency(self, call: Call, decision: Emergency) -> None:
        """SPEC E-2..E-9: private, DND and events now; the DID, then the B-leg at once."""
        core = self.core
        facts = decision.call
        call.private = True  # E-9: no CDR, no recording
        call.emergency = facts
        call.hops = decision.hops
        call.direction = "inbound" if facts.callback else "outbound"
        log.info(
            "emergency_call_start",
            dialled=call.dialled,
            agent=facts.agent,
            hops=len(decision.hops),
            callback=facts.callback,
        )
        core.started(call)
        if not decision.hops:
            warning = decision.warning or "no route to emergency services"
            out = make_response(call.a.invite, 503, to_tag=call.a.local_tag)
            out.add("Warning", warning_value(warning))
            if call.a.server_tx is not None:
                core.layer.send_response(call.a.server_tx, out, core.now)
            core.end(call, CallOutcome(EndKind.FAILED, 503))
            return
        hooks = core.emergency
        if hooks is None or self.spawn is None or facts.callback:
            self.placement.try_next_hop(call)
            return
        self.spawn(self._reserve_then_place(hooks, call, facts), f"reserve-{call.id}")

    async def _reserve_then_place(
        self, hooks: EmergencyHooks, call: Call, facts: EmergencyFacts
    ) -> None:
        """The callback DID (bounded by the hooks), then the B-leg in the same iteration."""
        try:
            await hooks.reserve(call.id, facts)
        except Exception:
            log.exception("callback_reservation_failed", call_id=call.id)
        try:
            self.core.now = self.clock()
            if not call.ended and not call.cancelled:
                self.placement.try_next_hop(call)
        except Exception:
            log.exception("emergency_b_leg_failed", call_id=call.id)
        self.pump()

    # -- stopping (SPEC O-7) ----------------------------------------------------------------

    def drain(self, retry_after: int = 30) -> None:
        """Stop taking new ordinary calls: 503 + ``Retry-After`` from now on. Emergency calls
        and callbacks are still admitted (SPEC E-3); in-dialog requests are still served."""
        self.draining = True
        self.retry_after = retry_after

    def ordinary_calls(self) -> int:
        """Calls in progress that a drain may end (neither emergency calls nor callbacks)."""
        return sum(1 for call in self.core.calls.values() if call.emergency is None)

    def hang_up(self, now: float, *, emergency: bool = False) -> int:
        """End every ordinary call from our side (every call, emergency ones too, with
        ``emergency``: a second stop signal); each ends ``drained``. Returns how many."""
        core = self.core
        core.now = now
        calls = [c for c in core.calls.values() if emergency or c.emergency is None]
        for call in calls:
            try:
                core.hang_up(call, self.retry_after)
            except Exception:
                log.exception("hang_up_failed", call_id=call.id)
        return len(calls)

    def _drain_refusal(self) -> RouteRefusal:
        return RouteRefusal(
            503,
            "Service Unavailable",
            "gateway stopping: try another",
            (("Retry-After", str(self.retry_after)),),
        )

    # -- responses and transaction failures ----------------------------------------------

    def _on_response(self, ev: ResponseReceived) -> None:
        tx = ev.transaction
        owner = tx.owner
        if isinstance(owner, Call):
            with call_context(owner):
                self.placement.on_response(owner, tx, ev.response)
        elif isinstance(owner, RelayedRequest):
            self.relay.on_response(owner, tx, ev.response)
        elif isinstance(owner, Abandoned):
            self.placement.on_abandoned_response(owner, tx, ev.response)
        elif isinstance(owner, SessionRefresh):
            self.sessions.on_response(owner, tx, ev.response)
        elif isinstance(owner, ClientOwner):
            owner.on_response(tx, ev.response, self.core.now)

    def _on_tx_failure(
        self, tx: ClientTransaction | ServerTransaction, kind: FailureKind, detail: str
    ) -> None:
        owner = tx.owner
        if not isinstance(tx, ClientTransaction):
            return
        if isinstance(owner, Call):
            with call_context(owner):
                self.placement.on_tx_failure(owner, tx, kind, detail)
        elif isinstance(owner, RelayedRequest):
            self.relay.on_tx_failure(owner, kind)
        elif isinstance(owner, SessionRefresh):
            self.sessions.on_tx_failure(owner, kind)
        elif isinstance(owner, ClientOwner):
            owner.on_failure(tx, detail, self.core.now)

    def _on_ack_timeout(self, tx: ServerTransaction) -> None:
        owner = tx.owner
        if isinstance(owner, Call) and not owner.ended:
            call = owner
            log.info("no_ack_from_caller", call_id=call.id)
            self.core.send_bye(call.a)
            if call.b is not None:
                self.core.send_bye(call.b)
            self.core.end(call, CallOutcome(EndKind.NO_ACK))

    # -- the queue dispatcher's port (CallPlacer) -------------------------------------------

    def offer(self, call: Call, hop: NextHop) -> None:
        """Ring one agent for a queued call."""
        self.core.now = self.clock()
        with call_context(call):
            self.placement.offer(call, hop)
        self.pump()

    def abandon_offer(self, call: Call) -> None:
        """Stop ringing the agent of a queued call (CANCEL once it has rung)."""
        self.core.now = self.clock()
        self.placement.abandon_offer(call)
        self.pump()

    def overflow_to(self, call: Call, hops: list[NextHop]) -> None:
        """Send a call that waited too long to fixed hops."""
        self.core.now = self.clock()
        with call_context(call):
            self.placement.overflow_to(call, hops)
        self.pump()

    def fail_caller(self, call: Call, status: int, reason: str | None) -> None:
        """Give up on a call: final ``status`` to the caller."""
        self.core.now = self.clock()
        self.placement.fail_caller(call, status, reason)
        self.pump()
