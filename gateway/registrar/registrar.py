"""Sans-I/O registrar: REGISTER processing (RFC 3261 section 10.3) and agent authentication.

Theory of operation
-------------------
:meth:`Registrar.handle_register` is a pure function of (request, source, now, the agent's
current bindings) plus the nonce manager's replay state. The caller loads the bindings from
its store, calls it, applies ``outcome.removed`` then ``outcome.added`` to the store and
sends ``outcome.response``. Nothing is written unless the whole request succeeds (section
10.3: "all binding updates ... MUST be committed ... if and only if all ... succeed"): every
error response comes with empty ``added``/``removed``.

The steps, in the order of section 10.3:

====  ==========================================================  =============================
step  check                                                       failure
====  ==========================================================  =============================
2     every ``Require`` option-tag understood (none are)          420 + Unsupported
5*    To is a SIP/SIPS URI (checked before auth: pure syntax)     400
3     digest credentials for our realm verify                     401 + WWW-Authenticate
4,5   the authenticated user is the To user part (the AOR)        403
6     Contact ``*`` only alone and with ``Expires: 0``;           400
      Contact, ``expires``, ``q``, ``Expires`` well formed
6     0 < expires < Min-Expires (and < 1 hour)                    423 + Min-Expires
7     same Call-ID as a binding needs a higher CSeq               500 (nothing changed)
8     --                                                          200 + every binding
====  ==========================================================  =============================

Expiry of each contact: its ``expires`` parameter, else the ``Expires`` header, else
``default_expires``; values above ``max_expires`` are shortened (section 10.3 step 6 allows
the registrar to shorten, never to lengthen), 0 removes the binding. Contacts are matched
with the URI comparison rules of section 19.1.4 (host and scheme case-insensitive, the
parameters that must match when present). An agent may hold several contacts; above
``max_contacts`` the bindings closest to expiry and not named in the request are dropped,
so a phone that re-registers from new NAT ports after reboots never locks its agent out.

:meth:`Registrar.authenticate_request` is the same digest check for requests from agents
other than REGISTER (INVITE, ...): they carry ``Proxy-Authorization`` and are challenged
with 407 (RFC 3261 section 22.3), as the B2BUA is the agents' outbound proxy.

Malformed SIP (``SipParseError`` from a lazily parsed header) becomes a 400 here; nothing
escapes to the caller except ValueError for a request this class must never be given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Literal

from gateway.registrar.digest import (
    ALGORITHMS,
    AuthResult,
    Credentials,
    NonceManager,
    challenge,
    parse_authorization,
    verify,
)
from gateway.sip.errors import SipError, SipParseError
from gateway.sip.headers import NameAddr
from gateway.sip.message import Request, Response, make_response
from gateway.sip.routing import resolve_next_hop
from gateway.sip.transaction import IdGenerator
from gateway.sip.uri import SipUri, parse_uri
from gateway.stores.ports import Binding

__all__ = [
    "AgentCredentialsLookup",
    "BindingView",
    "RegisterOutcome",
    "Registrar",
]

#: (SIP username, realm) -> (credentials, agent id), or None for an unknown user
AgentCredentialsLookup = Callable[[str, str], tuple[Credentials, str] | None]

#: RFC 3261 section 20.19: delta-seconds above 2**32-1 are taken as 2**32-1
_MAX_DELTA = 2**32 - 1
#: URI parameters that must be equal when present in either URI (RFC 3261 section 19.1.4)
_MATCHED_PARAMS = ("transport", "user", "method", "ttl", "maddr")


@dataclass(frozen=True, slots=True)
class BindingView:
    """One current binding of the agent, as the caller's store knows it."""

    contact_uri: str
    expires_at: float
    call_id: str
    cseq: int


