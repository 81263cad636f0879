"""Typed views of the headers a SIP core routes on: Via, From/To/Contact/Route, CSeq.

Header values are stored as text in :class:`gateway.sip.message.Message`; these classes parse
a value when it is asked for and serialise back. Parsing follows RFC 3261 section 25.1
(name-addr / addr-spec, generic-param, quoted strings) and is tolerant of extra whitespace
(LWS around ``/``, ``;``, ``=`` and ``:`` as the grammar allows).

Each parser has a fast path, one precompiled regular expression for the shape nearly every
message has (``SIP/2.0/UDP host:port;branch=...``, ``"Name" <sip:...>;tag=...``), and a
careful path for everything else that checks the grammar piece by piece. Malformed values
raise :class:`SipParseError` (400), never another exception.

Header names (compact forms, the conventional spelling, comma-list headers and
:func:`split_list`) live in :mod:`gateway.sip.names` and are re-exported here.
"""

from __future__ import annotations

import re
from typing import Any, Final, final

from gateway.sip.errors import SipParseError
from gateway.sip.names import COMPACT_FORMS, LIST_HEADERS, canonical_name, split_list
from gateway.sip.uri import (
    SIP_URI_FAST,
    SIP_URI_FAST_NO_PARAMS,
    Uri,
    parse_uri,
    sip_uri_from_fast_match,
)

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "split_list",
]

# fmt: off
# -- grammar pieces (RFC 3261 section 25.1) ---------------------------------------------------

_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]+"
#: gen-value = token / host / quoted-string; the unquoted forms as one character class
_GEN_VALUE: Final = r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+"
_QUOTED: Final = r'"(?:[^"\\]|\\.)*"'
_HOST: Final = r"[A-Za-z0-9][A-Za-z0-9\-_.]*|\[[0-9A-Fa-f:.]+\]"
#: parameters with no whitespace and no quoted value: a plain split on ';' and '=' is exact
_PLAIN_PARAMS: Final = rf"(?:;{_TOKEN}(?:={_GEN_VALUE})?)*"
# The fast patterns use possessive quantifiers (no backtracking into a run that cannot give
# anything back): the character classes are chosen so that a run never swallows the
# delimiter that follows it, and matching is then 2x faster on user-less URIs.
_TOKEN_P: Final = r"[A-Za-z0-9\-.!%*_+`'~]++"
_GEN_VALUE_P: Final = r"[A-Za-z0-9\-.!%*_+`'~:\[\]]++"
_QUOTED_P: Final = r'"(?:[^"\\]++|\\.)*+"'
_HOST_P: Final = r"[A-Za-z0-9][A-Za-z0-9\-_.]*+|\[[0-9A-Fa-f:.]++\]"
_PLAIN_PARAMS_P: Final = rf"(?:;{_TOKEN_P}(?:={_GEN_VALUE_P})?+)*+"

_TOKEN_RE: Final = re.compile(rf"{_TOKEN}\Z")
#: the usual Via: branch first (captured on its own), other plain parameters after it
_VIA_FAST: Final = re.compile(
    rf"SIP/2\.0/({_TOKEN_P}) ({_HOST_P})(?::([0-9]{{1,5}}+))?+"
    rf"(?:;branch=({_TOKEN_P}))?+({_PLAIN_PARAMS_P})\Z"
)
_VIA_CAREFUL: Final = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    rf"({_HOST})(?:[ \t]*:[ \t]*([0-9]{{1,5}}))?[ \t]*"
)
_DISPLAY: Final = rf"(?:({_QUOTED_P}|{_TOKEN_P}(?:[ \t]++{_TOKEN_P})*+)[ \t]*+)?+"
#: name-addr with a sip/sips URI of the usual shape and plain parameters, the tag first.
#: Groups: display, URI, the six URI groups of SIP_URI_FAST, tag, other parameters.
_NAME_ADDR_SIP: Final = re.compile(
    rf"{_DISPLAY}<({SIP_URI_FAST})>(?:;tag=({_TOKEN_P}))?+({_PLAIN_PARAMS_P})\Z", re.S
)
#: addr-spec with a sip/sips URI; every ';' after it starts a header parameter (20.10).
#: Groups: URI, the five URI groups of SIP_URI_FAST_NO_PARAMS, tag, other parameters.
_ADDR_SPEC_SIP: Final = re.compile(
    rf"({SIP_URI_FAST_NO_PARAMS})(?:;tag=({_TOKEN_P}))?+({_PLAIN_PARAMS_P})\Z"
)
#: any other scheme, plain parameters
_NAME_ADDR_FAST: Final = re.compile(
    rf"{_DISPLAY}<([A-Za-z][A-Za-z0-9+\-.]*+:[^<>\"\s]*+)>({_PLAIN_PARAMS_P})\Z", re.S
)
_ADDR_SPEC_FAST: Final = re.compile(
    rf"([A-Za-z][A-Za-z0-9+\-.]*+:[^;,?<>\"\s]++)({_PLAIN_PARAMS_P})\Z"
)
_via_fast_match: Final = _VIA_FAST.match
_name_addr_sip_match: Final = _NAME_ADDR_SIP.match
_addr_spec_sip_match: Final = _ADDR_SPEC_SIP.match
_KNOWN_METHODS: Final = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
     "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)
