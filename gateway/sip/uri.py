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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

from gateway.sip.errors import SipParseError

__all__ = [
    "AbsoluteUri",
    "SipUri",
    "TelUri",
    "Uri",
    "parse_uri",
]


def _split_params(text: str) -> dict[str, str | None]:
    """Split ``;a=b;c`` into an ordered dict with lower-cased names (values kept as is)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for part in text.split(";"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def _join_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    password: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""
    raw: str = ""

    def __str__(self) -> str:
        return self.raw or self._build()

    def _build(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        hdrs = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{host}{port}{_join_params(self.params)}{hdrs}"

    @property
    def user_unescaped(self) -> str | None:
        """The user part with %-escapes decoded."""
        return None if self.user is None else unquote(self.user)

    @property
    def host_unbracketed(self) -> str:
        """The host without IPv6 brackets."""
        h = self.host
        return h[1:-1] if h.startswith("[") and h.endswith("]") else h

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, or None."""
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        """True when the URI carries the loose-routing ``lr`` parameter."""
        return "lr" in self.params

    def with_user(self, user: str | None) -> SipUri:
        """A copy with another user part."""
        return SipUri(
            self.scheme, user, self.host, self.port, self.password, dict(self.params), self.headers
        )

    def with_host(self, host: str, port: int | None) -> SipUri:
        """A copy with another host and port."""
        return SipUri(
            self.scheme, self.user, host, port, self.password, dict(self.params), self.headers
        )

    def with_params(self, **params: str | None) -> SipUri:
        """A copy with parameters added or replaced."""
        merged = dict(self.params)
        merged.update(params)
        return SipUri(self.scheme, self.user, self.host, self.port, self.password, merged, self.headers)


@dataclass(frozen=True, slots=True)
class TelUri:
    """A ``tel:`` URI (RFC 3966); ``number`` keeps visual separators as written."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)
    raw: str = ""
    scheme: str = "tel"

    def __str__(self) -> str:
        return self.raw or f"tel:{self.number}{_join_params(self.params)}"

    @property
    def user(self) -> str:
        """The number, so that routing can treat sip: and tel: alike."""
        return self.number

    @property
    def user_unescaped(self) -> str:
        return unquote(self.number)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other absolute URI, e.g. ``urn:service:sos.fire`` (RFC 5031)."""

    scheme: str
    rest: str
    raw: str = ""

    def __str__(self) -> str:
        return self.raw or f"{self.scheme}:{self.rest}"

    @property
    def user(self) -> None:
        return None

    @property
    def user_unescaped(self) -> None:
        return None

    @property
    def urn_nid(self) -> str | None:
        """For ``urn:`` URIs, the namespace id (e.g. ``service``), lower-cased."""
        if self.scheme != "urn":
            return None
        return self.rest.partition(":")[0].lower()

    @property
    def urn_nss(self) -> str | None:
        """For ``urn:`` URIs, the namespace-specific string (e.g. ``sos.fire``)."""
        if self.scheme != "urn":
            return None
        return self.rest.partition(":")[2]


Uri = SipUri | TelUri | AbsoluteUri

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


def _parse_hostport(text: str, raw: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in URI {raw!r}")
        host = text[: end + 1]
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise SipParseError(f"bad host:port in URI {raw!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = ""
        elif not port_text:
            raise SipParseError(f"empty port in URI {raw!r}")
    if not host or any(c in host for c in " \t<>\"@"):
        raise SipParseError(f"bad host in URI {raw!r}")
    if not port_text:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5:
        raise SipParseError(f"bad port in URI {raw!r}")
    port = int(port_text)
    if port > 65535:
        raise SipParseError(f"port out of range in URI {raw!r}")
    return host, port


def parse_uri(text: str) -> Uri:
    """Parse a URI; raises :class:`SipParseError` (400) when it is not well formed."""
    raw = text
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or not all(c in _SCHEME_CHARS for c in scheme):
        raise SipParseError(f"bad URI {raw!r}")
    if any(c in rest for c in " \t\r\n"):
        raise SipParseError(f"whitespace in URI {raw!r}")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        headers = ""
        q = rest.find("?")
        if q >= 0:
            rest, headers = rest[:q], rest[q + 1 :]
        # userinfo ends at the last '@': it may not appear unescaped in params or the host,
        # but the user part may hold ';' (``sip:911;phone-context=+1@esrp;user=phone``,
        # RFC 3261 section 25.1 user-unreserved, RFC 3966 section 5.1.5).
        at = rest.rfind("@")
        user: str | None = None
        password: str | None = None
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, psep, pw = userinfo.partition(":")
            password = pw if psep else None
            if not user:
                raise SipParseError(f"empty user part in URI {raw!r}")
        hostport, _, ptext = rest.partition(";")
        host, port = _parse_hostport(hostport, raw)
        return SipUri(lscheme, user, host, port, password, _split_params(ptext), headers, raw)
    if lscheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise SipParseError(f"empty tel number in {raw!r}")
        return TelUri(number, _split_params(ptext), raw)
    if not rest:
        raise SipParseError(f"empty URI {raw!r}")
    return AbsoluteUri(lscheme, rest, raw)
