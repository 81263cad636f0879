"""Session timers (RFC 4028) on both legs: a call whose far end vanished is torn down.

Theory of operation
-------------------
The B2BUA runs an independent session timer on each leg, as the UA of that leg: it is the
UAS of the A-leg and the UAC of the B-leg. Every answered call gets one on both legs, even
when the peer does not support the extension: then we are the refresher, and the refresh
is only a liveness probe the peer answers like any in-dialog request (dead-call detection,
issue 15 hole 5).

==============  =========================================  ================================
leg             how the interval and refresher are chosen  what we send
==============  =========================================  ================================
A (we are UAS)  the INVITE's Session-Expires (422 with our  2xx: ``Session-Expires: N;
                Min-SE below ``min_se_s``); its            refresher=...``, ``Require:
                ``refresher=uac`` makes the phone refresh;  timer`` when the phone refreshes
                absent or ``uas``: we refresh. No Session-  (section 9)
                Expires: ours (raised to its Min-SE), we
                refresh
B (we are UAC)  the INVITE offers ``Supported: timer`` and  refreshes carry ``Session-
                no Session-Expires (so no PSAP or carrier   Expires: N;refresher=uac`` once
                can answer 422); the 2xx's Session-Expires  the 2xx named an interval
                and refresher rule; none: ours, we refresh
==============  =========================================  ================================

When we refresh, the timer fires at half the interval (section 10) and sends an UPDATE
without a body when the peer allows UPDATE, else a re-INVITE repeating the last SDP we
sent on that leg unchanged. Any final answer but 408 and 481 shows the peer alive and
re-arms the timer (a 422 raises the interval to its Min-SE and refreshes again); 408, 481,
no answer at all (Timer F/B) or a transport failure mark the leg dead. When the peer
refreshes, the leg expires ``min(32, N/3)`` seconds before N without a refresh (section
10); a re-INVITE or UPDATE from the peer (relayed, or a body-less UPDATE answered here)
re-negotiates and re-arms.

A dead leg of an ordinary call ends it: BYE on both legs, outcome ``session_expired`` in
the call history. An emergency call or callback is never cut by one dead leg (SPEC E-3:
a timer misfire on our side, a phone's lost refresh or a glitch on the agent's network
must not drop a caller who is talking to the PSAP): the call is kept while the other leg
is alive or has no way to tell, we go on probing the dead leg when we are its refresher
(a later answer or a refresh from it revives it), and the call ends only when both legs
are dead.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.b2bua.call import Call, CallOutcome, EndKind, FailureKind, Leg, LegSession
from gateway.b2bua.core import CallCore, log
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ClientTransaction, ServerTransaction

__all__ = [
    "MIN_SE_FLOOR",
    "SessionExpires",
    "SessionRefresh",
    "SessionTimerConfig",
    "SessionTimers",
    "describe",
    "parse_session_expires",
]

#: the smallest Session-Expires anyone may use (RFC 4028 section 4)
MIN_SE_FLOOR = 90
#: the answers to a refresh that say the session is gone (RFC 4028 section 10)
_DEAD_STATUSES = frozenset({408, 481})


@dataclass(frozen=True, slots=True)
class SessionTimerConfig:
    """Our side of the negotiation: the interval we ask for and the least we accept."""

    session_expires: int = 1800
    min_se: int = MIN_SE_FLOOR


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """A Session-Expires header: the interval and the ``refresher`` (uac/uas/None)."""

    interval: int
    refresher: str | None


@dataclass(slots=True)
class SessionRefresh:
    """Owner of a refresh request we sent on ``leg`` (its responses come back here)."""

    call: Call
    leg: Leg
    request: Request


def parse_session_expires(message: Request | Response) -> SessionExpires | None:
    """The Session-Expires of ``message`` (compact form ``x`` too); None when absent or
    unreadable (a malformed one is treated as absent)."""
    value = message.get("session-expires")
    if value is None:
        return None
    parts = [part.strip() for part in value.split(";")]
    if not parts[0].isdigit():
        return None
    refresher = None
    for param in parts[1:]:
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return SessionExpires(int(parts[0]), refresher)


def _min_se(message: Request | Response) -> int:
    value = (message.get("min-se") or "").split(";")[0].strip()
    return int(value) if value.isdigit() else 0


def _has_tag(message: Request | Response, header: str, tag: str) -> bool:
    return any(
        item.strip().lower() == tag
        for value in message.get_all(header)
        for item in value.split(",")
    )


class SessionTimers:
    """The session timers of the calls of one :class:`CallCore`."""

    def __init__(self, core: CallCore, config: SessionTimerConfig | None = None):
        self.core = core
        self.config = config or SessionTimerConfig()

    # -- negotiation ---------------------------------------------------------------------

    def refuse_too_small(self, tx: ServerTransaction, call: Call, emergency: bool) -> bool:
        """RFC 4028 section 9: 422 with our Min-SE for a Session-Expires below it (True:
        answered). An emergency INVITE is never refused (SPEC E-3): see :meth:`_as_uas`."""
        asked = parse_session_expires(call.a.invite)
        if asked is None or asked.interval >= self.config.min_se or emergency:
            return False
        log.info("session_interval_too_small", asked=asked.interval, min_se=self.config.min_se)
        self.core.respond(
            tx, 422, to_tag=call.a.local_tag, extra=(("Min-SE", str(self.config.min_se)),)
        )
        call.result = "422"
        self.core.end_refused(call)
        return True

    def offer_headers(self) -> tuple[tuple[str, str], ...]:
        """What a B-leg INVITE carries: support, and no interval (no 422 can come back)."""
        return (("Supported", "timer"),)

    def _as_uas(self, request: Request, current: LegSession | None) -> LegSession:
        """The A-leg's session from a request the phone sent (we answer it)."""
        asked = parse_session_expires(request)
        supports = _has_tag(request, "supported", "timer") or _has_tag(request, "require", "timer")
        allows_update = _has_tag(request, "allow", "update") or bool(
            current and current.allows_update  # a refresh often carries no Allow
        )
        if asked is None:
            interval = current.interval if current else self.config.session_expires
            interval = max(interval, _min_se(request), self.config.min_se)
            we_refresh = current.we_refresh if current else True
        elif asked.interval < self.config.min_se:
            # only an emergency call gets here (others had 422): we refresh, more slowly
            interval, we_refresh = self.config.min_se, True
        else:
            interval = asked.interval
            we_refresh = asked.refresher != "uac" or not supports
        return LegSession(interval, we_refresh, allows_update, stated=True)

    def _as_uac(self, response: Response, current: LegSession | None) -> LegSession:
        """A leg's session from the 2xx to a request we sent there."""
        got = parse_session_expires(response)
        allows = _has_tag(response, "allow", "update") or bool(current and current.allows_update)
        if got is None:
            interval = current.interval if current else self.config.session_expires
            return LegSession(interval, True, allows, stated=bool(current and current.stated))
        interval = max(got.interval, self.config.min_se)
        return LegSession(interval, got.refresher != "uas", allows, stated=True)

    def answer_headers(self, session: LegSession) -> tuple[tuple[str, str], ...]:
        """The 2xx we send to a leg's INVITE or UPDATE (RFC 4028 section 9)."""
        refresher = "uas" if session.we_refresh else "uac"
        headers = [
            ("Supported", "timer"),
            ("Session-Expires", f"{session.interval};refresher={refresher}"),
        ]
        if not session.we_refresh:
            headers.append(("Require", "timer"))
        return tuple(headers)

    def request_headers(self, leg: Leg, *, own: bool = False) -> tuple[tuple[str, str], ...]:
        """What a re-INVITE or UPDATE we send on ``leg`` carries (section 7.4): the interval
        once the peer was told it, and always on our own refresh (a peer that supports the
        extension may adopt it; one that finds it too small answers 422 with its Min-SE)."""
        session = leg.session
        if session is None or not (session.stated or own):
            return (("Supported", "timer"),)
        refresher = "uac" if session.we_refresh else "uas"
        return (
            ("Supported", "timer"),
            ("Session-Expires", f"{session.interval};refresher={refresher}"),
            ("Min-SE", str(self.config.min_se)),
        )

    # -- the call answered, and the requests of the dialog ---------------------------------

    def a_answer_headers(self, call: Call) -> tuple[tuple[str, str], ...]:
        """Negotiate the A-leg's session from its INVITE; the headers of its 2xx."""
        call.a.session = self._as_uas(call.a.invite, None)
        return self.answer_headers(call.a.session)

    def answered(self, call: Call, b_response: Response) -> None:
        """The call is up: the B-leg's session from its 2xx, both timers armed."""
        b = call.b
        if b is not None:
            b.session = self._as_uac(b_response, None)
            self._arm(call, b)
        if call.a.session is not None:
            self._arm(call, call.a)

    def refreshed_by_peer(self, call: Call, leg: Leg, request: Request) -> None:
        """``leg`` sent a re-INVITE/UPDATE that succeeds: re-negotiated and re-armed."""
        if leg.session is None:
            return
        if leg.side == "a":
            self._replace(call, leg, self._as_uas(request, leg.session))
        else:
            renegotiated = _renegotiated_as_uas(request, leg.session, self.config.min_se)
            self._replace(call, leg, renegotiated)

    def refreshed_by_us(self, call: Call, leg: Leg, response: Response) -> None:
        """A re-INVITE/UPDATE we sent on ``leg`` got a 2xx: re-negotiated and re-armed."""
        if leg.session is None:
            return
        self._replace(call, leg, self._as_uac(response, leg.session))

    def answer_update(self, call: Call, leg: Leg, tx: ServerTransaction) -> bool:
        """A body-less UPDATE from a leg with a session is only a refresh: 200 here, with
        the session's headers (nothing to relay). True: answered."""
        request = tx.request
        if request.method != "UPDATE" or request.body or leg.session is None:
            return False
        self.refreshed_by_peer(call, leg, request)
        self.core.respond(tx, 200, to_tag=leg.local_tag, extra=self.answer_headers(leg.session))
        return True

    # -- timers ------------------------------------------------------------------------------

    def _replace(self, call: Call, leg: Leg, session: LegSession) -> None:
        """A re-negotiated session for ``leg`` (alive), its timer re-armed."""
        old = leg.session
        if old is not None and old.timer is not None:
            old.timer.cancel()
        leg.session = session
        self._arm(call, leg)

    def _arm(self, call: Call, leg: Leg) -> None:
        session = leg.session
        if session is None or call.ended:
            return
        if session.timer is not None:
            session.timer.cancel()
        now = self.core.now
        if session.we_refresh:
            deadline = now + session.interval / 2
            session.timer = self.core.timers.at(deadline, lambda _n: self._refresh(call, leg))
        else:
            deadline = now + session.interval - min(32.0, session.interval / 3)
            session.timer = self.core.timers.at(deadline, lambda _n: self._expired(call, leg))

    def _expired(self, call: Call, leg: Leg) -> None:
        if leg.session is not None:
            leg.session.timer = None
        self._leg_dead(call, leg, "no refresh before the session expired")

    def _refresh(self, call: Call, leg: Leg) -> None:
        """Send our refresh on ``leg``: UPDATE when allowed, else a re-INVITE with the SDP."""
        core, session, dialog = self.core, leg.session, leg.dialog
        if session is None or dialog is None or call.ended:
            return
        session.timer = None
        reinvite = not session.allows_update and bool(leg.sdp_sent)
        try:
            out = dialog.create_request(
                "INVITE" if reinvite else "UPDATE",
                core.ids,
                body=leg.sdp_sent if reinvite else b"",
                content_type="application/sdp" if reinvite else None,
                extra_headers=self.request_headers(leg, own=True),
            )
        except ValueError:
            return  # the dialog is over
        if out.get("contact") is None:
            out.add("Contact", core.contact_for(leg.flow))
        dest = core.next_hop(leg)
        out.push_via(core.via_for(dest, core.ids.branch()))
        core.layer.send_request(out, dest, core.now).owner = SessionRefresh(call, leg, out)
        log.info("session_refresh", side=leg.side, method=out.method, call_id=call.id)

    def on_response(
        self, refresh: SessionRefresh, tx: ClientTransaction, response: Response
    ) -> None:
        """An answer to our refresh: alive unless 408/481 (section 10)."""
        call, leg, status = refresh.call, refresh.leg, response.status
        if status < 200:
            return
        tx.owner = None
        dialog = leg.dialog
        if refresh.request.method == "INVITE" and status < 300 and dialog is not None:
            ack = dialog.create_ack(refresh.request, response, self.core.ids)
            dest = self.core.next_hop(leg)
            ack.push_via(self.core.via_for(dest, self.core.ids.branch()))
            self.core.layer.send_ack(tx, ack, dest, self.core.now)
        if call.ended or leg.session is None:
            return
        if status in _DEAD_STATUSES:
            self._leg_dead(call, leg, f"refresh answered {status}")
            return
        if status < 300:
            self.refreshed_by_us(call, leg, response)
            return
        if status == 422:
            leg.session.interval = max(leg.session.interval, _min_se(response))
            leg.session.stated = True
        leg.session.dead = False  # the peer answered: alive
        self._arm(call, leg)

    def on_tx_failure(self, refresh: SessionRefresh, kind: FailureKind) -> None:
        """Our refresh got no answer (Timer B/F) or could not be sent: the leg is dead.

        A refresh refused by the network (ICMP port unreachable, no route) gets no BYE on
        that leg: nothing listens there to take one (and a send to that destination from
        inside uvloop's error callback crashes the loop, see the commit message)."""
        if not refresh.call.ended:
            reachable = kind is FailureKind.TIMEOUT
            self._leg_dead(refresh.call, refresh.leg, f"refresh failed: {kind.value}", reachable)

    def _leg_dead(self, call: Call, leg: Leg, why: str, bye_it: bool = True) -> None:
        """RFC 4028 section 10: BYE on expiry; an emergency call needs both legs dead."""
        session = leg.session
        if session is None or call.ended:
            return
        session.dead = True
        other = call.other(leg)
        log.warning("session_expired", side=leg.side, why=why, call_id=call.id)
        if call.emergency is not None:
            other_dead = other is not None and other.session is not None and other.session.dead
            if not other_dead:
                log.warning("emergency_call_kept", dead_side=leg.side, call_id=call.id)
                if session.we_refresh:
                    self._arm(call, leg)  # go on probing: an answer revives the leg
                return
        core = self.core
        for each in (call.a, call.b):
            if each is not None and (bye_it or each is not leg):
                core.send_bye(each)
        core.end(call, CallOutcome(EndKind.SESSION_EXPIRED))


def _renegotiated_as_uas(request: Request, current: LegSession, min_se: int) -> LegSession:
    """The B-leg's session from a request the far end sent us (we answer as its UAS)."""
    asked = parse_session_expires(request)
    if asked is None:
        return LegSession(current.interval, current.we_refresh, current.allows_update, True)
    interval = max(asked.interval, min_se)
    return LegSession(interval, asked.refresher != "uac", current.allows_update, True)


def describe(call: Call) -> str:
    """Both legs' session timers in a few words (the ``call_answered`` log line)."""
    b = call.b.session if call.b is not None else None
    return f"a {_describe(call.a.session)}, b {_describe(b)}"


def _describe(session: LegSession | None) -> str:
    if session is None:
        return "none"
    return f"{session.interval}s refresher={'us' if session.we_refresh else 'peer'}"
