"""The overload gate: new ordinary INVITEs shed before they are parsed (SPEC O-4).

Theory of operation
-------------------
Under overload the cost of saying no decides whether the gateway keeps serving: a shed call
that goes through the parser, a server transaction, the router and a retransmitted 503
costs a good part of an admitted call, and at three times the capacity those refusals alone
fill the one CPU. Emergency INVITEs then wait behind them in the socket buffer, or are
dropped there, and take seconds to set up. The gate answers the calls to be shed for a few
microseconds each, as RFC 3261 section 8.2.7 allows a stateless UAS to:

1. The endpoint hands it every datagram (or framed stream message) before parsing.
   :meth:`OverloadGate.screen` returns None (parse and handle it as usual), ``b""`` (drop
   it) or the bytes of a response to send back to the source.
2. While :meth:`~gateway.b2bua.admission.Admission.would_shed` says no, every INVITE passes:
   the call layer decides as always. Otherwise a new INVITE (no To tag) is scanned, not
   parsed: the request line and the Via, From, To, Call-ID and CSeq lines.
3. It passes when it may be an emergency call or an emergency callback: the router's
   :meth:`~gateway.b2bua.router.ContactCentreRouter.may_be_priority` looks at the
   Request-URI and the source (a trunk's call to a live callback DID; from the agents' side
   an emergency dial string, as received or as the ordinary rules rewrite it). The call
   layer then decides on identity that cannot be forged, exactly as without load: the gate
   only ever passes more than it sheds.
4. Everything else gets ``503 Service Unavailable`` with Retry-After, built from the copied
   lines and a To tag derived from the Call-ID and From (a retransmission gets the same
   answer). The ACK of that 503 is dropped on sight by its tag; an INVITE the scan cannot
   read is left to the parser. An upstream that announced RFC 7339 support (``oc`` in its
   top Via) reads in that Via the loss-based ``oc`` share to hold back.

In-dialog requests, responses and every other method pass untouched: an admitted call is
never lost to overload. Apart from overload, the gate also drops a stranger's requests past
its per-source limit (``gateway/b2bua/flood.py``, SPEC O-6) before they are parsed.

"Source" is the origin of :mod:`gateway.fronts`: for a datagram from a cluster's front, the
address its ``X-Gateway-Source`` header names (read from the raw head, nothing else), so
that the limits, the trust cache and the priority check see the phone or trunk behind the
front, not the front that every one of them shares.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from typing import Final

from gateway.b2bua.admission import Admission
from gateway.b2bua.flood import SourceLimits
from gateway.config.overload import OverloadSettings
from gateway.fronts import Fronts
from gateway.sip.errors import SipParseError
from gateway.sip.transaction import Address
from gateway.sip.uri import Uri, parse_uri
from gateway.transport.inbox import ADMITTED, NEW, ORDINARY, PRIORITY, UNCLASSIFIED

__all__ = [
    "OC_VALIDITY_MS",
    "SHED_TAG_PREFIX",
    "OverloadGate",
    "gate_for",
    "routers_priority",
    "routers_trust",
    "scan_invite",
]

SHED_TAG_PREFIX: Final = "gw503-"
"""The To tag of every 503 the gate sends: its ACK is recognised by it."""
_SHED_MARK: Final = b"tag=" + SHED_TAG_PREFIX.encode()
_OC_SUPPORTED: Final = re.compile(rb";\s*oc\s*(?:[;,]|$)", re.IGNORECASE)
TRUST_TTL_S: Final = 1.0
"""How long the gate keeps a source's trust verdict (a new registration counts within it)."""
_TRUST_ENTRIES: Final = 4096
#: methods only sent inside a dialog or a transaction the gateway already has (inbox lane 1)
_IN_DIALOG_METHODS: Final = frozenset(
    (b"ACK", b"BYE", b"CANCEL", b"PRACK", b"UPDATE", b"INFO", b"REFER", b"NOTIFY")
)
OC_VALIDITY_MS: Final = 1000
"""How long an upstream applies the ``oc`` loss of one 503 (RFC 7339 section 5.2)."""
_HEADERS: Final = {
    b"via": 0,
    b"v": 0,
    b"from": 1,
    b"f": 1,
    b"to": 2,
    b"t": 2,
    b"call-id": 3,
    b"i": 3,
    b"cseq": 4,
}


