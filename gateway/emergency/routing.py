"""Emergency route choice (SPEC E-2) for a call that is never refused (SPEC E-3).

Theory of operation
-------------------
:func:`choose_route` turns a :class:`~gateway.emergency.numbers.Detection` into an ordered
list of hops for the B2BUA's failover loop. It is a pure function of (detection, agent
country, the dialplan's emergency section, trunks, trunk health): no I/O, no clock.

Order of the hops (SPEC E-2):

1. the gateways of the trunk of the first direct-routing rule that matches (the carrier
   SBC), in the trunk's order;
2. then the direct-offer gateways, when direct offer is enabled: they are the route when no
   rule matches and the fallback when every direct-routing gateway fails;
3. last, as a last resort, the hops of any path or gateway whose health is *down*
   (``gateway.health``: OPTIONS keep-alives), in the same order. Keep-alives are a guess
   made seconds ago; trying a "down" gateway costs one short provisional timeout,
   answering 503 to an emergency call may cost a life. So a down gateway is skipped while
   any healthy one remains, never dropped.

Every hop carries the short emergency provisional timeout (the trunk's own
``provisional_timeout_s`` capped at the emergency section's) and fails over on
408, 503 and 504 (RFC 3261 section 21; plus any other code the trunk lists), on a
transport failure and on that timeout.

When no hop exists at all, the plan is empty and carries a ``warning`` for the 503 the
B2BUA answers with (RFC 3261 section 20.43); the call is still an emergency call for E-4..E-9
(callback DID, DND, notification, events).

E-3, by construction: nothing in this module's inputs speaks of admission control, rate
limits, capacity, presence, call barring or outbound restrictions, so no such thing can
refuse the call here; and no outcome is 404 or 424.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.config.dialplan import DirectOfferService, DirectRoutingRule, EmergencySettings
from gateway.config.keepalive import gateway_key
from gateway.emergency.numbers import Detection, countries_supported, normalise_country

__all__ = [
    "DIRECT_OFFER",
    "EMERGENCY_FAILOVER_CODES",
    "TEST_SERVICE_URN",
    "EmergencyHop",
    "GatewayLike",
    "RoutePlan",
    "TrunkLike",
    "choose_route",
    "matching_rule",
]

#: the name the direct-offer path goes by: in route names, and as its key in trunk health
DIRECT_OFFER = "direct-offer"

#: the Request-URI of a test call (933) on the direct-offer path (RFC 6881 section 15)
TEST_SERVICE_URN = "urn:service:test.sos"

#: The final responses that move an emergency call to the next gateway or path: every one.
#: SPEC E-2 names 408, 503 and 504 for a trunk's gateway list, but an emergency call is
#: never lost (E-3): an SBC that answers 404, 403 or 486 has failed this call as surely as
#: one that answers 503, and the next gateway or the direct-offer service may still take it.
EMERGENCY_FAILOVER_CODES: frozenset[int] = frozenset(range(300, 700))


class GatewayLike(Protocol):
    """A trunk gateway (``gateway.config.dialplan.GatewayAddress`` fits)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def transport(self) -> str: ...


