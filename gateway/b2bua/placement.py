"""B-leg placement: the INVITE to each hop in turn, its responses, timers and failover.

Theory of operation
-------------------
:meth:`Placement.try_next_hop` records the failed attempt (if any), drops the B-leg and
places the next hop's INVITE; with no hop left (or a cancelled call) the caller gets the
final error. A queued call's failed offer goes back to the queue dispatcher instead, which
offers the call to the next agent through the placer port (:meth:`offer`,
:meth:`abandon_offer`, :meth:`overflow_to`, :meth:`fail_caller`).

One timer runs per B-leg (``Call.provisional_timer``), armed in the call layer's heap:

==================  ======================================  ==============================
armed when          fires when                              then
==================  ======================================  ==============================
INVITE sent         no provisional within the hop's wait    next hop (no CANCEL, 9.1)
100 (setup hops)    no 18x/2xx within ``setup_timeout``     CANCEL, next hop (SPEC E-2)
first 1xx (18x)     no answer within Timer C (16.6 s. 11)   next hop on 408, else fail
==================  ======================================  ==============================

A final error from B fails over on the hop's failover codes while hops remain; else the
caller gets it (an emergency caller gets 503 with every path in the Warning). A B-leg given
up while it may still answer is owned by :class:`~gateway.b2bua.core.Abandoned`: a late 1xx
is CANCELled, a late 2xx ACKed and BYEd, never connected to the caller.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.b2bua.call import (
    Call,
    CallInput,
    CallOutcome,
    EndKind,
    FailureKind,
    Leg,
    LegFailure,
    NextHop,
)
from gateway.b2bua.core import (
    ALLOW,
    Abandoned,
    CallCore,
    answerable,
    call_context,
    hops_left,
    log,
    note_sdp_sent,
)
from gateway.b2bua.sessions import SessionTimers
from gateway.b2bua.sessions import describe as describe_sessions
from gateway.b2bua.sips import is_sips
from gateway.registrar.digest_client import authorized_retry
from gateway.sip.dialog import Dialog
from gateway.sip.errors import SipParseError
from gateway.sip.headers import NameAddr
from gateway.sip.message import REASON_PHRASES, Request, Response, make_response
from gateway.sip.transaction import ClientTransaction
from gateway.sip.uri import SipUri, TelUri

__all__ = ["Placement"]


class Placement:
    """Places B-legs for the calls of one :class:`CallCore`."""

    def __init__(self, core: CallCore, *, ring_timeout: float, sessions: SessionTimers):
        self.core = core
        #: the session timers (RFC 4028): offered on each B-leg, negotiated on the answer
        self.sessions = sessions
        #: Timer C (RFC 3261 section 16.6 step 11): longest a B-leg may ring after a 1xx
        self.ring_timeout = ring_timeout

    # -- trying hops -------------------------------------------------------------------------

    def try_next_hop(self, call: Call, failure: LegFailure | None = None) -> None:
        """The current attempt failed (``failure``; None: no attempt yet): the next hop."""
        core = self.core
        if failure is not None:
            core.record_failure(call, failure)
        core.drop_b_leg(call)
        status = failure.status if failure is not None else 503
        if call.queue is not None and core.queues is not None and not call.cancelled:
            # a queue offer failed: the dispatcher picks the next agent
            core.queues.offer_failed(call, status)
            return
        call.hop_index += 1
        hop = call.current_hop
        if hop is None or call.cancelled:
            if not call.cancelled:
                reason = failure.reason if failure is not None else "Service Unavailable"
                core.fail_a(call, status, reason)
            return
        self.place_b_leg(call, hop)

    def place_b_leg(self, call: Call, hop: NextHop) -> None:
        core = self.core
        dest = hop.address
        our_host = core.host_for(dest)
        call_id, tag = core.ids.call_id(our_host), core.ids.tag()
        invite = self._build_b_invite(call, call_id, tag, hop, our_host)
        b = Leg("b", call_id, tag, dest, invite, hop=hop)
        note_sdp_sent(b, invite.body, invite.content_type)
        call.b = b
        call.step(CallInput.PLACE)
        call.attempts.append(f"{hop.trunk}:{dest.host}:{dest.port}")
        core.legs[(b.call_id, b.local_tag)] = b
        log.info(
            "b_leg_try",
            trunk=hop.trunk,
            gateway=hop.gateway,
            attempt=len(call.attempts),
            call_id=call.id,
            b_call_id=call_id,
        )
        for observer in core.observers:
            try:
                observer.attempt_tried(call, hop)
            except Exception:
                log.exception("observer_failed")
        ctx = core.layer.send_request(invite, dest, core.now)
        ctx.owner = call
        b.client_tx = ctx
        self._arm(call, hop.provisional_timeout, lambda: self._on_provisional_timeout(call, ctx))

    def _arm(self, call: Call, delay: float, fire: Callable[[], None]) -> None:
        """(Re)arm the B-leg's one timer: ``fire()`` after ``delay`` seconds."""
        core = self.core
        core.stop_timer(call)
        call.provisional_timer = core.timers.at(core.now + delay, lambda _now: _in(call, fire))

    def _build_b_invite(
        self, call: Call, call_id: str, tag: str, hop: NextHop, our_host: str
    ) -> Request:
        core = self.core
        a_invite = call.a.invite
        dest = hop.address
        host = f"[{dest.host}]" if ":" in dest.host else dest.host
        target = f"{host}:{dest.port}"
        transport = "" if dest.transport == "udp" else f";transport={dest.transport}"
        # RFC 5630: a sips: call stays sips: on a TLS hop (the policy in .sips chose it)
        secure = dest.transport == "tls" and is_sips(a_invite)
        scheme, transport = ("sips", "") if secure else ("sip", transport)
        user = hop.user
        ruri = hop.request_uri or f"{scheme}:{user}@{target}{transport}"
        from_value, identity = _presented_identity(call, hop, our_host, tag)
        max_forwards = hops_left(a_invite)
        mf = 70 if max_forwards is None else max(max_forwards - 1, 0)
        headers: list[tuple[str, str, str]] = [
            ("via", "Via", str(core.via_for(dest, core.ids.branch()))),
            ("max-forwards", "Max-Forwards", str(mf)),
            ("from", "From", from_value),
            ("to", "To", f"<{hop.request_uri or f'{scheme}:{user}@{target}'}>"),
            ("call-id", "Call-ID", call_id),
            ("cseq", "CSeq", "1 INVITE"),
            (
                "contact",
                "Contact",
                _sips_contact(core.contact_for(dest)) if secure else core.contact_for(dest),
            ),
            ("allow", "Allow", ALLOW),
            ("user-agent", "User-Agent", core.user_agent),
        ]
        if hop.route:  # RFC 3327 section 5.3 / RFC 3261 section 8.1.2: the Path as route set
            headers[1:1] = [("route", "Route", value) for value in hop.route]
        invite = Request("INVITE", ruri, headers)
        for name, value in (*identity, *self.sessions.offer_headers()):
            invite.add(name, value)
        # kept only when the router let them through (trusted trunks, SPEC C-2)
        for name in ("Priority", "Resource-Priority", "Geolocation", "Geolocation-Routing"):
            for value in a_invite.get_all(name):
                invite.add(name, value)
        if a_invite.body:
            invite.set_body(a_invite.body, a_invite.content_type)
        call.ack_waits_for_a = not a_invite.body
        if call.emergency is not None and core.emergency is not None:
            core.emergency.decorate_b_invite(call.emergency, hop, invite, our_host)
        return invite

    # -- responses to the B-leg INVITE -----------------------------------------------------

    def on_response(self, call: Call, tx: ClientTransaction, response: Response) -> None:
        b = call.b
        if b is None or b.client_tx is not tx:
            return
        status = response.status
        if status < 200:
            self._on_provisional(call, b, tx, response)
        elif status < 300:
            self._on_success(call, b, response)
        else:
            self._on_error(call, b, response)

    def _on_provisional(
        self, call: Call, b: Leg, tx: ClientTransaction, response: Response
    ) -> None:
        status = response.status
        was_provisional, was_progress = b.got_provisional, b.got_progress
        b.got_provisional = True
        b.got_progress = was_progress or status > 100
        hop = b.hop
        setup = hop.setup_timeout if hop is not None else None
        if setup is not None and not b.got_progress:
            # an emergency hop: a 100 Trying alone is no progress (SPEC E-2)
            if not was_provisional:
                self._arm(call, setup, lambda: self._on_setup_timeout(call, tx))
        elif not was_provisional or (setup is not None and not was_progress):
            # the first provisional (the first 18x on an emergency hop): Timer C
            ring = hop.ring_timeout if hop is not None and hop.ring_timeout else self.ring_timeout
            self._arm(call, ring, lambda: self._on_ring_timeout(call, tx))
        if call.cancelled:
            self.core.send_cancel(call)
            return
        if status == 100:
            return
        if response.to_tag is not None and b.dialog is None:
            b.dialog = Dialog.as_uac(b.invite, response)
        self.core.relay_response_to_a(call, response)
        call.step(CallInput.PROGRESS)

    def _on_success(self, call: Call, b: Leg, response: Response) -> None:
        core = self.core
        if b.got_final:
            return  # a 2xx from another fork: ACKed by the layer when registered
        b.got_final = True
        core.stop_timer(call)
        b.dialog = Dialog.as_uac(b.invite, response)
        b.dialog.local_contact = core.contact_for(b.flow)
        if call.cancelled or call.ended:
            core.ack_b(call, response, b"", None)
            core.send_bye(b)
            core.end(call, CallOutcome(EndKind.CANCELLED))
            return
        if not call.ack_waits_for_a:
            core.ack_b(call, response, b"", None)
        else:
            call.pending_b_2xx = response
        core.relay_response_to_a(call, response, self.sessions.a_answer_headers(call))
        call.step(CallInput.ANSWER)
        call.answered_at = core.now
        self.sessions.answered(call, response)
        for observer in core.observers:
            try:
                observer.call_answered(call)
            except Exception:
                log.exception("observer_failed")
        call.queue = None  # answered: it has left its queue
        log.info(
            "call_answered",
            status=response.status,
            setup_ms=round((call.answered_at - call.started_at) * 1000, 1),
            session_timers=describe_sessions(call),
        )

    def _on_error(self, call: Call, b: Leg, response: Response) -> None:
        core = self.core
        status = response.status
        if (
            status in (401, 407)
            and not call.cancelled
            and self._answer_challenge(call, b, response)
        ):
            return
        b.got_final = True
        core.stop_timer(call)
        if call.cancelled:
            core.end(call, CallOutcome(EndKind.CANCELLED))
            return
        hop = call.current_hop
        failure = core.failure(call, FailureKind.STATUS, response.reason, status)
        if call.queue is not None and core.queues is not None:
            # a queue offer the agent refused (486, 603...): the caller keeps waiting and
            # the dispatcher offers the call to the next agent (SPEC R-3)
            core.record_failure(call, failure)
            core.drop_b_leg(call)
            core.queues.offer_failed(call, status, refused=True)
            return
        if hop is not None and status in hop.failover_codes and call.hop_index + 1 < len(call.hops):
            log.info("b_leg_failover", status=status, attempt=call.hop_index + 1)
            self.try_next_hop(call, failure)
            return
        core.record_failure(call, failure)
        core.fail_a(call, status, response.reason, response)

    def _answer_challenge(self, call: Call, b: Leg, response: Response) -> bool:
        """A trunk with credentials challenged the INVITE: send it again, once, with them.

        RFC 3261 section 22.2: same Call-ID, From tag and To, CSeq one more, a new branch
        (the challenged transaction is over; the layer ACKed the 401/407). This is not a
        failover: the same hop is tried again, its timers from the start. A second
        challenge, or one we cannot answer, is an ordinary final error (failover codes).
        """
        core = self.core
        hop = b.hop
        credentials = hop.credentials if hop is not None else None
        if credentials is None or b.challenge_answered:
            return False
        retry = authorized_retry(
            b.invite,
            response,
            username=credentials.username,
            password=credentials.password,
            realm=credentials.realm,
            cnonce=core.ids.token(8),
            cseq=b.invite.cseq.number + 1,
        )
        if retry is None or hop is None:
            log.warning(
                "trunk_challenge_unanswerable",
                trunk=hop.trunk if hop else None,
                status=response.status,
                call_id=call.id,
            )
            return False
        retry.push_via(core.via_for(b.flow, core.ids.branch()))
        if b.client_tx is not None:
            b.client_tx.owner = None  # the challenged transaction is over (ACKed by the layer)
        b.invite, b.challenge_answered, b.dialog = retry, True, None
        b.got_provisional = b.got_progress = b.got_final = False
        log.info(
            "trunk_challenge_answered",
            trunk=hop.trunk,
            status=response.status,
            user=credentials.username,
            call_id=call.id,
        )
        ctx = core.layer.send_request(retry, b.flow, core.now)
        ctx.owner = call
        b.client_tx = ctx
        self._arm(call, hop.provisional_timeout, lambda: self._on_provisional_timeout(call, ctx))
        return True

    def on_unusable_response(self, call: Call, tx: ClientTransaction, detail: str) -> None:
        """A response to the B-leg INVITE we could not parse: that attempt failed (502)."""
        b = call.b
        if not call.ended and b is not None and b.client_tx is tx and not b.got_final:
            b.got_final = True
            self.core.stop_timer(call)
            self.try_next_hop(call, self.core.failure(call, FailureKind.BAD_RESPONSE, detail))

    def on_tx_failure(
        self, call: Call, tx: ClientTransaction, kind: FailureKind, detail: str
    ) -> None:
        """Timer B or a transport failure on the B-leg INVITE."""
        b = call.b
        if b is None or b.client_tx is not tx or b.got_final or call.ended:
            return
        b.got_final = True
        self.core.stop_timer(call)
        if call.cancelled:
            self.core.end(call, CallOutcome(EndKind.CANCELLED))
            return
        self.try_next_hop(call, self.core.failure(call, kind, detail))

    def on_abandoned_response(
        self, owner: Abandoned, tx: ClientTransaction, response: Response
    ) -> None:
        core = self.core
        if response.status < 200:
            if not owner.cancel_sent:
                owner.cancel_sent = True
                cancel = core.layer.cancel_request(tx)
                core.layer.send_request(cancel, tx.destination, core.now).owner = None
        elif response.status < 300 and response.to_tag is not None:
            dialog = Dialog.as_uac(tx.request, response)
            ack = dialog.create_ack(tx.request, response, core.ids)
            ack.push_via(core.via_for(tx.destination, core.ids.branch()))
            core.layer.send_ack(tx, ack, tx.destination, core.now)
            bye = dialog.create_request("BYE", core.ids)
            bye.push_via(core.via_for(tx.destination, core.ids.branch()))
            core.layer.send_request(bye, tx.destination, core.now).owner = None

    # -- CANCEL from the caller --------------------------------------------------------------

    def on_cancel(self, call: Call) -> None:
        """The caller CANCELled its INVITE (the CANCEL itself is answered already)."""
        core = self.core
        if call.ended or call.cancelled:
            return
        call.cancelled = True
        a = call.a
        if a.server_tx is not None and answerable(a.server_tx):
            out = make_response(a.invite, 487, to_tag=a.local_tag)
            core.layer.send_response(a.server_tx, out, core.now)
        log.info("call_cancelled_by_caller", call_id=call.id)
        b = call.b
        if b is None or b.got_final:
            core.end(call, CallOutcome(EndKind.CANCELLED))
            return
        if b.got_provisional:
            core.send_cancel(call)
        # else: CANCEL goes out when the first provisional arrives (RFC 3261 section 9.1)

    # -- timers ------------------------------------------------------------------------------

    def _on_provisional_timeout(self, call: Call, tx: ClientTransaction) -> None:
        call.provisional_timer = None
        if call.ended or call.b is None or call.b.client_tx is not tx or call.b.got_provisional:
            return
        log.info("b_leg_no_provisional", attempt=call.hop_index + 1, call_id=call.id)
        # RFC 3261 section 9.1: no CANCEL before a provisional; abandon the attempt and
        # clean up if it answers late (see on_abandoned_response).
        hop = call.b.hop
        waited = hop.provisional_timeout if hop is not None else 0.0
        failure = self.core.failure(
            call,
            FailureKind.PROVISIONAL_TIMEOUT,
            f"no provisional response within {waited:g} s",
        )
        tx.owner = Abandoned(call)
        self.try_next_hop(call, failure)

    def _on_ring_timeout(self, call: Call, tx: ClientTransaction) -> None:
        core = self.core
        call.provisional_timer = None
        b = call.b
        if call.ended or call.cancelled or b is None or b.client_tx is not tx or b.got_final:
            return
        log.info("b_leg_ring_timeout", call_id=call.id)
        if call.queue is not None and core.queues is not None:
            self.abandon_offer(call)
            core.queues.offer_failed(call, 408)
            return
        hop = call.current_hop
        ring = hop.ring_timeout if hop is not None and hop.ring_timeout else self.ring_timeout
        failure = core.failure(call, FailureKind.RING_TIMEOUT, f"no answer within {ring:g} s")
        if hop is not None and 408 in hop.failover_codes and call.hop_index + 1 < len(call.hops):
            # e.g. an emergency callback the agent does not answer: its fallback (SPEC C-3)
            self.abandon_offer(call)
            self.try_next_hop(call, failure)
            return
        call.cancelled = True
        core.send_cancel(call)
        core.record_failure(call, failure)
        core.fail_a(call, failure.status, failure.reason)

    def _on_setup_timeout(self, call: Call, tx: ClientTransaction) -> None:
        """A 100 Trying, then no 18x or 2xx in time: the next path (emergency, SPEC E-2).

        The stuck leg is CANCELled (RFC 3261 section 9.1: a provisional came, so a CANCEL
        may go); a 200 that crosses the CANCEL is ACKed and BYEd by ``Abandoned``, never
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
        failure = self.core.failure(
            call,
            FailureKind.SETUP_TIMEOUT,
            f"no 18x or 2xx within {b.hop.setup_timeout:g} s of 100 Trying",
        )
        self.abandon_offer(call)
        self.try_next_hop(call, failure)

    # -- the queue dispatcher's port (CallPlacer) -------------------------------------------

    def offer(self, call: Call, hop: NextHop) -> None:
        """Ring one agent for a queued call."""
        if call.ended or call.cancelled:
            return
        self.core.drop_b_leg(call)
        self.place_b_leg(call, hop)

    def abandon_offer(self, call: Call) -> None:
        """Stop ringing the agent of a queued call (CANCEL once it has rung)."""
        core = self.core
        b = call.b
        if b is None or b.client_tx is None:
            return
        core.stop_timer(call)
        abandoned = Abandoned(call)
        if not b.got_final:
            if b.got_provisional:
                abandoned.cancel_sent = True
                cancel = core.layer.cancel_request(b.client_tx)
                core.layer.send_request(cancel, b.client_tx.destination, core.now).owner = None
            b.client_tx.owner = abandoned
        core.drop_b_leg(call)

    def overflow_to(self, call: Call, hops: list[NextHop]) -> None:
        """Send a call that waited too long to fixed hops."""
        call.queue = None
        call.hops = hops
        call.hop_index = -1
        self.try_next_hop(call)

    def fail_caller(self, call: Call, status: int, reason: str | None) -> None:
        """Give up on a call: final ``status`` to the caller."""
        call.queue = None
        if call.b is not None and not call.b.got_final:
            self.abandon_offer(call)
        self.core.fail_a(call, status, reason or REASON_PHRASES.get(status, "Unavailable"))


def _sips_contact(contact: str) -> str:
    """Our Contact as a SIPS URI (RFC 3261 section 8.1.1.8: a sips: request has one)."""
    return contact.replace("<sip:", "<sips:", 1).replace(";transport=tls", "")


def _user_of(name_addr: NameAddr) -> str:
    try:
        uri = name_addr.uri
    except SipParseError:
        return "anonymous"
    if isinstance(uri, (SipUri, TelUri)) and uri.user:
        return uri.user
    return "anonymous"


#: Privacy values (RFC 3323 section 4.2, RFC 3325 section 9.3) that hide the caller's identity
_PRIVATE = frozenset({"id", "user", "header"})
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>'


def _wants_privacy(request: Request) -> bool:
    values = (v.strip().lower() for h in request.get_all("privacy") for v in h.split(";"))
    return any(v in _PRIVATE for v in values)


def _presented_identity(
    call: Call, hop: NextHop, host: str, tag: str
) -> tuple[str, list[tuple[str, str]]]:
    """The B-leg's From and identity headers.

    An inbound call keeps its carrier's calling number. An ordinary outbound call presents
    ``call.caller_id`` (the dialplan's choice, never the phone's From, PAI or PPI) in From
    and P-Asserted-Identity (RFC 3325); none: anonymous. With ``Privacy: id`` (RFC 3323)
    From is anonymous, and the PAI goes, with ``Privacy: id``, to a trusted trunk only.
    An emergency call's identity (the callback DID, E-4) is set by its hook afterwards.
    """
    a_invite = call.a.invite
    if call.direction != "outbound" or call.emergency is not None:
        a_from = a_invite.from_
        display = f"{a_from.display} " if a_from.display else ""
        return f"{display}<sip:{_user_of(a_from)}@{host}>;tag={tag}", []
    number = call.caller_id
    private = _wants_privacy(a_invite)
    asserted = f"<sip:{number}@{host};user=phone>"
    if number is None or private:
        from_value = f"{ANONYMOUS_FROM};tag={tag}"
    else:
        from_value = f"{asserted};tag={tag}"
    identity: list[tuple[str, str]] = []
    if number is not None and (not private or hop.trusted):
        identity.append(("P-Asserted-Identity", asserted))
        if private:
            identity.append(("Privacy", "id"))
    return from_value, identity


def _in(call: Call, fire: Callable[[], None]) -> None:
    """A call's timer fires with the call's ids on its log lines."""
    with call_context(call):
        fire()