# fmt: on
_QUOTED_RE: Final = re.compile(_QUOTED, re.S)
#: an unquoted display name: tokens separated by LWS (RFC 3261 section 25.1). Non-ASCII
#: letters are tolerated too (phones send ``Jürgen <sip:...>``; nothing is ambiguous about
#: them), while a comma, '@', ':' or '"' still needs quotes (RFC 4475 section 3.1.2.15).
_DISPLAY_CHAR: Final = r"A-Za-z0-9\-.!%*_+`'~\u0080-\U0010ffff"
_DISPLAY_TOKENS: Final = re.compile(rf"[{_DISPLAY_CHAR}]+(?:[ \t]+[{_DISPLAY_CHAR}]+)*\Z")
_URI_IN_BRACKETS: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^<>\"\s]*\Z")
_ADDR_SPEC: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^;,?<>\"\s]+\Z")
#: one generic-param with the LWS the grammar allows around ';' and '='
_GENERIC_PARAM: Final = re.compile(
    rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_GEN_VALUE}|{_QUOTED}))?[ \t]*", re.S
)


def _plain_params(text: str) -> dict[str, str | None]:
    """Parameters already matched by ``_PLAIN_PARAMS``: split on ';' and '=' is exact."""
    params: dict[str, str | None] = {}
    for part in text[1:].split(";"):
        name, sep, value = part.partition("=")
        params[name.lower()] = value if sep else None
    return params


