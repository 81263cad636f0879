"""SIP, SIPS, tel and other absolute URIs (RFC 3261 section 19.1, RFC 3966, RFC 5031).

Theory of operation
-------------------
A URI is parsed once into an immutable value that keeps the exact text it came from
(``raw``). Serialising an unmodified URI gives back those bytes, so a ``tel:`` URI with a
``phone-context`` or a ``urn:service:sos.fire`` passes through a B2BUA byte-exact. Modified
copies (``with_user``, ``with_params``) are rebuilt from their parts.

Only the parts a gateway routes on are split out: scheme, user, host, port and parameters.
Escapes in the user part are kept as they are (``user``) and decoded on request
(``user_unescaped``).

Parsing has two paths. The common shape (``sip:user@host:port;param=value`` with no
escaped headers and no ``;``/``?`` in the user part) is matched by one precompiled regular
expression. Everything else goes through a careful parser that checks each part against the
RFC 3261 section 25.1 character sets; both paths give the same result for the common shape.
Anything that is not a well-formed URI raises :class:`SipParseError` (400).
"""

from __future__ import annotations

import re
from typing import Any, Final, final
from urllib.parse import unquote

from gateway.sip.errors import SipParseError

__all__ = [
    "AbsoluteUri",
    "SipUri",
    "TelUri",
    "Uri",
    "parse_uri",
]


def _join_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# The URI classes are immutable values: read-only properties over private slots, equality
# and hashing over every field (as frozen dataclasses had them). They are plain classes so
# that mypyc compiles them to native classes: construction is then a C call (see setup.py).


