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

The models live in four modules, all re-exported here: the field checks and shared
shapes (:mod:`gateway.config.fields`), the contact centre (agents, queues, inbound rules,
registrar: :mod:`gateway.config.contact_centre`), the emergency section
(:mod:`gateway.config.emergency_settings`), and this module (listeners, SIP timers, trunks,
outbound rules, sites, and :class:`Dialplan` with the checks across sections).

Routing (:meth:`Dialplan.route`) is on the hot path of every outbound call: the regexes are
compiled once, when the model is built, and ``route`` is a loop over precompiled patterns.
Emergency detection (SPEC E-1) runs *before* these rules and is not part of this module.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.config.contact_centre import (
    Agent,
    InboundRule,
    Location,
    Overflow,
    Queue,
    RegistrarSettings,
    agent_errors,
    caller_id_errors,
    inbound_errors,
    overflow_errors,
)
from gateway.config.emergency_settings import (
    CallbackPoolConfig,
    DirectOfferService,
    DirectRoutingRule,
    EmergencySettings,
)
from gateway.config.fields import (
    AgentName,
    FieldLoc,
    Frozen,
    GatewayAddress,
    Network,
    Port,
    PositiveMs,
    QueueName,
    Regex,
    RuleName,
    SiteName,
    Transport,
    TrunkName,
    check_caller_id,
    check_e164,
    check_host,
    check_name,
    check_not_empty,
    check_transport,
    duplicate_rule_name,
    problem,
)
from gateway.config.keepalive import Keepalive
from gateway.config.overload import OverloadSettings
from gateway.config.trunk_auth import TrunkAuth, TrunkRegister, TrunkTls
from gateway.fronts import parse_front

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
    "Keepalive",
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


def unknown_trunk_message(trunk: str, known: Iterable[str]) -> str:
    """The error for a rule naming a trunk that is not defined."""
    names = ", ".join(sorted(known)) or "none defined"
    return f"unknown trunk {trunk!r} (known: {names})"


def _unknown_trunks(
    known: Collection[str], references: Iterable[tuple[tuple[str | int, ...], str]]
) -> list[InitErrorDetails]:
    """An error for each (field location, trunk name) whose trunk is not in ``known``."""
    return [
        InitErrorDetails(
            type=problem("unknown_trunk", unknown_trunk_message(trunk, known)),
            loc=loc,
            input=trunk,
        )
        for loc, trunk in references
        if trunk not in known
    ]


def _raw_outbound_trunks(data: Any) -> list[InitErrorDetails]:
    """The unknown trunks of the outbound rules in unvalidated dialplan data (a mapping)."""
    trunks = data.get("trunks") if isinstance(data, Mapping) else None
    rules = data.get("outbound") if isinstance(data, Mapping) else None
    if not isinstance(trunks, Mapping) or not isinstance(rules, list | tuple):
        return []
    references = [
        (("outbound", index, "trunk"), rule["trunk"])
        for index, rule in enumerate(rules)
        if isinstance(rule, Mapping) and isinstance(rule.get("trunk"), str)
    ]
    return _unknown_trunks([str(name) for name in trunks], references)


def _as_init_details(error: ValidationError) -> list[InitErrorDetails]:
    """The errors of ``error`` as raisable details, each keeping its type, message and loc."""
    return [
        InitErrorDetails(
            type=PydanticCustomError(detail["type"], detail["msg"]),
            loc=detail["loc"],
            input=detail["input"],
        )
        for detail in error.errors()
    ]


def _check_front(value: str) -> str:
    try:
        parse_front(value)
    except ValueError as exc:
        raise problem("front", str(exc)) from None
    return value


class NodeConfig(Frozen):
    """This gateway node; ``name`` appears in logs, metrics and MQTT topics.

    ``fronts`` are the SIP fronts of a cluster (Kamailio, ``deploy/kamailio/cluster.cfg``),
    ``ip`` or ``ip:port``: a request from one of them is judged by the source its
    ``X-Gateway-Source`` header names (identity, trusted trunks and networks, flood
    limits; see :mod:`gateway.fronts`), a request from anyone else by its own source.
    """

    name: str = "gw1"
    fronts: tuple[Annotated[str, AfterValidator(_check_front)], ...] = ()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value, "node name")


class ListenAddress(Frozen):
    """A local socket the gateway listens on for SIP."""

    transport: Annotated[Transport, BeforeValidator(check_transport)]
    host: str
    port: Port = 5060

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        return check_host(value)


