"""Typed failure outcomes of the call layer and the emergency event fields built from them.

The words (``error`` kinds, ``result`` values) live in gateway.b2bua.call; the JSON Schema
of the emergency events must list exactly the same (a test fails when they drift).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from gateway.b2bua.call import CallOutcome, EndKind, FailureKind, LegFailure
from gateway.events.schema import emergency_payload
from gateway.sip.errors import warning_value

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "emergency-event.v1.json").read_text("utf-8"))
NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)

SBC_503 = LegFailure(
    "direct-routing:carrier-sbc",
    "udp:127.0.0.1:5081",
    503,
    FailureKind.STATUS,
    "Service Unavailable",
)
OFFER_SILENT = LegFailure(
    "direct-offer", "udp:127.0.0.1:5082", None, FailureKind.TIMEOUT, "no response (timer B)"
)


def test_failure_kinds_are_the_schema_error_enum() -> None:
    assert [kind.value for kind in FailureKind] == SCHEMA["$defs"]["error"]["enum"]


def test_end_kinds_are_the_schema_result_enum() -> None:
    assert [kind.value for kind in EndKind] == SCHEMA["properties"]["result"]["enum"]


def test_a_failure_describes_path_gateway_code_and_why() -> None:
    assert SBC_503.describe() == (
        "direct-routing:carrier-sbc udp:127.0.0.1:5081 503 Service Unavailable"
    )
    assert OFFER_SILENT.describe() == "direct-offer udp:127.0.0.1:5082 no response (timer B)"


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        (FailureKind.TIMEOUT, 408, "Request Timeout"),
        (FailureKind.PROVISIONAL_TIMEOUT, 408, "Request Timeout"),
        (FailureKind.SETUP_TIMEOUT, 408, "Request Timeout"),
        (FailureKind.RING_TIMEOUT, 408, "Request Timeout"),
        (FailureKind.REFUSED, 503, "Service Unavailable"),
        (FailureKind.TRANSPORT, 503, "Service Unavailable"),
        (FailureKind.BAD_RESPONSE, 502, "Bad Gateway"),
    ],
)
def test_a_failure_without_a_response_maps_to_the_status_an_ordinary_caller_gets(
    kind: FailureKind, status: int, reason: str
) -> None:
    failure = LegFailure("carrier", "udp:192.0.2.1:5060", None, kind, "why")
    assert (failure.status, failure.reason) == (status, reason)


def test_a_far_end_status_is_kept_with_its_reason_phrase() -> None:
    failure = LegFailure("carrier", "udp:192.0.2.1:5060", 486, FailureKind.STATUS, "Busy Here")
    assert (failure.status, failure.reason) == (486, "Busy Here")


def test_outcome_text_is_the_call_history_form() -> None:
    assert CallOutcome(EndKind.FAILED, 503, (SBC_503,)).text == "failed 503"
    assert CallOutcome(EndKind.FAILED, 503).failed
    assert CallOutcome(EndKind.COMPLETED).text == "completed"
    assert not CallOutcome(EndKind.COMPLETED).failed
    assert CallOutcome(EndKind.CANCELLED).text == "cancelled"
    assert CallOutcome(EndKind.NO_ACK).text == "no ACK"


def test_failover_and_failed_events_validate_and_need_their_fields() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    failover = emergency_payload(
        call="c-1", event="failover", timestamp=NOW, route="direct-offer", extra=SBC_503.as_event()
    )
    validator.validate(failover)
    assert failover["code"] == 503 and failover["error"] == "status"
    silent = emergency_payload(
        call="c-1", event="failover", timestamp=NOW, extra=OFFER_SILENT.as_event()
    )
    validator.validate(silent)
    assert silent["code"] is None  # null, not left out
    outcome = CallOutcome(EndKind.FAILED, 503, (SBC_503, OFFER_SILENT))
    failed = emergency_payload(
        call="c-1",
        event="failed",
        timestamp=NOW,
        extra={
            "result": outcome.kind.value,
            "status": outcome.status,
            "attempts": [a.as_event() for a in outcome.attempts],
        },
    )
    validator.validate(failed)
    # a bare "failed 503" (the old form) no longer passes, nor a failover without its fields
    assert not validator.is_valid(
        emergency_payload(call="c-1", event="failed", timestamp=NOW, extra={"result": "failed 503"})
    )
    assert not validator.is_valid(
        emergency_payload(call="c-1", event="failover", timestamp=NOW, extra={"code": 503})
    )
    assert not validator.is_valid(dict(failed, attempts=2))  # a count is for notifications
    bad_kind = dict(failover, error="exploded")
    assert not validator.is_valid(bad_kind)
    for example in SCHEMA["examples"]:
        validator.validate(example)


def test_a_long_warning_can_name_every_attempt() -> None:
    text = "; ".join([SBC_503.describe(), SBC_503.describe(), OFFER_SILENT.describe()])
    assert text in warning_value(text, agent="127.0.0.1", limit=800)
    assert warning_value("x" * 300).count("x") == 200  # the default limit is unchanged
