"""Which location an emergency call carries: the best one available (SPEC E-10, RAY BAUM'S Act).

Theory of operation
-------------------
An agent who moves (home, another office) must not send the PSAP to the building the
dialplan names. :func:`choose_location` takes what is known about the caller and returns
the best location, in this order:

=====  ================  ======================================================  ==========
rank   source            what                                                    method
=====  ================  ======================================================  ==========
1      ``phone``         a PIDF-LO / Geolocation the phone sent: passed on as    (phone's)
                         it is, nothing added
2      ``site``          a site call (an unidentified phone on a trusted         Wiremap
                         network, SPEC E-13): that site's address
3      ``desktop``       the address the agent confirmed on the desktop (MQTT)   Manual
4      ``network_map``   the site whose network holds the registration's         Wiremap
                         source address (what a LIS does)
5      ``static``        the agent's address in the dialplan                     Manual
6      ``none``          nothing to send, or a path that takes no location
=====  ================  ======================================================  ==========

The method is the RFC 4119 section 2.2.3 ``<gp:method>`` token, from the IANA "Method
Tokens" registry: ``Manual`` means a person entered the location (the agent on the
desktop, or an engineer in the dialplan); ``Wiremap`` means it was looked up from where
the device is attached to the network (here the subnet of its source address), which is
what the network map is. ``DHCP`` would claim the phone learned it from a DHCP option,
which it did not.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from gateway.config.dialplan import Location
from gateway.stores.ports import Binding

__all__ = [
    "LOCATION_SOURCES",
    "METHOD_MANUAL",
    "METHOD_WIREMAP",
    "LocationChoice",
    "LocationSource",
    "choose_location",
    "current_registration",
    "source_host",
]

LocationSource = Literal["phone", "desktop", "network_map", "static", "site", "none"]
LOCATION_SOURCES: Final[tuple[str, ...]] = (
    "phone",
    "desktop",
    "network_map",
    "static",
    "site",
    "none",
)
"""Every ``location_source`` value (emergency events, the agent location topic)."""

#: IANA Method Tokens: entered by a person (the agent on the desktop, the dialplan's author)
METHOD_MANUAL: Final = "Manual"
#: IANA Method Tokens: looked up from the device's network attachment (the subnet map)
METHOD_WIREMAP: Final = "Wiremap"


@dataclass(frozen=True, slots=True)
class LocationChoice:
    """The location to add by value (None: add nothing), where it came from, its method."""

    location: Location | None
    source: LocationSource
    method: str | None


_PHONE: Final = LocationChoice(None, "phone", None)
_NONE: Final = LocationChoice(None, "none", None)


def choose_location(
    phone_has_location: bool,
    desktop: Location | None,
    network_site: Location | None,
    static: Location | None,
    *,
    site_call: Location | None = None,
    path_accepts_location: bool = True,
) -> LocationChoice:
    """The best location for an emergency call (see the table in the module docstring).

    ``phone_has_location``: the request already conveys a location (it is passed on
    unchanged whatever the path, so it wins even where nothing may be added).
    ``desktop``: the agent's desktop-confirmed address; ``network_site``: the address of
    the site whose network holds the registration's source; ``static``: the dialplan's;
    ``site_call``: the site's address when the call is placed for a site, not an agent.
    ``path_accepts_location`` False (a trunk that takes no location) gives ``none``
    unless the phone sent one.
    """
    if phone_has_location:
        return _PHONE
    if not path_accepts_location:
        return _NONE
    if site_call is not None:
        return LocationChoice(site_call, "site", METHOD_WIREMAP)
    if desktop is not None:
        return LocationChoice(desktop, "desktop", METHOD_MANUAL)
    if network_site is not None:
        return LocationChoice(network_site, "network_map", METHOD_WIREMAP)
    if static is not None:
        return LocationChoice(static, "static", METHOD_MANUAL)
    return _NONE


def source_host(source: str) -> str:
    """The host of a binding's ``transport:host:port`` source (IPv6 without brackets)."""
    rest = source.partition(":")[2]
    return rest.rpartition(":")[0].strip("[]")


def current_registration(bindings: Iterable[Binding]) -> Binding | None:
    """The agent's latest registration: the binding that lives longest (the one
    refreshed last, for phones with the same expiry), or None."""
    return max(bindings, key=lambda binding: binding.expires_at, default=None)
