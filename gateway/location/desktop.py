"""Location commands from an agent's desktop (SPEC E-10, W-1): checked, typed, pure.

A desktop publishes on ``<prefix>/agents/<agent>/location/set`` (schema
``docs/schemas/location-set.v1.json``)::

    {"version": 1, "location": {"street": "Elm St", "house_number": "12",
     "city": "Springfield", "state": "IL", "postcode": "62704", "country": "US",
     "floor": "1"}, "id": "req-42"}

``"location": null`` clears the confirmed address (the network map or the dialplan's
address applies again). :func:`check_location_command` turns the decoded JSON object into
a :class:`SetLocation`, a :class:`ClearLocation` or a :class:`RefusedCommand` with a
reason an engineer can act on. The civic fields are those of the dialplan's
:class:`~gateway.config.dialplan.Location` under the same rules (``country`` an ISO 3166
alpha-2 code, unknown fields refused), and every value must be one a PIDF-LO can carry:
a location the gateway could not put on an emergency call is refused now, not discovered
during the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from gateway.config.dialplan import Location
from gateway.location.pidf import pidf_lo

__all__ = [
    "MAX_CIVIC_VALUE",
    "MAX_REQUEST_ID",
    "ClearLocation",
    "RefusedCommand",
    "SetLocation",
    "check_location_command",
]

MAX_CIVIC_VALUE: Final = 200
"""Longest civic value accepted (characters); the INVITE should stay a sane size."""
MAX_REQUEST_ID: Final = 100
"""Longest ``id`` echoed back in the acknowledgement."""


@dataclass(frozen=True, slots=True)
class SetLocation:
    """The agent confirmed ``location``."""

    location: Location
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClearLocation:
    """The agent withdrew the confirmed location."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefusedCommand:
    """A command that changes nothing, and why."""

    reason: str
    request_id: str | None = None


LocationCommand = SetLocation | ClearLocation | RefusedCommand


def check_location_command(payload: Mapping[str, Any]) -> LocationCommand:
    """The command ``payload`` (a decoded JSON object) asks for, or why it is refused."""
    raw_id = payload.get("id")
    request_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_REQUEST_ID else None
    if raw_id is not None and request_id is None:
        return RefusedCommand(f"id must be a string of at most {MAX_REQUEST_ID} characters")
    version = payload.get("version", 1)
    if version != 1 or isinstance(version, bool):
        return RefusedCommand(f"unsupported version {version!r} (expected 1)", request_id)
    if "location" not in payload:
        return RefusedCommand("no location field (an object, or null to clear)", request_id)
    civic = payload["location"]
    if civic is None:
        return ClearLocation(request_id)
    if not isinstance(civic, dict):
        return RefusedCommand("location must be a JSON object or null", request_id)
    for field, value in civic.items():
        if isinstance(value, str) and len(value) > MAX_CIVIC_VALUE:
            return RefusedCommand(
                f"location.{field} is longer than {MAX_CIVIC_VALUE} characters", request_id
            )
    try:
        location = Location.model_validate(civic, strict=True)
    except ValidationError as exc:
        return RefusedCommand(_describe(exc), request_id)
    try:
        # the same document the emergency leg will carry: refuse what XML cannot hold
        pidf_lo(location, "pres:check@gateway.invalid", now_iso="2000-01-01T00:00:00Z")
    except ValueError as exc:
        return RefusedCommand(str(exc), request_id)
    return SetLocation(location, request_id)


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``location.country: 'USA' is not an ISO 3166 ...``."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "is not a civic field (street, house_number, city, state, postcode, "
            message += "country, building, floor, room)"
        elif error["type"] == "missing":
            message = "is required"
        problems.append(f"location.{where}: {message}" if where else f"location: {message}")
    return "; ".join(problems)
