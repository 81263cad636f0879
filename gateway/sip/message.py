"""SIP message model, parser and serialiser (RFC 3261 sections 7, 18.3, 20, 25).

Theory of operation
-------------------
``parse_message(data)`` turns one datagram (or one framed stream message) into a
:class:`Request` or :class:`Response`. It does the minimum eagerly: split the start line,
unfold continuation lines, expand compact header names, and store each header as a
``(lower_name, name, value)`` triple in arrival order. The body stays bytes.

Everything else is lazy: ``message.vias``, ``message.from_``, ``message.cseq`` and friends
parse their header on first access and cache the result; setting a header drops its cache.
The hot path (Via branch, From/To tags, Call-ID, CSeq, Max-Forwards) therefore costs one
split of the header block plus a few small parses.

Serialisation (``to_bytes``) writes the start line, the headers in order with the names as
they came (new headers get the canonical spelling), and always a correct
``Content-Length`` computed from the body, so that framing on stream transports is never
wrong whatever the received value said.

Errors are :class:`SipParseError` (400) or :class:`UnsupportedVersion` (505). When the
headers needed to answer were readable, the error carries ``partial`` (the request as far as
it was parsed), so the caller can send the 400 instead of dropping the message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from gateway.sip.errors import MessageTooLarge, SipParseError, UnsupportedVersion
from gateway.sip.headers import (
    COMPACT_FORMS,
    LIST_HEADERS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    split_list,
)
from gateway.sip.uri import Uri, parse_uri

__all__ = [
    "Message",
    "Request",
    "Response",
    "StreamFramer",
    "make_response",
    "parse_message",
    "REASON_PHRASES",
]

REASON_PHRASES: dict[int, str] = {
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

_HEADER_NAME = re.compile(r"[!%'*+\-.0-9A-Z_`a-z~]+\Z")
_METHOD = re.compile(r"[!%'*+\-.0-9A-Z_`a-z~]+\Z")


class Message:
    """Common part of requests and responses: ordered headers and a bytes body."""

    __slots__ = ("_headers", "body", "_cache", "_first")

    def __init__(self, headers: list[tuple[str, str, str]] | None = None, body: bytes = b""):
        self._headers: list[tuple[str, str, str]] = headers if headers is not None else []
        self.body: bytes = body
        self._cache: dict[str, Any] = {}
        self._first: dict[str, str] | None = None

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
        self._first = None
        self._cache.clear()

    def headers_changed(self) -> None:
        """Forget cached header lookups after an in-place change of :attr:`headers`."""
        self._first = None
        self._cache.clear()

    def _index(self) -> dict[str, str]:
        first = self._first
        if first is None:
            first = self._first = {hl: v for hl, _, v in reversed(self._headers)}
        return first

    # -- generic header access -------------------------------------------------------------

    def _invalidate(self, lname: str) -> None:
        self._first = None
        cache = self._cache
        if cache:
            cache.pop(lname, None)
            if lname == "via":
                cache.pop("top-via", None)

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
            for hl, _, v in self.headers:
                if hl == lname:
                    out.extend(split_list(v))
        else:
            for hl, _, v in self.headers:
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
        v = self.get("call-id")
        if v is None:
            raise SipParseError("missing Call-ID")
        return v

    @property
    def cseq(self) -> CSeq:
        c = self._cache.get("cseq")
        if c is None:
            v = self.get("cseq")
            if v is None:
                raise SipParseError("missing CSeq")
            c = self._cache["cseq"] = CSeq.parse(v)
        return c

    @property
    def vias(self) -> list[Via]:
        c = self._cache.get("via")
        if c is None:
            c = self._cache["via"] = [Via.parse(v) for v in self.get_all("via")]
        return c

    @property
    def top_via(self) -> Via:
        c = self._cache.get("via")
        if c is not None:
            if not c:
                raise SipParseError("missing Via")
            return c[0]  # type: ignore[no-any-return]
        top = self._cache.get("top-via")
        if top is None:
            first = self.get("via")
            if first is None:
                raise SipParseError("missing Via")
            items = split_list(first) if "," in first else [first]
            if not items:
                raise SipParseError("empty Via")
            top = self._cache["top-via"] = Via.parse(items[0])
        return top

    def set_vias(self, vias: list[Via]) -> None:
        """Replace the Via headers (one line per Via)."""
        self.set_list("via", vias)
        self._cache["via"] = vias

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
        self._cache["top-via"] = via

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
        self._cache["top-via"] = via

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
        c = self._cache.get(lname)
        if c is None:
            v = self.get(lname)
            if v is None:
                raise SipParseError(f"missing {canonical_name(lname)}")
            c = self._cache[lname] = NameAddr.parse(v)
        return c

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def contacts(self) -> list[NameAddr]:
        c = self._cache.get("contact")
        if c is None:
            c = self._cache["contact"] = [
                NameAddr.parse(v) for v in self.get_all("contact") if v.strip() != "*"
            ]
        return c

    @property
    def record_routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.get_all("record-route")]

    @property
    def routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.get_all("route")]

    @property
    def max_forwards(self) -> int | None:
        v = self.get("max-forwards")
        if v is None:
            return None
        v = v.strip()
        if not v.isdigit() or len(v) > 3:
            raise SipParseError(f"bad Max-Forwards {v!r}")
        return int(v)

    @property
    def content_type(self) -> str | None:
        return self.get("content-type")

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
        lines.extend(f"{hn}: {v}" for hl, hn, v in self.headers if hl != "content-length")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def copy_headers(self) -> list[tuple[str, str, str]]:
        return list(self.headers)


class Request(Message):
    """A SIP request."""

    __slots__ = ("method", "uri_text", "version", "_uri")

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
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

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


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason", "version")

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

_REQUIRED_REQUEST_HEADERS = ("via", "from", "to", "call-id", "cseq")
_SINGLE_HEADERS = frozenset(("call-id", "cseq", "from", "to"))

#: lower-case header names that need no validation, mapped to their full lower-case name
_KNOWN_NAMES: dict[str, str] = {
    **{name: name for name in (
        "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
        "content-type", "route", "record-route", "allow", "supported", "require", "user-agent",
        "server", "expires", "subject", "authorization", "www-authenticate",
        "proxy-authorization", "proxy-authenticate", "p-asserted-identity", "accept",
        "content-disposition", "session-expires", "min-se", "privacy", "priority",
        "resource-priority", "geolocation", "geolocation-routing", "event", "refer-to",
        "referred-by", "warning", "reason", "date", "organization", "retry-after", "rseq",
        "rack", "allow-events", "unsupported", "proxy-require", "mime-version",
    )},
    **COMPACT_FORMS,
}


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], data[end + 2 :]
    # no blank line: a message with headers only that was cut at the end
    return data.rstrip(b"\r\n"), b""


def _parse_headers(lines: list[str]) -> list[tuple[str, str, str]]:
    headers: list[tuple[str, str, str]] = []
    compact = COMPACT_FORMS
    known = _KNOWN_NAMES
    for line in lines:
        if not line:
            continue
        c0 = line[0]
        if c0 == " " or c0 == "\t":
            # folded continuation (RFC 3261 section 7.3.1): joins the previous value
            if not headers:
                raise SipParseError("continuation line before any header")
            hl, hn, v = headers[-1]
            headers[-1] = (hl, hn, f"{v} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise SipParseError(f"malformed header line {line[:60]!r}")
        lname = name.lower()
        if lname not in known:
            name = name.rstrip(" \t")
            lname = name.lower()
            if not _HEADER_NAME.match(name):
                raise SipParseError(f"bad header name {name[:40]!r}")
            lname = compact.get(lname, lname)
        else:
            lname = known[lname]
        headers.append((lname, name, value.strip(" \t")))
    return headers


def parse_message(data: bytes, *, max_size: int = 65535) -> Request | Response:
    """Parse one SIP message from a datagram or a framed stream message.

    Raises :class:`SipParseError` (with ``status`` 400, 505 or 513); ``error.partial`` holds
    the request as far as it could be read when its headers allow an answer.
    """
    if len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    # RFC 3261 section 7.5: ignore CRLFs before the start line
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    head, body = _split_head(data)
    text = head.decode("utf-8", "surrogateescape")
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0]
    headers = _parse_headers(lines[1:])

    msg: Request | Response
    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit():
            raise SipParseError(f"bad status line {start[:80]!r}")
        if parts[0] != "SIP/2.0":
            raise SipParseError(f"unsupported version in status line {start[:80]!r}")
        status = int(parts[1])
        if status < 100 or status > 699:
            raise SipParseError(f"status code out of range: {status}")
        msg = Response(status, parts[2] if len(parts) > 2 else "", headers)
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            raise SipParseError(f"bad request line {start[:80]!r}")
        method, uri_text, version = parts
        if not _METHOD.match(method):
            raise SipParseError(f"bad method {method[:40]!r}")
        msg = Request(method, uri_text, headers)
        if version != "SIP/2.0":
            err: SipParseError = UnsupportedVersion(f"unsupported SIP version {version[:20]!r}")
            err.partial = msg  # type: ignore[attr-defined]
            raise err
        if ":" not in uri_text:
            _fail(msg, f"bad Request-URI {uri_text[:80]!r}")

    _frame_body(msg, body)
    _validate(msg)
    return msg


def _fail(msg: Request | Response, detail: str) -> None:
    err = SipParseError(detail)
    err.partial = msg if isinstance(msg, Request) else None  # type: ignore[attr-defined]
    raise err


def _frame_body(msg: Request | Response, body: bytes) -> None:
    """Apply Content-Length to a datagram body (RFC 3261 section 18.3)."""
    cl_values = [v for hl, _, v in msg.headers if hl == "content-length"]
    if not cl_values:
        msg.body = body
        return
    if len(cl_values) > 1 and len(set(v.strip() for v in cl_values)) > 1:
        _fail(msg, "conflicting Content-Length headers")
    cl_text = cl_values[0].strip()
    if not cl_text.isdigit() or len(cl_text) > 9:
        _fail(msg, f"bad Content-Length {cl_text[:20]!r}")
    length = int(cl_text)
    if length > len(body):
        _fail(msg, f"Content-Length {length} larger than the {len(body)}-byte body")
    msg.body = body[:length]


def _validate(msg: Request | Response) -> None:
    """Check the headers every message needs and that they parse (hot-path ones only)."""
    present = msg._index()
    for needed in _REQUIRED_REQUEST_HEADERS:
        if needed not in present:
            _fail(msg, f"missing {canonical_name(needed)} header")
    if len(msg._headers) > 12:
        counts = 0
        for hl, _, _ in msg._headers:
            if hl in _SINGLE_HEADERS:
                counts += 1
        if counts > 4:
            _fail(msg, "duplicated Call-ID, CSeq, From or To header")
    try:
        cseq = msg.cseq
        msg.top_via  # noqa: B018 - parse and cache the Via list
        msg.from_  # noqa: B018
        msg.to  # noqa: B018
        if isinstance(msg, Request):
            msg.max_forwards  # noqa: B018
            if cseq.method != msg.method:
                raise SipParseError(
                    f"CSeq method {cseq.method!r} does not match request method {msg.method!r}"
                )
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
        while True:
            # drop keep-alive CRLFs before a start line
            skip = 0
            while skip < len(buf) and buf[skip] in (13, 10):
                skip += 1
            if skip:
                del buf[:skip]
            if not buf:
                break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise MessageTooLarge("message head exceeds the size limit")
                break
            head = bytes(buf[:end])
            length = _content_length_of_head(head)
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
    for line in head.split(b"\r\n")[1:]:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip().lower()
        if name in (b"content-length", b"l"):
            value = line[colon + 1 :].strip()
            if not value.isdigit():
                raise SipParseError("bad Content-Length on stream transport")
            return int(value)
    raise SipParseError("missing Content-Length on stream transport")


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
    """
    headers: list[tuple[str, str, str]] = []
    for h in request.headers:
        hl = h[0]
        if hl in ("via", "from", "call-id", "cseq"):
            headers.append(h)
        elif hl == "to":
            if to_tag and status > 100 and request.to_tag is None:
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


def iter_header_lines(msg: Message) -> Iterator[str]:
    """Each header as ``Name: value`` (for logs and tests)."""
    for _, hn, v in msg.headers:
        yield f"{hn}: {v}"