@dataclass(frozen=True)
class RegisterOutcome:
    """What a REGISTER led to: the response, and the store changes to apply on success.

    ``added`` are new or refreshed bindings (store ``put``: replace by (agent, contact));
    ``removed`` are bindings to delete, apply them first. Both are empty unless the
    response is 200. ``agent_id`` is set once the request authenticated. ``reason`` is a
    short explanation for logs. ``path_ignored``: the REGISTER carried a Path that was not
    kept (it did not come through a front).
    """

    response: Response
    agent_id: str | None = None
    added: list[Binding] = field(default_factory=list)
    removed: list[BindingView] = field(default_factory=list)
    reason: str = ""
    auth: AuthResult | None = None
    path_ignored: bool = False


class _Reject(Exception):
    """A REGISTER that fails with ``status`` (internal control flow)."""

    def __init__(self, status: int, reason: str, extra: Sequence[tuple[str, str]] = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra = list(extra)


def _delta_seconds(text: str | None, what: str) -> int | None:
    """``delta-seconds`` (RFC 3261 section 25.1), clamped to 2**32-1; None when absent.

    Section 20.19 says a malformed value SHOULD count as 3600; we answer 400 instead, so a
    misconfigured phone learns of its mistake rather than being registered for an hour.
    """
    if text is None:
        return None
    value = text.strip()
    if not value or not value.isascii() or not value.isdigit():
        raise _Reject(400, f"Bad {what}")
    return min(int(value), _MAX_DELTA)


def _q_value(text: str | None) -> float:
    """The ``q`` parameter (RFC 3261 section 20.10: 0 to 1, up to three decimals)."""
    if text is None:
        return 1.0
    try:
        q = float(text)
    except ValueError:
        raise _Reject(400, "Bad Contact q") from None
    if not 0.0 <= q <= 1.0 or len(text) > 5:
        raise _Reject(400, "Bad Contact q")
    return q


def _uri_key(text: str) -> tuple[object, ...]:
    """A key equal for equivalent SIP URIs (RFC 3261 section 19.1.4, simplified).

    Scheme and host compare case-insensitively, user and password case-sensitively, port
    only when given; of the parameters, the ones that must match when present
    (transport, user, method, ttl, maddr) compare case-insensitively and the rest are
    ignored; headers compare as written.
    """
    try:
        uri = parse_uri(text)
    except SipParseError:
        return ("raw", text)
    if not isinstance(uri, SipUri):
        return ("raw", text)
    params = tuple(
        (name, (uri.params.get(name) or "").lower())
        for name in _MATCHED_PARAMS
        if name in uri.params
    )
    return (
        uri.scheme.lower(),
        uri.user,
        uri.password,
        uri.host.lower(),
        uri.port,
        params,
        uri.headers,
    )


def _unquote(text: str | None) -> str | None:
    if text is not None and len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


@dataclass(frozen=True, slots=True)
class _ContactRequest:
    """One Contact of the REGISTER, checked: what to do with it."""

    uri_text: str
    key: tuple[object, ...]
    expires: int
    q: float
    instance: str | None


def _user_hint(request: Request, header: Literal["from", "to"]) -> str | None:
    """The user part of From or To: which user's algorithm list to challenge with."""
    try:
        uri = request.from_.uri if header == "from" else request.to.uri
        return uri.user_unescaped if isinstance(uri, SipUri) else None
    except (SipParseError, ValueError, AttributeError):
        return None


class Registrar:
    """REGISTER processing and agent authentication for one realm (SPEC R-1).

    ``credentials_lookup(username, realm)`` gives the agent's :class:`Credentials` and agent
    id. Expires bounds are in seconds (``min_expires`` is sent as Min-Expires in 423).
    ``algorithms`` are offered in this order (RFC 8760: strongest first). ``ids`` makes the
    To tags of our responses (inject a seeded one in tests). ``max_contacts`` bounds the
    bindings of one agent.
    """

    def __init__(
        self,
        realm: str,
        credentials_lookup: AgentCredentialsLookup,
        nonce_manager: NonceManager,
        *,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_contacts: int = 10,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        ids: IdGenerator | None = None,
    ):
        if not 0 < min_expires <= default_expires <= max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        if max_contacts < 1:
            raise ValueError("max_contacts must be at least 1")
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"unsupported algorithms {unknown!r}")
        self.realm = realm
        self.credentials_lookup = credentials_lookup
        self.nonce_manager = nonce_manager
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_contacts = max_contacts
        self.algorithms = tuple(algorithms)
        self.ids = ids if ids is not None else IdGenerator()

    # -- authentication (RFC 3261 section 22) ----------------------------------------------

    def _authenticate(self, values: Iterable[str], method: str, now: float) -> AuthResult:
        """Verify the credentials for our realm among ``values`` (one header per realm)."""
        chosen: str | None = None
        for value in values:
            try:
                params = parse_authorization(value)
            except ValueError:
                continue  # another scheme, or garbage: as if absent (RFC 4475 3.3.7)
            if params.get("realm") == self.realm:
                chosen = value
                break
        if chosen is None:
            return AuthResult(False, None, False, "no credentials for our realm")
        agent_ids: dict[str, str] = {}

        def lookup(username: str, realm: str) -> Credentials | None:
            found = self.credentials_lookup(username, realm)
            if found is None:
                return None
            agent_ids[username] = found[1]
            return found[0]

        result = verify(method, chosen, lookup, self.nonce_manager, self.realm, now)
        if result.ok and result.username is not None:
            return AuthResult(
                True, result.username, False, result.reason, agent_ids.get(result.username)
            )
        return result

    def _challenges(self, result: AuthResult, now: float, hint: str | None = None) -> list[str]:
        """Challenge values: the user's own algorithm list when it has one (else ours), only
        those it has HA1s for. The user is the one that failed, else ``hint`` (the To user
        of a REGISTER, the From user of another request: only a hint of which list to
        offer; the credentials are still verified against the user they name)."""
        offer = self.algorithms
        user = result.username if result.username is not None else hint
        found = self.credentials_lookup(user, self.realm) if user else None
        if found is not None:
            creds = found[0]
            wanted = creds.offered if creds.offered is not None else offer
            usable = tuple(a for a in wanted if creds.ha1(a) is not None)
            offer = usable or offer
        return challenge(self.realm, self.nonce_manager, now, stale=result.stale, algorithms=offer)

    def _response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        extra: Iterable[tuple[str, str]] = (),
        to_tag: str | None = None,
    ) -> Response:
        return make_response(request, status, reason, to_tag=to_tag or self.ids.tag(), extra=extra)

    def authenticate_request(
        self, request: Request, now: float, *, to_tag: str | None = None
    ) -> AuthResult | Response:
        """Authenticate a request from an agent (INVITE, ...) by its Proxy-Authorization.

        Returns the :class:`AuthResult` (with ``agent_id``) when it verifies, else the 407
        response to send, with one Proxy-Authenticate per algorithm (RFC 3261 section
        22.3; ``stale=true`` when only the nonce was old). ``to_tag`` is the tag for that
        response (the B2BUA's leg tag), generated when not given. The caller must use
        ``agent_id``, not From, as the caller's identity. ACK and CANCEL cannot be
        challenged (section 22.1) and are refused with ValueError.
        """
        if request.method in ("ACK", "CANCEL"):
            raise ValueError(f"{request.method} cannot be challenged (RFC 3261 section 22.1)")
        result = self._authenticate(request.get_all("proxy-authorization"), request.method, now)
        if result.ok:
            return result
        challenges = self._challenges(result, now, _user_hint(request, "from"))
        return self._response(
            request, 407, extra=[("Proxy-Authenticate", c) for c in challenges], to_tag=to_tag
        )

    # -- REGISTER (RFC 3261 section 10.3) --------------------------------------------------

    def handle_register(
        self,
        request: Request,
        source: str,
        now: float,
        bindings: Sequence[BindingView],
        *,
        path_allowed: bool = False,
    ) -> RegisterOutcome:
        """Process one REGISTER for the agent whose current bindings are ``bindings``.

        ``source`` is where the request came from (``"udp:192.0.2.7:5060"``) and is stored
        with new bindings; ``now`` is unix time in seconds (it also makes the Date header).
        ``bindings`` may include expired ones; they are ignored. The caller must load the
        bindings of the agent named by the To URI user part (the address-of-record).
        ``path_allowed``: the REGISTER came from a proxy trusted to add Path (a configured
        front); from anyone else a Path is a route set a phone chose for calls to it
        (emergency callbacks among them), so it is ignored and neither stored nor echoed
        (:attr:`RegisterOutcome.path_ignored` says so).
        """
        if request.method != "REGISTER":
            raise ValueError(f"handle_register given a {request.method}")
        auth: AuthResult | None = None
        try:
            self._check_require(request)
            self._check_to(request)
            auth = self._authenticate(request.get_all("authorization"), "REGISTER", now)
            if not auth.ok:
                hint = _user_hint(request, "to")
                extra = [("WWW-Authenticate", c) for c in self._challenges(auth, now, hint)]
                return RegisterOutcome(
                    self._response(request, 401, extra=extra), reason=auth.reason, auth=auth
                )
            if request.to.uri.user_unescaped != auth.username:
                raise _Reject(403, "Forbidden")
            path = _path(request) if path_allowed else ()  # RFC 3327
            added, removed, current = self._apply(request, source, now, bindings, auth, path)
        except _Reject as exc:
            return RegisterOutcome(
                self._response(request, exc.status, exc.reason, exc.extra),
                agent_id=auth.agent_id if auth is not None else None,
                reason=exc.reason,
                auth=auth,
            )
        extra = [("Contact", f"<{uri}>;expires={seconds}") for uri, seconds in current]
        # RFC 3327 section 5.3: the Path the bindings were stored with, in the same order
        extra.extend(("Path", value) for value in path)
        extra.append(("Date", formatdate(now, usegmt=True)))
        return RegisterOutcome(
            self._response(request, 200, extra=extra),
            agent_id=auth.agent_id,
            added=added,
            removed=removed,
            reason=f"{len(added)} added or refreshed, {len(removed)} removed",
            auth=auth,
            path_ignored=not path_allowed and request.get("path") is not None,
        )

    @staticmethod
    def _check_require(request: Request) -> None:
        """Step 2: we understand no extension, so any Require option-tag gets 420."""
        tags = [t for t in request.get_all("require") if t]
        if tags:
            raise _Reject(420, "Bad Extension", [("Unsupported", ", ".join(tags))])

    @staticmethod
    def _check_to(request: Request) -> None:
        """The address-of-record must be a SIP or SIPS URI (section 10.2)."""
        try:
            uri = request.to.uri
        except SipParseError:
            raise _Reject(400, "Bad To") from None
        if not isinstance(uri, SipUri) or uri.scheme.lower() not in ("sip", "sips"):
            raise _Reject(400, "Address-of-record must be a SIP or SIPS URI")

    def _contacts(self, request: Request) -> tuple[bool, list[_ContactRequest]]:
        """Step 6: (wildcard?, the checked contacts)."""
        header_expires = _delta_seconds(request.get("expires"), "Expires")
        raw = request.get_all("contact")
        if any(v.strip() == "*" for v in raw):
            if len(raw) != 1:
                raise _Reject(400, "Contact * must be alone")
            if header_expires != 0:
                raise _Reject(400, "Contact * needs Expires: 0")
            return True, []
        try:
            contacts: list[NameAddr] = request.contacts
        except SipParseError:
            raise _Reject(400, "Bad Contact") from None
        out: list[_ContactRequest] = []
        seen: set[tuple[object, ...]] = set()
        for contact in contacts:
            try:
                uri = contact.uri
            except SipParseError:
                raise _Reject(400, "Bad Contact URI") from None
            if not isinstance(uri, SipUri):
                raise _Reject(400, "Contact must be a SIP or SIPS URI")
            if "expires" in contact.params:
                param = contact.params["expires"]
                expires = _delta_seconds(param if param is not None else "", "Contact expires")
            else:
                expires = header_expires
            if expires is None:
                expires = self.default_expires
            expires = min(expires, self.max_expires)
            key = _uri_key(contact.uri_text)
            if key in seen:
                raise _Reject(400, "Duplicate Contact")
            seen.add(key)
            out.append(
                _ContactRequest(
                    contact.uri_text,
                    key,
                    expires,
                    _q_value(contact.params.get("q")),
                    _unquote(contact.params.get("+sip.instance")),
                )
            )
        # 423 only when 0 < expires < minimum and under one hour (section 10.3 step 6)
        if any(0 < c.expires < self.min_expires and c.expires < 3600 for c in out):
            raise _Reject(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))])
        return False, out

    def _apply(
        self,
        request: Request,
        source: str,
        now: float,
        bindings: Sequence[BindingView],
        auth: AuthResult,
        path: tuple[str, ...],
    ) -> tuple[list[Binding], list[BindingView], list[tuple[str, int]]]:
        """Steps 6-8: (bindings to put, bindings to remove, (uri, seconds left) after)."""
        wildcard, contacts = self._contacts(request)
        call_id, cseq = request.call_id, request.cseq.number
        live = {_uri_key(b.contact_uri): b for b in bindings if b.expires_at > now}

        def check_order(existing: BindingView) -> None:
            # step 7: the same Call-ID with a CSeq not higher is out of order: abort all
            if existing.call_id == call_id and cseq <= existing.cseq:
                raise _Reject(500, "Out of Order REGISTER")

        if wildcard:
            for binding in live.values():
                check_order(binding)
            return [], list(live.values()), []

        agent_id = auth.agent_id if auth.agent_id is not None else auth.username or ""
        user_agent = request.get("user-agent") or ""
        added: list[Binding] = []
        removed: list[BindingView] = []
        for contact in contacts:
            existing = live.get(contact.key)
            if existing is not None:
                check_order(existing)
            if contact.expires == 0:
                if existing is not None:
                    removed.append(existing)
                    del live[contact.key]
                continue
            if existing is not None and existing.contact_uri != contact.uri_text:
                removed.append(existing)  # same URI written differently: store keys on text
            live[contact.key] = BindingView(contact.uri_text, now + contact.expires, call_id, cseq)
            added.append(
                Binding(
                    agent_id=agent_id,
                    contact_uri=contact.uri_text,
                    expires_at=now + contact.expires,
                    call_id=call_id,
                    cseq=cseq,
                    source=source,
                    user_agent=user_agent,
                    q=contact.q,
                    instance=contact.instance,
                    path=path,
                )
            )
        removed.extend(self._over_the_limit(live, contacts))
        current = [
            (b.contact_uri, math.ceil(b.expires_at - now))
            for b in sorted(live.values(), key=lambda b: b.contact_uri)
        ]
        return added, removed, current

    def _over_the_limit(
        self, live: dict[tuple[object, ...], BindingView], contacts: Sequence[_ContactRequest]
    ) -> list[BindingView]:
        """Drop from ``live`` the bindings past ``max_contacts`` that this request did not
        name, soonest to expire first, and return them; 403 if those named are too many."""
        dropped: list[BindingView] = []
        if len(live) > self.max_contacts:
            named = {c.key for c in contacts}
            spare = sorted((k for k in live if k not in named), key=lambda k: live[k].expires_at)
            for key in spare[: len(live) - self.max_contacts]:
                dropped.append(live.pop(key))
            if len(live) > self.max_contacts:
                raise _Reject(403, f"At most {self.max_contacts} contacts per agent")
        return dropped


def _path(request: Request) -> tuple[str, ...]:
    """RFC 3327 section 5.3: the REGISTER's Path, the route set of requests to its contacts
    (the proxies between us and the phone, nearest first), stored with each binding. A
    value no request could be routed on gets 400."""
    path = tuple(request.get_all("path"))
    for value in path:
        try:
            resolve_next_hop(NameAddr.parse(value))
        except (SipError, ValueError):
            raise _Reject(400, "Bad Path") from None
    return path
