"""SIP message model, parser and serialiser (RFC 3261 sections 7, 18.3, 20, 25).

Theory of operation
-------------------
``parse_message(data)`` turns one datagram (or one framed stream message) into a
:class:`Request` or :class:`Response`. Each header is stored as a
``(lower_name, name, value)`` triple in arrival order, with a dict of the first value of
each header beside it; the body stays bytes.

Parsing has a fast path and a careful path. The fast path handles the shape almost every
message has: CRLF line ends, an empty line ending the head, no folded lines, no whitespace
before a colon. It costs one ``splitlines()`` of the head and one ``find(":")`` plus a
dict lookup per line (header names are looked up by their spelling, compact forms
included; a new, valid name is learnt once). Anything unusual (folding, odd spacing,
bare LF, a missing empty line, leading CRLFs, bad header names) sends the whole message
down the careful path, which unfolds lines, checks every name and keeps going past a bad
line so that the error can carry a ``partial`` request to answer with 400. Both paths
produce the same header triples.

Validation is split by need (RFC 3261 sections 8.1.1, 8.2.2, 18.3):

* eager, on every message: the Request-Line or Status-Line, Content-Length framing, and
  the headers every response and every transaction needs: the top Via, From, To, Call-ID,
  CSeq (and its method matching the request's), Max-Forwards, the Request-URI, and that none
  of the single-valued ones appears twice. Their typed values are cached, so reading them
  afterwards is free, and a parsed request never surprises the transaction layer. (The
  URI inside From and To is checked for shape only; its parts are split out on first
  use of ``.uri``, from the same regular-expression match.);
* lazy, on first access: every other header (other Vias, Contact, Route, Record-Route, ...).
  A malformed one raises :class:`SipParseError` (400) from its accessor.

Typed values (``vias``, ``from_``, ``cseq``, ...) are cached; changing a header through
:meth:`Message.set` and friends drops its cache.

Serialisation (``to_bytes``) writes the start line, the headers in order with the names as
they came (new headers get the canonical spelling), and always a correct ``Content-Length``
computed from the body, so that framing on stream transports is never wrong whatever the
received value said.

Errors are :class:`SipParseError` (400), :class:`UnsupportedVersion` (505) or
:class:`MessageTooLarge` (513). For a request with a Via the error carries ``partial``: the
request as far as it was read (the headers that parsed), enough for :func:`make_response`
to build the answer. Responses, and requests without a Via, cannot be answered: dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final, NoReturn, final

from gateway.sip.errors import MessageTooLarge, SipParseError, UnsupportedVersion
from gateway.sip.headers import (
    _CANONICAL,
    COMPACT_FORMS,
    LIST_HEADERS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    split_list,
)
from gateway.sip.uri import SipUri, Uri, parse_uri

__all__ = [
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "StreamFramer",
    "make_response",
    "parse_message",
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

#: headers every request and response needs (RFC 3261 section 8.1.1)
_NEEDED: Final = ("Via", "From", "To", "Call-ID", "CSeq")
#: header names that may appear only once (RFC 3261 section 7.3.1: not comma lists)
_SINGLE_VALUED: Final = frozenset(("call-id", "cseq", "from", "to", "max-forwards"))

#: header-name spelling -> full lower-case name. Prefilled with the usual spellings of the
#: known headers and the compact forms; valid names seen on the wire are added (bounded),
#: as header names repeat from message to message while values do not.
_NAMES: Final[dict[str, str]] = {}
for _lname, _cname in _CANONICAL.items():
    for _spelling in (_cname, _lname, _cname.upper()):
        _NAMES[_spelling] = _lname
for _short, _lname in COMPACT_FORMS.items():
    _NAMES[_short] = _NAMES[_short.upper()] = _lname
_NAMES_LIMIT: Final = len(_NAMES) + 2048
_NO_DUPS: Final[frozenset[str]] = frozenset()
#: Message._c_max_forwards before Max-Forwards is read (not a valid value: 0-255 or None)
_UNKNOWN: Final = -1


def _name_of(spelling: str) -> str | None:
    """The full lower-case name of a header name as written, None if it is not a token."""
    if not _TOKEN_RE.match(spelling):
        return None
    lname = spelling.lower()
    lname = COMPACT_FORMS.get(lname, lname)
    if len(_NAMES) < _NAMES_LIMIT:
        _NAMES[spelling] = lname
    return lname


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


# -- parsing -------------------------------------------------------------------------------


def _max_forwards(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise SipParseError(f"bad Max-Forwards {value[:20]!r}")
    mf = int(value)
    if mf > 255:  # RFC 4475 section 3.1.2.4: outside its legal range
        raise SipParseError(f"Max-Forwards {mf} out of range")
    return mf


def parse_message(data: bytes, *, max_size: int = 65535) -> Request | Response:
    """Parse one SIP message from a datagram or a framed stream message.

    Raises :class:`SipParseError` (with ``status`` 400, 505 or 513); ``error.partial`` holds
    the request as far as it could be read, so that the caller can answer it.
    """
    if len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    end = data.find(b"\r\n\r\n")
    if end <= 0 or data[0] == 13 or data[0] == 10:
        return _parse_careful(data)
    text = data[:end].decode("utf-8", "surrogateescape")
    # splitlines() breaks at CRLF but also at a bare CR or LF (and a few other controls);
    # the lengths add up (checked below) only when every line ended with CRLF
    lines = text.splitlines()
    size = len(lines[0])

    # one find(":") per line; any unusual line sends the message down the careful path
    headers: list[tuple[str, str, str]] = []
    first: dict[str, str] = {}
    names = _NAMES
    for line in lines[1:]:
        size += len(line) + 2
        colon = line.find(":")
        if colon <= 0:
            return _parse_careful(data)
        name = line[:colon]
        lname = names.get(name)
        if lname is None:
            lname = _name_of(name)
            if lname is None:
                return _parse_careful(data)
        if colon + 1 < len(line) and line[colon + 1] == " ":  # the usual "Name: value"
            value = line[colon + 2 :].strip(" \t")
        else:
            value = line[colon + 1 :].strip(" \t")
        headers.append((lname, name, value))
        first.setdefault(lname, value)
    if size != len(text):
        return _parse_careful(data)  # a bare CR or LF somewhere
    dups = _repeated(headers) if len(first) != len(headers) else None

    msg: Request | Response
    start = lines[0]
    if start.startswith("SIP/"):
        msg = _response(start, headers)
    else:
        method, _, rest = start.partition(" ")
        uri_text, _, version = rest.partition(" ")
        if (
            version != "SIP/2.0"
            or not uri_text
            or (method not in _KNOWN_METHODS and not _TOKEN_RE.match(method))
        ):
            return _parse_careful(data)  # to tell 400 from 505 and keep a partial
        msg = Request(method, uri_text, headers)
    seen_twice = dups or _NO_DUPS
    msg._first = first
    msg._dups = seen_twice
    msg.body = body = data[end + 4 :]
    length = first.get("content-length")
    if length is not None and (
        dups is not None
        or not (length.isascii() and length.isdigit())
        or len(length) > 9
        or int(length) != len(body)
    ):
        _frame_body(msg, body, length, seen_twice)
    _validate(msg, first, seen_twice)
    return msg


#: the empty line ending the head, CRLF or (tolerated) bare LF line ends
_BLANK_LINE: Final = re.compile(rb"\r?\n\r?\n")


def _repeated(headers: list[tuple[str, str, str]]) -> set[str]:
    seen: set[str] = set()
    dups: set[str] = set()
    for hl, _, _ in headers:
        if hl in seen:
            dups.add(hl)
        seen.add(hl)
    return dups


def _parse_careful(data: bytes) -> Request | Response:
    """The slow, thorough path: any framing, folding, spacing; errors carry ``partial``."""
    # RFC 3261 section 7.5: ignore CRLFs before the start line
    data = data.lstrip(b"\r\n")
    blank = _BLANK_LINE.search(data)
    if blank is not None:
        head, body = data[: blank.start()], data[blank.end() :]
    else:
        # no empty line: a message with headers only whose end was cut; no body
        head, body = data.rstrip(b"\r\n"), b""
    if not head:
        raise SipParseError("empty message")
    text = head.decode("utf-8", "surrogateescape")
    # CRLF ends lines; a bare LF is tolerated as a line end, a bare CR is not
    lines = text.replace("\r\n", "\n").split("\n")
    headers, error = _careful_headers(lines[1:])
    start = lines[0]
    msg = _response(start, headers) if start.startswith("SIP/") else _request(start, headers)
    first = msg._index()
    if error is not None:
        _fail(msg, error)
    msg.body = body
    length = first.get("content-length")
    if length is not None:
        _frame_body(msg, body, length, msg._dups)
    _validate(msg, first, msg._dups)
    return msg


def _careful_headers(lines: list[str]) -> tuple[list[tuple[str, str, str]], str | None]:
    """Unfold and split header lines; bad lines are skipped and the first error returned."""
    headers: list[tuple[str, str, str]] = []
    error: str | None = None
    for line in lines:
        if "\r" in line:
            error = error or f"bare CR in header line {line[:60]!r}"
            continue
        if not line:
            continue
        if line[0] == " " or line[0] == "\t":
            # folded continuation (RFC 3261 section 7.3.1): joins the previous value with SP
            more = line.strip(" \t")
            if not headers:
                error = error or "continuation line before any header"
            elif more:
                hl, hn, v = headers[-1]
                headers[-1] = (hl, hn, f"{v} {more}" if v else more)
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        lname = _name_of(name) if sep else None
        if lname is None:
            error = error or f"malformed header line {line[:60]!r}"
            continue
        headers.append((lname, name, value.strip(" \t")))
    return headers, error


def _response(start: str, headers: list[tuple[str, str, str]]) -> Response:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0":
        raise SipParseError(f"unsupported version in status line {start[:80]!r}")
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not "1" <= code[0] <= "6":
        raise SipParseError(f"bad status code in {start[:80]!r}")
    return Response(int(code), reason, headers)


def _request(start: str, headers: list[tuple[str, str, str]]) -> Request:
    parts = start.split(" ")
    method = parts[0]
    if not _TOKEN_RE.match(method):
        raise SipParseError(f"bad request line {start[:80]!r}")
    # Request-Line = Method SP Request-URI SP SIP-Version (RFC 3261 section 25.1): one SP
    # exactly, none at the end (RFC 4475 sections 3.1.2.8 to 3.1.2.10)
    if len(parts) != 3 or not parts[1]:
        inner = " ".join(p for p in parts[1:-1] if p) or "sip:invalid"
        _fail(Request(method, inner, headers), f"bad request line {start[:80]!r}")
    msg = Request(method, parts[1], headers)
    version = parts[2]
    if version.upper() != "SIP/2.0":
        if version[:4].upper() == "SIP/":
            err = UnsupportedVersion(f"unsupported SIP version {version[:20]!r}")
            if msg.get("via") is not None:
                err.partial = msg
            raise err
        _fail(msg, f"bad SIP version {version[:20]!r}")
    return msg


def _fail(msg: Request | Response, detail: str) -> NoReturn:
    """Raise a 400; a request that has a Via to answer to rides along as ``partial``."""
    err = SipParseError(detail)
    if isinstance(msg, Request) and msg.get("via") is not None:
        err.partial = msg
    raise err


def _frame_body(
    msg: Request | Response, body: bytes, length_text: str, dups: frozenset[str] | set[str]
) -> None:
    """Apply Content-Length to a datagram body (RFC 3261 section 18.3).

    Without Content-Length the body runs to the end of the datagram (the caller leaves it
    so); a longer datagram is cut to the length, a shorter one is an error.
    """
    if "content-length" in dups:
        values = {v for hl, _, v in msg._headers if hl == "content-length"}
        if len(values) > 1:  # RFC 4475 section 3.3.9: framing unknowable
            _fail(msg, "conflicting Content-Length headers")
    if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 9:
        _fail(msg, f"bad Content-Length {length_text[:20]!r}")
    length = int(length_text)
    if length > len(body):
        _fail(msg, f"Content-Length {length} larger than the {len(body)}-byte body")
    msg.body = body[:length] if length < len(body) else body


def _validate(
    msg: Request | Response, first: dict[str, str], dups: frozenset[str] | set[str]
) -> None:
    """Check and cache what every response and every transaction relies on."""
    try:
        via = first.get("via")
        from_text = first.get("from")
        to_text = first.get("to")
        call_id = first.get("call-id")
        cseq_text = first.get("cseq")
        if via is None or from_text is None or to_text is None or cseq_text is None or not call_id:
            missing = [n for n in _NEEDED if not first.get(n.lower())]
            raise SipParseError(f"missing {', '.join(missing)} header")
        if " " in call_id or "\t" in call_id:
            raise SipParseError(f"malformed Call-ID {call_id[:80]!r}")
        if dups:
            repeated = _SINGLE_VALUED & dups
            if repeated:
                names = ", ".join(sorted(canonical_name(n) for n in repeated))
                raise SipParseError(f"more than one {names} header")
        cseq = msg._c_cseq = CSeq.parse(cseq_text)
        msg._c_from = NameAddr.parse(from_text)
        msg._c_to = NameAddr.parse(to_text)
        if "," in via:
            items = split_list(via)
            via = items[0] if items else ""
        msg._c_top_via = Via.parse(via)
        if isinstance(msg, Request):
            mf = first.get("max-forwards")
            msg._c_max_forwards = None if mf is None else _max_forwards(mf)
            if cseq.method != msg.method:
                raise SipParseError(
                    f"CSeq method {cseq.method!r} does not match request method {msg.method!r}"
                )
            uri = msg._uri = parse_uri(msg.uri_text)
            # RFC 3261 section 19.1.1: no escaped headers in a Request-URI (RFC 4475 3.1.2.11)
            if isinstance(uri, SipUri) and uri.headers:
                raise SipParseError("headers are not allowed in a Request-URI")
    except SipParseError as exc:
        _fail(msg, exc.detail)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 section 18.3).

    ``feed(data)`` returns complete messages (bytes); keep-alive CRLFs between messages
    are skipped (RFC 5626 section 3.5.1). A message head without Content-Length, or one
    larger than ``max_size``, raises :class:`SipParseError`: the stream cannot be
    resynchronised and the connection must be closed.
    """

    __slots__ = ("_buffer", "max_size")

    def __init__(self, max_size: int = 65535):
        self._buffer = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        while buf:
            # drop keep-alive CRLFs before a start line
            if buf[0] == 13 or buf[0] == 10:
                skip = 0
                n = len(buf)
                while skip < n and buf[skip] in (13, 10):
                    skip += 1
                del buf[:skip]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise MessageTooLarge("message head exceeds the size limit")
                break
            length = _content_length_of_head(bytes(buf[:end]))
            total = end + 4 + length
            if total > self.max_size:
                raise MessageTooLarge(f"message of {total} bytes exceeds {self.max_size}")
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


