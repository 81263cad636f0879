"""SIP message parser and response builder (RFC 3261 sections 7, 8.2.6, 18.3, 25).

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

The message model (``Message``, ``Request``, ``Response``, their typed values and
``to_bytes``) lives in :mod:`gateway.sip.model`; it is re-exported here, so that code
importing the parser and the model needs one import.

Errors are :class:`SipParseError` (400), :class:`UnsupportedVersion` (505) or
:class:`MessageTooLarge` (513). For a request with a Via the error carries ``partial``: the
request as far as it was read (the headers that parsed), enough for :func:`make_response`
to build the answer. Responses, and requests without a Via, cannot be answered: dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final, NoReturn

from gateway.sip.errors import MessageTooLarge, SipParseError, UnsupportedVersion
from gateway.sip.headers import CSeq, NameAddr, Via
from gateway.sip.model import (
    _KNOWN_METHODS,
    _NAMES,
    _NO_DUPS,
    _TOKEN_RE,
    REASON_PHRASES,
    Message,
    Request,
    Response,
    _name_of,
)
from gateway.sip.names import canonical_name, split_list
from gateway.sip.uri import SipUri, parse_uri

__all__ = [
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "StreamFramer",
    "make_response",
    "parse_message",
]

#: headers every request and response needs (RFC 3261 section 8.1.1)
_NEEDED: Final = ("Via", "From", "To", "Call-ID", "CSeq")
#: header names that may appear only once (RFC 3261 section 7.3.1: not comma lists)
_SINGLE_VALUED: Final = frozenset(("call-id", "cseq", "from", "to", "max-forwards"))

# -- parsing -------------------------------------------------------------------------------


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
        known = names.get(name) or _name_of(name)
        if known is None:
            return _parse_careful(data)
        lname, name = known  # the shared spelling: one string for every message
        if colon + 1 < len(line) and line[colon + 1] == " ":  # the usual "Name: value"
            value = line[colon + 2 :].strip(" \t")
        else:
            value = line[colon + 1 :].strip(" \t")
        headers.append((lname, name, value))
        first.setdefault(lname, value)
    if size != len(text):
        return _parse_careful(data)  # a bare CR or LF somewhere
    dups = _repeated(headers) if len(first) != len(headers) else None

    msg = _fast_start(lines[0], headers)
    if msg is None:
        return _parse_careful(data)  # to tell 400 from 505 and keep a partial
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


def _fast_start(start: str, headers: list[tuple[str, str, str]]) -> Request | Response | None:
    """The message of an ordinary start line; None for one the careful path must read."""
    if start.startswith("SIP/"):
        return _response(start, headers)
    method, _, rest = start.partition(" ")
    uri_text, _, version = rest.partition(" ")
    if (
        version != "SIP/2.0"
        or not uri_text
        or (method not in _KNOWN_METHODS and not _TOKEN_RE.match(method))
    ):
        return None
    return Request(method, uri_text, headers)


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
        known = _name_of(name) if sep else None
        if known is None:
            error = error or f"malformed header line {line[:60]!r}"
            continue
        headers.append((known[0], known[1], value.strip(" \t")))
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
            # Max-Forwards is read (and refused when bad) where it is used: an emergency
            # INVITE with a garbled one is still placed (SPEC E-3, gateway.b2bua.answers)
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
