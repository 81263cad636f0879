"""Emergency dial strings per country: data the dialplan is checked against (SPEC E-1, E-12).

The table sits in the configuration package because both sides read it: the dialplan
schema refuses an emergency rule limited to a country the gateway has no dial strings for,
and the emergency policy (:mod:`gateway.emergency.numbers`, which re-exports these names)
detects emergency calls with it. Configuration never imports the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DIAL_STRINGS", "DialString", "countries_supported"]


@dataclass(frozen=True, slots=True)
class DialString:
    """One emergency dial string of a country; ``test`` for test numbers (SPEC E-12)."""

    digits: str
    test: bool = False


#: Emergency dial strings per ISO 3166 alpha-2 country (SPEC E-1, E-12). Data, not code:
#: adding a country is adding a line here (and a direct-routing rule or direct offer that
#: covers it, which ``gateway check`` verifies, SPEC E-11).
DIAL_STRINGS: Mapping[str, tuple[DialString, ...]] = MappingProxyType(
    {
        "US": (DialString("911"), DialString("933", test=True)),
        "CA": (DialString("911"),),
        "PR": (DialString("911"),),
        "GB": (DialString("999"), DialString("112")),
        "DK": (DialString("112"),),
    }
)

_COUNTRIES: frozenset[str] = frozenset(DIAL_STRINGS)


def countries_supported() -> frozenset[str]:
    """The countries whose emergency dial strings the gateway knows (SPEC E-1, E-11)."""
    return _COUNTRIES