def _content_length_of_head(head: bytes) -> int:
    """Content-Length of a message head; mandatory on streams (RFC 3261 section 20.14)."""
    found: int | None = None
    for line in head.split(b"\r\n")[1:]:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].rstrip(b" \t").lower()
        if name == b"content-length" or name == b"l":
            value = line[colon + 1 :].strip(b" \t")
            if not value.isdigit() or len(value) > 9:
                raise SipParseError("bad Content-Length on stream transport")
            if found is not None and found != int(value):
                raise SipParseError("conflicting Content-Length on stream transport")
            found = int(value)
    if found is None:
        raise SipParseError("missing Content-Length on stream transport")
    return found


# -- building messages ---------------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """Build a response to ``request`` per RFC 3261 section 8.2.6.2.

    Via, From, Call-ID and CSeq are copied; To is copied and gets ``to_tag`` when it has
    none (never for 100 Trying). Record-Route is copied for 1xx/2xx (section 12.1.1).
    Works on the ``partial`` request of a parse error too (it copies what is there).
    """
    headers: list[tuple[str, str, str]] = []
    for h in request._headers:
        hl = h[0]
        if hl == "via" or hl == "from" or hl == "call-id" or hl == "cseq":
            headers.append(h)
        elif hl == "to":
            if to_tag and status > 100 and not _has_tag(request, h[2]):
                headers.append((hl, h[1], f"{h[2]};tag={to_tag}"))
            else:
                headers.append(h)
        elif hl == "record-route" and 100 < status < 300:
            headers.append(h)
    resp = Response(status, reason, headers)
    for name, value in extra:
        resp.add(name, value)
    if body:
        resp.set_body(body, content_type)
    return resp


def _has_tag(request: Request, to_value: str) -> bool:
    try:
        return request.to_tag is not None
    except SipParseError:
        return ";tag=" in to_value.replace(" ", "")


def iter_header_lines(msg: Message) -> Iterator[str]:
    """Each header as ``Name: value`` (for logs and tests)."""
    for _, hn, v in msg.headers:
        yield f"{hn}: {v}"
