"""The in-dialog relay: requests on one leg's dialog go out on the other's (RFC 3261 s. 12.2).

Theory of operation
-------------------
An in-dialog request is found by ``(Call-ID, our tag)``; its dialog checks it (CSeq order,
481 for a dead dialog), the emergency lock-down may refuse it (SPEC E-8: during an
emergency call the agent can only end it), then:

=====================  ====================================================================
request                what happens
=====================  ====================================================================
BYE                    200 at once, BYE (or CANCEL, while B still rings) on the other leg;
                       the call ends
INVITE, UPDATE, INFO,  a new request on the other leg's dialog (a :class:`RelayedRequest`
OPTIONS, MESSAGE,      ties both transactions); its responses come back with our tag and
NOTIFY, REFER          Contact; a 2xx to a re-INVITE is ACKed at once when it carried the
                       offer, else with the body of the caller's ACK (delayed offer)
INFO, OPTIONS, ...     200 when there is no other dialog yet (nothing to relay to)
anything else          405/501 with Allow
=====================  ====================================================================

A caller's ACK for the initial INVITE carries the answer of a delayed offer: it goes to B
with the held 2xx's ACK (``Call.pending_b_2xx``).
"""

from __future__ import annotations

from gateway.b2bua.call import Call, CallOutcome, EndKind, FailureKind, Leg, RelayedRequest
from gateway.b2bua.core import ALLOW, CallCore, answerable, log, note_sdp_sent
from gateway.b2bua.sessions import SessionTimers
from gateway.registrar.digest_client import authorized_retry
from gateway.sip.dialog import DialogError
from gateway.sip.errors import warning_value
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transaction import ClientTransaction, ServerTransaction

__all__ = ["KNOWN_METHODS", "RELAYED_IN_DIALOG", "InDialogRelay"]

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
#: headers a relayed request keeps (REFER, RFC 3515: the transfer target and who asked; the
#: agent's phone does the transfer, and its NOTIFYs come back through the same relay)
_COPIED_HEADERS = (
    "Event",
    "Subscription-State",
    "Info-Package",
    "Content-Disposition",
    "Refer-To",
    "Referred-By",
    "Refer-Sub",
)


