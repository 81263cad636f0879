"""Errors of the SIP core. Each carries the response status it calls for (h11 style)."""

from __future__ import annotations

__all__ = ["MessageTooLarge", "SipError", "SipParseError", "UnsupportedVersion", "warning_value"]


def warning_value(text: str, code: int = 399, agent: str = "gateway", limit: int = 200) -> str:
    """A Warning header value (RFC 3261 section 20.43) saying ``text`` (at most ``limit``
    characters), safely quoted."""
    quoted = text.replace("\\", "\\\\").replace('"', "'")[:limit]
    return f'{code} {agent} "{quoted}"'


class SipError(Exception):
    """A SIP-level error that already knows the response it deserves."""

    status: int = 500
    reason: str = "Server Internal Error"

    def __init__(self, detail: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason


class SipParseError(SipError):
    """The bytes are not a well-formed SIP message (RFC 3261 section 21.4.1: 400).

    ``partial`` is the request as far as it could be read when its headers allow an answer
    (``make_response(exc.partial, exc.status, exc.reason)``), else None. It is a
    :class:`gateway.sip.message.Request`; typed ``object`` here because the message module
    raises these errors and this module must not import it back (no cycle inside ``sip``):
    callers check ``isinstance(exc.partial, Request)``.
    """

    status = 400
    reason = "Bad Request"
    partial: object | None = None


class UnsupportedVersion(SipParseError):
    """The request names a SIP version other than 2.0 (section 21.5.7: 505)."""

    status = 505
    reason = "Version Not Supported"


class MessageTooLarge(SipParseError):
    """The message exceeds the configured size (section 21.4.13: 513)."""

    status = 513
    reason = "Message Too Large"
