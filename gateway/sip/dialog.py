"""RFC 3261 section 12 dialogs, sans-I/O.

Theory of operation
-------------------
A :class:`Dialog` is the state two user agents share after a dialog-creating exchange
(an INVITE answered by a 1xx with a To tag or by a 2xx): the Call-ID and the two tags, the
two URIs, the remote target (where in-dialog requests go), the route set (the proxies that
asked to stay on the path with Record-Route), and the two CSeq counters. It is plain data
plus the rules of section 12; it never sends, receives or reads a clock.

A dialog is born from the point of view of one side:

    d = Dialog.as_uac(invite, response)                  # 12.1.2: our INVITE, their 1xx/2xx
    d = Dialog.as_uas(invite, local_tag, local_contact)  # 12.1.1: their INVITE, our tag

and then:

    req = d.create_request("BYE", ids)          # 12.2.1.1: CSeq+1, To/From/Call-ID, routing
    ack = d.create_ack(invite, response, ids)   # 13.2.2.4: ACK for a 2xx, CSeq of the INVITE
    d.next_hop                                  # 8.1.2: the URI the request must be sent to
    d.check_request(req)                        # 12.2.2: 481 / 500 "CSeq out of order"
    d.update_target(msg)                        # 12.2.1.2 / 12.2.2: target refresh
    d.confirm(response)                         # 13.2.2.4: early -> confirmed on a 2xx
    d.terminate()

``ids`` is the :class:`~gateway.sip.address.IdGenerator` of the element. Requests are
built **without a Via**: the transaction user pushes its Via (with a fresh branch, see
``SipEndpoint.via_for``) before handing them to the transaction layer, and resolves
``d.next_hop`` with :func:`gateway.sip.routing.resolve_next_hop`.

States (``state``) follow this table; anything else is a programming error:

    ==========  =========  ==========
    from        confirm    terminate
    ==========  =========  ==========
    early       confirmed  terminated
    confirmed   confirmed  terminated
    terminated  (error)    terminated
    ==========  =========  ==========

Errors: :class:`DialogError` is a request the dialog refuses and already knows its response
(481 for a request matching no live dialog, 500 for a CSeq out of order). Calls that make no
sense for the given input (a 100 Trying given to ``as_uac``, a request on a terminated
dialog) raise :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gateway.sip.errors import SipError, SipParseError
from gateway.sip.headers import NameAddr
from gateway.sip.message import Message, Request, Response
from gateway.sip.uri import SipUri, Uri, parse_uri

if TYPE_CHECKING:
    from gateway.sip.address import IdGenerator

__all__ = [
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogError",
    "DialogId",
    "creates_dialog",
    "is_target_refresh",
]

#: Methods whose request and 2xx replace the remote target: INVITE (RFC 3261 section 12.2),
#: UPDATE (RFC 3311 section 5.1), SUBSCRIBE and NOTIFY (RFC 6665 sections 4.1.2, 4.2.1).
TARGET_REFRESH_METHODS: frozenset[str] = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"})

#: Methods that carry our Contact: the target refreshes, and REFER (RFC 3515 section 2.4.1).
_CONTACT_METHODS: frozenset[str] = TARGET_REFRESH_METHODS | {"REFER"}

#: RFC 3261 section 8.1.1.6.
MAX_FORWARDS = 70

#: RFC 3261 section 8.1.1.5: a CSeq number is less than 2**31.
_CSEQ_LIMIT = 2**31

#: Parameters not allowed in a Request-URI (RFC 3261 section 19.1.1, table 1).
_NOT_IN_REQUEST_URI = frozenset({"method"})

#: Section 12.2.2: requests whose CSeq is not a new number in the remote sequence.
_SAME_CSEQ_METHODS = frozenset({"ACK", "CANCEL"})

_State = Literal["early", "confirmed", "terminated"]

_TRANSITIONS: dict[tuple[str, str], _State] = {
    ("early", "confirm"): "confirmed",
    ("confirmed", "confirm"): "confirmed",
    ("early", "terminate"): "terminated",
    ("confirmed", "terminate"): "terminated",
    ("terminated", "terminate"): "terminated",
}


def is_target_refresh(method: str) -> bool:
    """True for methods whose request and 2xx refresh the remote target (section 12.2)."""
    return method.upper() in TARGET_REFRESH_METHODS


def creates_dialog(response: Response) -> bool:
    """True when ``response`` to a dialog-creating request makes a dialog (section 12.1).

    A 2xx always does (a missing To tag counts as the null tag, section 12.1.2); a 101-199
    only with a To tag, which is what tells forks apart. 100 and failures never do.
    """
    if 200 <= response.status < 300:
        return True
    return 100 < response.status < 200 and bool(response.to_tag)


class DialogError(SipError):
    """An in-dialog request that the dialog refuses (500 for CSeq out of order, 481 unknown)."""

    status = 500
    reason = "Server Internal Error"


def _no_dialog(detail: str) -> DialogError:
    return DialogError(detail, status=481, reason="Call/Transaction Does Not Exist")


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID, local tag and remote tag, as seen by this side (RFC 3261 section 12).

    A missing tag (an RFC 2543 peer) is the null tag, written ``""``.
    """

    call_id: str
    local_tag: str
    remote_tag: str

    @classmethod
    def of_received(cls, msg: Request | Response) -> DialogId:
        """The id of the dialog a message we *received* belongs to.

        In a request from the peer the To tag is ours (section 12.2.2); in a response to one
        of our requests the From tag is ours (section 12.2.1.2). Usable as a lookup key.
        """
        if isinstance(msg, Request):
            return cls(msg.call_id, msg.to_tag or "", msg.from_tag or "")
        return cls(msg.call_id, msg.from_tag or "", msg.to_tag or "")