@final
class SipUri:
    """A ``sip:`` or ``sips:`` URI."""

    __slots__ = ("_headers", "_host", "_params", "_password", "_port", "_raw", "_scheme", "_user")

    def __init__(
        self,
        scheme: str,
        user: str | None,
        host: str,
        port: int | None = None,
        password: str | None = None,
        params: dict[str, str | None] | None = None,
        headers: str = "",
        raw: str = "",
    ) -> None:
        self._scheme = scheme
        self._user = user
        self._host = host
        self._port = port
        self._password = password
        self._params: dict[str, str | None] = {} if params is None else params
        self._headers = headers
        self._raw = raw

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def user(self) -> str | None:
        return self._user

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def params(self) -> dict[str, str | None]:
        return self._params

    @property
    def headers(self) -> str:
        return self._headers

    @property
    def raw(self) -> str:
        return self._raw

    def _fields(self) -> tuple[Any, ...]:
        return (
            self._scheme,
            self._user,
            self._host,
            self._port,
            self._password,
            self._params,
            self._headers,
            self._raw,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())  # TypeError: params is a dict, as with the dataclass

    def __reduce__(self) -> tuple[Any, ...]:
        return (SipUri, self._fields())

    def __repr__(self) -> str:
        return (
            f"SipUri(scheme={self._scheme!r}, user={self._user!r}, host={self._host!r},"
            f" port={self._port!r}, password={self._password!r}, params={self._params!r},"
            f" headers={self._headers!r}, raw={self._raw!r})"
        )

    def __str__(self) -> str:
        return self._raw or self._build()

    def _build(self) -> str:
        userinfo = ""
        if self._user is not None:
            userinfo = self._user
            if self._password is not None:
                userinfo += ":" + self._password
            userinfo += "@"
        host = self._host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = f":{self._port}" if self._port is not None else ""
        hdrs = f"?{self._headers}" if self._headers else ""
        return f"{self._scheme}:{userinfo}{host}{port}{_join_params(self._params)}{hdrs}"

    @property
    def user_unescaped(self) -> str | None:
        """The user part with %-escapes decoded."""
        return None if self._user is None else unquote(self._user)

    @property
    def host_unbracketed(self) -> str:
        """The host without IPv6 brackets."""
        h = self._host
        return h[1:-1] if h.startswith("[") and h.endswith("]") else h

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, or None."""
        t = self._params.get("transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        """True when the URI carries the loose-routing ``lr`` parameter."""
        return "lr" in self._params

    def with_user(self, user: str | None) -> SipUri:
        """A copy with another user part."""
        return SipUri(
            self._scheme,
            user,
            self._host,
            self._port,
            self._password,
            dict(self._params),
            self._headers,
        )

    def with_host(self, host: str, port: int | None) -> SipUri:
        """A copy with another host and port."""
        return SipUri(
            self._scheme,
            self._user,
            host,
            port,
            self._password,
            dict(self._params),
            self._headers,
        )

    def with_params(self, **params: str | None) -> SipUri:
        """A copy with parameters added or replaced."""
        merged = dict(self._params)
        merged.update(params)
        return SipUri(
            self._scheme, self._user, self._host, self._port, self._password, merged, self._headers
        )


@final
class TelUri:
    """A ``tel:`` URI (RFC 3966); ``number`` keeps visual separators as written."""

    __slots__ = ("_number", "_params", "_raw", "_scheme")

    def __init__(
        self,
        number: str,
        params: dict[str, str | None] | None = None,
        raw: str = "",
        scheme: str = "tel",
    ) -> None:
        self._number = number
        self._params: dict[str, str | None] = {} if params is None else params
        self._raw = raw
        self._scheme = scheme

    @property
    def number(self) -> str:
        return self._number

    @property
    def params(self) -> dict[str, str | None]:
        return self._params

    @property
    def raw(self) -> str:
        return self._raw

    @property
    def scheme(self) -> str:
        return self._scheme

    def _fields(self) -> tuple[Any, ...]:
        return (self._number, self._params, self._raw, self._scheme)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TelUri):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[Any, ...]:
        return (TelUri, self._fields())

    def __repr__(self) -> str:
        return (
            f"TelUri(number={self._number!r}, params={self._params!r}, raw={self._raw!r},"
            f" scheme={self._scheme!r})"
        )

    def __str__(self) -> str:
        return self._raw or f"tel:{self._number}{_join_params(self._params)}"

    @property
    def user(self) -> str:
        """The number, so that routing can treat sip: and tel: alike."""
        return self._number

    @property
    def user_unescaped(self) -> str:
        return unquote(self._number)


@final
class AbsoluteUri:
    """Any other absolute URI, e.g. ``urn:service:sos.fire`` (RFC 5031)."""

    __slots__ = ("_raw", "_rest", "_scheme")

    def __init__(self, scheme: str, rest: str, raw: str = "") -> None:
        self._scheme = scheme
        self._rest = rest
        self._raw = raw

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def rest(self) -> str:
        return self._rest

    @property
    def raw(self) -> str:
        return self._raw

    def _fields(self) -> tuple[str, str, str]:
        return (self._scheme, self._rest, self._raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsoluteUri):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[Any, ...]:
        return (AbsoluteUri, self._fields())

    def __repr__(self) -> str:
        return f"AbsoluteUri(scheme={self._scheme!r}, rest={self._rest!r}, raw={self._raw!r})"

    def __str__(self) -> str:
        return self._raw or f"{self._scheme}:{self._rest}"

    @property
    def user(self) -> None:
        return None

    @property
    def user_unescaped(self) -> None:
        return None

    @property
    def urn_nid(self) -> str | None:
        """For ``urn:`` URIs, the namespace id (e.g. ``service``), lower-cased."""
        if self._scheme != "urn":
            return None
        return self._rest.partition(":")[0].lower()

    @property
    def urn_nss(self) -> str | None:
        """For ``urn:`` URIs, the namespace-specific string (e.g. ``sos.fire``)."""
        if self._scheme != "urn":
            return None
        return self._rest.partition(":")[2]


Uri = SipUri | TelUri | AbsoluteUri


# -- grammar (RFC 3261 section 25.1, RFC 3966 section 3) ---------------------------------------

_UNRESERVED: Final = r"A-Za-z0-9\-_.!~*'()%"  # alphanum, mark, and '%' of escaped
_USER_CHARS: Final = _UNRESERVED + r"&=+$,;?/"
_PASSWORD_CHARS: Final = _UNRESERVED + r"&=+$,"
_PARAM_CHARS: Final = _UNRESERVED + r"\[\]/:&+$"
_HEADER_CHARS: Final = _UNRESERVED + r"\[\]/?:+$"
_HOST: Final = r"[A-Za-z0-9][A-Za-z0-9\-_.]*|\[[0-9A-Fa-f:.]+\]"

#: the common shape of a sip/sips URI: no ';' '?' '/' in the user part, no escaped headers.
#: Groups: scheme, user, password, host, port, parameters. Shared with the name-addr fast
#: path of ``gateway.sip.headers`` so that a From/To/Contact URI is matched only once.
#: Possessive quantifiers: no class swallows the delimiter after it, so nothing is lost by
#: not backtracking, and a URI without user part is matched twice as fast.
#: SIP_URI_FAST_NO_PARAMS is the same without parameters (for an addr-spec, whose ';'
#: starts header parameters).
_HOST_P: Final = r"[A-Za-z0-9][A-Za-z0-9\-_.]*+|\[[0-9A-Fa-f:.]++\]"
SIP_URI_FAST_NO_PARAMS: Final = (
    rf"(sips?):(?:([{_UNRESERVED}&=+$,]++)(?::([{_PASSWORD_CHARS}]*+))?+@)?+"
    rf"({_HOST_P})(?::([0-9]{{1,5}}+))?+"
)
SIP_URI_FAST: Final = (
    SIP_URI_FAST_NO_PARAMS + rf"((?:;[{_PARAM_CHARS}]++(?:=[{_PARAM_CHARS}]++)?+)*+)"
)
_SIP_FAST: Final = re.compile(SIP_URI_FAST + r"\Z")
_TEL_FAST: Final = re.compile(
    rf"tel:([0-9A-Fa-f*#+\-.()]+)((?:;[{_PARAM_CHARS}]+(?:=[{_PARAM_CHARS}]+)?)*)\Z"
)
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_USER: Final = re.compile(rf"[{_USER_CHARS}]+\Z")
_PASSWORD: Final = re.compile(rf"[{_PASSWORD_CHARS}]*\Z")
_HOST_RE: Final = re.compile(rf"(?:{_HOST})\Z")
_PARAM_TOKEN: Final = re.compile(rf"[{_PARAM_CHARS}]+\Z")
_URI_HEADER: Final = rf"[{_HEADER_CHARS}]+=[{_HEADER_CHARS}]*"
_URI_HEADERS: Final = re.compile(rf"{_URI_HEADER}(?:&{_URI_HEADER})*\Z")
_TEL_NUMBER: Final = re.compile(r"[0-9A-Fa-f*#+\-.()%]+\Z")
#: characters that are never part of any URI (RFC 3986 section 2, RFC 3261 section 19.1)
_NEVER_IN_URI: Final = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`]")


def _split_params(text: str, raw: str) -> dict[str, str | None]:
    """Split ``;a=b;c`` into an ordered dict with lower-cased names (values kept as is)."""
    params: dict[str, str | None] = {}
    for part in text[1:].split(";"):
        name, sep, value = part.partition("=")
        if not name:
            raise SipParseError(f"empty parameter in URI {raw!r}")
        params[name.lower()] = value if sep else None
    return params


def _checked_params(text: str, raw: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in text[1:].split(";"):
        name, sep, value = part.partition("=")
        if not _PARAM_TOKEN.match(name) or (sep and not _PARAM_TOKEN.match(value)):
            raise SipParseError(f"bad parameter {part[:40]!r} in URI {raw!r}")
        params[name.lower()] = value if sep else None
    return params


def _port(text: str, raw: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise SipParseError(f"bad port in URI {raw!r}")
    port = int(text)
    if port > 65535:
        raise SipParseError(f"port out of range in URI {raw!r}")
    return port


def sip_uri_from_fast_match(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port_text: str | None,
    ptext: str | None,
    raw: str,
) -> SipUri:
    """Build a SipUri from the groups of a :data:`SIP_URI_FAST` match."""
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise SipParseError(f"port out of range in URI {raw!r}")
    return SipUri(
        scheme, user, host, port, password, _split_params(ptext, raw) if ptext else {}, "", raw
    )


_sip_fast_match: Final = _SIP_FAST.match


def parse_uri(text: str) -> Uri:
    """Parse a URI; raises :class:`SipParseError` (400) when it is not well formed."""
    m = _sip_fast_match(text)
    if m is not None:
        scheme, user, password, host, port_text, ptext = m.groups()
        return sip_uri_from_fast_match(scheme, user, password, host, port_text, ptext, text)
    return _parse_uri_careful(text)


def _parse_uri_careful(raw: str) -> Uri:
    scheme, sep, rest = raw.partition(":")
    if not sep or not _SCHEME.match(scheme):
        raise SipParseError(f"bad URI {raw[:80]!r}")
    if _NEVER_IN_URI.search(rest):
        raise SipParseError(f"character not allowed in URI {raw[:80]!r}")
    lscheme = scheme.lower()
    if lscheme == "sip" or lscheme == "sips":
        return _parse_sip_careful(lscheme, rest, raw)
    if lscheme == "tel":
        m = _TEL_FAST.match(raw)
        if m is not None:
            number, ptext = m.groups()
            return TelUri(number, _split_params(ptext, raw) if ptext else {}, raw)
        number, _, ptext = rest.partition(";")
        if not _TEL_NUMBER.match(number):
            raise SipParseError(f"bad tel number in {raw!r}")
        return TelUri(number, _checked_params(";" + ptext, raw) if ptext else {}, raw)
    if not rest:
        raise SipParseError(f"empty URI {raw!r}")
    return AbsoluteUri(lscheme, rest, raw)


def _parse_sip_careful(scheme: str, rest: str, raw: str) -> SipUri:
    # The userinfo ends at the '@': it cannot appear unescaped anywhere else in a SIP URI,
    # while the user part may hold ';', '?' and '/' (``sip:911;phone-context=+1@esrp``,
    # RFC 3261 section 25.1 user-unreserved, RFC 3966 section 5.1.5).
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        if "@" in rest:
            raise SipParseError(f"more than one '@' in URI {raw!r}")
        user, psep, pw = userinfo.partition(":")
        if not _USER.match(user):
            raise SipParseError(f"bad user part in URI {raw!r}")
        if psep:
            if not _PASSWORD.match(pw):
                raise SipParseError(f"bad password in URI {raw!r}")
            password = pw
    rest, qsep, headers = rest.partition("?")
    if qsep and not _URI_HEADERS.match(headers):
        raise SipParseError(f"bad headers in URI {raw!r}")
    hostport, psep, ptext = rest.partition(";")
    if hostport.startswith("["):
        end = hostport.find("]")
        host, port_text = hostport[: end + 1], hostport[end + 1 :]
        if end < 0 or (port_text and port_text[0] != ":"):
            raise SipParseError(f"bad IPv6 reference in URI {raw!r}")
        port_text = port_text[1:]
        has_port = end + 1 < len(hostport)
    else:
        host, colon, port_text = hostport.partition(":")
        has_port = bool(colon)
    if not _HOST_RE.match(host):
        raise SipParseError(f"bad host in URI {raw!r}")
    port = _port(port_text, raw) if has_port else None
    params = _checked_params(";" + ptext, raw) if psep else {}
    return SipUri(scheme, user, host, port, password, params, headers, raw)