class TrunkLike(Protocol):
    """A trunk (``gateway.config.dialplan.Trunk`` fits)."""

    @property
    def gateways(self) -> Sequence[GatewayLike]: ...

    @property
    def failover_codes(self) -> Sequence[int]: ...

    @property
    def provisional_timeout_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class EmergencyHop:
    """One place to try an emergency call, in failover order (SPEC E-2).

    The B2BUA sends to ``(transport, host, port)``. The Request-URI is ``request_uri``
    when set (a service URN), else ``sip:<user>@<host>:<port>`` with ``user`` the
    emergency dial string as digits -- never rewritten by an outbound rule (SPEC E-1).
    ``route`` is ``"direct-routing:<trunk>"`` or ``"direct-offer"`` (for events, metrics
    and the notification). ``accepts_location`` says whether this path takes the agent's
    PIDF-LO by value (SPEC E-10, RFC 6442). ``last_resort`` marks a hop of a path whose
    health is down, tried only after every healthy one.
    """

    route: str
    trunk: str
    host: str
    port: int
    transport: str
    user: str | None
    request_uri: str | None
    failover_codes: frozenset[int]
    provisional_timeout_s: float
    accepts_location: bool
    last_resort: bool = False


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The hops of an emergency call, in order, and why (SPEC E-2).

    ``rule`` is the direct-routing rule that matched, if any. ``notes`` are degradations an
    engineer should see in the logs (a down trunk, a rule naming an unknown trunk).
    ``warning`` is set exactly when there is no hop: the text of the Warning header of the
    503 answered to the agent.
    """

    hops: tuple[EmergencyHop, ...]
    rule: str | None = None
    notes: tuple[str, ...] = ()
    warning: str | None = None

    @property
    def empty(self) -> bool:
        """No path at all: answer 503 with :attr:`warning`, and still do E-6 and E-7."""
        return not self.hops


def _rule_applies(rule: DirectRoutingRule, country: str | None) -> bool:
    # An agent of unknown or unsupported country gets the best available path (E-11):
    # country-limited rules are not held against it.
    if not rule.countries or country not in countries_supported():
        return True
    return country in rule.countries


def matching_rule(
    detection: Detection, country: str | None, config: EmergencySettings
) -> DirectRoutingRule | None:
    """The first direct-routing rule for this call, or ``None`` (SPEC E-2).

    Rules are tried in order; one matches when its ``countries`` include the agent's
    (or are empty) and its ``match`` is found in the dial string or the service.
    """
    code = normalise_country(country)
    for rule in config.direct_routing:
        if _rule_applies(rule, code) and rule.matches(detection.dialled, detection.service):
            return rule
    return None


def _describe(detection: Detection, country: str | None) -> str:
    where = f" for {country}" if country else " (agent country unknown)"
    return f"{detection.dialled}{where}"


def choose_route(
    detection: Detection,
    country: str | None,
    config: EmergencySettings,
    trunks: Mapping[str, TrunkLike],
    health: Mapping[str, bool] | None = None,
) -> RoutePlan:
    """The ordered hops of an emergency call (SPEC E-2). Never refuses (SPEC E-3).

    ``health`` maps a trunk name (and :data:`DIRECT_OFFER` for the direct-offer path), or
    one gateway (``transport:host:port``, :func:`~gateway.config.keepalive.gateway_key`),
    to whether its OPTIONS keep-alives say it is up; a missing name is up. A down path or
    gateway is tried last rather than dropped (see the module docstring). There is
    deliberately no admission, capacity, presence or barring input.
    """
    code = normalise_country(country)
    health = health or {}
    healthy: list[EmergencyHop] = []
    down: list[EmergencyHop] = []
    notes: list[str] = []

    rule = matching_rule(detection, code, config)
    if rule is not None:
        trunk = trunks.get(rule.trunk)
        if trunk is None:
            notes.append(
                f"direct-routing rule {rule.name!r} names trunk {rule.trunk!r}, which is "
                "not defined; skipped"
            )
        else:
            hops = _direct_routing_hops(detection, rule, trunk, config)
            _sort_by_health(hops, rule.trunk, health, healthy, down, notes)

    offer = config.direct_offer
    if offer is not None and config.direct_offer_enabled:
        hops = _direct_offer_hops(detection, offer, config)
        _sort_by_health(hops, DIRECT_OFFER, health, healthy, down, notes)

    plan_hops = tuple(healthy + down)
    return RoutePlan(
        hops=plan_hops,
        rule=rule.name if rule is not None else None,
        notes=tuple(notes),
        warning=None if plan_hops else _no_route_warning(detection, code, rule),
    )


def _sort_by_health(
    hops: list[EmergencyHop],
    path: str,
    health: Mapping[str, bool],
    healthy: list[EmergencyHop],
    down: list[EmergencyHop],
    notes: list[str],
) -> None:
    """Each hop of ``path`` to ``healthy`` or (marked last resort) to ``down``."""
    path_up = health.get(path, True)
    if not path_up:
        notes.append(f"{_path_name(path)} is down; tried last")
    for hop in hops:
        key = gateway_key(hop)
        if path_up and health.get(key, True):
            healthy.append(hop)
            continue
        if path_up:
            notes.append(f"gateway {key} of {_path_name(path)} is down; tried last")
        down.append(replace(hop, last_resort=True))


def _path_name(path: str) -> str:
    return "direct offer" if path == DIRECT_OFFER else f"trunk {path!r}"


def _service_urn(detection: Detection) -> str | None:
    """The URN a call arrived as (``urn:service:sos.fire``), or ``None`` for a dial string."""
    return detection.dialled if detection.kind == "urn" else None


def _direct_routing_hops(
    detection: Detection,
    rule: DirectRoutingRule,
    trunk: TrunkLike,
    config: EmergencySettings,
) -> list[EmergencyHop]:
    """The gateways of the rule's trunk, in the trunk's order: the carrier gets the dial
    string as digits, or the service URN the call arrived as."""
    urn = _service_urn(detection)
    return [
        EmergencyHop(
            route=f"direct-routing:{rule.trunk}",
            trunk=rule.trunk,
            host=gateway.host,
            port=gateway.port,
            transport=gateway.transport,
            user=None if urn else detection.dialled,
            request_uri=urn,
            failover_codes=EMERGENCY_FAILOVER_CODES | frozenset(trunk.failover_codes),
            provisional_timeout_s=min(trunk.provisional_timeout_s, config.provisional_timeout_s),
            accepts_location=rule.accepts_location,
        )
        for gateway in trunk.gateways
    ]


def _direct_offer_hops(
    detection: Detection,
    offer: DirectOfferService,
    config: EmergencySettings,
) -> list[EmergencyHop]:
    """The direct-offer gateways, each sent a service URN."""
    urn = _service_urn(detection)
    if urn is not None:
        request_uri = urn  # RFC 5031 section 4.2: keep the sub-service (sos.fire)
    else:
        request_uri = TEST_SERVICE_URN if detection.test else offer.request_uri
    return [
        EmergencyHop(
            route=DIRECT_OFFER,
            trunk=DIRECT_OFFER,
            host=gateway.host,
            port=gateway.port,
            transport=gateway.transport,
            user=None,
            request_uri=request_uri,
            failover_codes=EMERGENCY_FAILOVER_CODES,
            provisional_timeout_s=config.provisional_timeout_s,
            accepts_location=offer.accepts_location,
        )
        for gateway in offer.gateways
    ]


def _no_route_warning(
    detection: Detection, country: str | None, rule: DirectRoutingRule | None
) -> str:
    """The Warning text of the 503 answered when an emergency call has no hop at all."""
    if rule is None:
        why = "no direct-routing rule matches and direct offer is disabled"
    else:
        why = f"direct-routing rule {rule.name!r} has no usable trunk and direct offer is disabled"
    return f"no emergency route for {_describe(detection, country)}: {why}"