@dataclass(slots=True)
class Dialog:
    """The dialog state of section 12, from one side's point of view.

    ``local_cseq`` is the last CSeq number this side used (the next request gets one more);
    ``remote_cseq`` the last one received from the peer, None until the peer sends one.
    ``remote_target`` is the peer's Contact URI, kept as text so that it goes back on the
    wire byte-exact. ``local_contact`` is our Contact URI (or a whole ``<...>`` value).
    ``role`` tells which side of the dialog-creating transaction we were.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: NameAddr
    remote_uri: NameAddr
    remote_target: str
    route_set: list[NameAddr] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    secure: bool = False
    local_contact: str = ""
    state: str = "early"  # early | confirmed | terminated
    role: Literal["uac", "uas"] = "uac"

    # -- creation (section 12.1) -----------------------------------------------------------

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog:
        """The dialog our ``invite`` makes with ``response`` (RFC 3261 section 12.1.2).

        ``response`` is a 1xx with a To tag (early dialog) or a 2xx (confirmed dialog). The
        route set is its Record-Route in reverse order, the remote target its Contact (the
        Request-URI of the INVITE when a broken peer sent none), and the dialog is secure
        when the Request-URI is a SIPS URI (the caller sent it over TLS, section 26.2).
        ``local_contact`` is taken from the INVITE's Contact.
        """
        if not creates_dialog(response):
            raise ValueError(f"a {response.status} response creates no dialog")
        if response.call_id != invite.call_id or response.cseq.number != invite.cseq.number:
            raise ValueError("the response does not answer this request")
        local_tag = invite.from_tag
        if not local_tag:
            raise ValueError("our request has no From tag")
        contacts = invite.contacts
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=response.to_tag or "",
            local_uri=_bare(invite.from_),
            remote_uri=_bare(invite.to),
            remote_target=_target_of(response, default=invite.uri_text),
            route_set=list(reversed(response.record_routes)),
            local_cseq=invite.cseq.number,
            remote_cseq=None,
            secure=invite.uri.scheme == "sips",
            local_contact=contacts[0].uri_text if contacts else "",
            state="confirmed" if response.status >= 200 else "early",
            role="uac",
        )

    @classmethod
    def as_uas(
        cls,
        invite: Request,
        local_tag: str,
        local_contact: str,
        *,
        initial_cseq: int = 1,
        fallback_target: str | None = None,
    ) -> Dialog:
        """The dialog we make by answering ``invite`` with ``local_tag`` (section 12.1.1).

        The route set is the request's Record-Route in order, the remote target its Contact,
        ``remote_cseq`` its CSeq. Our own sequence is empty: the first request we send in the
        dialog carries ``initial_cseq``. The dialog starts early; :meth:`confirm` it when
        the 2xx is sent. A From without tag (RFC 2543 peer) is the null tag.
        Raises :class:`SipParseError` (400) when the Contact is missing (section 8.1.1.8:
        an INVITE MUST carry one) or its URI or a Record-Route is malformed, unless
        ``fallback_target`` is given: that URI is then the remote target, with no route
        set (an emergency call is placed anyway).
        """
        if not local_tag:
            raise ValueError("empty local tag")
        if not 1 <= initial_cseq < _CSEQ_LIMIT:
            raise ValueError(f"initial CSeq {initial_cseq} out of range")
        try:
            if not invite.contacts:
                raise SipParseError("missing Contact in a dialog-creating request")
            remote_target = _target_of(invite, default="")
            route_set = list(invite.record_routes)
        except SipParseError:
            if fallback_target is None:
                raise
            # straight back to where the request came from: no route set to follow
            remote_target, route_set = fallback_target, []
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_tag or "",
            local_uri=_bare(invite.to),
            remote_uri=_bare(invite.from_),
            remote_target=remote_target,
            route_set=route_set,
            local_cseq=initial_cseq - 1,
            remote_cseq=invite.cseq.number,
            secure=invite.uri.scheme == "sips",
            local_contact=local_contact,
            state="early",
            role="uas",
        )

    # -- identity --------------------------------------------------------------------------

    @property
    def id(self) -> DialogId:
        """Call-ID, local tag, remote tag."""
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def matches(self, msg: Request | Response) -> bool:
        """True when ``msg``, a request or response we received, belongs to this dialog.

        Call-ID and tags are compared exactly; see :meth:`DialogId.of_received` for which tag
        is which. A message without the needed headers matches nothing.
        """
        try:
            return DialogId.of_received(msg) == self.id
        except SipParseError:
            return False

    # -- requests we send (section 12.2.1) -------------------------------------------------

    @property
    def next_hop(self) -> Uri:
        """Where the next in-dialog request goes (RFC 3261 section 8.1.2).

        The first URI of the route set if there is one (with strict routing it is also the
        Request-URI), else the remote target. Resolve it with
        :func:`gateway.sip.routing.resolve_next_hop`.
        """
        if self.route_set:
            return self.route_set[0].uri
        return parse_uri(self.remote_target)

    @property
    def next_hop_uri(self) -> Uri:
        """Same as :attr:`next_hop`."""
        return self.next_hop

    def create_request(
        self,
        method: str,
        ids: IdGenerator,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A new request within the dialog (RFC 3261 section 12.2.1.1).

        The CSeq is one more than the last local one. To is the remote URI with the remote
        tag, From the local URI with the local tag; Contact is added for target-refresh
        methods and REFER. Request-URI and Route follow the route set (:meth:`_route`).
        ``body`` goes with ``content_type`` (section 20.15 wants one for any body; a relayed
        body that came without is passed on without).

        The request has **no Via**: the transaction user adds its Via with a new branch when
        it sends it (section 8.1.1.7), to :attr:`next_hop`. ``ids`` is accepted for that
        layer's sake and not used here. ACK (use :meth:`create_ack`) and CANCEL (built from
        the request it cancels, section 9.1) are refused.
        """
        del ids  # the branch belongs to the transaction layer
        method = method.upper()
        if method in _SAME_CSEQ_METHODS:
            raise ValueError(f"{method} is not built by create_request")
        if self.state == "terminated":
            raise ValueError(f"cannot send {method}: the dialog is terminated")
        if self.local_cseq + 1 >= _CSEQ_LIMIT:
            raise ValueError("local CSeq exhausted")
        self.local_cseq += 1
        request = self._build(method, self.local_cseq, self.remote_tag, extra_headers)
        if body:
            request.set_body(body, content_type)
        return request

    def create_ack(
        self,
        invite: Request,
        response: Response,
        ids: IdGenerator,
        *,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx ``response`` to our ``invite`` (RFC 3261 section 13.2.2.4).

        Built like any in-dialog request (same Request-URI and Route), with the CSeq number
        of the INVITE and method ACK, the To tag of that 2xx, and the credentials
        (Authorization, Proxy-Authorization) of the INVITE. The local CSeq does not move.
        No body unless one is given (the answer, when the 2xx carried the offer).

        A 2xx from another fork (another To tag) is ACKed along the route set and target of
        its own dialog, as section 13.2.2.4 builds a new dialog for it. Like
        :meth:`create_request`, the ACK has no Via and ``ids`` is not used here.
        """
        if not 200 <= response.status < 300 or response.cseq.method != "INVITE":
            raise ValueError(f"ACK is built here for a 2xx to INVITE, not {response!r}")
        if response.call_id != self.call_id or response.from_tag != self.local_tag:
            raise ValueError("the 2xx does not belong to this dialog")
        if response.cseq.number != invite.cseq.number:
            raise ValueError("the 2xx does not answer this INVITE")
        to_tag = response.to_tag or ""
        if to_tag != self.remote_tag:
            if invite.to_tag is not None:
                raise ValueError("a 2xx to a re-INVITE from outside the dialog")
            fork = Dialog.as_uac(invite, response)
            return fork.create_ack(invite, response, ids, body=body, content_type=content_type)
        ack = self._build("ACK", invite.cseq.number, to_tag, ())
        for name in ("authorization", "proxy-authorization"):
            for value in invite.get_all(name):
                ack.add(name, value)
        if body:
            ack.set_body(body, content_type)
        return ack

    def _build(
        self, method: str, cseq: int, to_tag: str, extra: Iterable[tuple[str, str]]
    ) -> Request:
        request_uri, routes = self._route()
        request = Request(method, request_uri)
        if routes:
            request.set_list("route", routes)
        request.add("max-forwards", str(MAX_FORWARDS))
        to = self.remote_uri.with_tag(to_tag) if to_tag else self.remote_uri
        request.add("to", str(to))
        request.add("from", str(self.local_uri.with_tag(self.local_tag)))
        request.add("call-id", self.call_id)
        request.add("cseq", f"{cseq} {method}")
        if method in _CONTACT_METHODS and self.local_contact:
            request.add("contact", _contact_value(self.local_contact))
        for name, value in extra:
            request.add(name, value)
        return request

    def _route(self) -> tuple[str, list[str]]:
        """Request-URI and Route values from the route set (RFC 3261 section 12.2.1.1).

        No route set: the remote target, no Route. Loose router first (``;lr``): the remote
        target, Route = the route set. Strict router first: its URI (stripped of what a
        Request-URI may not carry) is the Request-URI, Route = the rest of the route set
        followed by the remote target.
        """
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0]
        first_uri = first.uri
        if not isinstance(first_uri, SipUri) or first_uri.lr:
            return self.remote_target, [str(r) for r in self.route_set]
        routes = [str(r) for r in self.route_set[1:]]
        routes.append(f"<{self.remote_target}>")
        return _request_uri_form(first_uri), routes

    # -- requests and responses we receive (sections 12.2.1.2, 12.2.2) ---------------------

    def check_request(self, request: Request) -> None:
        """Admit a request received within the dialog (RFC 3261 section 12.2.2).

        Raises :class:`DialogError` 481 when the request does not match this dialog or the
        dialog is terminated, and 500 "CSeq out of order" when its CSeq is not above the last
        remote one; otherwise records the CSeq. ACK and CANCEL reuse the CSeq of the request
        they belong to and are not counted. Retransmissions never get here (the transaction
        layer absorbs them), so an equal CSeq on a new request is refused too. No response
        is ever sent to an ACK: drop it when this raises.
        """
        if self.state == "terminated":
            raise _no_dialog("dialog terminated")
        if not self.matches(request):
            raise _no_dialog("request matches no dialog")
        if request.method in _SAME_CSEQ_METHODS:
            return
        number = request.cseq.number
        if self.remote_cseq is not None and number <= self.remote_cseq:
            raise DialogError("CSeq out of order")
        self.remote_cseq = number

    def update_target(self, msg: Request | Response) -> bool:
        """Apply a target refresh (RFC 3261 sections 12.2.1.2 and 12.2.2).

        The Contact of a received target-refresh request (re-INVITE, UPDATE, ...) or of a
        2xx to one of ours replaces the remote target. Returns True when it changed. Other
        messages, messages without Contact and messages of another dialog (:meth:`matches`)
        leave it alone. A malformed Contact URI raises :class:`SipParseError` (400).
        """
        if not self.matches(msg):
            return False
        if isinstance(msg, Request):
            refresh = is_target_refresh(msg.method)
        else:
            refresh = 200 <= msg.status < 300 and is_target_refresh(msg.cseq.method)
        if not refresh or not msg.contacts:
            return False
        target = _target_of(msg, default=self.remote_target)
        changed = target != self.remote_target
        self.remote_target = target
        return changed

    # -- state -----------------------------------------------------------------------------

    def confirm(self, response: Response) -> None:
        """Early -> confirmed on a 2xx to the INVITE (RFC 3261 section 13.2.2.4).

        UAC side: ``response`` is the 2xx we received; the remote tag, the route set (from
        its Record-Route, reversed) and the remote target (its Contact) are taken from it.
        A 2xx with another To tag than the early dialog (a fork) thus turns this object into
        that fork's dialog, which is what a B2BUA leg wants; keep several :class:`Dialog`
        objects and use :meth:`matches` first to track forks separately.
        UAS side: ``response`` is the 2xx we send; its To tag must be ours.
        """
        if not 200 <= response.status < 300 or response.cseq.method != "INVITE":
            raise ValueError(f"only a 2xx to INVITE confirms a dialog, not {response!r}")
        if response.call_id != self.call_id:
            raise ValueError("the 2xx does not belong to this dialog")
        if self.role == "uac":
            if response.from_tag != self.local_tag:
                raise ValueError("the 2xx does not belong to this dialog")
            if self.state == "early":
                self.remote_tag = response.to_tag or ""
                self.route_set = list(reversed(response.record_routes))
                self.remote_target = _target_of(response, default=self.remote_target)
            elif (response.to_tag or "") != self.remote_tag:
                raise ValueError("a 2xx from another fork of a confirmed dialog")
        elif response.to_tag != self.local_tag:
            raise ValueError("the 2xx does not carry our tag")
        self._transition("confirm")

    def terminate(self) -> None:
        """The dialog is over (BYE sent or received, final failure of an early dialog)."""
        self._transition("terminate")

    def _transition(self, event: str) -> None:
        new = _TRANSITIONS.get((self.state, event))
        if new is None:
            raise ValueError(f"cannot {event} a dialog in state {self.state!r}")
        self.state = new


# -- helpers -------------------------------------------------------------------------------


def _bare(addr: NameAddr) -> NameAddr:
    """A From/To value without its tag and other header parameters (display name kept)."""
    return NameAddr(addr.uri_text, addr.display, {}, True)


def _target_of(msg: Message, *, default: str) -> str:
    """The URI of the first Contact of ``msg`` as text (validated), or ``default``."""
    contacts = msg.contacts
    if not contacts:
        return default
    contact = contacts[0]
    contact.uri  # noqa: B018 - raise SipParseError (400) now rather than when routing
    return contact.uri_text


def _contact_value(local_contact: str) -> str:
    return local_contact if "<" in local_contact else f"<{local_contact}>"


def _request_uri_form(uri: SipUri) -> str:
    """A route URI as a Request-URI: no ``method`` parameter, no headers (section 19.1.1)."""
    if not uri.headers and _NOT_IN_REQUEST_URI.isdisjoint(uri.params):
        return str(uri)
    params = {k: v for k, v in uri.params.items() if k not in _NOT_IN_REQUEST_URI}
    return str(SipUri(uri.scheme, uri.user, uri.host, uri.port, uri.password, params))
