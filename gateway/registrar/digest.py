"""HTTP Digest authentication for SIP (RFC 3261 section 22, RFC 7616, RFC 8760).

Theory of operation
-------------------
The server side is three pure pieces that share no state but the :class:`NonceManager`:

1. :func:`challenge` builds the ``WWW-Authenticate`` (401) or ``Proxy-Authenticate`` (407)
   values: one per algorithm, strongest first (RFC 8760 section 2.4), all carrying the same
   fresh nonce and ``qop="auth"`` (RFC 3261 section 22.4 says servers always send qop).
2. The UA answers with ``Authorization``/``Proxy-Authorization``; :func:`parse_authorization`
   turns the value into a dict (it also parses challenges, for the UAC side).
3. :func:`verify` checks it: realm, username, uri, nonce, algorithm, qop/nc/cnonce, then the
   response hash against the stored HA1 (RFC 7616 section 3.4.1), compared in constant time.

Nonces are stateless: ``base64url(issue time in ms | 12 random bytes | HMAC-SHA-256 tag)``.
Any node that holds the same secret can check a nonce it did not issue (a cluster behind a
load balancer shares the secret), and a nonce older than ``ttl`` is *stale*: the UA is
re-challenged with ``stale=true`` and retries without asking its user for the password
(RFC 7616 section 3.3). ``stale`` is only reported when the response hash is right for the
old nonce, so it never tells a guesser anything.

Replay protection is the only state: the last nonce-count seen per nonce, in a bounded LRU
dict. nc must strictly increase (RFC 7616 section 5.3). The count is recorded only after the
hash matched, so forged requests cannot burn a client's counts. When the dict overflows, the
newest issue time among the forgotten nonces becomes a watermark: a nonce issued at or
before it that is no longer tracked is refused as stale, so forgetting never re-opens a
replay window; the UA just re-authenticates with a new nonce. A nonce first used on another
node is unknown here and accepted at any count, which keeps every node's view monotonic.

Algorithms: MD5 and SHA-256 with their ``-sess`` variants (RFC 7616 section 3.4.2). HA1
values (``H(username:realm:password)``) are stored, never passwords. qop ``auth`` only;
``auth-int``, ``userhash`` and ``username*`` are refused (not offered either).

Client side (:mod:`gateway.registrar.digest_client`): :func:`make_authorization` and
:func:`authorization_for_challenge` build the header value a UAC sends (our tests, and later
UAC authentication towards trunks).

Time (``now``, seconds) and randomness are injected; nothing here reads a clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALGORITHMS",
    "AuthResult",
    "Credentials",
    "CredentialsLookup",
    "DigestParseError",
    "NonceManager",
    "NonceState",
    "canonical_algorithm",
    "challenge",
    "compute_ha1",
    "compute_response",
    "parse_authorization",
    "parse_challenge",
    "quote_param",
    "verify",
]

NonceState = Literal["valid", "stale", "invalid"]

#: algorithm name (canonical spelling) -> (hash constructor name, session variant?)
_ALGORITHMS: dict[str, tuple[str, bool]] = {
    "SHA-256": ("sha256", False),
    "SHA-256-sess": ("sha256", True),
    "MD5": ("md5", False),
    "MD5-sess": ("md5", True),
}
#: every algorithm :func:`verify` accepts, strongest first
ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHMS)
_BY_LOWER = {name.lower(): name for name in _ALGORITHMS}


def _h(hash_name: str, text: str) -> str:
    return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()


def canonical_algorithm(name: str) -> str | None:
    return _BY_LOWER.get(name.lower())


# --------------------------------------------------------------------------------------------
# Credentials and hashes (RFC 7616 section 3.4)


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """``H(username ":" realm ":" password)`` in lower-case hex (RFC 7616 section 3.4.2).

    ``algorithm`` is ``"MD5"`` or ``"SHA-256"`` (a ``-sess`` suffix is ignored: the session
    key is derived from this value per request).
    """
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _h(_ALGORITHMS[canonical][0], f"{username}:{realm}:{password}")


def compute_response(
    *,
    algorithm: str,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None,
    cnonce: str | None,
    qop: str | None,
) -> str:
    """The ``response`` value for a stored HA1 (RFC 7616 section 3.4.1, RFC 3261 22.4).

    With ``qop="auth"``: ``KD(HA1, nonce:nc:cnonce:qop:H(method:uri))``; without qop (RFC
    2069 compatibility): ``KD(HA1, nonce:H(method:uri))``. For ``-sess`` algorithms HA1 is
    first replaced by ``H(HA1:nonce:cnonce)``. ``nc`` is the 8-hex-digit text as sent.
    """
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    hash_name, session = _ALGORITHMS[canonical]
    ha1 = ha1.lower()
    if session:
        ha1 = _h(hash_name, f"{ha1}:{nonce}:{cnonce or ''}")
    ha2 = _h(hash_name, f"{method}:{uri}")
    if qop is None:
        return _h(hash_name, f"{ha1}:{nonce}:{ha2}")
    return _h(hash_name, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the server stores for one user: HA1 per hash function, never the password.

    Either HA1 may be missing (an agent configured with ``ha1_md5`` only); that user then
    cannot authenticate with the other algorithm. ``offered`` is the user's own list of
    algorithms (the agent's ``digest_algorithms``, issue 15 hole 7): only those are
    challenged for and accepted; None: the registrar's list.
    """

    username: str
    realm: str
    ha1_md5: str | None = None
    ha1_sha256: str | None = None
    offered: tuple[str, ...] | None = None

    @classmethod
    def from_password(cls, username: str, realm: str, password: str) -> Credentials:
        """Both HA1 values computed from a clear-text password."""
        return cls(
            username,
            realm,
            compute_ha1("MD5", username, realm, password),
            compute_ha1("SHA-256", username, realm, password),
        )

    def ha1(self, algorithm: str) -> str | None:
        """The stored HA1 serving ``algorithm`` (``MD5``, ``SHA-256`` or a ``-sess`` one)."""
        canonical = canonical_algorithm(algorithm)
        if canonical is None:
            return None
        hash_name = _ALGORITHMS[canonical][0]
        if self.offered is not None and not any(
            _ALGORITHMS[name][0] == hash_name for name in self.offered if name in _ALGORITHMS
        ):
            return None  # an algorithm this user is not allowed (a downgrade)
        value = self.ha1_md5 if hash_name == "md5" else self.ha1_sha256
        return value.lower() if value else None

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms (strongest first) this user can authenticate with."""
        return tuple(name for name in ALGORITHMS if self.ha1(name) is not None)


#: (username, realm) -> the user's credentials, or None for an unknown user
CredentialsLookup = Callable[[str, str], Credentials | None]


# --------------------------------------------------------------------------------------------
# Nonces


class NonceManager:
    """Issues and checks stateless HMAC-signed nonces; tracks nonce-counts against replay.

    ``secret`` keys the HMAC (at least 16 bytes; every node of a cluster needs the same
    one). A nonce is valid for ``ttl`` seconds after ``make(now)``, stale afterwards.
    ``random_bytes`` is the randomness source (``os.urandom`` unless a test injects one).
    At most ``max_tracked`` nonces have their nonce-count remembered (see the module notes
    for what happens beyond). A nonce dated up to ``max_clock_skew`` seconds in the future
    (another node's clock) is still accepted.
    """

    _RANDOM_BYTES = 12
    _TAG_BYTES = 16
    _PAYLOAD_BYTES = 8 + _RANDOM_BYTES
    _NONCE_CHARS = (_PAYLOAD_BYTES + _TAG_BYTES) * 4 // 3

    def __init__(
        self,
        secret: bytes,
        ttl: float,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        max_tracked: int = 65536,
        max_clock_skew: float = 5.0,
    ):
        if len(secret) < 16:
            raise ValueError("the nonce secret needs at least 16 bytes")
        if ttl <= 0:
            raise ValueError("the nonce ttl must be positive")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        self._secret = secret
        self.ttl = ttl
        self._random_bytes = random_bytes
        self._max_tracked = max_tracked
        self._max_clock_skew = max_clock_skew
        self._last_nc: OrderedDict[str, int] = OrderedDict()
        #: nonces issued at or before this time (ms) may have been forgotten
        self._forgotten_up_to_ms: int | None = None

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[: self._TAG_BYTES]

    def make(self, now: float) -> str:
        """A fresh nonce issued at ``now`` (48 characters of base64url, no padding)."""
        payload = int(now * 1000).to_bytes(8, "big", signed=True)
        payload += self._random_bytes(self._RANDOM_BYTES)[: self._RANDOM_BYTES]
        if len(payload) != self._PAYLOAD_BYTES:
            raise ValueError("random_bytes returned too few bytes")
        return base64.urlsafe_b64encode(payload + self._tag(payload)).decode("ascii")

    def _issued_ms(self, nonce: str) -> int | None:
        """The issue time (ms) of an authentic nonce, None for anything else."""
        if len(nonce) != self._NONCE_CHARS:
            return None
        try:
            raw = base64.b64decode(nonce.encode("ascii"), altchars=b"-_", validate=True)
        except (ValueError, UnicodeEncodeError):
            return None
        payload, tag = raw[: self._PAYLOAD_BYTES], raw[self._PAYLOAD_BYTES :]
        if not hmac.compare_digest(tag, self._tag(payload)):
            return None
        return int.from_bytes(payload[:8], "big", signed=True)

    def check(self, nonce: str, now: float) -> NonceState:
        """``"valid"``, ``"stale"`` (authentic but older than ``ttl``) or ``"invalid"``."""
        issued_ms = self._issued_ms(nonce)
        if issued_ms is None:
            return "invalid"
        age = now - issued_ms / 1000
        if age < -self._max_clock_skew:
            return "invalid"
        if age > self.ttl:
            return "stale"
        return "valid"

    def accept_nc(self, nonce: str, nc: int) -> bool:
        """Record nonce-count ``nc`` for an authentic ``nonce``; False if it is a replay.

        ``nc`` must be higher than every count seen with this nonce (RFC 7616 section 5.3).
        Call it only after the response hash matched.
        """
        last = self._last_nc.get(nonce)
        if last is None:
            watermark = self._forgotten_up_to_ms
            if watermark is not None:
                issued_ms = self._issued_ms(nonce)
                if issued_ms is None or issued_ms <= watermark:
                    return False
        elif nc <= last:
            return False
        self._last_nc[nonce] = nc
        self._last_nc.move_to_end(nonce)
        while len(self._last_nc) > self._max_tracked:
            forgotten, _ = self._last_nc.popitem(last=False)
            issued_ms = self._issued_ms(forgotten)
            if issued_ms is not None and (
                self._forgotten_up_to_ms is None or issued_ms > self._forgotten_up_to_ms
            ):
                self._forgotten_up_to_ms = issued_ms
        return True

    @property
    def tracked(self) -> int:
        """How many nonces have their nonce-count remembered (for metrics)."""
        return len(self._last_nc)


# --------------------------------------------------------------------------------------------
# Header values


class DigestParseError(ValueError):
    """An Authorization/Proxy-Authorization (or challenge) value that is not valid Digest."""


def quote_param(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    realm: str,
    nonce_manager: NonceManager,
    now: float,
    *,
    stale: bool = False,
    algorithms: Sequence[str] = ("SHA-256", "MD5"),
) -> list[str]:
    """One ``WWW-Authenticate``/``Proxy-Authenticate`` value per algorithm, in order given.

    RFC 8760 section 2.4: offer each supported algorithm in its own challenge, most
    preferred first (SHA-256 before MD5). All share one nonce. ``stale=True`` tells the UA
    that only the nonce was too old (RFC 7616 section 3.3).
    """
    names: list[str] = []
    for algorithm in algorithms:
        canonical = canonical_algorithm(algorithm)
        if canonical is None:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        if canonical not in names:
            names.append(canonical)
    if not names:
        raise ValueError("challenge needs at least one algorithm")
    nonce = nonce_manager.make(now)
    tail = ", stale=true" if stale else ""
    return [
        f'Digest realm={quote_param(realm)}, nonce="{nonce}", algorithm={name}, qop="auth"{tail}'
        for name in names
    ]


_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_LWS = " \t\r\n"


def parse_authorization(value: str) -> dict[str, str]:
    """Parse a Digest credentials (or challenge) value into ``{lower-case name: value}``.

    Grammar of RFC 3261 section 25.1 (``digest-response``) read leniently: LWS anywhere
    around ``=`` and ``,``, empty list elements, quoted or unquoted values (quoted-pairs are
    unescaped, quotes removed). Raises :class:`DigestParseError` for another scheme, a
    missing ``=``, an unterminated quoted string, an empty value or a repeated parameter.
    """
    text = value.strip(_LWS)
    end = 0
    while end < len(text) and text[end] not in _LWS:
        end += 1
    scheme = text[:end]
    if scheme.lower() != "digest":
        raise DigestParseError(f"not a Digest value (scheme {scheme[:40]!r})")
    params: dict[str, str] = {}
    i, n = end, len(text)
    while True:
        while i < n and (text[i] in _LWS or text[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise DigestParseError(f"expected a parameter name near {text[start : start + 30]!r}")
        while i < n and text[i] in _LWS:
            i += 1
        if i >= n or text[i] != "=":
            raise DigestParseError(f"parameter {name!r} has no value")
        i += 1
        while i < n and text[i] in _LWS:
            i += 1
        if i < n and text[i] == '"':
            param_value, i = _quoted_value(text, i + 1, name)
        else:
            param_value, i = _token_value(text, i, name)
        while i < n and text[i] in _LWS:
            i += 1
        if i < n and text[i] != ",":
            raise DigestParseError(f"expected ',' after parameter {name!r}")
        if name in params:
            raise DigestParseError(f"parameter {name!r} appears twice")
        params[name] = param_value
    return params


def _quoted_value(text: str, i: int, name: str) -> tuple[str, int]:
    """The quoted-string value of ``name`` whose text starts at ``i`` (after the opening
    quote), quoted-pairs unescaped; and the index after its closing quote."""
    n = len(text)
    chars: list[str] = []
    while True:
        if i >= n:
            raise DigestParseError(f"unterminated quoted value of {name!r}")
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                raise DigestParseError(f"unterminated quoted value of {name!r}")
            chars.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(chars), i + 1
        else:
            chars.append(c)
            i += 1


def _token_value(text: str, i: int, name: str) -> tuple[str, int]:
    """The unquoted value of ``name`` starting at ``i``, and the index after it."""
    start = i
    while i < len(text) and text[i] not in _LWS and text[i] not in ',"':
        i += 1
    if i == start:
        raise DigestParseError(f"parameter {name!r} has an empty value")
    return text[start:i], i


#: challenges have the same syntax as credentials (RFC 3261 section 25.1 ``digest-cln``)
parse_challenge = parse_authorization


# --------------------------------------------------------------------------------------------
# Verification (server side)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of checking one set of credentials.

    ``username`` is the claimed user (None when unreadable); ``stale`` means "re-challenge
    with stale=true": the hash was right but the nonce is too old or its count was used.
    ``reason`` is for logs only, never for the wire. ``agent_id`` is filled in by the
    registrar for an authenticated agent.
    """

    ok: bool
    username: str | None
    stale: bool
    reason: str
    agent_id: str | None = None


def _fail(username: str | None, reason: str, *, stale: bool = False) -> AuthResult:
    return AuthResult(False, username, stale, reason)


_HEX = frozenset("0123456789abcdefABCDEF")


def verify(
    request_method: str,
    authorization_value: str,
    credentials_lookup: CredentialsLookup,
    nonce_manager: NonceManager,
    realm: str,
    now: float,
) -> AuthResult:
    """Check one ``Authorization``/``Proxy-Authorization`` value (RFC 3261 section 22.4).

    In order: Digest syntax; realm equal to ours; username, uri, nonce, response present;
    algorithm supported (absent means MD5, RFC 7616 section 3.4); ``qop=auth`` with
    ``cnonce`` and an 8-hex-digit ``nc`` (qop is required, since every challenge we send
    carries it: RFC 3261 section 22.4); the nonce authentic; the user known with an HA1
    for that algorithm; the response hash (constant-time compare); then freshness: a stale
    nonce or a replayed nonce-count gives ``stale=True``. The ``uri`` is covered by the hash
    but not compared with the Request-URI, which a proxy in front may have rewritten.
    """
    try:
        fields = _digest_fields(parse_authorization(authorization_value), realm)
    except DigestParseError as exc:
        return _fail(None, f"malformed credentials: {exc}")
    if isinstance(fields, AuthResult):
        return fields
    username, algorithm, nc_text = fields.username, fields.algorithm, fields.nc
    nonce_state = nonce_manager.check(fields.nonce, now)
    if nonce_state == "invalid":
        return _fail(username, "nonce not issued by us")
    credentials = credentials_lookup(username, realm)
    ha1 = credentials.ha1(algorithm) if credentials is not None else None
    expected = compute_response(
        algorithm=algorithm,
        ha1=ha1 if ha1 is not None else "0" * 64,  # same work for unknown users
        method=request_method,
        uri=fields.uri,
        nonce=fields.nonce,
        nc=nc_text,
        cnonce=fields.cnonce,
        qop=fields.qop,
    )
    matches = hmac.compare_digest(expected.encode(), fields.response.lower().encode("utf-8"))
    if credentials is None:
        return _fail(username, "unknown user")
    if ha1 is None:
        return _fail(username, f"no {algorithm} credentials stored for this user")
    if not matches:
        return _fail(username, f"wrong {algorithm} response (bad password?)")
    if nonce_state == "stale":
        return _fail(username, "nonce is stale", stale=True)
    if not nonce_manager.accept_nc(fields.nonce, int(nc_text, 16)):
        return _fail(username, f"nonce-count {nc_text} replayed", stale=True)
    return AuthResult(True, username, False, f"authenticated with {algorithm}")


@dataclass(frozen=True, slots=True)
class _DigestFields:
    """The parameters of a Digest response that passed the syntax checks of :func:`verify`."""

    username: str
    uri: str
    nonce: str
    response: str
    algorithm: str
    qop: str
    cnonce: str
    nc: str


def _digest_fields(params: dict[str, str], realm: str) -> _DigestFields | AuthResult:
    """The checked parameters, or the failure of the first check that fails, in the order
    :func:`verify` documents (syntax, realm, presence, algorithm, qop, cnonce, nc)."""
    username = params.get("username")
    if not username:
        return _fail(None, "no username (username* and userhash are not supported)")
    if params.get("userhash", "false").lower() != "false":
        return _fail(username, "userhash is not supported")
    if params.get("realm") != realm:
        return _fail(username, f"realm {params.get('realm')!r} is not ours")
    uri, nonce, response = params.get("uri"), params.get("nonce"), params.get("response")
    if not uri:
        return _fail(username, "no uri")
    if not nonce:
        return _fail(username, "no nonce")
    if not response:
        return _fail(username, "no response")
    algorithm = canonical_algorithm(params.get("algorithm", "MD5"))
    if algorithm is None:
        return _fail(username, f"unsupported algorithm {params.get('algorithm')!r}")
    qop = params.get("qop")
    if qop is None:
        return _fail(username, "no qop (every challenge offers qop=auth)")
    if qop.lower() != "auth":
        return _fail(username, f"unsupported qop {qop!r}")
    cnonce, nc_text = params.get("cnonce"), params.get("nc")
    if not cnonce:
        return _fail(username, "qop=auth without cnonce")
    if nc_text is None or len(nc_text) != 8 or not _HEX.issuperset(nc_text):
        return _fail(username, f"bad nonce-count {nc_text!r}")
    return _DigestFields(username, uri, nonce, response, algorithm, qop, cnonce, nc_text)
