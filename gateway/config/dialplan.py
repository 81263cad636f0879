"""Dialplan schema, format version 1, and outbound routing.

Theory of operation
-------------------
A dialplan file (YAML, see ``dialplans/example.yaml``) is validated into a tree of frozen
pydantic models rooted at :class:`Dialplan`. Every check that can be made without the
network happens here, so a file that loads is a file the gateway can run:

* field shapes and ranges (ports 1..65535, failover codes 300..699, positive timers,
  ``t1_ms <= t2_ms``), unknown fields refused (``extra="forbid"``);
* hosts are IPv4/IPv6 literals or RFC 1123 hostnames;
* every ``outbound[i].match`` compiles as a Python regex and every ``rewrite`` template
  only refers to groups that regex has;
* every ``outbound[i].trunk`` names a trunk under ``trunks``;
* nothing is accepted that the gateway cannot run (SPEC O-1: a file that loads is a file
  that runs): transports are udp, tcp or tls (TLS certificates come from the settings,
  checked by ``gateway check``), countries are
  assigned ISO 3166 alpha-2 codes (and, in emergency direct routing, countries with
  emergency dial strings), next-hop URIs (``callback_fallback``, ``overflow.destination``)
  resolve to an address on a supported transport, and a ``rewrite`` template cannot put
  characters into the user part that a SIP URI cannot carry.

Cross-field errors are raised as a :class:`pydantic.ValidationError` whose ``loc`` points at
the offending field (``("outbound", 1, "trunk")``), so the loader can turn each one into a
``file:line: field: message`` line.

Routing (:meth:`Dialplan.route`) is on the hot path of every outbound call: the regexes are
compiled once, when the model is built, and ``route`` is a loop over precompiled patterns.
Emergency detection (SPEC E-1) runs *before* these rules and is not part of this module.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.config.countries import is_iso_country
from gateway.config.dialstrings import countries_supported
from gateway.sip.errors import SipError
from gateway.sip.routing import resolve_next_hop
from gateway.sip.uri import parse_uri

__all__ = [
    "DIALPLAN_FORMAT_VERSION",
    "Agent",
    "CallbackPoolConfig",
    "Dialplan",
    "DirectOfferService",
    "DirectRoutingRule",
    "EmergencySettings",
    "GatewayAddress",
    "InboundRule",
    "ListenAddress",
    "Location",
    "NodeConfig",
    "OutboundRule",
    "Overflow",
    "Queue",
    "RegistrarSettings",
    "RouteDecision",
    "SipSettings",
    "Site",
    "Transport",
    "Trunk",
    "TrunkTls",
]

DIALPLAN_FORMAT_VERSION = 1
"""The dialplan file format this module reads (the file's top-level ``version``)."""

Transport = Literal["udp", "tcp", "tls"]
"""A SIP transport, RFC 3261 section 18."""

#: the transports this gateway can send and listen on
SUPPORTED_TRANSPORTS: tuple[str, ...] = ("udp", "tcp", "tls")


def _check_transport(value: Any) -> Any:
    """Refuse a transport the gateway cannot use (``sctp``, ``ws``) with a clear message."""
    if isinstance(value, str) and value not in SUPPORTED_TRANSPORTS:
        raise _problem(
            "transport",
            f"transport {value!r} is not supported: use udp, tcp or tls",
        )
    return value


Port = Annotated[int, Field(ge=1, le=65535)]
PositiveMs = Annotated[int, Field(gt=0)]

# RFC 1123 section 2.1 label: letters, digits, hyphens; no leading/trailing hyphen; <= 63.
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# Names used as keys in logs and metrics (trunks, rules, the node).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _Frozen(BaseModel):
    """Base for every dialplan model: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _problem(kind: str, message: str) -> PydanticCustomError:
    # No ctx: the message is already formatted and may contain braces (regexes do).
    return PydanticCustomError(kind, message)


def _check_host(value: str) -> str:
    """Accept an IPv4/IPv6 literal (brackets allowed, removed) or an RFC 1123 hostname."""
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _problem("host", f"{value!r} is not an IPv6 literal") from None
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)
        # An all-digit last label is a mistyped IPv4 address, never a hostname.
        or labels[-1].isdigit()
    ):
        raise _problem("host", f"{value!r} is neither an IP address nor a valid hostname")
    return host


def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise _problem(
            "name",
            f"{what} {value!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )
    return value


_Item = TypeVar("_Item")


def _check_not_empty(value: tuple[_Item, ...]) -> tuple[_Item, ...]:
    # An after-validator rather than min_length: min_length counts only the items that
    # validated, so one bad item would also report a misleading "too short".
    if not value:
        raise _problem("empty", "needs at least 1 entry")
    return value


def _check_trunk_name(value: str) -> str:
    return _check_name(value, "trunk name")


TrunkName = Annotated[str, AfterValidator(_check_trunk_name)]


def unknown_trunk_message(trunk: str, known: Iterable[str]) -> str:
    """The error for a rule naming a trunk that is not defined (shared with the loader)."""
    names = ", ".join(sorted(known)) or "none defined"
    return f"unknown trunk {trunk!r} (known: {names})"


class NodeConfig(_Frozen):
    """This gateway node; ``name`` appears in logs, metrics and MQTT topics."""

    name: str = "gw1"

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "node name")


class ListenAddress(_Frozen):
    """A local socket the gateway listens on for SIP."""

    transport: Annotated[Transport, BeforeValidator(_check_transport)]
    host: str
    port: Port = 5060

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        return _check_host(value)


class SipSettings(_Frozen):
    """SIP protocol constants, named as in RFC 3261 section 17 / Kamailio tm.

    ``timer_b_ms`` (INVITE client transaction timeout) and ``timer_f_ms`` (non-INVITE client
    transaction timeout) default to ``64 * t1_ms`` (RFC 3261 sections 17.1.1.2, 17.1.2.2).
    """

    t1_ms: PositiveMs = 500
    t2_ms: PositiveMs = 4000
    t4_ms: PositiveMs = 5000
    timer_b_ms: PositiveMs = 64 * 500
    timer_f_ms: PositiveMs = 64 * 500
    max_message_bytes: Annotated[int, Field(gt=0)] = 65535
    user_agent: Annotated[str, Field(min_length=1)] = "gateway/0.1"

    @model_validator(mode="before")
    @classmethod
    def _timers_follow_t1(cls, data: Any) -> Any:
        # Timer B and F are 64*T1 unless given; only derive them from a usable T1 (a bad
        # T1 is reported by its own field check).
        if isinstance(data, Mapping):
            t1 = data.get("t1_ms")
            if isinstance(t1, int) and not isinstance(t1, bool) and t1 > 0:
                derived = dict(data)
                derived.setdefault("timer_b_ms", 64 * t1)
                derived.setdefault("timer_f_ms", 64 * t1)
                return derived
        return data

    @field_validator("t2_ms")
    @classmethod
    def _t2_not_below_t1(cls, value: int, info: ValidationInfo) -> int:
        t1 = info.data.get("t1_ms")  # absent when t1_ms itself was invalid
        if t1 is not None and t1 > value:
            raise _problem("timer_order", f"t2_ms ({value}) must not be less than t1_ms ({t1})")
        return value


class GatewayAddress(_Frozen):
    """One SIP peer of a trunk (a carrier SBC or an emergency-service entry point)."""

    host: str
    port: Port = 5060
    transport: Annotated[Transport, BeforeValidator(_check_transport)] = "udp"

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        return _check_host(value)


# RFC 3261 section 25.1: user = 1*( unreserved / escaped / user-unreserved )
_USER_CHAR = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/]")


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as error:
        raise _problem("regex", f"invalid regular expression '{value}': {error}") from None
    return value


def _check_rule_name(value: str) -> str:
    return _check_name(value, "rule name")


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _problem(
            "network", f"{value!r} is not an IP address or network (e.g. 127.0.0.0/8)"
        ) from None
    return value


Regex = Annotated[str, AfterValidator(_check_regex)]
RuleName = Annotated[str, AfterValidator(_check_rule_name)]
Network = Annotated[str, AfterValidator(_check_network)]


class TrunkTls(_Frozen):
    """How the gateway checks a TLS trunk and proves itself to it (RFC 5922, RFC 5630).

    The trunk's certificate must chain to ``ca_file`` (default: ``GATEWAY_TLS_CA_FILE``,
    else the system store) and name ``server_name`` (default: each gateway's host; also
    sent as SNI). With ``mutual``, the gateway presents ``client_cert_file`` /
    ``client_key_file`` (default: ``GATEWAY_TLS_CERT_FILE`` / ``GATEWAY_TLS_KEY_FILE``).
    """

    server_name: str | None = None
    ca_file: str | None = None
    mutual: bool = False
    client_cert_file: str | None = None
    client_key_file: str | None = None

    @field_validator("server_name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value)

    @model_validator(mode="after")
    def _key_with_cert(self) -> TrunkTls:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise _problem(
                "tls", "client_cert_file and client_key_file go together: give both or neither"
            )
        return self


class Trunk(_Frozen):
    """A named group of gateways tried in order (SPEC E-2, R-2).

    A call moves to the next gateway when the current one answers with one of
    ``failover_codes``, fails at the transport level, or sends no provisional response
    within ``provisional_timeout_s``.
    """

    gateways: Annotated[tuple[GatewayAddress, ...], AfterValidator(_check_not_empty)]
    failover_codes: tuple[Annotated[int, Field(ge=300, le=699)], ...] = (408, 503, 504)
    provisional_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    trusted: bool = False
    #: where this trunk's calls come from besides its gateways' own host:port: hosts or
    #: networks (CIDR); a request from there is an inbound call, routed by ``inbound``
    inbound_from: tuple[Network, ...] = ()
    #: TLS verification and client certificate for the gateways whose transport is tls
    tls: TrunkTls = TrunkTls()


class OutboundRule(_Frozen):
    """An outbound routing rule: ``match`` (full match on the Request-URI user part)
    selects the rule, ``rewrite`` (a ``re.sub`` template, default: keep the user) builds
    the user sent to ``trunk``."""

    name: RuleName
    match: Regex
    rewrite: str | None = None
    trunk: str

    @field_validator("rewrite")
    @classmethod
    def _template_fits_regex(cls, value: str | None, info: ValidationInfo) -> str | None:
        match = info.data.get("match")
        if value is None or match is None:  # no template, or the regex itself is bad
            return value
        # Expanding against an empty match of a regex with the same groups checks the
        # escapes and every group reference, using only public API. The "\n|" alternative
        # always matches "" and also closes a trailing (?x) comment.
        probe = re.compile(match + "\n|").match("")
        assert probe is not None
        try:
            literal = probe.expand(value)
        except (re.error, IndexError) as error:
            raise _problem(
                "rewrite",
                f"rewrite template '{value}' does not fit regex '{match}': {error}",
            ) from None
        # The groups hold parts of the dialled user, which is already a valid user part;
        # the template's own characters must be valid there too (RFC 3261 section 25.1).
        bad = sorted({char for char in literal if not _USER_CHAR.fullmatch(char)})
        if bad:
            raise _problem(
                "rewrite",
                f"rewrite template '{value}' puts {', '.join(map(repr, bad))} into the user "
                "part of the Request-URI, where SIP does not allow it",
            )
        if not value:
            raise _problem("rewrite", "rewrite template '' gives an empty user part")
        return value

    def model_post_init(self, context: Any, /) -> None:
        """Compile the regex now, at load time, rather than on the first call."""
        _ = self.pattern

    # cached_property rather than a pydantic PrivateAttr: private attributes are read
    # through __getattr__ (about 1.5 us), a cached property from the instance __dict__.
    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """The compiled ``match`` regex."""
        return re.compile(self.match)

    def apply(self, user: str) -> str | None:
        """Return the rewritten user if this rule matches ``user``, else ``None``.

        A rewrite that leaves nothing (``\\1`` of an empty group) is no match: a
        Request-URI needs a user part."""
        matched = self.pattern.fullmatch(user)
        if matched is None:
            return None
        return user if self.rewrite is None else (matched.expand(self.rewrite) or None)


# --- contact centre: agents, queues, inbound routing (SPEC) ------------------

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_COUNTRY = re.compile(r"[A-Z]{2}")


def _check_e164(value: str | None) -> str | None:
    if value is not None and not _E164.fullmatch(value):
        raise _problem("e164", f"{value!r} is not an E.164 number (+ and 2 to 15 digits)")
    return value


def _check_e164_required(value: str) -> str:
    if not _E164.fullmatch(value):
        raise _problem("e164", f"{value!r} is not an E.164 number (+ and 2 to 15 digits)")
    return value


def _check_agent_name(value: str) -> str:
    return _check_name(value, "agent id")


def _check_queue_name(value: str) -> str:
    return _check_name(value, "queue name")


AgentName = Annotated[str, AfterValidator(_check_agent_name)]
QueueName = Annotated[str, AfterValidator(_check_queue_name)]


def _check_country(value: str) -> str:
    """An assigned ISO 3166 alpha-2 code in upper case (``US``, ``GB``)."""
    if is_iso_country(value):
        return value
    if is_iso_country(value.strip().upper()):
        hint = f" (codes are upper case: {value.strip().upper()!r})"
    elif _COUNTRY.fullmatch(value):
        hint = " (not an assigned code)"
    else:
        hint = ""
    raise _problem("country", f"{value!r} is not an ISO 3166 alpha-2 code such as US or GB{hint}")


def _check_emergency_country(value: str) -> str:
    """A country with emergency dial strings in this gateway (SPEC E-1)."""
    _check_country(value)
    if value not in countries_supported():
        supported = ", ".join(sorted(countries_supported()))
        raise _problem(
            "country",
            f"{value!r} has no emergency dial strings in this gateway (supported: "
            f"{supported}), so a rule limited to it could never match",
        )
    return value


def _check_next_hop(value: str | None) -> str | None:
    """A SIP URI the gateway can send a request to (``sip:security@192.0.2.10:5060``)."""
    if value is None:
        return value
    try:
        address = resolve_next_hop(value)
    except (SipError, ValueError) as error:
        raise _problem(
            "uri",
            f"{value!r} is not a SIP URI the gateway can send to "
            f"(e.g. sip:security@192.0.2.10:5060): {error}",
        ) from None
    if address.transport not in SUPPORTED_TRANSPORTS:
        raise _problem(
            "uri",
            f"{value!r}: transport {address.transport!r} is not supported: use udp, tcp or tls",
        )
    _check_host(address.host)
    return value


def _check_request_uri(value: str) -> str:
    try:
        parse_uri(value)
    except (SipError, ValueError) as error:
        raise _problem("uri", f"{value!r} is not a URI (e.g. urn:service:sos): {error}") from None
    return value


Country = Annotated[str, AfterValidator(_check_country)]
EmergencyCountry = Annotated[str, AfterValidator(_check_emergency_country)]
NextHopUri = Annotated[str | None, AfterValidator(_check_next_hop)]


class Location(_Frozen):
    """A dispatchable civic address (RFC 5139 / RAY BAUM'S Act): where the agent sits."""

    street: str | None = None
    house_number: str | None = None
    city: str | None = None
    state: str | None = None
    postcode: str | None = None
    #: any assigned code; one without emergency dial strings is an E-11 shortfall that
    #: ``gateway check`` reports, not an error
    country: Country
    building: str | None = None
    floor: str | None = None
    room: str | None = None


class Agent(_Frozen):
    """A contact-centre agent: a SIP account with presence, capacity and queues.

    Give ``password`` or one or both digest hashes (``ha1_md5``: MD5(user:realm:password),
    ``ha1_sha256``: SHA-256 of the same), so that passwords need not sit in the file.
    """

    username: str | None = None
    password: str | None = None
    ha1_md5: str | None = None
    ha1_sha256: str | None = None
    display_name: str | None = None
    identity: str | None = None
    capacity: Annotated[int, Field(ge=1, le=100)] = 1
    queues: tuple[QueueName, ...] = ()
    location: Location | None = None
    emergency_contacts: str = ""
    callback_fallback: NextHopUri = None

    @field_validator("identity")
    @classmethod
    def _identity_is_e164(cls, value: str | None) -> str | None:
        return _check_e164(value)

    @field_validator("ha1_md5")
    @classmethod
    def _md5_hex(cls, value: str | None) -> str | None:
        if value is not None and not _HEX32.fullmatch(value):
            raise _problem("ha1", "ha1_md5 must be 32 hexadecimal digits")
        return value

    @field_validator("ha1_sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.fullmatch(value):
            raise _problem("ha1", "ha1_sha256 must be 64 hexadecimal digits")
        return value

    @model_validator(mode="after")
    def _has_a_secret(self) -> Agent:
        if self.password is None and self.ha1_md5 is None and self.ha1_sha256 is None:
            raise _problem("secret", "an agent needs password, ha1_md5 or ha1_sha256")
        return self

    @property
    def contact_list(self) -> list[str]:
        """The emergency contacts, split on ';' (empty entries dropped)."""
        return [item.strip() for item in self.emergency_contacts.split(";") if item.strip()]


class Overflow(_Frozen):
    """Where a call goes when it has waited ``max_wait_s``: exactly one of the three."""

    queue: QueueName | None = None
    destination: NextHopUri = None
    status: Annotated[int, Field(ge=400, le=699)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Overflow:
        given = [
            name for name in ("queue", "destination", "status") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise _problem("overflow", "overflow needs exactly one of queue, destination, status")
        return self


class Queue(_Frozen):
    """A queue of inbound calls offered to its agents, longest idle first (SPEC R-3)."""

    ring_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    max_wait_s: Annotated[float, Field(gt=0)] = 120.0
    overflow: Overflow = Overflow(status=480)


class InboundRule(_Frozen):
    """An inbound rule: a call from a trunk whose Request-URI user (the DID) fully matches
    ``match`` waits in ``queue``; ``priority`` orders it there (higher first)."""

    name: RuleName
    match: Regex
    queue: QueueName
    priority: int = 0

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.match)


class RegistrarSettings(_Frozen):
    """Registrar (SPEC R-1): digest realm, nonce lifetime, allowed Expires range."""

    realm: Annotated[str, Field(min_length=1)] = "gateway"
    nonce_ttl_s: Annotated[int, Field(gt=0)] = 300
    min_expires_s: Annotated[int, Field(ge=1)] = 60
    max_expires_s: Annotated[int, Field(ge=1)] = 3600
    default_expires_s: Annotated[int, Field(ge=1)] = 3600
    #: networks (CIDR) whose unauthenticated INVITEs may use the outbound rules, e.g. a
    #: lab's loopback; empty in production: every INVITE not from a trunk is authenticated
    unauthenticated_outbound_from: tuple[Network, ...] = ()
    #: digest algorithms offered, most preferred first (RFC 8760 section 2.4). Phones that
    #: answer the first challenge and cannot do SHA-256 (SIPp 3.6 among them) need [MD5]
    algorithms: tuple[Literal["SHA-256", "MD5"], ...] = ("SHA-256", "MD5")

    @field_validator("algorithms")
    @classmethod
    def _some_algorithm(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise _problem("empty", "needs at least 1 algorithm")
        return value

    @model_validator(mode="after")
    def _expires_order(self) -> RegistrarSettings:
        if not self.min_expires_s <= self.default_expires_s <= self.max_expires_s:
            raise _problem("expires", "need min_expires_s <= default_expires_s <= max_expires_s")
        return self


# --- emergency calls (SPEC E-1 .. E-12, C-1 .. C-4) --------------------------------------------


class DirectRoutingRule(_Frozen):
    """An emergency direct-routing rule: a detected emergency string or service (``911``,
    ``999``, ``sos``, ``sos.fire``) that fully matches ``match`` goes to ``trunk``, the
    carrier's SBC, for the agents of ``countries`` (all countries when empty)."""

    name: RuleName
    match: Regex
    trunk: str
    countries: tuple[EmergencyCountry, ...] = ()
    #: the SBC takes the agent's location by value (PIDF-LO, RFC 6442, SPEC E-10)
    accepts_location: bool = False


class DirectOfferService(_Frozen):
    """The hosted emergency service of the direct-offer path (E-2)."""

    enabled: bool = True
    gateways: Annotated[tuple[GatewayAddress, ...], AfterValidator(_check_not_empty)]
    request_uri: Annotated[str, AfterValidator(_check_request_uri)] = "urn:service:sos"
    accepts_location: bool = True


class CallbackPoolConfig(_Frozen):
    """Callback DIDs handed to agents who dial an emergency number (E-4)."""

    dids: tuple[Annotated[str, AfterValidator(_check_e164_required)], ...] = ()
    window_s: Annotated[float, Field(gt=0)] = 3600.0


class EmergencySettings(_Frozen):
    """How emergency calls are routed (SPEC E-2): direct routing first, then direct offer."""

    provisional_timeout_s: Annotated[float, Field(gt=0)] = 3.0
    #: after a provisional response, no 18x or 2xx within this time: the next path (E-2)
    setup_timeout_s: Annotated[float, Field(gt=0)] = 6.0
    #: how long a callback rings the agent before its callback_fallback (SPEC C-3)
    callback_ring_timeout_s: Annotated[float, Field(gt=0)] = 20.0
    direct_routing: tuple[DirectRoutingRule, ...] = ()
    direct_offer: DirectOfferService | None = None
    callback: CallbackPoolConfig = CallbackPoolConfig()
    dnd_on_test_calls: bool = False


def _check_site_name(value: str) -> str:
    return _check_name(value, "site name")


SiteName = Annotated[str, AfterValidator(_check_site_name)]


class Site(_Frozen):
    """A place phones call from: the networks of one building or floor and its dispatchable
    address (an MLTS site, and the network map a LIS keeps, SPEC E-10, E-13).

    ``callback_number`` is what an emergency call from these networks presents when the
    phone cannot be tied to an agent (desk phones on a network trusted for unauthenticated
    phones); it is also the number the emergency service calls back."""

    networks: Annotated[tuple[Network, ...], AfterValidator(_check_not_empty)]
    location: Location
    callback_number: Annotated[str | None, AfterValidator(_check_e164)] = None

    @cached_property
    def parsed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.networks)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The outcome of :meth:`Dialplan.route`: which rule matched, the user to send, and
    the trunk (with its ordered gateway list) to send it to."""

    rule: str
    user: str
    trunk_name: str
    trunk: Trunk

    @property
    def gateways(self) -> tuple[GatewayAddress, ...]:
        """The trunk's gateways, in failover order."""
        return self.trunk.gateways


class Dialplan(_Frozen):
    """A validated dialplan (format version 1). Build it with
    :func:`gateway.config.load_dialplan` to get file:line error messages.

    To change a dialplan, build a new one: ``model_copy(update=...)`` would keep the
    routing table of the original.
    """

    version: Literal[1]
    node: NodeConfig = NodeConfig()
    listen: Annotated[tuple[ListenAddress, ...], AfterValidator(_check_not_empty)]
    sip: SipSettings = SipSettings()
    trunks: dict[TrunkName, Trunk] = Field(default_factory=dict)
    outbound: tuple[OutboundRule, ...] = ()
    registrar: RegistrarSettings = RegistrarSettings()
    agents: dict[AgentName, Agent] = Field(default_factory=dict)
    queues: dict[QueueName, Queue] = Field(default_factory=dict)
    inbound: tuple[InboundRule, ...] = ()
    emergency: EmergencySettings = EmergencySettings()
    #: network map: subnets -> site (location, site callback number), SPEC E-10, E-13
    sites: dict[SiteName, Site] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> Any:
        if value != DIALPLAN_FORMAT_VERSION or isinstance(value, bool):
            raise _problem(
                "version",
                f"unsupported dialplan format version {value!r} "
                f"(this gateway reads version {DIALPLAN_FORMAT_VERSION})",
            )
        return value

    @field_validator("listen")
    @classmethod
    def _no_duplicate_listeners(cls, value: tuple[ListenAddress, ...]) -> tuple[ListenAddress, ...]:
        seen: dict[tuple[str, str, int], int] = {}
        errors: list[InitErrorDetails] = []
        for index, address in enumerate(value):
            key = (address.transport, address.host, address.port)
            if key in seen:
                errors.append(
                    InitErrorDetails(
                        type=_problem(
                            "duplicate",
                            f"duplicate listener {address.transport} "
                            f"{address.host} port {address.port} (same as listen[{seen[key]}])",
                        ),
                        loc=(index,),
                        input=address.model_dump(),
                    )
                )
            else:
                seen[key] = index
        if errors:
            raise ValidationError.from_exception_data("listen", errors)
        return value

    @field_validator("outbound")
    @classmethod
    def _rules_are_consistent(
        cls, value: tuple[OutboundRule, ...], info: ValidationInfo
    ) -> tuple[OutboundRule, ...]:
        errors: list[InitErrorDetails] = []
        first_index: dict[str, int] = {}
        for index, rule in enumerate(value):
            if rule.name in first_index:
                errors.append(
                    InitErrorDetails(
                        type=_problem(
                            "duplicate",
                            f"duplicate rule name {rule.name!r} "
                            f"(also outbound[{first_index[rule.name]}])",
                        ),
                        loc=(index, "name"),
                        input=rule.name,
                    )
                )
            else:
                first_index[rule.name] = index
        # Fields validate in declaration order, so "trunks" is in info.data unless it was
        # itself invalid (then its own errors are reported and this check is skipped).
        trunks = info.data.get("trunks")
        if trunks is not None:
            errors.extend(
                InitErrorDetails(
                    type=_problem("unknown_trunk", unknown_trunk_message(rule.trunk, trunks)),
                    loc=(index, "trunk"),
                    input=rule.trunk,
                )
                for index, rule in enumerate(value)
                if rule.trunk not in trunks
            )
        if errors:
            raise ValidationError.from_exception_data("outbound", errors)
        return value

    @model_validator(mode="after")
    def _contact_centre_references(self) -> Dialplan:
        errors: list[InitErrorDetails] = []
        queues = self.queues

        def unknown_queue(name: str, loc: tuple[str | int, ...]) -> None:
            known = ", ".join(sorted(queues)) or "none defined"
            errors.append(
                InitErrorDetails(
                    type=_problem("unknown_queue", f"unknown queue {name!r} (known: {known})"),
                    loc=loc,
                    input=name,
                )
            )

        usernames: dict[str, str] = {}
        for agent_id, agent in self.agents.items():
            for index, queue_name in enumerate(agent.queues):
                if queue_name not in queues:
                    unknown_queue(queue_name, ("agents", agent_id, "queues", index))
            username = agent.username or agent_id
            if username in usernames:
                errors.append(
                    InitErrorDetails(
                        type=_problem(
                            "duplicate",
                            f"SIP username {username!r} is also used by agent "
                            f"{usernames[username]!r}",
                        ),
                        loc=("agents", agent_id, "username"),
                        input=username,
                    )
                )
            usernames.setdefault(username, agent_id)
        for name, queue_config in queues.items():
            target = queue_config.overflow.queue
            if target is not None and target not in queues:
                unknown_queue(target, ("queues", name, "overflow", "queue"))
        names: dict[str, int] = {}
        for index, rule in enumerate(self.inbound):
            if rule.queue not in queues:
                unknown_queue(rule.queue, ("inbound", index, "queue"))
            if rule.name in names:
                errors.append(
                    InitErrorDetails(
                        type=_problem(
                            "duplicate",
                            f"duplicate rule name {rule.name!r} (also inbound[{names[rule.name]}])",
                        ),
                        loc=("inbound", index, "name"),
                        input=rule.name,
                    )
                )
            names.setdefault(rule.name, index)
        direct_names: dict[str, int] = {}
        for index, direct in enumerate(self.emergency.direct_routing):
            if direct.name in direct_names:
                errors.append(
                    InitErrorDetails(
                        type=_problem(
                            "duplicate",
                            f"duplicate rule name {direct.name!r} "
                            f"(also emergency.direct_routing[{direct_names[direct.name]}])",
                        ),
                        loc=("emergency", "direct_routing", index, "name"),
                        input=direct.name,
                    )
                )
            direct_names.setdefault(direct.name, index)
            if direct.trunk not in self.trunks:
                errors.append(
                    InitErrorDetails(
                        type=_problem(
                            "unknown_trunk", unknown_trunk_message(direct.trunk, self.trunks)
                        ),
                        loc=("emergency", "direct_routing", index, "trunk"),
                        input=direct.trunk,
                    )
                )
        if errors:
            raise ValidationError.from_exception_data("Dialplan", errors)
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Build the routing table now, at load time."""
        _ = self._routes

    @cached_property
    def _routes(self) -> tuple[tuple[re.Pattern[str], OutboundRule, Trunk], ...]:
        # (compiled regex, rule, trunk) in rule order: all that route() needs, no lookups.
        return tuple((rule.pattern, rule, self.trunks[rule.trunk]) for rule in self.outbound)

    def route(self, user: str) -> RouteDecision | None:
        """Route a non-emergency call by its Request-URI user part (SPEC R-2).

        The first rule whose ``match`` fully matches ``user`` wins; its ``rewrite``
        template (if any) gives the user part sent to the trunk; a rule whose rewrite
        leaves an empty user part counts as not matching. Returns ``None`` when no rule
        matches.
        """
        for pattern, rule, trunk in self._routes:
            matched = pattern.fullmatch(user)
            if matched is not None:
                rewritten = user if rule.rewrite is None else matched.expand(rule.rewrite)
                if rewritten:  # nothing left (an empty group): no user part to send
                    return RouteDecision(rule.name, rewritten, rule.trunk, trunk)
        return None

    def site_for(self, host: str) -> tuple[str, Site] | None:
        """The site whose network holds ``host`` (the longest prefix wins), if any."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        best: tuple[int, str, Site] | None = None
        for name, site in self.sites.items():
            for network in site.parsed_networks:
                if (
                    address.version == network.version
                    and address in network
                    and (best is None or network.prefixlen > best[0])
                ):
                    best = (network.prefixlen, name, site)
        return None if best is None else (best[1], best[2])