class SipSettings(Frozen):
    """SIP protocol constants, named as in RFC 3261 section 17 / Kamailio tm.

    ``timer_b_ms`` (INVITE client transaction timeout) and ``timer_f_ms`` (non-INVITE client
    transaction timeout) default to ``64 * t1_ms`` (RFC 3261 sections 17.1.1.2, 17.1.2.2).
    ``session_expires_s`` is the session interval (RFC 4028) the gateway runs on a leg whose
    peer names none; ``min_se_s`` the least it accepts (a smaller one gets 422). RFC 4028
    section 4 puts both at 90 s or more; smaller values are for lab tests only.
    """

    t1_ms: PositiveMs = 500
    t2_ms: PositiveMs = 4000
    t4_ms: PositiveMs = 5000
    timer_b_ms: PositiveMs = 64 * 500
    timer_f_ms: PositiveMs = 64 * 500
    max_message_bytes: Annotated[int, Field(gt=0)] = 65535
    user_agent: Annotated[str, Field(min_length=1)] = "gateway/0.1"
    min_se_s: Annotated[int, Field(ge=1, le=86400)] = 90
    session_expires_s: Annotated[int, Field(ge=1, le=86400)] = 1800

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

    @field_validator("session_expires_s")
    @classmethod
    def _interval_not_below_min_se(cls, value: int, info: ValidationInfo) -> int:
        min_se = info.data.get("min_se_s")
        if min_se is not None and min_se > value:
            raise problem(
                "timer_order", f"session_expires_s ({value}) must not be less than min_se_s"
            )
        return value

    @field_validator("t2_ms")
    @classmethod
    def _t2_not_below_t1(cls, value: int, info: ValidationInfo) -> int:
        t1 = info.data.get("t1_ms")  # absent when t1_ms itself was invalid
        if t1 is not None and t1 > value:
            raise problem("timer_order", f"t2_ms ({value}) must not be less than t1_ms ({t1})")
        return value


# RFC 3261 section 25.1: user = 1*( unreserved / escaped / user-unreserved )
_USER_CHAR = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/]")


class Trunk(Frozen):
    """A named group of gateways tried in order (SPEC E-2, R-2).

    A call moves to the next gateway when the current one answers with one of
    ``failover_codes``, fails at the transport level, or sends no provisional response
    within ``provisional_timeout_s``.
    """

    gateways: Annotated[tuple[GatewayAddress, ...], AfterValidator(check_not_empty)]
    failover_codes: tuple[Annotated[int, Field(ge=300, le=699)], ...] = (408, 503, 504)
    provisional_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    trusted: bool = False
    #: where this trunk's calls come from besides its gateways' own host:port: hosts or
    #: networks (CIDR); a request from there is an inbound call, routed by ``inbound``
    inbound_from: tuple[Network, ...] = ()
    #: TLS verification and client certificate for the gateways whose transport is tls
    tls: TrunkTls = TrunkTls()
    #: OPTIONS keep-alives to each gateway (SPEC O-3); none: never probed, always up
    keepalive: Keepalive | None = None
    #: digest credentials answering the trunk's 401/407 challenges (issue 13)
    auth: TrunkAuth | None = None
    #: ``register`` in the dialplan: REGISTER to the trunk's first gateway (registration-
    #: based trunks); another name here, ``register`` being a class method of every model
    registration: TrunkRegister | None = Field(default=None, alias="register")

    # ``registration`` is accepted too (a model_dump of the dialplan reads back)
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _register_user(self) -> Trunk:
        reg = self.registration
        if reg is not None and self.auth is None and reg.aor_user is None:
            raise problem("register", "register needs auth or register.aor_user (who registers)")
        return self


class OutboundRule(Frozen):
    """An outbound routing rule: ``match`` (full match on the Request-URI user part)
    selects the rule, ``rewrite`` (a ``re.sub`` template, default: keep the user) builds
    the user sent to ``trunk``."""

    name: RuleName
    match: Regex
    rewrite: str | None = None
    trunk: str
    #: the calling number presented to the trunk: the agent's ``identity``, a queue's
    #: (``queue:<name>``), the caller's site's ``callback_number``, or ``none`` (anonymous)
    caller_id: Annotated[str, AfterValidator(check_caller_id)] = "agent"

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
            raise problem(
                "rewrite",
                f"rewrite template '{value}' does not fit regex '{match}': {error}",
            ) from None
        # The groups hold parts of the dialled user, which is already a valid user part;
        # the template's own characters must be valid there too (RFC 3261 section 25.1).
        bad = sorted({char for char in literal if not _USER_CHAR.fullmatch(char)})
        if bad:
            raise problem(
                "rewrite",
                f"rewrite template '{value}' puts {', '.join(map(repr, bad))} into the user "
                "part of the Request-URI, where SIP does not allow it",
            )
        if not value:
            raise problem("rewrite", "rewrite template '' gives an empty user part")
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


