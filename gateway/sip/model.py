"""The SIP message model and its serialiser (RFC 3261 sections 7, 20).

A :class:`Request` or :class:`Response` holds each header as a ``(lower_name, name,
value)`` triple in arrival order, with a dict of the first value of each header beside it;
the body stays bytes. The parser that builds them is :mod:`gateway.sip.message` (which
re-exports these classes, so callers import both from there).

Typed values (``vias``, ``from_``, ``cseq``, ...) are cached; changing a header through
:meth:`Message.set` and friends drops its cache. Headers that the parser did not validate
are read on first access: a malformed one raises :class:`SipParseError` (400) from its
accessor.

Serialisation (``to_bytes``) writes the start line, the headers in order with the names as
they came (new headers get the canonical spelling), and always a correct ``Content-Length``
computed from the body, so that framing on stream transports is never wrong whatever the
received value said.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, final

from gateway.sip.errors import SipParseError
from gateway.sip.headers import CSeq, NameAddr, Via
from gateway.sip.names import _CANONICAL, COMPACT_FORMS, LIST_HEADERS, canonical_name, split_list
from gateway.sip.uri import Uri, parse_uri

__all__ = [
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
]

# hand-packed tables (one entry per line would be 60 lines of noise): not formatted
# fmt: off
REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_KNOWN_METHODS: Final = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
     "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)
# fmt: on


#: header-name spelling -> (full lower-case name, that spelling). Prefilled with the usual
#: spellings of the known headers and the compact forms; valid names seen on the wire are
#: added (bounded), as header names repeat from message to message while values do not.
#: The parser keeps the spelling from here, so that every message shares one string per
#: name instead of holding its own copy (issue 10: ~50 bytes a header of a kept message).
_NAMES: Final[dict[str, tuple[str, str]]] = {}
for _lname, _cname in _CANONICAL.items():
    for _spelling in (_cname, _lname, _cname.upper()):
        _NAMES[_spelling] = (_lname, _spelling)
for _short, _lname in COMPACT_FORMS.items():
    _NAMES[_short] = (_lname, _short)
    _NAMES[_short.upper()] = (_lname, _short.upper())
_NAMES_LIMIT: Final = len(_NAMES) + 2048
_NO_DUPS: Final[frozenset[str]] = frozenset()
#: Message._c_max_forwards before Max-Forwards is read (not a valid value: 0-255 or None)
_UNKNOWN: Final = -1


def _name_of(spelling: str) -> tuple[str, str] | None:
    """(full lower-case name, the shared spelling) of a header name as written, None if it
    is not a token."""
    known = _NAMES.get(spelling)
    if known is not None:
        return known
    if not _TOKEN_RE.match(spelling):
        return None
    lname = spelling.lower()
    known = (COMPACT_FORMS.get(lname, lname), spelling)
    if len(_NAMES) < _NAMES_LIMIT:
        _NAMES[spelling] = known
    return known


class Message:
    """Common part of requests and responses: ordered headers and a bytes body."""

    __slots__ = (
        "_c_contacts",
        "_c_cseq",
        "_c_from",
        "_c_max_forwards",
        "_c_to",
        "_c_top_via",
        "_c_vias",
        "_dups",
        "_first",
        "_headers",
        "body",
    )

    def __init__(self, headers: list[tuple[str, str, str]] | None = None, body: bytes = b""):
        self._headers: list[tuple[str, str, str]] = headers if headers is not None else []
        self.body: bytes = body
        self._first: dict[str, str] | None = None
        self._dups: frozenset[str] | set[str] = _NO_DUPS
        # typed values of headers, parsed on first use (or by the parser) and dropped when
        # their header changes; _c_max_forwards is _UNKNOWN until read (None: absent)
        self._c_cseq: CSeq | None = None
        self._c_from: NameAddr | None = None
        self._c_to: NameAddr | None = None
        self._c_top_via: Via | None = None
        self._c_vias: list[Via] | None = None
        self._c_contacts: list[NameAddr] | None = None
        self._c_max_forwards: int | None = _UNKNOWN

    def _forget_all(self) -> None:
        self._first = None
        self._c_cseq = None
        self._c_from = None
        self._c_to = None
        self._c_top_via = None
        self._c_vias = None
        self._c_contacts = None
        self._c_max_forwards = _UNKNOWN

    @property
    def headers(self) -> list[tuple[str, str, str]]:
        """(lower-case full name, name as written, value) in wire order.

        Mutate through :meth:`set`, :meth:`add`, :meth:`remove` or assign a new list; an
        in-place change of this list must be followed by :meth:`headers_changed`.
        """
        return self._headers

    @headers.setter
    def headers(self, value: list[tuple[str, str, str]]) -> None:
        self._headers = value
        self._forget_all()

    def headers_changed(self) -> None:
        """Forget cached header lookups after an in-place change of :attr:`headers`."""
        self._forget_all()

    def _index(self) -> dict[str, str]:
        """Rebuild the first-value index (and the set of repeated names)."""
        first: dict[str, str] = {}
        dups: set[str] = set()
        for hl, _, v in self._headers:
            if hl in first:
                dups.add(hl)
            else:
                first[hl] = v
        self._first = first
        self._dups = dups
        return first

    # -- generic header access -------------------------------------------------------------

    def _invalidate(self, lname: str) -> None:
        self._first = None
        if lname == "via":
            self._c_vias = None
            self._c_top_via = None
        elif lname == "from":
            self._c_from = None
        elif lname == "to":
            self._c_to = None
        elif lname == "cseq":
            self._c_cseq = None
        elif lname == "contact":
            self._c_contacts = None
        elif lname == "max-forwards":
            self._c_max_forwards = _UNKNOWN

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (whole line value, not list-split)."""
        first = self._first
        if first is None:
            first = self._index()
        v = first.get(name)
        if v is not None:
            return v
        lname = name.lower()
        return first.get(COMPACT_FORMS.get(lname, lname), default)

    def get_all(self, name: str) -> list[str]:
        """Every value of a header; comma-separated list headers are split into items."""
        lname = name.lower()
        lname = COMPACT_FORMS.get(lname, lname)
        out: list[str] = []
        if lname in LIST_HEADERS:
            for hl, _, v in self._headers:
                if hl == lname:
                    out.extend(split_list(v))
        else:
            for hl, _, v in self._headers:
                if hl == lname:
                    out.append(v)
        return out

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def set(self, name: str, value: str | object) -> None:
        """Replace every occurrence of a header by one value (added at the end if absent)."""
        lname = name.lower()
        lname = COMPACT_FORMS.get(lname, lname)
        text = str(value)
        self._invalidate(lname)
        for i, (hl, hn, _) in enumerate(self._headers):
            if hl == lname:
                self._headers[i] = (hl, hn, text)
                self._headers[i + 1 :] = [h for h in self._headers[i + 1 :] if h[0] != lname]
                return
        self._headers.append((lname, canonical_name(lname), text))

    def add(self, name: str, value: str | object, *, first: bool = False) -> None:
        """Add a header line; ``first=True`` puts it before other lines of the same name."""
        lname = name.lower()
        lname = COMPACT_FORMS.get(lname, lname)
        self._invalidate(lname)
        entry = (lname, canonical_name(lname), str(value))
        if first:
            for i, (hl, _, _) in enumerate(self._headers):
                if hl == lname:
                    self._headers.insert(i, entry)
                    return
        self._headers.append(entry)

    def remove(self, name: str) -> None:
        """Remove every line of a header."""
        lname = name.lower()
        lname = COMPACT_FORMS.get(lname, lname)
        self._invalidate(lname)
        self._headers = [h for h in self._headers if h[0] != lname]

    def set_list(self, name: str, values: Iterable[object]) -> None:
        """Replace a list header by one line per value (or remove it when empty)."""
        lname = name.lower()
        lname = COMPACT_FORMS.get(lname, lname)
        self.remove(lname)
        cname = canonical_name(lname)
        self._headers.extend((lname, cname, str(v)) for v in values)

    # -- typed hot-path accessors ----------------------------------------------------------

    @property
    def call_id(self) -> str:
        first = self._first
        if first is None:
            first = self._index()
        v = first.get("call-id")
        if v is None:
            raise SipParseError("missing Call-ID")
        return v

    @property
    def cseq(self) -> CSeq:
        c = self._c_cseq
        if c is None:
            v = self.get("cseq")
            if v is None:
                raise SipParseError("missing CSeq")
            c = self._c_cseq = CSeq.parse(v)
        return c

    @property
    def vias(self) -> list[Via]:
        """Every Via, topmost first (a comma list counts as several)."""
        c = self._c_vias
        if c is None:
            first = self._first
            if first is None:
                first = self._index()
            top = first.get("via")
            if top is None:
                c = []
            elif "via" not in self._dups and "," not in top:
                c = [self.top_via]
            else:
                c = [Via.parse(v) for v in self.get_all("via")]
            self._c_vias = c
        return c

    @property
    def top_via(self) -> Via:
        top = self._c_top_via
        if top is not None:
            return top
        c = self._c_vias
        if c is not None:
            if not c:
                raise SipParseError("missing Via")
            return c[0]
        first = self.get("via")
        if first is None:
            raise SipParseError("missing Via")
        items = split_list(first) if "," in first else [first]
        if not items:
            raise SipParseError("empty Via")
        top = self._c_top_via = Via.parse(items[0])
        return top

    def set_vias(self, vias: list[Via]) -> None:
        """Replace the Via headers (one line per Via)."""
        self.set_list("via", vias)
        self._c_vias = vias

    def set_top_via(self, via: Via) -> None:
        """Rewrite the topmost Via value (e.g. after adding ``received``/``rport``)."""
        for i, (hl, hn, v) in enumerate(self._headers):
            if hl == "via":
                items = split_list(v) if "," in v else [v]
                items[0] = str(via)
                self._headers[i] = (hl, hn, ", ".join(items))
                break
        else:
            raise SipParseError("missing Via")
        self._invalidate("via")
        self._c_top_via = via

    def push_via(self, via: Via) -> None:
        """Add a Via on top (a request leaving this element).

        A request built locally has no Via yet: the new one then goes before every other
        header, where proxies look for it (RFC 3261 section 7.3.1), not at the end.
        """
        if self.has("via"):
            self.add("via", via, first=True)
        else:
            self._invalidate("via")
            self._headers.insert(0, ("via", "Via", str(via)))
        self._c_top_via = via

    def pop_via(self) -> Via:
        """Remove the topmost Via and return it (a response passing back)."""
        top = self.top_via
        for i, (hl, hn, v) in enumerate(self._headers):
            if hl == "via":
                items = split_list(v) if "," in v else [v]
                if len(items) > 1:
                    self._headers[i] = (hl, hn, ", ".join(items[1:]))
                else:
                    del self._headers[i]
                break
        self._invalidate("via")
        return top

    def _name_addr(self, lname: str) -> NameAddr:
        v = self.get(lname)
        if v is None:
            raise SipParseError(f"missing {canonical_name(lname)}")
        return NameAddr.parse(v)

    @property
    def from_(self) -> NameAddr:
        c = self._c_from
        if c is None:
            c = self._c_from = self._name_addr("from")
        return c

    @property
    def to(self) -> NameAddr:
        c = self._c_to
        if c is None:
            c = self._c_to = self._name_addr("to")
        return c

    @property
    def from_tag(self) -> str | None:
        return self.from_.params.get("tag")

    @property
    def to_tag(self) -> str | None:
        return self.to.params.get("tag")

    @property
    def contacts(self) -> list[NameAddr]:
        """The Contact values (``*`` of a REGISTER gives an empty list)."""
        c = self._c_contacts
        if c is None:
            first = self._first
            if first is None:
                first = self._index()
            value = first.get("contact")
            if value is None:
                c = []
            elif "contact" not in self._dups and "," not in value:
                c = [] if value == "*" else [NameAddr.parse(value)]
            else:
                c = [NameAddr.parse(v) for v in self.get_all("contact") if v != "*"]
            self._c_contacts = c
        return c

    @property
    def record_routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.get_all("record-route")]

    @property
    def routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.get_all("route")]

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255), or None when absent (RFC 2543 peers, section 20.22)."""
        mf = self._c_max_forwards
        if mf == _UNKNOWN:
            v = self.get("max-forwards")
            mf = self._c_max_forwards = None if v is None else _max_forwards(v)
        return mf

    @property
    def content_type(self) -> str | None:
        first = self._first
        if first is None:
            first = self._index()
        return first.get("content-type")

    def set_body(self, body: bytes, content_type: str | None) -> None:
        """Set the body and its Content-Type (Content-Length is written on serialisation)."""
        self.body = body
        if content_type is None or not body:
            self.remove("content-type")
        else:
            self.set("content-type", content_type)

    # -- serialisation ---------------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always written and always matches the body."""
        lines = [self.start_line()]
        lines += [f"{hn}: {v}" for hl, hn, v in self._headers if hl != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def copy_headers(self) -> list[tuple[str, str, str]]:
        return list(self._headers)


@final
class Request(Message):
    """A SIP request."""

    __slots__ = ("_uri", "method", "uri_text", "version")

    def __init__(
        self,
        method: str,
        uri: str | Uri,
        headers: list[tuple[str, str, str]] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ):
        super().__init__(headers, body)
        self.method = method
        self.version = version
        if isinstance(uri, str):
            self.uri_text = uri
            self._uri: Uri | None = None
        else:
            self.uri_text = str(uri)
            self._uri = uri

    @property
    def uri(self) -> Uri:
        """The parsed Request-URI (cached)."""
        uri = self._uri
        if uri is None:
            uri = self._uri = parse_uri(self.uri_text)
        return uri

    @uri.setter
    def uri(self, value: Uri | str) -> None:
        if isinstance(value, str):
            self.uri_text = value
            self._uri = None
        else:
            self.uri_text = str(value)
            self._uri = value

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


@final
class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str, str]] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ):
        super().__init__(headers, body)
        self.status = status
        self.reason = reason if reason is not None else REASON_PHRASES.get(status, "Unknown")
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    @property
    def provisional(self) -> bool:
        return self.status < 200

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _max_forwards(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise SipParseError(f"bad Max-Forwards {value[:20]!r}")
    mf = int(value)
    if mf > 255:  # RFC 4475 section 3.1.2.4: outside its legal range
        raise SipParseError(f"Max-Forwards {mf} out of range")
    return mf