class InDialogRelay:
    """Relays the in-dialog requests of the calls of one :class:`CallCore`."""

    def __init__(self, core: CallCore, sessions: SessionTimers):
        self.core = core
        #: the session timers (RFC 4028): a relayed re-INVITE/UPDATE refreshes both legs
        self.sessions = sessions

    def on_request(self, leg: Leg, tx: ServerTransaction, request: Request) -> None:
        core = self.core
        call = core.call_of(leg)
        if call is None or leg.dialog is None:
            core.respond(tx, 481)
            return
        method = request.method
        if method == "ACK":
            return
        try:
            leg.dialog.check_request(request)
        except DialogError as exc:
            core.respond(tx, exc.status, exc.reason, to_tag=leg.local_tag)
            return
        if self.sessions.answer_update(call, leg, tx):
            return  # a body-less UPDATE: only a session refresh (RFC 4028), answered here
        if not self._allowed(call, leg, tx, request):
            return
        other = call.other(leg)
        if method == "BYE":
            self._on_bye(call, leg, other, tx)
            return
        if other is None or other.dialog is None or method not in RELAYED_IN_DIALOG:
            if method in ("INFO", "OPTIONS", "NOTIFY", "MESSAGE") and (
                other is None or other.dialog is None
            ):
                core.respond(tx, 200, to_tag=leg.local_tag)
            else:
                core.respond(
                    tx,
                    501 if method not in KNOWN_METHODS else 405,
                    to_tag=leg.local_tag,
                    extra=(("Allow", ALLOW),),
                )
            return
        self._relay(call, leg, other, tx, request)

    def _allowed(self, call: Call, leg: Leg, tx: ServerTransaction, request: Request) -> bool:
        """SPEC E-8: during an emergency call the agent can only end it."""
        hooks = self.core.emergency
        if call.emergency is None or hooks is None:
            return True
        from_agent = (leg.side == "a") != call.emergency.callback
        allowed, warning = hooks.in_dialog_allowed(call.emergency, from_agent, request)
        if not allowed:
            self.core.respond(
                tx, 403, to_tag=leg.local_tag, extra=(("Warning", warning_value(warning)),)
            )
        return allowed

    def _on_bye(self, call: Call, leg: Leg, other: Leg | None, tx: ServerTransaction) -> None:
        core = self.core
        core.respond(tx, 200, to_tag=leg.local_tag)
        log.info("call_hangup", by="caller" if leg.side == "a" else "callee", call_id=call.id)
        if other is not None:
            if other.side == "b" and not other.got_final:
                call.cancelled = True
                if other.got_provisional:
                    core.send_cancel(call)
            else:
                core.send_bye(other)
        core.end(call, CallOutcome(EndKind.COMPLETED if call.answered_at else EndKind.CANCELLED))

    def _relay(
        self, call: Call, leg: Leg, other: Leg, tx: ServerTransaction, request: Request
    ) -> None:
        core = self.core
        assert leg.dialog is not None and other.dialog is not None
        method = request.method
        if method in ("INVITE", "UPDATE"):
            leg.dialog.update_target(request)
        out = other.dialog.create_request(
            method, core.ids, body=request.body, content_type=request.content_type
        )
        for name in _COPIED_HEADERS:
            value = request.get(name)
            if value is not None:
                out.set(name, value)
        if method in ("INVITE", "UPDATE"):
            for name, value in self.sessions.request_headers(other):
                out.add(name, value)
            note_sdp_sent(other, out.body, out.content_type)
        dest = core.next_hop(other)
        out.push_via(core.via_for(dest, core.ids.branch()))
        relay = RelayedRequest(call, tx, other, leg, out)
        tx.owner = relay
        ctx = core.layer.send_request(out, dest, core.now)
        ctx.owner = relay
        relay.client_tx = ctx

    def on_response(self, relay: RelayedRequest, tx: ClientTransaction, response: Response) -> None:
        """A response to a relayed request: back to the leg that sent the request."""
        core = self.core
        server_tx = relay.server_tx
        status = response.status
        if status in (401, 407) and self._answer_challenge(relay, tx, response):
            return
        if status == 100 or server_tx is None:
            return
        method = relay.request.method
        to_dialog = relay.to_leg.dialog
        if method in ("INVITE", "UPDATE") and 200 <= status < 300 and to_dialog is not None:
            to_dialog.update_target(response)
        if method == "INVITE" and 200 <= status < 300:
            if relay.acked:
                return
            if relay.request.body:
                self.ack_relayed(relay, response, b"", None)
            else:
                relay.pending_2xx = response
        if not answerable(server_tx):
            return
        out = make_response(
            server_tx.request, status, response.reason, to_tag=relay.from_leg.local_tag
        )
        if method in ("INVITE", "UPDATE") and status < 300:
            out.add("Contact", core.contact_for(relay.from_leg.flow))
            self._refreshed(relay, response, out)
        if response.body:
            out.set_body(response.body, response.content_type)
            note_sdp_sent(relay.from_leg, response.body, response.content_type)
        for name in ("Warning", "Retry-After"):
            for value in response.get_all(name):
                out.add(name, value)
        core.layer.send_response(server_tx, out, core.now)
        if status >= 200 and (method != "INVITE" or relay.acked or status >= 300):
            _release_relay(relay, tx)

    def _refreshed(self, relay: RelayedRequest, response: Response, out: Response) -> None:
        """A relayed re-INVITE/UPDATE succeeded: a refresh of both legs' sessions; the
        answer to its sender carries the sender's session (RFC 4028 section 9)."""
        sessions, call = self.sessions, relay.call
        if response.status < 200 or call is None:
            return  # (a request of our own, a challenged BYE, has no call to refresh)
        sessions.refreshed_by_us(call, relay.to_leg, response)
        assert relay.server_tx is not None
        sessions.refreshed_by_peer(call, relay.from_leg, relay.server_tx.request)
        session = relay.from_leg.session
        if session is not None:
            for name, value in sessions.answer_headers(session):
                out.add(name, value)

    def _answer_challenge(
        self, relay: RelayedRequest, tx: ClientTransaction, response: Response
    ) -> bool:
        """A trunk with credentials challenged an in-dialog request (re-INVITE, BYE...):
        send it again once with them, CSeq from the dialog's count (RFC 3261 section 22)."""
        core = self.core
        leg = relay.to_leg
        credentials = leg.hop.credentials if leg.hop is not None else None
        if credentials is None or relay.challenge_answered or leg.dialog is None:
            return False
        retry = authorized_retry(
            relay.request,
            response,
            username=credentials.username,
            password=credentials.password,
            realm=credentials.realm,
            cnonce=core.ids.token(8),
            cseq=leg.dialog.local_cseq + 1,
        )
        if retry is None:
            return False
        leg.dialog.local_cseq += 1
        dest = core.next_hop(leg)
        retry.push_via(core.via_for(dest, core.ids.branch()))
        relay.request, relay.challenge_answered = retry, True
        tx.owner = None
        log.info("trunk_challenge_answered", method=retry.method, status=response.status)
        ctx = core.layer.send_request(retry, dest, core.now)
        ctx.owner = relay
        relay.client_tx = ctx
        return True

    def on_tx_failure(self, relay: RelayedRequest, kind: FailureKind) -> None:
        """The relayed request got no answer (408) or could not be sent (503)."""
        server_tx = relay.server_tx
        if server_tx is not None and answerable(server_tx):
            status = 408 if kind is FailureKind.TIMEOUT else 503
            out = make_response(server_tx.request, status, to_tag=relay.from_leg.local_tag)
            self.core.layer.send_response(server_tx, out, self.core.now)

    def on_ack(self, owner: object, ack: Request) -> None:
        """An ACK for a 2xx we sent: a delayed offer's answer goes on to the held 2xx."""
        if isinstance(owner, Call):
            call = owner
            pending = call.pending_b_2xx
            if pending is not None and call.b is not None and call.b.dialog is not None:
                call.pending_b_2xx = None
                self.core.ack_b(call, pending, ack.body, ack.content_type)
            settle(call)
        elif isinstance(owner, RelayedRequest):
            pending = owner.pending_2xx
            if pending is not None:
                self.ack_relayed(owner, pending, ack.body, ack.content_type)

    def ack_relayed(
        self, relay: RelayedRequest, response: Response, body: bytes, content_type: str | None
    ) -> None:
        core = self.core
        leg = relay.to_leg
        if leg.dialog is None:
            return
        relay.acked = True
        relay.pending_2xx = None
        ack = leg.dialog.create_ack(relay.request, response, core.ids)
        dest = core.next_hop(leg)
        ack.push_via(core.via_for(dest, core.ids.branch()))
        if body:
            ack.set_body(body, content_type)
            note_sdp_sent(leg, body, content_type)
        client_tx = relay.client_tx
        if client_tx is not None:
            core.layer.send_ack(client_tx, ack, dest, core.now)
        else:
            core.layer.send_stateless(ack, dest)
        if relay.server_tx is None or not answerable(relay.server_tx):
            _release_relay(relay, client_tx)


def settle(call: Call) -> None:
    """The call is up and ACKed: its INVITEs drop their parsed header values (URIs, name-
    addrs, Vias; rebuilt from the header text if read again). A held call then keeps the
    text of its INVITEs only: a few KB less per call (issue 10)."""
    for leg in (call.a, call.b):
        if leg is not None:
            invite = leg.invite
            invite.headers_changed()
            invite.uri = invite.uri_text  # the parsed Request-URI too


def _release_relay(relay: RelayedRequest, tx: ClientTransaction | None) -> None:
    """Break the relay <-> transaction cycle once the relay has nothing left to do."""
    if tx is not None and tx.owner is relay:
        tx.owner = None
    if relay.server_tx is not None and relay.server_tx.owner is relay:
        relay.server_tx.owner = None
    relay.client_tx = None