class InviteHead:
    """What the gate reads of an INVITE: its Request-URI and the lines a response copies."""

    __slots__ = ("call_id", "cseq", "from_", "to", "uri", "vias")

    def __init__(
        self, uri: bytes, vias: list[bytes], from_: bytes, to: bytes, call_id: bytes, cseq: bytes
    ) -> None:
        self.uri = uri
        self.vias = vias
        self.from_ = from_
        self.to = to
        self.call_id = call_id
        self.cseq = cseq

    @property
    def in_dialog(self) -> bool:
        """Does the To header carry a tag (a re-INVITE)?"""
        value = self.to.partition(b":")[2]
        return b"tag=" in value.lower().replace(b" ", b"")


def scan_invite(data: bytes) -> InviteHead | None:
    """The head of an INVITE, or None when it is not one the gate can read at a glance
    (folded or missing lines, an odd request line): the parser then has it."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"INVITE" or parts[2] != b"SIP/2.0":
        return None
    found: list[list[bytes]] = [[], [], [], [], []]
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0 or line[0] in b" \t":
            return None
        slot = _HEADERS.get(line[:colon].rstrip().lower())
        if slot is not None:
            found[slot].append(line.rstrip())
    vias, froms, tos, call_ids, cseqs = found
    if not vias or len(froms) != 1 or len(tos) != 1 or len(call_ids) != 1 or len(cseqs) != 1:
        return None
    return InviteHead(parts[1], vias, froms[0], tos[0], call_ids[0], cseqs[0])


class OverloadGate:
    """Sheds new ordinary INVITEs statelessly while the admission control says so.

    ``priority(uri, source)`` is the router's cheap "may this be an emergency call or
    callback?"; ``server`` the Server header value of the 503s.
    """

    def __init__(
        self,
        admission: Admission,
        priority: Callable[[Uri, Address], bool],
        server: str,
        wall_clock: Callable[[], float] = time.time,
        *,
        limits: SourceLimits | None = None,
        trusted: Callable[[Address], bool] = lambda source: True,
        fronts: Fronts | None = None,
    ) -> None:
        self.admission = admission
        self.priority = priority
        self.wall_clock = wall_clock
        #: per-source limits for strangers (SPEC O-6), and who is not a stranger
        self.limits = limits
        self.trusted = trusted
        #: the cluster's fronts (None: none configured): a datagram from one is judged by
        #: the source it names (``X-Gateway-Source``), and the trust cache keys on that
        self.fronts = fronts if fronts else None
        self._trust: dict[Address, tuple[bool, float]] = {}
        self._tail = (
            f"Retry-After: {admission.settings.retry_after_s}\r\n"
            f"Server: {server}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        #: INVITEs answered 503 by the gate, and ACKs of those 503s dropped
        self.shed = 0
        self.acks_dropped = 0

    def screen(
        self, data: bytes, source: Address, now: float, lane: int = UNCLASSIFIED
    ) -> bytes | None:
        """None: parse ``data`` as usual; ``b""``: drop it; else the response to send.
        ``lane`` is what :meth:`classify` said of it in the inbox (a UDP datagram): a new
        INVITE it already looked at is not read again for its origin, trust or priority."""
        if data[:8] == b"SIP/2.0 " or lane == PRIORITY:
            return None  # a response (the transaction layer knows whether it is ours), or
            # what classify found may be an emergency call from a known source
        if lane != ORDINARY:  # else classify found its source known: no limit, no ACK
            fronts = self.fronts
            if fronts is not None:
                source = fronts.origin_of_bytes(data, source)  # only a front's datagrams
            limits = self.limits
            stranger = limits is not None and not self._trusted(source, now)
            if stranger and limits is not None and not limits.allow(source.host, now):
                return b""  # a stranger's flood: unanswered
            if data[:4] == b"ACK ":
                if _SHED_MARK in data:
                    self.acks_dropped += 1
                    return b""
                return None
        if data[:7] != b"INVITE " or not self.admission.would_shed(now):
            return None
        head = scan_invite(data)
        if head is None or head.in_dialog:
            return None
        if lane != ORDINARY:  # else classify found it is no emergency call nor a callback
            try:
                uri = parse_uri(head.uri.decode("utf-8"))
            except (SipParseError, UnicodeDecodeError):
                return None  # the parser answers it 400
            if self.priority(uri, source):
                return None
        self.admission.count_shed()
        self.shed += 1
        return self._refusal(head)

    def classify(self, data: bytes, source: Address, now: float) -> int:
        """The inbox lane of a datagram (``gateway/transport/inbox.py``): a new INVITE that
        may be an emergency call or callback from a source that is not a stranger first,
        then responses and in-dialog requests, then the rest. Cheap, like :meth:`screen`,
        and erring towards the ordinary lanes: it only orders, the call layer decides."""
        if data[:8] == b"SIP/2.0 ":
            return ADMITTED
        if data[:7] != b"INVITE ":
            space = data.find(b" ", 0, 12)
            return ADMITTED if data[:space] in _IN_DIALOG_METHODS else NEW
        head = scan_invite(data)
        if head is None:
            return NEW
        if head.in_dialog:
            return ADMITTED
        fronts = self.fronts
        if fronts is not None:
            source = fronts.origin_of_bytes(data, source)  # only for a front's datagrams
        if not self._trusted(source, now):
            return NEW
        try:
            uri = parse_uri(head.uri.decode("utf-8"))
        except (SipParseError, UnicodeDecodeError):
            return NEW
        return PRIORITY if self.priority(uri, source) else ORDINARY

    def _trusted(self, source: Address, now: float) -> bool:
        """``trusted(source)``, remembered for ``TRUST_TTL_S``: the router's answer (trunks,
        networks, live registrations) does not change per datagram, and this runs for every
        request the gateway reads."""
        known = self._trust.get(source)
        if known is not None and known[1] > now:
            return known[0]
        if len(self._trust) >= _TRUST_ENTRIES:
            self._trust.clear()
        verdict = self.trusted(source)
        self._trust[source] = (verdict, now + TRUST_TTL_S)
        return verdict

    def _overload_control(self) -> bytes:
        """RFC 7339 loss-based feedback for an upstream that put ``oc`` in its Via: the share
        of its new calls to hold back (never its emergency calls, section 5.10.1), valid for
        ``OC_VALIDITY_MS``; ``oc-seq`` is the wall clock, so it grows across restarts."""
        loss = max(self.admission.rate.loss, 1)
        return b';oc=%d;oc-algo="loss";oc-validity=%d;oc-seq=%.3f' % (
            loss,
            OC_VALIDITY_MS,
            self.wall_clock(),
        )

    def _refusal(self, head: InviteHead) -> bytes:
        tag = zlib.crc32(head.call_id + head.from_) & 0xFFFFFFFF
        vias = head.vias
        if _OC_SUPPORTED.search(vias[0]):
            vias = [vias[0] + self._overload_control(), *vias[1:]]
        return b"".join(
            (
                b"SIP/2.0 503 Service Unavailable\r\n",
                b"\r\n".join(vias),
                b"\r\n",
                head.from_,
                b"\r\n",
                head.to,
                b";tag=%s%08x\r\n" % (SHED_TAG_PREFIX.encode(), tag),
                head.call_id,
                b"\r\n",
                head.cseq,
                b"\r\n",
                self._tail,
            )
        )


def routers_trust(b2bua: object) -> Callable[[Address], bool]:
    """The gate's ``trusted`` from the router ``b2bua`` has at the moment; a router that
    cannot tell trusts every source."""

    def trusted(source: Address) -> bool:
        check = getattr(getattr(b2bua, "router", None), "trusted_source", None)
        return True if check is None else bool(check(source))

    return trusted


def routers_priority(b2bua: object) -> Callable[[Uri, Address], bool]:
    """The gate's ``priority`` from the router ``b2bua`` has at the moment (a reload
    replaces it); a router that cannot tell lets every INVITE through to the call layer."""

    def priority(uri: Uri, source: Address) -> bool:
        check = getattr(getattr(b2bua, "router", None), "may_be_priority", None)
        return True if check is None else bool(check(uri, source))

    return priority


def gate_for(
    b2bua: object, admission: Admission, overload: OverloadSettings, server: str
) -> OverloadGate:
    """The gate of a running node: the router of the moment decides priority and trust."""
    limits = None
    if overload.per_source_rate:
        limits = SourceLimits(overload.per_source_rate, overload.per_source_burst)
    return OverloadGate(
        admission,
        routers_priority(b2bua),
        server,
        limits=limits,
        trusted=routers_trust(b2bua),
        fronts=getattr(getattr(b2bua, "router", None), "fronts", None),
    )
