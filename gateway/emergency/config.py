"""Emergency configuration: direct routing, direct offer, callback pool (SPEC E-2, E-4, E-12).

Theory of operation
-------------------
These are the emergency sections of a dialplan, as plain frozen dataclasses, so that the
policy functions in this package can be written and tested before the pydantic dialplan
grows them. The dialplan schema is expected to mirror them field for field (same names,
same defaults) and hand an :class:`EmergencyConfig` to the policy.

Validation that needs no other section happens here, in ``__post_init__``: regexes compile,
numbers are in range, countries are upper-case ISO codes. Cross-references (a rule naming a
trunk that does not exist) are reported by :func:`gateway.emergency.prerequisites.check_config`
because they need the trunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "DIRECT_OFFER",
    "CallbackPool",
    "DirectOffer",
    "DirectRoutingRule",
    "EmergencyConfig",
    "GatewayTuple",
]

#: the name the direct-offer path goes by: in route names, and as its key in trunk health
DIRECT_OFFER = "direct-offer"

#: a SIP peer as (host, port, transport), transport one of "udp", "tcp", "tls"
GatewayTuple = tuple[str, int, str]

_COUNTRY = re.compile(r"[A-Z]{2}\Z")


@dataclass(frozen=True, slots=True)
class DirectRoutingRule:
    """Send matching emergency calls to a direct-routing trunk, a carrier SBC (SPEC E-2).

    ``match`` is a Python regex *searched* (use anchors: ``'^911$'``) in the detected
    dial string (``"911"``) and in the RFC 5031 service (``"sos"``, ``"sos.fire"``,
    ``"test.sos"``); the rule matches when either matches. So ``'^sos'`` covers service
    URNs *and* real dial strings (which map to service ``sos``) but not test calls.

    ``countries`` limits the rule to agents in those countries; empty means any country.
    An agent whose country is unknown or unsupported is matched by every rule (SPEC E-11:
    best available path).

    ``accepts_location``: whether the SBC takes a PIDF-LO by value (RFC 6442) on this
    trunk (SPEC E-10). Off by default: a carrier that does not understand a multipart body
    may answer 415, which is not a failover code, and the call would fail.
    """

    name: str
    match: str
    trunk: str
    countries: tuple[str, ...] = ()
    accepts_location: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.match)
        except re.error as error:
            raise ValueError(
                f"direct-routing rule {self.name!r}: invalid regular expression "
                f"'{self.match}': {error}"
            ) from None
        object.__setattr__(self, "pattern", compiled)
        for country in self.countries:
            if not _COUNTRY.match(country):
                raise ValueError(
                    f"direct-routing rule {self.name!r}: {country!r} is not an ISO 3166 "
                    "alpha-2 code in upper case such as US or GB"
                )

    def matches(self, dialled: str, service: str) -> bool:
        """Whether ``match`` is found in the dial string or the service (see above)."""
        return self.pattern.search(dialled) is not None or self.pattern.search(service) is not None


@dataclass(frozen=True, slots=True)
class DirectOffer:
    """The direct-offer path: a hosted emergency-calling service (SPEC E-2).

    Used when no direct-routing rule matches, and as the fallback when every
    direct-routing gateway fails. ``request_uri`` is the Request-URI sent for a real
    emergency dial string, ``test_request_uri`` for a test dial string (933; RFC 6881
    section 15); a call that arrived as a service URN keeps its own URN
    (``urn:service:sos.fire`` stays ``sos.fire``, RFC 5031 section 4.2).
    """

    enabled: bool
    gateways: tuple[GatewayTuple, ...]
    request_uri: str = "urn:service:sos"
    accepts_location: bool = True
    test_request_uri: str = "urn:service:test.sos"

    def __post_init__(self) -> None:
        for host, port, transport in self.gateways:
            if not 1 <= port <= 65535:
                raise ValueError(f"direct offer gateway {host}: port {port} out of 1..65535")
            if transport not in ("udp", "tcp", "tls"):
                raise ValueError(
                    f"direct offer gateway {host}: transport {transport!r} is not udp, tcp or tls"
                )


@dataclass(frozen=True, slots=True)
class CallbackPool:
    """Callback DIDs lent to agents after an emergency call (SPEC E-4, C-1).

    ``window_s`` is how long a DID stays reserved from the time of dialling
    (60 minutes by default).
    """

    dids: tuple[str, ...]
    window_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"callback window_s must be positive, not {self.window_s}")


@dataclass(frozen=True, slots=True)
class EmergencyConfig:
    """The emergency section of a dialplan.

    ``emergency_provisional_timeout_s`` caps a trunk's ``provisional_timeout_s`` on
    emergency hops (SPEC E-2: "shorter for emergency"). ``dnd_on_test_calls`` says whether
    a test call (SPEC E-12) puts the agent in DND like a real one (E-5).
    """

    direct_routing: tuple[DirectRoutingRule, ...]
    direct_offer: DirectOffer | None
    callback: CallbackPool
    emergency_provisional_timeout_s: float = 3.0
    dnd_on_test_calls: bool = False

    def __post_init__(self) -> None:
        if self.emergency_provisional_timeout_s <= 0:
            raise ValueError(
                "emergency_provisional_timeout_s must be positive, not "
                f"{self.emergency_provisional_timeout_s}"
            )
        seen: set[str] = set()
        for rule in self.direct_routing:
            if rule.name in seen:
                raise ValueError(f"duplicate direct-routing rule name {rule.name!r}")
            seen.add(rule.name)

    @property
    def direct_offer_enabled(self) -> bool:
        """Whether the direct-offer path exists (configured, enabled, with gateways)."""
        offer = self.direct_offer
        return offer is not None and offer.enabled and bool(offer.gateways)
