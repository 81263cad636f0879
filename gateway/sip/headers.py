"""Typed views of the headers a SIP core routes on: Via, From/To/Contact/Route, CSeq.

Header values are stored as text in :class:`gateway.sip.message.Message`; these classes parse
a value when it is asked for and serialise back. Parsing follows RFC 3261 section 25.1
(name-addr / addr-spec, generic-param, quoted strings) and is tolerant of extra whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.sip.errors import SipParseError
from gateway.sip.uri import Uri, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "split_list",
]

#: RFC 3261 section 7.3.3 and later RFCs: compact form -> full lower-case name.
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

_CANONICAL: dict[str, str] = {
    n.lower(): n
    for n in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length",
        "Content-Type", "Content-Encoding", "Content-Disposition", "Route", "Record-Route",
        "Allow", "Supported", "Require", "Proxy-Require", "Unsupported", "User-Agent",
        "Server", "Expires", "WWW-Authenticate", "Authorization", "Proxy-Authenticate",
        "Proxy-Authorization", "Warning", "Retry-After", "Subject", "Event", "Allow-Events",
        "Refer-To", "Referred-By", "Session-Expires", "Min-SE", "P-Asserted-Identity",
        "P-Preferred-Identity", "Privacy", "Priority", "Resource-Priority", "Geolocation",
        "Geolocation-Routing", "Accept", "Accept-Encoding", "Accept-Language", "Date",
        "Timestamp", "Organization", "Reason", "RSeq", "RAck", "Path", "Min-Expires",
        "Identity", "Accept-Contact", "Reject-Contact", "Request-Disposition", "MIME-Version",
        "Alert-Info", "Call-Info", "Error-Info", "In-Reply-To", "Reply-To", "Service-Route",
    )
}

#: Headers whose values are comma-separated lists (RFC 3261 section 7.3.1).
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "via", "contact", "route", "record-route", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "content-encoding", "alert-info", "call-info", "error-info", "in-reply-to", "warning",
        "p-asserted-identity", "p-preferred-identity", "path", "service-route", "allow-events",
        "reason", "geolocation", "resource-priority", "accept-contact", "reject-contact",
        "request-disposition", "privacy",
    }
)


_VIA_FAST = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?((?:;[^;\s\"]+)*)\Z"
)


def canonical_name(lower_name: str) -> str:
    """The conventional spelling of a (full, lower-case) header name."""
    known = _CANONICAL.get(lower_name)
    if known is not None:
        return known
    return "-".join(p[:1].upper() + p[1:] for p in lower_name.split("-"))


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and ``<...>``."""
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    items: list[str] = []
    depth_angle = False
    in_quote = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            depth_angle = True
        elif c == ">":
            depth_angle = False
        elif c == "," and not depth_angle:
            item = value[start:i].strip()
            if item:
                items.append(item)
            start = i + 1
        i += 1
    item = value[start:].strip()
    if item:
        items.append(item)
    return items