def _parse_params(text: str, where: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` (LWS and quoted values allowed) into an ordered dict.

    Names are lower-cased; values are kept as written (quoted ones with their quotes).
    """
    params: dict[str, str | None] = {}
    pos = 0
    n = len(text)
    match = _GENERIC_PARAM.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            if not text[pos:].strip(" \t"):
                break
            raise SipParseError(f"bad {where} parameter near {text[pos : pos + 40]!r}")
        name, value = m.groups()
        params[name.lower()] = value
        pos = m.end()
    return params


def _join_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# Via and NameAddr are mutable values, CSeq an immutable one, with the equality (and, for
# CSeq, the hashing) that dataclasses gave them. They are plain classes so that mypyc
# compiles them to native classes (see setup.py).


@final
class Via:
    """One Via header value: ``SIP/2.0/UDP host:port;branch=...``."""

    __slots__ = ("host", "params", "port", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = {} if params is None else params

    @staticmethod
    def parse(value: str) -> Via:
        """Parse one Via value (not a comma list)."""
        m = _via_fast_match(value)
        if m is not None:
            transport, host, port_text, branch, ptext = m.groups()
            port = None
            if port_text is not None:
                port = int(port_text)
                if port > 65535:
                    raise SipParseError(f"bad Via port in {value!r}")
            params: dict[str, str | None]
            if ptext:
                params = _plain_params(ptext)
                if branch is not None:
                    params = {"branch": branch, **params}
            elif branch is not None:
                params = {"branch": branch}
            else:
                params = {}
            return Via(transport.upper(), host, port, params)
        return Via._parse_careful(value)

    @staticmethod
    def _parse_careful(value: str) -> Via:
        # sent-protocol LWS sent-by *( SEMI via-params ), SLASH/COLON with SWS (25.1)
        m = _VIA_CAREFUL.match(value)
        if m is None:
            raise SipParseError(f"bad Via {value[:80]!r}")
        proto, version, transport, host, port_text = m.groups()
        if proto.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"bad Via protocol in {value[:80]!r}")
        port: int | None = None
        if port_text is not None:
            port = int(port_text)
            if port > 65535:
                raise SipParseError(f"bad Via port in {value[:80]!r}")
        params = _parse_params(value[m.end() :], "Via")
        return Via(transport.upper(), host, port, params)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (
            self.transport == other.transport
            and self.host == other.host
            and self.port == other.port
            and self.params == other.params
        )

    def __hash__(self) -> int:
        raise TypeError("unhashable type: 'Via'")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Via, (self.transport, self.host, self.port, self.params))

    def __repr__(self) -> str:
        return (
            f"Via(transport={self.transport!r}, host={self.host!r}, port={self.port!r},"
            f" params={self.params!r})"
        )

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


@final
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters.

    ``uri_text`` is kept exactly as received; ``uri`` parses it on first use. ``display``
    is the display name as written (a quoted string keeps its quotes and escapes).

    A value parsed by the fast path keeps the URI's parts as matched (``_u_*``: plain
    strings, no ``re.Match`` kept alive), so that ``uri`` needs no second parse.
    """

    __slots__ = (
        "_u_host",
        "_u_params",
        "_u_password",
        "_u_port",
        "_u_raw",
        "_u_scheme",
        "_u_user",
        "_uri",
        "bracketed",
        "display",
        "params",
        "uri_text",
    )

    def __init__(
        self,
        uri_text: str,
        display: str | None = None,
        params: dict[str, str | None] | None = None,
        bracketed: bool = True,
        _uri: Uri | None = None,
        # the parts of a sip/sips URI matched by the parser (SIP_URI_FAST groups)
        _u_scheme: str = "",
        _u_user: str | None = None,
        _u_password: str | None = None,
        _u_host: str | None = None,
        _u_port: str | None = None,
        _u_params: str | None = None,
    ) -> None:
        self.uri_text = uri_text
        self.display = display
        self.params: dict[str, str | None] = {} if params is None else params
        self.bracketed = bracketed
        self._uri = _uri
        self._u_raw = uri_text  # the text the parts belong to
        self._u_scheme = _u_scheme
        self._u_user = _u_user
        self._u_password = _u_password
        self._u_host = _u_host  # None: no parts kept
        self._u_port = _u_port
        self._u_params = _u_params

    @staticmethod
    def parse(value: str) -> NameAddr:
        """Parse a name-addr or addr-spec with header parameters (RFC 3261 section 20.10).

        In the addr-spec form (no ``<>``) everything after the first ``;`` is a header
        parameter, and the URI may not contain ``,``, ``?`` or ``;``.
        """
        display: str | None
        uri_params: str | None
        if "<" in value:
            m = _name_addr_sip_match(value)
            if m is None:
                return NameAddr._parse_other(value)
            (
                display,
                uri_text,
                scheme,
                user,
                password,
                host,
                port_text,
                uri_params,
                tag,
                ptext,
            ) = m.groups()
            bracketed = True
        else:
            m = _addr_spec_sip_match(value)
            if m is None:
                return NameAddr._parse_other(value)
            uri_text, scheme, user, password, host, port_text, tag, ptext = m.groups()
            bracketed = False
            display = None
            uri_params = None
        params: dict[str, str | None]
        if ptext:
            params = _plain_params(ptext)
            if tag is not None:
                params = {"tag": tag, **params}
        elif tag is not None:
            params = {"tag": tag}
        else:
            params = {}
        return NameAddr(
            uri_text,
            display,
            params,
            bracketed,
            None,
            scheme,
            user,
            password,
            host,
            port_text,
            uri_params,
        )

    @staticmethod
    def _parse_other(value: str) -> NameAddr:
        m = _NAME_ADDR_FAST.match(value)
        if m is not None:
            display, uri_text, ptext = m.groups()
            return NameAddr(uri_text, display, _plain_params(ptext) if ptext else {}, True)
        m = _ADDR_SPEC_FAST.match(value)
        if m is not None:
            uri_text, ptext = m.groups()
            return NameAddr(uri_text, None, _plain_params(ptext) if ptext else {}, False)
        return NameAddr._parse_careful(value)

    @staticmethod
    def _parse_careful(value: str) -> NameAddr:
        v = value.strip(" \t")
        display: str | None = None
        if v.startswith('"'):
            q = _QUOTED_RE.match(v)
            if q is None:
                raise SipParseError(f"unterminated display name in {value[:80]!r}")
            display = q.group()
            rest = v[q.end() :].lstrip(" \t")
            if not rest.startswith("<"):
                raise SipParseError(f"display name without <URI> in {value[:80]!r}")
        elif "<" in v:
            lt = v.index("<")
            display = v[:lt].rstrip(" \t") or None
            if display is not None and not _DISPLAY_TOKENS.match(display):
                raise SipParseError(f"display name must be tokens or quoted in {value[:80]!r}")
            rest = v[lt:]
        else:
            # addr-spec: header parameters follow the first ';' (20.10)
            uri_text, semi, ptext = v.partition(";")
            uri_text = uri_text.rstrip(" \t")
            if not _ADDR_SPEC.match(uri_text):
                raise SipParseError(f"bad addr-spec in {value[:80]!r}")
            params = _parse_params(semi + ptext, "addr-spec")
            return NameAddr(uri_text, None, params, False)
        gt = rest.find(">")
        if gt < 0:
            raise SipParseError(f"missing '>' in {value[:80]!r}")
        uri_text = rest[1:gt]
        # LAQUOT and RAQUOT allow no whitespace inside the brackets (RFC 4475 3.1.2.14)
        if not _URI_IN_BRACKETS.match(uri_text):
            raise SipParseError(f"bad URI in <> in {value[:80]!r}")
        params = _parse_params(rest[gt + 1 :], "name-addr")
        return NameAddr(uri_text, display, params, True)

    @property
    def uri(self) -> Uri:
        """The parsed URI (cached)."""
        uri = self._uri
        if uri is None:
            text = self.uri_text
            host = self._u_host
            if host is None or text != self._u_raw:  # no parts kept, or uri_text changed
                uri = parse_uri(text)
            else:
                uri = sip_uri_from_fast_match(
                    self._u_scheme,
                    self._u_user,
                    self._u_password,
                    host,
                    self._u_port,
                    self._u_params,
                    text,
                )
            self._uri = uri
        return uri

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter of From/To."""
        return self.params.get("tag")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (
            self.uri_text == other.uri_text
            and self.display == other.display
            and self.params == other.params
            and self.bracketed == other.bracketed
        )

    def __hash__(self) -> int:
        raise TypeError("unhashable type: 'NameAddr'")

    def __reduce__(self) -> tuple[Any, ...]:
        return (NameAddr, (self.uri_text, self.display, self.params, self.bracketed))

    def __repr__(self) -> str:
        return (
            f"NameAddr(uri_text={self.uri_text!r}, display={self.display!r},"
            f" params={self.params!r}, bracketed={self.bracketed!r})"
        )

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


@final
class CSeq:
    """The CSeq header: sequence number and method (immutable)."""

    __slots__ = ("_method", "_number")

    def __init__(self, number: int, method: str) -> None:
        self._number = number
        self._method = method

    @property
    def number(self) -> int:
        return self._number

    @property
    def method(self) -> str:
        return self._method

    @staticmethod
    def parse(value: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``; the number must fit 32 bits (RFC 3261 section 8.1.1.5)."""
        parts = value.split()
        if len(parts) != 2:
            raise SipParseError(f"bad CSeq {value[:80]!r}")
        number_text, method = parts
        if not (number_text.isascii() and number_text.isdigit()) or len(number_text) > 20:
            raise SipParseError(f"bad CSeq number in {value[:80]!r}")
        number = int(number_text)
        if number > 0xFFFFFFFF:
            raise SipParseError(f"CSeq number out of range in {value[:80]!r}")
        if method not in _KNOWN_METHODS and not _TOKEN_RE.match(method):
            raise SipParseError(f"bad CSeq method in {value[:80]!r}")
        return CSeq(number, method)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self._number == other._number and self._method == other._method

    def __hash__(self) -> int:
        return hash((self._number, self._method))

    def __reduce__(self) -> tuple[Any, ...]:
        return (CSeq, (self._number, self._method))

    def __repr__(self) -> str:
        return f"CSeq(number={self._number!r}, method={self._method!r})"

    def __str__(self) -> str:
        return f"{self._number} {self._method}"
