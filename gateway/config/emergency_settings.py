"""The emergency section of a dialplan (SPEC E-1 .. E-12, C-1 .. C-4): direct routing,
direct offer, the callback pool, the emergency timers.

These models are the one configuration type of the emergency policy
(:mod:`gateway.emergency`): it reads them as loaded, with no copy in between.
``gateway.config.dialplan`` re-exports them; rule names and trunks are checked by
:class:`~gateway.config.dialplan.Dialplan`, which knows the trunks.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from gateway.config.fields import (
    EmergencyCountry,
    Frozen,
    GatewayAddress,
    Regex,
    RuleName,
    check_e164_required,
    check_not_empty,
    check_request_uri,
)
from gateway.config.keepalive import Keepalive


class DirectRoutingRule(Frozen):
    """An emergency direct-routing rule (SPEC E-2): a detected emergency call goes to
    ``trunk``, the carrier's SBC, for the agents of ``countries`` (all countries when empty).

    ``match`` is a Python regex *searched* (use anchors: ``'^911$'``) in the detected dial
    string (``"911"``) and in the RFC 5031 service (``"sos"``, ``"sos.fire"``,
    ``"test.sos"``); the rule matches when either matches. So ``'^sos'`` covers service
    URNs *and* real dial strings (which map to service ``sos``) but not test calls.

    ``accepts_location``: whether the SBC takes a PIDF-LO by value (RFC 6442) on this
    trunk (SPEC E-10). Off by default: a carrier that does not understand a multipart body
    may answer 415, which is not a failover code, and the call would fail.
    """

    name: RuleName
    match: Regex
    trunk: str
    countries: tuple[EmergencyCountry, ...] = ()
    accepts_location: bool = False

    def model_post_init(self, context: Any, /) -> None:
        """Compile the regex now, at load time, rather than on the first emergency call."""
        _ = self.pattern

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """The compiled ``match`` regex."""
        return re.compile(self.match)

    def matches(self, dialled: str, service: str) -> bool:
        """Whether ``match`` is found in the dial string or the service (see above)."""
        return self.pattern.search(dialled) is not None or self.pattern.search(service) is not None


class DirectOfferService(Frozen):
    """The direct-offer path: a hosted emergency-calling service (SPEC E-2).

    Used when no direct-routing rule matches, and as the fallback when every
    direct-routing gateway fails. ``request_uri`` is the Request-URI sent for a real
    emergency dial string; a test dial string (933) is sent to ``urn:service:test.sos``
    (RFC 6881 section 15) and a call that arrived as a service URN keeps its own URN.
    """

    enabled: bool = True
    gateways: Annotated[tuple[GatewayAddress, ...], AfterValidator(check_not_empty)]
    request_uri: Annotated[str, AfterValidator(check_request_uri)] = "urn:service:sos"
    accepts_location: bool = True
    #: OPTIONS keep-alives to each gateway (SPEC O-3); none: never probed, always up
    keepalive: Keepalive | None = None


class CallbackPoolConfig(Frozen):
    """Callback DIDs lent to agents who dial an emergency number (SPEC E-4, C-1);
    ``window_s`` is how long a DID stays reserved from the time of dialling."""

    dids: tuple[Annotated[str, AfterValidator(check_e164_required)], ...] = ()
    window_s: Annotated[float, Field(gt=0)] = 3600.0
    #: this node's own share, lent only while the shared store (Redis) is down (issue #12):
    #: disjoint from ``dids`` and from every other node's share
    outage_dids: tuple[Annotated[str, AfterValidator(check_e164_required)], ...] = ()

    @model_validator(mode="after")
    def _outage_share_is_set_aside(self) -> CallbackPoolConfig:
        shared = sorted(set(self.dids) & set(self.outage_dids))
        if shared:
            raise ValueError(
                f"outage_dids must be set aside from dids; in both: {', '.join(shared)}"
            )
        return self


class EmergencySettings(Frozen):
    """How emergency calls are routed (SPEC E-2): direct routing first, then direct offer.

    This is the configuration the emergency policy (:mod:`gateway.emergency`) reads.
    ``provisional_timeout_s`` caps a trunk's own on emergency hops (SPEC E-2: "shorter for
    emergency"); ``dnd_on_test_calls`` says whether a test call (E-12) puts the agent in
    DND like a real one (E-5). Rule names and trunks are checked by :class:`Dialplan`.
    """

    provisional_timeout_s: Annotated[float, Field(gt=0)] = 3.0
    #: after a provisional response, no 18x or 2xx within this time: the next path (E-2)
    setup_timeout_s: Annotated[float, Field(gt=0)] = 6.0
    #: how long a callback rings the agent before its callback_fallback (SPEC C-3)
    callback_ring_timeout_s: Annotated[float, Field(gt=0)] = 20.0
    direct_routing: tuple[DirectRoutingRule, ...] = ()
    direct_offer: DirectOfferService | None = None
    callback: CallbackPoolConfig = CallbackPoolConfig()
    dnd_on_test_calls: bool = False

    @property
    def direct_offer_enabled(self) -> bool:
        """Whether the direct-offer path exists (configured, enabled, with gateways)."""
        offer = self.direct_offer
        return offer is not None and offer.enabled and bool(offer.gateways)
