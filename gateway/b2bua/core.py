"""What every part of the call layer shares: the stack below, the calls, and their end.

Theory of operation
-------------------
:class:`CallCore` holds the transaction layer and the element's ids and addresses, the live
calls and legs, the call layer's :class:`~gateway.b2bua.timers.TimerHeap`, the observers,
and ``now``: the time of the step being taken (set by the B2BUA at each entry point; no
part reads a clock). The parts (placement, relay, out-of-dialog answers) act through it:
send on a leg, answer the caller, end a call. Ending is the one place observers hear
``call_ended`` and transactions drop their references to the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial

import structlog

from gateway.b2bua.call import (
    Call,
    CallInput,
    CallOutcome,
    EndKind,
    FailureKind,
    Leg,
    LegFailure,
    RelayedRequest,
)
from gateway.b2bua.decisions import CallObserver, EmergencyHooks, QueuePort
from gateway.b2bua.timers import TimerHeap
from gateway.logs import LogScope
from gateway.sip.dialog import Dialog
from gateway.sip.errors import SipParseError, warning_value
from gateway.sip.headers import Via
from gateway.sip.message import Request, Response, make_response
from gateway.sip.routing import resolve_next_hop
from gateway.sip.transaction import (
    Address,
    ClientTransaction,
    IdGenerator,
    MessageReleased,
    ServerTransaction,
    TransactionLayer,
)

__all__ = [
    "ALLOW",
    "Abandoned",
    "CallCore",
    "answerable",
    "call_context",
    "hops_left",
    "note_sdp_sent",
]

log = structlog.get_logger("gateway.b2bua")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER, NOTIFY"

#: server transaction states in which a response can still be sent
_ANSWERABLE = frozenset({"trying", "proceeding"})


def note_sdp_sent(leg: Leg, body: bytes, content_type: str | None) -> None:
    """Keep the SDP last sent on ``leg`` (a refresh re-INVITE repeats it, RFC 4028 s. 7.4)."""
    if body and (content_type or "").split(";")[0].strip().lower() == "application/sdp":
        leg.sdp_sent = body


def call_context(call: Call) -> AbstractContextManager[None]:
    """The call's ids on every log line of this step (SPEC O-3): ``call_id`` (ours),
    ``a_call_id`` and ``b_call_id`` (both legs' SIP Call-IDs, to match a phone's or a
    carrier's trace; ``b_call_id`` is null until the B-leg leaves). Read when a line is
    written (``gateway.logs.LogScope``): nothing is built for a step that logs nothing."""
    return LogScope(partial(_call_fields, call))


def _call_fields(call: Call) -> dict[str, str | None]:
    b = call.b
    return {
        "call_id": call.id,
        "a_call_id": call.a.call_id,
        "b_call_id": b.call_id if b is not None else None,
    }


def answerable(tx: ServerTransaction) -> bool:
    """May ``tx`` still get a response (no final response sent yet)?"""
    return tx.state in _ANSWERABLE


class Abandoned:
    """Owner of a B-leg INVITE given up: CANCELs it on a 1xx, ACKs and BYEs a late 2xx."""

    __slots__ = ("call", "cancel_sent")

    def __init__(self, call: Call | None, cancel_sent: bool = False):
        self.call = call
        self.cancel_sent = cancel_sent


class CallCore:
    """The shared state and the sending primitives of the call layer's parts."""

    def __init__(
        self,
        layer: TransactionLayer,
        ids: IdGenerator,
        *,
        via_for: Callable[[Address, str], Via],
        contact_for: Callable[[Address], str],
        user_agent: str,
        observers: Sequence[CallObserver],
        emergency: EmergencyHooks | None,
        queues: QueuePort | None,
    ):
        self.layer = layer
        self.ids = ids
        self.via_for = via_for
        self.contact_for = contact_for
        self.user_agent = user_agent
        self.observers = list(observers)
        #: the emergency edge's in-step decisions, when configured
        self.emergency = emergency
        #: the inbound queue dispatcher, when the dialplan has queues
        self.queues = queues
        self.timers = TimerHeap()
        self.legs: dict[tuple[str, str], Leg] = {}
        self.calls: dict[str, Call] = {}
        self.completed = 0
        self.failed = 0
        #: the time of the step being taken
        self.now = 0.0

    # -- sending -------------------------------------------------------------------------

    def respond(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Response | None:
        """Answer ``tx``; None when it took its final response already and let its request
        go (issue 10): the layer would drop any other response to it (RFC 3261 17.2)."""
        try:
            request = tx.request
        except MessageReleased:
            return None
        response = make_response(
            request,
            status,
            reason,
            to_tag=to_tag or (self.ids.tag() if status > 100 else None),
            extra=extra,
        )
        self.layer.send_response(tx, response, self.now)
        return response

    def host_for(self, dest: Address) -> str:
        """Our host as seen from ``dest`` (the Via we would put on a request there)."""
        return str(self.via_for(dest, "x").host)

    def next_hop(self, leg: Leg) -> Address:
        """Where in-dialog requests to ``leg`` go: its route set's first hop, else its flow."""
        dialog = leg.dialog
        if dialog is not None and dialog.route_set:
            first = dialog.route_set[0]
            try:
                return resolve_next_hop(first.uri, default_transport=leg.flow.transport)
            except (SipParseError, ValueError):
                return leg.flow
        return leg.flow

    def send_bye(self, leg: Leg) -> None:
        if leg.dialog is None:
            return
        bye = leg.dialog.create_request("BYE", self.ids)
        dest = self.next_hop(leg)
        bye.push_via(self.via_for(dest, self.ids.branch()))
        hop = leg.hop
        # a trunk with credentials may challenge the BYE: kept to answer it (issue 13)
        owner = RelayedRequest(None, None, leg, leg, bye) if hop and hop.credentials else None
        self.layer.send_request(bye, dest, self.now).owner = owner

    def send_cancel(self, call: Call) -> None:
        """CANCEL the B-leg INVITE (once; RFC 3261 section 9.1: only after a provisional)."""
        b = call.b
        if call.cancel_sent or b is None or b.client_tx is None:
            return
        call.cancel_sent = True
        cancel = self.layer.cancel_request(b.client_tx)
        self.layer.send_request(cancel, b.client_tx.destination, self.now).owner = None

    def ack_b(self, call: Call, response: Response, body: bytes, content_type: str | None) -> None:
        """ACK the B-leg's 2xx (with A's ACK body on a delayed offer)."""
        b = call.b
        if b is None or b.dialog is None or b.client_tx is None:
            return
        ack = b.dialog.create_ack(b.invite, response, self.ids)
        dest = self.next_hop(b)
        ack.push_via(self.via_for(dest, self.ids.branch()))
        if body:
            ack.set_body(body, content_type)
            note_sdp_sent(b, body, content_type)
        self.layer.send_ack(b.client_tx, ack, dest, self.now)

    def relay_response_to_a(
        self, call: Call, response: Response, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Pass B's 1xx/2xx to the caller (our own tag, Contact, Allow; ``extra`` headers:
        the session timer's on a 2xx)."""
        a = call.a
        tx = a.server_tx
        if tx is None or not answerable(tx):
            return
        out = make_response(a.invite, response.status, response.reason, to_tag=a.local_tag)
        out.add("Contact", self.contact_for(a.flow))
        if response.status >= 200:
            out.add("Allow", ALLOW)
        out.add("Server", self.user_agent)
        for name, value in extra:
            out.add(name, value)
        if response.body:
            out.set_body(response.body, response.content_type)
            note_sdp_sent(a, response.body, response.content_type)
        if a.dialog is None:
            a.dialog = Dialog.as_uas(a.invite, a.local_tag, self.contact_for(a.flow))
        if response.status >= 200:
            a.dialog.confirm(out)
        self.layer.send_response(tx, out, self.now)

    # -- failing and ending ----------------------------------------------------------------

    def failure(
        self, call: Call, kind: FailureKind, detail: str, code: int | None = None
    ) -> LegFailure:
        """The failure of the current attempt (its hop's path and gateway)."""
        hop = call.b.hop if call.b is not None and call.b.hop is not None else call.current_hop
        if hop is None:
            return LegFailure("-", "-", code, kind, detail)
        return LegFailure(hop.trunk, hop.gateway, code, kind, detail)

    def record_failure(self, call: Call, failure: LegFailure) -> None:
        """One attempt failed: keep it for the Warning and tell the observers."""
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
        for observer in self.observers:
            try:
                observer.attempt_failed(call, failure)
            except Exception:
                log.exception("observer_failed")

    def fail_a(
        self, call: Call, status: int, reason: str, response: Response | None = None
    ) -> None:
        """Final error to the caller, and the call ends as failed."""
        a = call.a
        tx = a.server_tx
        emergency = call.emergency is not None
        if emergency and not call.is_emergency_callback:
            # SPEC E-3: never a far end's 404/424/403... to an emergency caller. 503 says
            # "this server could not, try another" (RFC 3261 section 21.5.4): a phone with
            # a backup proxy tries it. The Warning names every path tried and why it failed.
            status, reason = 503, "Service Unavailable"
        if tx is not None and answerable(tx):
            out = make_response(a.invite, status, reason, to_tag=a.local_tag)
            if emergency:
                out.add("Warning", self.attempts_warning(call))
            elif response is not None:
                for name in ("Warning", "Retry-After", "Reason"):
                    for value in response.get_all(name):
                        out.add(name, value)
            self.layer.send_response(tx, out, self.now)
        self.end(call, CallOutcome(EndKind.FAILED, status, tuple(call.failures)))

    def attempts_warning(self, call: Call) -> str:
        """RFC 3261 section 20.43 Warning: each path tried and why it failed (SPEC E-2)."""
        tried = "; ".join(failure.describe() for failure in call.failures)
        text = f"every path failed: {tried}" if tried else "no path answered"
        return warning_value(text, agent=self.host_for(call.a.flow), limit=800)

    def stop_timer(self, call: Call) -> None:
        if call.provisional_timer is not None:
            call.provisional_timer.cancel()
            call.provisional_timer = None

    def drop_b_leg(self, call: Call) -> None:
        if call.b is not None:
            self.legs.pop((call.b.call_id, call.b.local_tag), None)
            call.b = None

    def started(self, call: Call) -> None:
        """The call was routed somewhere: ``call_started`` to every observer."""
        for observer in self.observers:
            try:
                observer.call_started(call)
            except Exception:
                log.exception("observer_failed")

    def hang_up(self, call: Call, retry_after: int) -> None:
        """End a live call from our side (SPEC O-7 drain): BYE to every answered leg, 503 +
        Retry-After to a caller still waiting, CANCEL to a B-leg still ringing (a B-leg
        with no answer yet is abandoned: a late 1xx is CANCELled, a late 2xx ACKed and
        BYEd)."""
        a, b = call.a, call.b
        tx = a.server_tx
        if tx is not None and answerable(tx):
            out = make_response(a.invite, 503, to_tag=a.local_tag)
            out.add("Retry-After", str(retry_after))
            out.add("Warning", warning_value("gateway stopping"))
            self.layer.send_response(tx, out, self.now)
        else:
            self.send_bye(a)
        if b is not None:
            if b.got_final:
                self.send_bye(b)
            else:
                call.cancelled = True
                if b.got_provisional:
                    self.send_cancel(call)
        log.info("call_hung_up_on_stop", call_id=call.id, emergency=call.emergency is not None)
        self.end(call, CallOutcome(EndKind.DRAINED))

    @staticmethod
    def end_refused(call: Call) -> None:
        """The router refused the call: it ends before it started (no observer hears).

        The A-leg lets go of its server transaction, which keeps the call as ``owner``
        (a CANCEL still finds it) until Timer H/J: no reference cycle left for the paced
        full collection (a soak of refused INVITEs grew ~16 MB per 100,000 messages)."""
        call.step(CallInput.END)
        call.a.server_tx = None

    def end(self, call: Call, outcome: CallOutcome) -> None:
        """The call is over: bookkeeping, ``call_ended`` to every observer, references let go."""
        if call.ended:
            return
        result = outcome.text
        call.step(CallInput.END)
        call.result = result
        call.outcome = outcome
        call.ended_at = self.now
        self.stop_timer(call)
        for leg in (call.a, call.b):  # the session timers (RFC 4028, sessions.py)
            if leg is not None and leg.session is not None and leg.session.timer is not None:
                leg.session.timer.cancel()
                leg.session.timer = None
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
            a_call_id=call.a.call_id,
            b_call_id=call.b.call_id if call.b is not None else None,
            result=result,
            duration_s=round(call.ended_at - call.answered_at, 3) if call.answered_at else 0.0,
            attempts=call.attempts,
        )
        for observer in self.observers:
            try:
                observer.call_ended(call)
            except Exception:
                log.exception("observer_failed")
        self._release(call)

    def compact(self) -> None:
        """Right-size the call and leg maps after a load (see ``TransactionLayer.compact``)."""
        calls, legs = list(self.calls.items()), list(self.legs.items())
        self.calls.clear()
        self.calls.update(calls)
        self.legs.clear()
        self.legs.update(legs)

    def _release(self, call: Call) -> None:
        """Drop the transactions' references to an ended call.

        Finished transactions linger for up to 64*T1 to absorb retransmissions; through
        ``owner`` they would keep the whole call (legs, dialogs, messages) alive and in a
        reference cycle that only a full garbage collection frees - a pause that grows with
        the call rate. ``layer.release`` also lets them drop the messages they no longer
        resend (issue 10: a few KB per call while they wait). A B-leg INVITE still waiting
        for its final response keeps an owner that ACKs and BYEs a late 2xx, without the
        call.
        """
        a_tx = call.a.server_tx
        if a_tx is not None:
            self.layer.release(a_tx)
        b = call.b
        if b is not None and b.client_tx is not None and b.client_tx.owner is call:
            if b.got_final:
                self.layer.release(b.client_tx)
            else:
                b.client_tx.owner = Abandoned(None, call.cancel_sent)

    def call_of(self, leg: Leg) -> Call | None:
        """The live call ``leg`` belongs to."""
        tx: ClientTransaction | ServerTransaction | None
        tx = leg.server_tx if leg.side == "a" else leg.client_tx
        owner = tx.owner if tx is not None else None
        if isinstance(owner, Call):
            return owner
        for call in self.calls.values():
            if call.a is leg or call.b is leg:
                return call
        return None


def hops_left(request: Request) -> int | None:
    """Max-Forwards, or None when absent or malformed (an ordinary INVITE with a malformed
    one gets 400 from ``answers.caller_dialog``; an emergency call goes on with 70)."""
    try:
        return request.max_forwards
    except SipParseError:
        return None