class Site(Frozen):
    """A place phones call from: the networks of one building or floor and its dispatchable
    address (an MLTS site, and the network map a LIS keeps, SPEC E-10, E-13).

    ``callback_number`` is what an emergency call from these networks presents when the
    phone cannot be tied to an agent (desk phones on a network trusted for unauthenticated
    phones); it is also the number the emergency service calls back."""

    networks: Annotated[tuple[Network, ...], AfterValidator(check_not_empty)]
    location: Location
    callback_number: Annotated[str | None, AfterValidator(check_e164)] = None

    @cached_property
    def parsed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.networks)


# --- cross-references checked by Dialplan ------------------------------------------------


def _direct_routing_errors(
    rules: Sequence[DirectRoutingRule], trunks: Collection[str]
) -> list[InitErrorDetails]:
    """Emergency direct-routing rules have unique names and name defined trunks."""
    errors: list[InitErrorDetails] = []
    names: dict[str, int] = {}
    for index, rule in enumerate(rules):
        loc: FieldLoc = ("emergency", "direct_routing", index)
        if rule.name in names:
            first = f"emergency.direct_routing[{names[rule.name]}]"
            errors.append(duplicate_rule_name(rule.name, first, (*loc, "name")))
        names.setdefault(rule.name, index)
        errors.extend(_unknown_trunks(trunks, [((*loc, "trunk"), rule.trunk)]))
    return errors


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


class Dialplan(Frozen):
    """A validated dialplan (format version 1). Build it with
    :func:`gateway.config.load_dialplan` to get file:line error messages.

    To change a dialplan, build a new one: ``model_copy(update=...)`` would keep the
    routing table of the original.
    """

    version: Literal[1]
    node: NodeConfig = NodeConfig()
    listen: Annotated[tuple[ListenAddress, ...], AfterValidator(check_not_empty)]
    sip: SipSettings = SipSettings()
    trunks: dict[TrunkName, Trunk] = Field(default_factory=dict)
    outbound: tuple[OutboundRule, ...] = ()
    registrar: RegistrarSettings = RegistrarSettings()
    agents: dict[AgentName, Agent] = Field(default_factory=dict)
    queues: dict[QueueName, Queue] = Field(default_factory=dict)
    inbound: tuple[InboundRule, ...] = ()
    emergency: EmergencySettings = EmergencySettings()
    #: overload control thresholds, SPEC O-4
    overload: OverloadSettings = OverloadSettings()
    #: network map: subnets -> site (location, site callback number), SPEC E-10, E-13
    sites: dict[SiteName, Site] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> Any:
        if value != DIALPLAN_FORMAT_VERSION or isinstance(value, bool):
            raise problem(
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
                        type=problem(
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
                        type=problem(
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
        # itself invalid (then _every_unknown_trunk reports from the raw data).
        trunks = info.data.get("trunks")
        if trunks is not None:
            errors.extend(
                _unknown_trunks(trunks, (((i, "trunk"), r.trunk) for i, r in enumerate(value)))
            )
        if errors:
            raise ValidationError.from_exception_data("outbound", errors)
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _every_unknown_trunk(
        cls, data: Any, handler: ModelWrapValidatorHandler[Dialplan]
    ) -> Dialplan:
        """One run reports every unknown trunk: pydantic skips the ``outbound`` check when
        a rule or a trunk is itself invalid, so then the raw rules are checked here."""
        try:
            return handler(data)
        except ValidationError as error:
            reported = {tuple(detail["loc"]) for detail in error.errors()}
            missed = [e for e in _raw_outbound_trunks(data) if tuple(e["loc"]) not in reported]
            if not missed:
                raise
            raise ValidationError.from_exception_data(
                error.title, [*_as_init_details(error), *missed]
            ) from None

    @model_validator(mode="after")
    def _contact_centre_references(self) -> Dialplan:
        """Queues named by agents, overflows and inbound rules exist; SIP usernames and
        rule names are unique; emergency direct-routing rules name defined trunks."""
        errors = [
            *agent_errors(self.agents, self.queues),
            *overflow_errors(self.queues),
            *inbound_errors(self.inbound, self.queues),
            *caller_id_errors([(i, r.caller_id) for i, r in enumerate(self.outbound)], self.queues),
            *_direct_routing_errors(self.emergency.direct_routing, self.trunks),
        ]
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
