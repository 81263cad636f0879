"""The best location for an emergency call, and desktop location commands (SPEC E-10).

Pure functions: gateway.location.choice.choose_location and
gateway.location.desktop.check_location_command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.config.dialplan import Location
from gateway.location.choice import LOCATION_SOURCES, LocationChoice, choose_location
from gateway.location.desktop import (
    ClearLocation,
    RefusedCommand,
    SetLocation,
    check_location_command,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"

HOME = Location(street="Elm St", house_number="12", city="Springfield", country="US")
OFFICE = Location(street="Main St", house_number="100", city="Springfield", country="US")
HQ = Location(street="Market St", house_number="1", city="Chicago", floor="2", country="US")
LOBBY = Location(street="Market St", house_number="1", city="Chicago", room="L", country="US")


# -- choose_location -------------------------------------------------------------------------


def test_the_phones_location_wins_and_nothing_is_added() -> None:
    choice = choose_location(True, HOME, OFFICE, HQ, site_call=LOBBY)
    assert choice == LocationChoice(None, "phone", None)
    # even on a path that takes no location: the phone's is passed on unchanged
    assert choose_location(True, HOME, None, HQ, path_accepts_location=False).source == "phone"


@pytest.mark.parametrize(
    ("desktop", "network", "static", "expected"),
    [
        (HOME, OFFICE, HQ, LocationChoice(HOME, "desktop", "Manual")),
        (None, OFFICE, HQ, LocationChoice(OFFICE, "network_map", "Wiremap")),
        (None, None, HQ, LocationChoice(HQ, "static", "Manual")),
        (None, None, None, LocationChoice(None, "none", None)),
        (HOME, None, None, LocationChoice(HOME, "desktop", "Manual")),
        (None, OFFICE, None, LocationChoice(OFFICE, "network_map", "Wiremap")),
    ],
)
def test_agents_get_the_best_available_in_order(
    desktop: Location | None,
    network: Location | None,
    static: Location | None,
    expected: LocationChoice,
) -> None:
    assert choose_location(False, desktop, network, static) == expected


def test_a_site_call_carries_the_site() -> None:
    choice = choose_location(False, None, None, None, site_call=LOBBY)
    assert choice == LocationChoice(LOBBY, "site", "Wiremap")


def test_a_path_without_location_gets_none() -> None:
    choice = choose_location(False, HOME, OFFICE, HQ, path_accepts_location=False)
    assert choice == LocationChoice(None, "none", None)


def test_sources_agree_with_the_emergency_event_schema() -> None:
    schema = json.loads((SCHEMAS / "emergency-event.v1.json").read_text())
    assert tuple(schema["properties"]["location_source"]["enum"]) == LOCATION_SOURCES
    location_schema = json.loads((SCHEMAS / "agent-location.v1.json").read_text())
    assert set(location_schema["properties"]["source"]["enum"]) <= set(LOCATION_SOURCES)


# -- check_location_command ------------------------------------------------------------------


def test_a_full_civic_address_is_accepted() -> None:
    civic = {"street": "Elm St", "house_number": "12", "city": "Springfield", "country": "US"}
    command = check_location_command({"version": 1, "location": civic, "id": "r-1"})
    assert command == SetLocation(HOME, "r-1")


def test_null_clears() -> None:
    assert check_location_command({"location": None}) == ClearLocation(None)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"location": {"country": "USA"}}, "location.country: 'USA' is not an ISO 3166"),
        ({"location": {"country": "us"}}, "location.country"),
        ({"location": {"city": "Springfield"}}, "location.country: is required"),
        ({"location": {"country": "US", "flat": "3"}}, "location.flat: is not a civic field"),
        ({"location": {"country": "US", "street": 12}}, "location.street"),
        ({"location": {"country": "US", "street": "a\x01"}}, "XML cannot carry"),
        ({"location": {"country": "US", "room": "x" * 201}}, "longer than 200"),
        ({"location": "Elm St 12"}, "a JSON object or null"),
        ({"location": ["US"]}, "a JSON object or null"),
        ({}, "no location field"),
        ({"version": 2, "location": None}, "unsupported version 2"),
        ({"version": True, "location": None}, "unsupported version True"),
        ({"id": 7, "location": None}, "id must be a string"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(payload: dict[str, Any], reason: str) -> None:
    command = check_location_command(payload)
    assert isinstance(command, RefusedCommand)
    assert reason in command.reason


def test_the_request_id_is_echoed_on_refusal() -> None:
    command = check_location_command({"id": "r-9", "location": {"country": "XXX"}})
    assert isinstance(command, RefusedCommand) and command.request_id == "r-9"


@pytest.mark.parametrize(
    "payload",
    [
        {"location": {"country": "US"}},
        {"location": None},
        {"version": 1, "location": {"country": "GB", "street": "High St"}, "id": "a"},
        {"location": {"country": "USA"}},
        {"location": {"country": "US", "flat": "3"}},
        {"location": 5},
        {},
    ],
)
def test_the_checks_agree_with_the_command_schema(payload: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / "location-set.v1.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    accepted = not isinstance(check_location_command(payload), RefusedCommand)
    assert validator.is_valid(payload) == accepted


@pytest.mark.parametrize(
    "name", ["agent-location.v1.json", "location-set.v1.json", "location-ack.v1.json"]
)
def test_location_schemas_are_valid_and_their_examples_pass(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["examples"]
    for example in schema["examples"]:
        jsonschema.Draft202012Validator(schema).validate(example)
