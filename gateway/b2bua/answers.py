"""Out-of-dialog answers: what a request gets when it is not (yet) part of a call.

Theory of operation
-------------------
RFC 3261 sections 8.2 and 12.2.2; the B2BUA sends every request that creates no call here:

============================  ======================================
request                       answer
============================  ======================================
OPTIONS (no To tag)           200 with Allow/Accept/Supported
INVITE, Max-Forwards 0        483; a malformed one 400, but an emergency
                              INVITE is placed anyway (with 70)
INVITE without Contact        400 (section 8.1.1.8); an emergency INVITE
                              is placed anyway, its source as the caller
Require: an unsupported tag   420 + Unsupported (8.2.2.3); an emergency
                              INVITE is placed anyway (SPEC E-3, see below)
INVITE, no route              404 (or the router's refusal)
in-dialog, unknown dialog     481
CANCEL matching nothing       481
BYE/UPDATE/INFO/PRACK         481 (no dialog without a To tag)
REGISTER/SUBSCRIBE/...        405 with Allow
unknown method                501
============================  ======================================

Extensions (RFC 3261 section 8.2.2.3). :data:`SUPPORTED` lists the option tags the B2BUA
honours: ``timer`` (session timers, RFC 4028, run on each leg by :mod:`.sessions`); no
reliable provisional responses (100rel, RFC 3262), no Replaces, Path or SIP Outbound.
Any request but ACK and CANCEL (which are never refused on Require) that requires
another tag gets 420 Bad Extension with ``Unsupported`` naming the tags; in a dialog it
is the same (the call goes on). The one exception is an emergency call or callback (its
INVITE and the requests in its dialog): SPEC E-3 says it is never refused, and a 420 would leave the
caller without a path to help, so it is placed as if the Require were absent (the
B-leg never carries the A-leg's Require) and the ignored tags are logged. A phone that
required 100rel then simply gets unreliable 18x, which RFC 3262 UACs handle.
"""

from __future__ import annotations

from gateway.b2bua.call import Call
from gateway.b2bua.core import ALLOW, CallCore, hops_left, log
from gateway.b2bua.decisions import RouteRefusal
from gateway.b2bua.relay import KNOWN_METHODS
from gateway.sip.address import Address
from gateway.sip.dialog import Dialog
from gateway.sip.errors import SipParseError, warning_value
from gateway.sip.message import Request
from gateway.sip.transaction import ServerTransaction
from gateway.sip.uri import SipUri, TelUri, Uri

__all__ = [
    "SUPPORTED",
    "answer_out_of_dialog",
    "caller_dialog",
    "caller_target",
    "dialled_number",
    "refuse_extensions",
    "refuse_invite",
    "unfit_invite",
    "unsupported_extensions",
    "uri_dialled",
]

#: option tags the B2BUA supports (the ``Supported`` header): session timers, RFC 4028
SUPPORTED: tuple[str, ...] = ("timer",)


def dialled_number(request: Request) -> str:
    """The user part of the Request-URI (escapes decoded), or the whole URI when none."""
    return uri_dialled(request.uri)


def uri_dialled(uri: Uri) -> str:
    """The user part of ``uri`` (escapes decoded), or the whole URI when it has none."""
    if isinstance(uri, (SipUri, TelUri)):
        user = uri.user_unescaped
        if user:
            return user
    return str(uri)


def answer_out_of_dialog(core: CallCore, tx: ServerTransaction, method: str) -> None:
    """Answer an out-of-dialog request other than INVITE and CANCEL."""
    if method == "OPTIONS":
        core.respond(
            tx,
            200,
            extra=(
                ("Allow", ALLOW),
                ("Accept", "application/sdp"),
                ("Supported", ", ".join(SUPPORTED)),
                ("Server", core.user_agent),
            ),
        )
    elif method == "ACK":
        pass
    elif method in ("BYE", "UPDATE", "INFO", "PRACK"):
        core.respond(tx, 481)
    elif method in KNOWN_METHODS:
        core.respond(tx, 405, extra=(("Allow", ALLOW),))
    else:
        core.respond(tx, 501, extra=(("Allow", ALLOW),))