def _parse_params(text: str, where: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` (quoted values allowed) into an ordered dict."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if '"' not in text and text[0] == ";" and " " not in text and "\t" not in text:
        # fast path: no quoting, no whitespace
        for part in text[1:].split(";"):
            name, sep, value = part.partition("=")
            if not name:
                raise SipParseError(f"empty parameter name in {where}")
            params[name.lower()] = value if sep else None
        return params
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if c != ";":
            raise SipParseError(f"unexpected {c!r} in {where} parameters")
        i += 1
        j = i
        while j < n and text[j] not in ";=":
            j += 1
        name = text[i:j].strip().lower()
        if not name:
            raise SipParseError(f"empty parameter name in {where}")
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                k = j + 1
                while k < n and text[k] != '"':
                    k += 2 if text[k] == "\\" else 1
                if k >= n:
                    raise SipParseError(f"unterminated quoted parameter in {where}")
                params[name] = text[j : k + 1]
                i = k + 1
            else:
                k = j
                while k < n and text[k] != ";":
                    k += 1
                params[name] = text[j:k].strip()
                i = k
        else:
            params[name] = None
            i = j
    return params


def _join_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass(slots=True)
class Via:
    """One Via header value: ``SIP/2.0/UDP host:port;branch=...``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse one Via value (not a comma list)."""
        m = _VIA_FAST.match(value)
        if m is not None:
            transport, host, port_text, ptext = m.groups()
            port = int(port_text) if port_text else None
            if port is not None and port > 65535:
                raise SipParseError(f"bad Via port in {value!r}")
            return cls(transport.upper(), host, port, _parse_params(ptext, "Via"))
        return cls._parse_slow(value)

    @classmethod
    def _parse_slow(cls, value: str) -> Via:
        proto, sep, rest = value.partition("/")
        if not sep or proto.strip().upper() != "SIP":
            raise SipParseError(f"bad Via protocol in {value!r}")
        version, sep, rest = rest.partition("/")
        if not sep or version.strip() != "2.0":
            raise SipParseError(f"bad Via version in {value!r}")
        rest = rest.lstrip()
        # transport token, then LWS, then sent-by
        k = 0
        n = len(rest)
        while k < n and rest[k] not in " \t":
            k += 1
        transport = rest[:k].strip().upper()
        if not transport:
            raise SipParseError(f"missing Via transport in {value!r}")
        sent_by_and_params = rest[k:].strip()
        semi = sent_by_and_params.find(";")
        if semi >= 0:
            sent_by = sent_by_and_params[:semi].strip()
            ptext = sent_by_and_params[semi:]
        else:
            sent_by = sent_by_and_params
            ptext = ""
        if not sent_by:
            raise SipParseError(f"missing Via sent-by in {value!r}")
        # collapse whitespace around ':' (e.g. "host : 5060")
        sent_by = sent_by.replace(" ", "").replace("\t", "")
        if sent_by.startswith("["):
            end = sent_by.find("]")
            if end < 0:
                raise SipParseError(f"bad IPv6 sent-by in {value!r}")
            host = sent_by[: end + 1]
            port_text = sent_by[end + 2 :] if sent_by[end + 1 : end + 2] == ":" else ""
            if sent_by[end + 1 :] and not port_text:
                raise SipParseError(f"bad Via sent-by in {value!r}")
        else:
            host, _, port_text = sent_by.partition(":")
        port: int | None = None
        if port_text:
            if not port_text.isdigit() or int(port_text) > 65535:
                raise SipParseError(f"bad Via port in {value!r}")
            port = int(port_text)
        if not host:
            raise SipParseError(f"missing Via host in {value!r}")
        return cls(transport, host, port, _parse_params(ptext, "Via"))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_join_params(self.params)}"

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter (transaction id when it starts with z9hG4bK)."""
        return self.params.get("branch")

    @property
    def host_unbracketed(self) -> str:
        h = self.host
        return h[1:-1] if h.startswith("[") else h


@dataclass(slots=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters.

    ``uri_text`` is kept exactly as received; ``uri`` parses it on first use.
    """

    uri_text: str
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    bracketed: bool = True
    _uri: Uri | None = None

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        """Parse a name-addr or addr-spec with header parameters."""
        v = value.strip()
        lt = v.find("<")
        if lt >= 0:
            display: str | None = v[:lt].strip() or None
            if display and display.startswith('"') and not display.endswith('"'):
                raise SipParseError(f"unterminated display name in {value!r}")
            gt = v.find(">", lt)
            if gt < 0:
                raise SipParseError(f"missing '>' in {value!r}")
            uri_text = v[lt + 1 : gt].strip()
            ptext = v[gt + 1 :]
            if not uri_text:
                raise SipParseError(f"empty URI in {value!r}")
            return cls(uri_text, display, _parse_params(ptext, "name-addr"), True)
        if v.startswith('"'):
            raise SipParseError(f"display name without <URI> in {value!r}")
        # addr-spec form: parameters after ';' are header params (RFC 3261 section 20.10)
        semi = v.find(";")
        if semi >= 0:
            uri_text, ptext = v[:semi].strip(), v[semi:]
        else:
            uri_text, ptext = v, ""
        if not uri_text or " " in uri_text or ":" not in uri_text:
            raise SipParseError(f"bad addr-spec {value!r}")
        return cls(uri_text, None, _parse_params(ptext, "addr-spec"), False)

    @property
    def uri(self) -> Uri:
        """The parsed URI (cached)."""
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter of From/To."""
        return self.params.get("tag")

    def __str__(self) -> str:
        disp = f"{self.display} " if self.display else ""
        return f"{disp}<{self.uri_text}>{_join_params(self.params)}"

    def with_tag(self, tag: str) -> NameAddr:
        """A copy with the ``tag`` parameter set."""
        params = dict(self.params)
        params["tag"] = tag
        return NameAddr(self.uri_text, self.display, params, True, self._uri)

    def with_uri(self, uri: Uri | str) -> NameAddr:
        """A copy pointing at another URI (display name and params kept)."""
        return NameAddr(str(uri), self.display, dict(self.params), True)


@dataclass(frozen=True, slots=True)
class CSeq:
    """The CSeq header: sequence number and method."""

    number: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            raise SipParseError(f"bad CSeq {value!r}")
        number = int(parts[0])
        if number >= 2**31:
            raise SipParseError(f"CSeq number out of range in {value!r}")
        return cls(number, parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"
