"""Location conveyance on the emergency leg (SPEC E-10; RFC 6442, RFC 4119, RFC 5139, RFC 5491).

* :func:`pidf_lo`: a PIDF-LO document for an agent's civic address (pure);
* :func:`has_location`: does a request already convey a location (pure);
* :func:`add_location_by_value`: add the agent's location as a PIDF-LO body part and a
  ``Geolocation: <cid:...>`` header, unless the request already conveys one (mutates the
  request; time and randomness are arguments);
* :func:`split_multipart`: the parts of a multipart body (pure).

No I/O, no clock, no random source: the call layer passes ``now_iso`` and
``boundary_random`` in. The same holds for :mod:`gateway.location.choice` (which location
a call carries) and :mod:`gateway.location.desktop` (desktop location commands);
:mod:`gateway.location.service` is the edge that keeps agents' locations with the store
and MQTT.
"""

from __future__ import annotations

from gateway.location.conveyance import (
    LOCATION_CONTENT_DISPOSITION,
    add_location_by_value,
    has_location,
)
from gateway.location.multipart import MultipartError, parse_content_type, split_multipart
from gateway.location.pidf import PIDF_CONTENT_TYPE, pidf_lo

__all__ = [
    "LOCATION_CONTENT_DISPOSITION",
    "PIDF_CONTENT_TYPE",
    "MultipartError",
    "add_location_by_value",
    "has_location",
    "parse_content_type",
    "pidf_lo",
    "split_multipart",
]