def unfit_invite(core: CallCore, tx: ServerTransaction, request: Request) -> bool:
    """Answer an INVITE that cannot start a call (483: a loop, even for 911, else it would
    go round for ever); False when it can. A malformed Max-Forwards, or a missing or
    malformed Contact, is judged once the call is routed (see :func:`caller_dialog`)."""
    max_forwards = hops_left(request)
    if max_forwards is not None and max_forwards <= 0:
        core.respond(tx, 483)
        return True
    return False


def caller_target(source: Address) -> str:
    """A URI for the caller made of the request's source: the remote target of an
    emergency call whose INVITE has no usable Contact (RFC 3261 section 8.1.1.8 says it
    MUST; SPEC E-3 says the call is never refused). In-dialog requests to the caller
    (BYE, a session refresh) then go where the INVITE came from, on its transport."""
    host = f"[{source.host}]" if ":" in source.host else source.host
    transport = "" if source.transport == "udp" else f";transport={source.transport}"
    return f"sip:{host}:{source.port}{transport}"


def caller_dialog(
    core: CallCore, tx: ServerTransaction, call: Call, source: Address, emergency: bool
) -> Dialog | None:
    """The caller's dialog. Without a usable Contact an ordinary call gets 400 and None
    (RFC 3261 section 8.1.1.8); an emergency call is placed with the request's source
    as the caller (:func:`caller_target`, SPEC E-3)."""
    a = call.a
    fallback = caller_target(source) if emergency else None
    try:
        if not emergency:
            a.invite.max_forwards  # noqa: B018 - a malformed one is a 400 (RFC 3261 20.22)
        dialog = Dialog.as_uas(
            a.invite, a.local_tag, core.contact_for(a.flow), fallback_target=fallback
        )
    except SipParseError as exc:
        reason = "Missing Contact" if exc.detail.startswith("missing Contact") else None
        warning = (("Warning", warning_value(exc.detail)),)
        core.respond(tx, 400, reason, to_tag=a.local_tag, extra=warning)
        call.result = "400"
        core.end_refused(call)
        return None
    if fallback is not None and dialog.remote_target == fallback:
        log.warning("emergency_call_without_contact", caller_target=fallback)
    return dialog


def refuse_invite(
    core: CallCore, tx: ServerTransaction, refusal: RouteRefusal, dialled: str, to_tag: str
) -> None:
    """The router's refusal (404, a 407 challenge...), with its headers and Warning."""
    log.info("call_refused", dialled=dialled, status=refusal.status, reason=refusal.reason)
    extra = refusal.headers
    if refusal.warning:
        extra = (*extra, ("Warning", warning_value(refusal.warning)))
    core.respond(tx, refusal.status, refusal.reason, to_tag=to_tag, extra=extra)


def unsupported_extensions(request: Request) -> list[str]:
    """The option tags in ``Require`` that we do not support (RFC 3261 section 8.2.2.3);
    ACK and CANCEL are never refused on Require, so theirs are not looked at."""
    if request.method in ("ACK", "CANCEL"):
        return []
    tags: list[str] = []
    for value in request.get_all("require"):
        for tag in value.split(","):
            tag = tag.strip()
            if tag and tag.lower() not in SUPPORTED and tag not in tags:
                tags.append(tag)
    return tags


def refuse_extensions(
    core: CallCore, tx: ServerTransaction, tags: list[str], to_tag: str | None = None
) -> None:
    """420 Bad Extension naming ``tags`` in Unsupported, and what we do support."""
    log.info("bad_extension", method=tx.request.method, unsupported=tags)
    core.respond(
        tx,
        420,
        to_tag=to_tag,
        extra=(("Unsupported", ", ".join(tags)), ("Supported", ", ".join(SUPPORTED))),
    )
