"""Header names: compact forms, the conventional spelling, and comma-list headers.

RFC 3261 section 7.3: a header name is case-insensitive and may have a compact form; the
core stores each header under its full lower-case name and writes new headers with the
conventional spelling. Headers that are comma-separated lists (section 7.3.1) can be split
into their elements with :func:`split_list`, which respects quoted strings and ``<...>``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "canonical_name",
    "split_list",
]

#: RFC 3261 section 7.3.3 and later RFCs: compact form -> full lower-case name.
COMPACT_FORMS: Final[dict[str, str]] = {
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

# hand-packed tables (one name per line would be 90 lines of noise): not formatted
# fmt: off
_CANONICAL: Final[dict[str, str]] = {
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
        "Content-Language", "Authentication-Info", "Subscription-State", "Replaces",
        "Join", "Target-Dialog", "History-Info", "Diversion", "P-Charging-Vector",
        "P-Access-Network-Info", "P-Called-Party-ID", "P-Associated-URI", "Security-Client",
        "Security-Server", "Security-Verify", "SIP-ETag", "SIP-If-Match",
        "Content-Transfer-Encoding",
    )
}

#: Headers whose values are comma-separated lists (RFC 3261 section 7.3.1).
LIST_HEADERS: Final[frozenset[str]] = frozenset(
    {
        "via", "contact", "route", "record-route", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "content-encoding", "alert-info", "call-info", "error-info", "in-reply-to", "warning",
        "p-asserted-identity", "p-preferred-identity", "path", "service-route", "allow-events",
        "reason", "geolocation", "resource-priority", "accept-contact", "reject-contact",
        "request-disposition", "privacy",
    }
)
# fmt: on


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
    if '"' not in value and "<" not in value:
        return [v for v in (p.strip() for p in value.split(",")) if v]
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
