"""The emergency policy as pure functions (SPEC E-1, E-2, E-3, E-8, E-11, E-12, C-1, C-2)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from gateway.config.dialplan import (
    Agent,
    CallbackPoolConfig,
    Dialplan,
    DirectOfferService,
    DirectRoutingRule,
    EmergencySettings,
    GatewayAddress,
    Location,
)
from gateway.config.loader import load_dialplan_text
from gateway.emergency.callbacks import (
    is_callback,
    priority_headers_allowed,
    strip_untrusted_priority,
)
from gateway.emergency.lockdown import Verdict, agent_request_allowed, is_hold_offer
from gateway.emergency.numbers import (
    DIAL_STRINGS,
    Detection,
    countries_supported,
    detect,
    detect_rewritten,
    dial_strings,
)
from gateway.emergency.prerequisites import check_agent, check_config
from gateway.emergency.routing import (
    DIRECT_OFFER,
    EMERGENCY_FAILOVER_CODES,
    RoutePlan,
    choose_route,
    matching_rule,
)
from gateway.sip.message import Request, parse_message
from gateway.sip.uri import parse_uri
from gateway.stores.ports import Reservation

# -- E-1 / E-12 detection ------------------------------------------------------------------

#: (Request-URI, agent country, expected (kind, dialled, service, test) or None)
DETECTION_CASES: list[tuple[str, str | None, tuple[str, str, str, bool] | None]] = [
    # 911 in every form SPEC E-1 names
    ("sip:911@gw.example", "US", ("dialstring", "911", "sos", False)),
    ("sips:911@gw.example", "US", ("dialstring", "911", "sos", False)),
    ("sip:911@gw.example;user=phone", "US", ("dialstring", "911", "sos", False)),
    ("sip:911@gw.example;user=dialstring", "US", ("dialstring", "911", "sos", False)),
    ("sip:+911@gw.example;user=phone", "US", ("dialstring", "911", "sos", False)),
    ("sip:+911@gw.example", "US", ("dialstring", "911", "sos", False)),
    ("tel:911", "US", ("dialstring", "911", "sos", False)),
    ("tel:+911", "US", ("dialstring", "911", "sos", False)),
    ("tel:911;phone-context=+1", "US", ("dialstring", "911", "sos", False)),
    ("tel:911;phone-context=example.com", "US", ("dialstring", "911", "sos", False)),
    ("sip:911;phone-context=+1@esrp.example;user=phone", "US", ("dialstring", "911", "sos", False)),
    (
        "sip:911;phone-context=example.com@gw;user=dialstring",
        "CA",
        ("dialstring", "911", "sos", False),
    ),
    ("tel:9-1-1", "US", ("dialstring", "911", "sos", False)),
    ("tel:(911)", "US", ("dialstring", "911", "sos", False)),
    ("tel:+9.1.1", "US", ("dialstring", "911", "sos", False)),
    ("sip:9-1-1@gw.example;user=phone", "US", ("dialstring", "911", "sos", False)),
    ("sip:%39%31%31@gw.example", "US", ("dialstring", "911", "sos", False)),
    ("sip:911@[2001:db8::1]:5060;transport=tcp", "US", ("dialstring", "911", "sos", False)),
    ("sip:911@gw.example", "CA", ("dialstring", "911", "sos", False)),
    ("sip:911@gw.example", "PR", ("dialstring", "911", "sos", False)),
    ("sip:911@gw.example", "us", ("dialstring", "911", "sos", False)),  # country case
    # E-12: the US test number
    ("sip:933@gw.example", "US", ("dialstring", "933", "test.sos", True)),
    ("tel:+933", "US", ("dialstring", "933", "test.sos", True)),
    # GB and DK
    ("sip:999@gw.example", "GB", ("dialstring", "999", "sos", False)),
    ("sip:112@gw.example", "GB", ("dialstring", "112", "sos", False)),
    ("tel:+112", "GB", ("dialstring", "112", "sos", False)),
    ("sip:112@gw.example;user=phone", "DK", ("dialstring", "112", "sos", False)),
    # service URNs (RFC 5031), any country, case-insensitive
    ("urn:service:sos", "US", ("urn", "urn:service:sos", "sos", False)),
    ("urn:service:sos.fire", "GB", ("urn", "urn:service:sos.fire", "sos.fire", False)),
    ("urn:service:sos.police", "DK", ("urn", "urn:service:sos.police", "sos.police", False)),
    (
        "urn:service:sos.ambulance",
        None,
        ("urn", "urn:service:sos.ambulance", "sos.ambulance", False),
    ),
    ("URN:Service:SOS", "US", ("urn", "urn:service:sos", "sos", False)),
    ("urn:SERVICE:Sos.Fire", "FR", ("urn", "urn:service:sos.fire", "sos.fire", False)),
    ("urn:service:sos.", "US", ("urn", "urn:service:sos", "sos", False)),  # lenient
    ("urn:service:test.sos", "US", ("urn", "urn:service:test.sos", "test.sos", True)),
    (
        "urn:service:test.sos.fire",
        "GB",
        ("urn", "urn:service:test.sos.fire", "test.sos.fire", True),
    ),
    # counter-cases: not the dial string
    ("sip:9911@gw.example", "US", None),
    ("sip:9111@gw.example", "US", None),
    ("sip:1911@gw.example", "US", None),
    ("tel:+1-911", "US", None),
    ("sip:91@gw.example", "US", None),
    ("sip:9112@gw.example", "GB", None),
    ("sip:alice@gw.example", "US", None),
    ("sip:gw.example", "US", None),
    ("sip:911x@gw.example", "US", None),
    # counter-cases: another country's dial string (SPEC E-1)
    ("sip:112@gw.example", "US", None),
    ("sip:999@gw.example", "US", None),
    ("sip:911@gw.example", "GB", None),
    ("sip:911@gw.example", "DK", None),
    ("sip:999@gw.example", "DK", None),
    ("sip:933@gw.example", "CA", None),  # 933 is the US test number only
    # counter-cases: other URNs and schemes
    ("urn:service:counseling", "US", None),
    ("urn:service:counseling.mental-health", None, None),
    ("urn:service:sosx", "US", None),
    ("urn:service:test.counseling", "US", None),
    ("urn:nena:service:sos", "US", None),
    ("mailto:911@example.com", "US", None),
]


@pytest.mark.parametrize(("uri", "country", "expected"), DETECTION_CASES)
def test_detect(uri: str, country: str | None, expected: tuple[str, str, str, bool] | None) -> None:
    detection = detect(parse_uri(uri), country)
    if expected is None:
        assert detection is None
        return
    assert detection is not None
    assert (detection.kind, detection.dialled, detection.service, detection.test) == expected
    assert detection.country == (country.upper() if country else None)


@pytest.mark.parametrize(
    ("uri", "dialled", "test"),
    [
        ("sip:911@gw", "911", False),
        ("tel:+999", "999", False),
        ("sip:112@gw;user=phone", "112", False),
        ("sip:933@gw", "933", True),
    ],
)
@pytest.mark.parametrize("country", [None, "", "FR", "ZZ"])
def test_unknown_or_unsupported_country_detects_every_supported_dial_string(
    uri: str, dialled: str, test: bool, country: str | None
) -> None:
    # The safer reading for life safety (see gateway.emergency.numbers): no country set to
    # be outside of, so every supported dial string counts, flagged for the E-11 report.
    detection = detect(parse_uri(uri), country)
    assert detection is not None
    assert (detection.dialled, detection.test, detection.any_country) == (dialled, test, True)


@pytest.mark.parametrize("country", [None, "FR"])
def test_unknown_country_still_rejects_non_emergency_numbers(country: str | None) -> None:
    for uri in ("sip:9911@gw", "sip:1911@gw", "sip:5551234@gw", "urn:service:counseling"):
        assert detect(parse_uri(uri), country) is None


def test_known_country_detection_is_not_flagged_any_country() -> None:
    detection = detect(parse_uri("sip:911@gw"), "US")
    assert detection is not None and detection.any_country is False
    urn = detect(parse_uri("urn:service:sos"), None)
    assert urn is not None and urn.any_country is False  # URNs need no country


@pytest.mark.parametrize(
    ("user", "country", "expected"),
    [
        ("911", "US", ("911", False)),  # 9911 behind an outside-line rule ^9(\d+)$ -> \1
        ("+911", "US", ("911", False)),
        ("933", "US", ("933", True)),
        ("112", "GB", ("112", False)),
        ("911", "GB", None),  # another country's string stays an ordinary call
        ("11", "US", None),
        ("9111", "US", None),
        ("911", None, ("911", False)),  # country unknown: every supported string
    ],
)
def test_detect_rewritten(
    user: str, country: str | None, expected: tuple[str, bool] | None
) -> None:
    detection = detect_rewritten(user, "9" + user, country)
    if expected is None:
        assert detection is None
        return
    assert detection is not None
    assert (detection.dialled, detection.test) == expected
    assert detection.rewritten_from == "9" + user and detection.kind == "dialstring"


def test_countries_and_dial_strings_are_data() -> None:
    assert countries_supported() == frozenset({"US", "CA", "PR", "GB", "DK"})
    assert [d.digits for d in dial_strings("GB")] == ["999", "112"]
    assert [(d.digits, d.test) for d in dial_strings("us")] == [("911", False), ("933", True)]
    assert dial_strings("FR") == () and dial_strings(None) == ()
    assert set(DIAL_STRINGS) == countries_supported()


OUTSIDE_LINE_DIALPLAN = """
version: 1
listen: [{ transport: udp, host: 127.0.0.1 }]
trunks:
  carrier: { gateways: [{ host: 192.0.2.10 }] }
outbound:
  - { name: outside-line, match: '9(.*)', rewrite: '\\1', trunk: carrier }
"""


def test_an_outside_line_rule_can_never_see_911() -> None:
    # SPEC E-1: detection runs on the Request-URI as received, before the dialplan. The
    # ordinary rules WOULD turn 911 into 11 -- which is exactly why they never get it.
    dialplan = load_dialplan_text(OUTSIDE_LINE_DIALPLAN)
    ordinary = dialplan.route("911")
    assert ordinary is not None and ordinary.user == "11"
    request_uri = parse_uri("sip:911@gw.example")
    detection = detect(request_uri, "US")
    assert detection is not None and detection.dialled == "911"
    plan = choose_route(detection, "US", config(), TRUNKS)
    assert {hop.user for hop in plan.hops if hop.route.startswith("direct-routing")} == {"911"}
    # and an outside-line call to 9911 is not an emergency call: it is routed as dialled
    assert detect(parse_uri("sip:9911@gw.example"), "US") is None


def test_detection_is_a_frozen_fact() -> None:
    detection = detect(parse_uri("sip:911@gw"), "US")
    assert detection is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        detection.dialled = "11"  # type: ignore[misc]


# -- E-2 / E-3 route choice ----------------------------------------------------------------

TRUNKS_DIALPLAN = """
version: 1
listen: [{ transport: udp, host: 127.0.0.1 }]
trunks:
  us-sbc:
    gateways: [{ host: 192.0.2.1 }, { host: 192.0.2.2, port: 5070, transport: tcp }]
    failover_codes: [408, 480, 503]
    provisional_timeout_s: 10
  uk-sbc:
    gateways: [{ host: 198.51.100.1 }]
    provisional_timeout_s: 2
  ordinary: { gateways: [{ host: 203.0.113.9 }] }
agents:
  alice:
    password: x
    identity: "+15555550101"
    location:
      { street: Main St, house_number: "1", city: Springfield, postcode: "12345", country: US }
    emergency_contacts: "sec@example.com; boss@example.com"
    callback_fallback: "sip:security-desk@192.0.2.20"
"""
DIALPLAN: Dialplan = load_dialplan_text(TRUNKS_DIALPLAN)
TRUNKS = DIALPLAN.trunks


def rule(name: str, match: str, trunk: str, **more: object) -> DirectRoutingRule:
    return DirectRoutingRule.model_validate({"name": name, "match": match, "trunk": trunk, **more})


US_RULE = rule("us-911", r"^9[13]{2}$", "us-sbc", countries=("US", "CA"))
UK_RULE = rule("uk", r"^(999|112)$", "uk-sbc", countries=("GB",), accepts_location=True)
OFFER = DirectOfferService(
    enabled=True,
    gateways=(
        GatewayAddress(host="es.example.net", port=5061, transport="tcp"),
        GatewayAddress(host="es2.example.net", port=5060, transport="udp"),
    ),
)
POOL = CallbackPoolConfig(dids=("+15555550900", "+15555550901"))


def config(
    rules: tuple[DirectRoutingRule, ...] = (US_RULE, UK_RULE),
    offer: DirectOfferService | None = OFFER,
    timeout: float = 3.0,
) -> EmergencySettings:
    return EmergencySettings(
        direct_routing=rules,
        direct_offer=offer,
        callback=POOL,
        provisional_timeout_s=timeout,
    )


def _detect(uri: str, country: str | None) -> Detection:
    detection = detect(parse_uri(uri), country)
    assert detection is not None
    return detection


def _route(plan: RoutePlan) -> list[tuple[str, str, int, str]]:
    return [(hop.route, hop.host, hop.port, hop.transport) for hop in plan.hops]


def test_rule_matches_sbc_gateways_first_then_direct_offer() -> None:
    plan = choose_route(_detect("sip:911@gw", "US"), "US", config(), TRUNKS)
    assert plan.rule == "us-911" and not plan.empty and plan.warning is None
    assert _route(plan) == [
        ("direct-routing:us-sbc", "192.0.2.1", 5060, "udp"),
        ("direct-routing:us-sbc", "192.0.2.2", 5070, "tcp"),
        ("direct-offer", "es.example.net", 5061, "tcp"),
        ("direct-offer", "es2.example.net", 5060, "udp"),
    ]
    sbc, _, offer, _ = plan.hops
    # the carrier gets the dial string as digits; direct offer gets the service URN
    assert (sbc.user, sbc.request_uri) == ("911", None)
    assert (offer.user, offer.request_uri) == (None, "urn:service:sos")
    # short emergency timeout, E-2 failover codes (plus the trunk's own)
    assert sbc.provisional_timeout_s == 3.0 and offer.provisional_timeout_s == 3.0
    assert sbc.failover_codes == EMERGENCY_FAILOVER_CODES  # the trunk's 480 is in it too
    assert offer.failover_codes == EMERGENCY_FAILOVER_CODES
    # every final failure moves an emergency call on (E-3), not only E-2's 408/503/504
    assert {404, 403, 486, 408, 503, 504, 603} <= EMERGENCY_FAILOVER_CODES
    assert not {180, 183, 200} & EMERGENCY_FAILOVER_CODES
    # E-10: carriers do not take location by value unless configured, direct offer does
    assert (sbc.accepts_location, offer.accepts_location) == (False, True)
    assert not any(hop.last_resort for hop in plan.hops)


def test_trunk_timeout_shorter_than_the_emergency_one_is_kept() -> None:
    plan = choose_route(_detect("sip:999@gw", "GB"), "GB", config(), TRUNKS)
    assert plan.rule == "uk"
    assert plan.hops[0].provisional_timeout_s == 2.0  # uk-sbc's own 2 s < 3 s
    assert plan.hops[0].accepts_location is True


def test_no_rule_goes_to_direct_offer() -> None:
    plan = choose_route(_detect("sip:112@gw", "DK"), "DK", config(), TRUNKS)
    assert plan.rule is None
    assert [hop.route for hop in plan.hops] == [DIRECT_OFFER, DIRECT_OFFER]


def test_rule_countries_limit_the_rule() -> None:
    # 112 from GB matches "uk"; the same 112 from DK does not (countries=(GB,))
    assert matching_rule(_detect("sip:112@gw", "GB"), "GB", config()) == UK_RULE
    assert matching_rule(_detect("sip:112@gw", "DK"), "DK", config()) is None


def test_unknown_country_gets_the_best_path_whatever_the_rule_countries() -> None:
    detection = _detect("sip:999@gw", None)
    plan = choose_route(detection, None, config(), TRUNKS)
    assert plan.rule == "uk" and plan.hops[0].route == "direct-routing:uk-sbc"


def test_no_rule_and_no_direct_offer_is_an_empty_plan_with_a_warning() -> None:
    for offer in (
        None,
        OFFER.model_copy(update={"enabled": False}),
        OFFER.model_copy(update={"gateways": ()}),
    ):
        plan = choose_route(_detect("sip:112@gw", "DK"), "DK", config(offer=offer), TRUNKS)
        assert plan.empty and plan.hops == ()
        assert plan.warning == (
            "no emergency route for 112 for DK: no direct-routing rule matches and direct "
            "offer is disabled"
        )


def test_direct_offer_disabled_rule_matches_sbc_only() -> None:
    plan = choose_route(_detect("sip:911@gw", "US"), "US", config(offer=None), TRUNKS)
    assert [hop.route for hop in plan.hops] == ["direct-routing:us-sbc"] * 2


def test_rule_naming_an_unknown_trunk_falls_back_to_direct_offer() -> None:
    rules = (rule("typo", "^911$", "us-sbx"),)
    plan = choose_route(_detect("sip:911@gw", "US"), "US", config(rules=rules), TRUNKS)
    assert plan.rule == "typo"
    assert [hop.route for hop in plan.hops] == [DIRECT_OFFER, DIRECT_OFFER]
    assert "'us-sbx', which is not defined" in plan.notes[0]
    empty = choose_route(_detect("sip:911@gw", "US"), "US", config(rules=rules, offer=None), TRUNKS)
    assert (
        empty.empty and empty.warning is not None and "'typo' has no usable trunk" in empty.warning
    )


def test_down_trunk_is_skipped_while_a_healthy_path_exists() -> None:
    plan = choose_route(_detect("sip:911@gw", "US"), "US", config(), TRUNKS, {"us-sbc": False})
    assert [hop.route for hop in plan.hops] == [
        DIRECT_OFFER,
        DIRECT_OFFER,
        "direct-routing:us-sbc",  # last resort only: health is a guess, 503 is final
        "direct-routing:us-sbc",
    ]
    assert [hop.last_resort for hop in plan.hops] == [False, False, True, True]
    assert plan.notes == ("trunk 'us-sbc' is down; tried last",)


def test_everything_down_still_tries_every_gateway() -> None:
    health = {"us-sbc": False, DIRECT_OFFER: False}
    plan = choose_route(_detect("sip:911@gw", "US"), "US", config(), TRUNKS, health)
    assert not plan.empty  # E-3: never refuse while any gateway exists
    assert [hop.route for hop in plan.hops][:2] == ["direct-routing:us-sbc"] * 2
    assert all(hop.last_resort for hop in plan.hops)


def test_healthy_trunks_of_other_rules_do_not_matter() -> None:
    plan = choose_route(_detect("sip:911@gw", "US"), "US", config(), TRUNKS, {"uk-sbc": False})
    assert plan.notes == () and plan.hops[0].route == "direct-routing:us-sbc"


def test_service_urns_keep_their_sub_service_on_direct_offer() -> None:
    plan = choose_route(_detect("urn:service:sos.fire", "US"), "US", config(), TRUNKS)
    assert plan.rule is None  # '^9[13]{2}$' does not match the service
    assert {hop.request_uri for hop in plan.hops} == {"urn:service:sos.fire"}


def test_a_sos_rule_takes_urns_and_real_dial_strings_but_not_test_calls() -> None:
    sos_rule = rule("all-sos", "^sos", "us-sbc")
    cfg = config(rules=(sos_rule,))
    urn_plan = choose_route(_detect("urn:service:sos.police", "US"), "US", cfg, TRUNKS)
    assert urn_plan.rule == "all-sos"
    assert (urn_plan.hops[0].user, urn_plan.hops[0].request_uri) == (None, "urn:service:sos.police")
    assert choose_route(_detect("sip:911@gw", "US"), "US", cfg, TRUNKS).rule == "all-sos"
    assert choose_route(_detect("sip:933@gw", "US"), "US", cfg, TRUNKS).rule is None


def test_test_calls_use_the_test_service_on_direct_offer() -> None:
    plan = choose_route(_detect("sip:933@gw", "US"), "US", config(rules=()), TRUNKS)
    assert {hop.request_uri for hop in plan.hops} == {"urn:service:test.sos"}
    urn = choose_route(_detect("urn:service:test.sos.fire", "US"), "US", config(rules=()), TRUNKS)
    assert {hop.request_uri for hop in urn.hops} == {"urn:service:test.sos.fire"}


def test_route_choice_has_no_input_that_could_refuse_a_call() -> None:
    # SPEC E-3: admission, rate limits, capacity, presence and barring are not inputs.
    parameters = set(inspect.signature(choose_route).parameters)
    assert parameters == {"detection", "country", "config", "trunks", "health"}


def test_config_validation() -> None:
    # one type from file to policy: the dialplan's models refuse what the policy cannot run
    with pytest.raises(ValueError, match="invalid regular expression"):
        rule("bad", "^(911", "us-sbc")
    with pytest.raises(ValueError, match="ISO 3166"):
        rule("bad", "^911$", "us-sbc", countries=("us",))
    with pytest.raises(ValueError, match="duplicate rule name 'us-911'"):
        DIALPLAN.model_validate(
            {**DIALPLAN.model_dump(), "emergency": {"direct_routing": [US_RULE, US_RULE]}}
        )
    with pytest.raises(ValueError, match="transport"):
        DirectOfferService.model_validate({"gateways": [{"host": "es", "transport": "sctp"}]})
    offer = DirectOfferService.model_validate({"gateways": [{"host": "es", "transport": "tls"}]})
    assert offer.gateways[0].transport == "tls"  # TLS is a supported transport
    with pytest.raises(ValueError, match="greater than 0"):
        CallbackPoolConfig(dids=(), window_s=0)
    with pytest.raises(ValueError, match="greater than 0"):
        config(timeout=0)


# -- C-1 / C-2 callbacks --------------------------------------------------------------------

RESERVATION = Reservation(
    did="+15555550900",
    agent_id="alice",
    reserved_at=1000.0,
    expires_at=1000.0 + 3600,
    call_id="em-1",
    test=False,
)

#: (R-URI user, source trunk, trusted, reservation, now, is a callback)
CALLBACK_CASES: list[tuple[str | None, str | None, bool, Reservation | None, float, bool]] = [
    ("+15555550900", "us-sbc", True, RESERVATION, 1001.0, True),  # inside the window
    ("15555550900", "us-sbc", True, RESERVATION, 1001.0, True),  # without the +
    ("+1-555-555-0900", "us-sbc", True, RESERVATION, 1001.0, True),  # visual separators
    ("+15555550900", "us-sbc", True, RESERVATION, 4599.0, True),  # last second
    ("+15555550900", "us-sbc", True, RESERVATION, 4600.0, False),  # window closed
    ("+15555550900", "us-sbc", True, RESERVATION, 9000.0, False),  # long after
    ("+15555550900", "us-sbc", True, None, 1001.0, False),  # not reserved
    ("+15555550900", "ordinary", False, RESERVATION, 1001.0, False),  # untrusted trunk
    ("+15555550900", None, False, RESERVATION, 1001.0, False),  # not from a trunk
    ("+15555550901", "us-sbc", True, RESERVATION, 1001.0, False),  # another DID
    (None, "us-sbc", True, RESERVATION, 1001.0, False),
]


@pytest.mark.parametrize(
    ("user", "trunk", "trusted", "reservation", "now", "expected"), CALLBACK_CASES
)
def test_is_callback(
    user: str | None,
    trunk: str | None,
    trusted: bool,
    reservation: Reservation | None,
    now: float,
    expected: bool,
) -> None:
    decision = is_callback(user, trunk, trusted, reservation, now)
    assert decision.callback is expected
    assert decision.reason
    if expected:
        assert decision.agent_id == "alice" and decision.reservation == RESERVATION
    else:
        assert decision.agent_id is None


def test_callback_reasons_are_actionable() -> None:
    assert "closed" in is_callback("+15555550900", "us-sbc", True, RESERVATION, 5000.0).reason
    untrusted = is_callback("+15555550900", "ordinary", False, RESERVATION, 1001.0).reason
    assert "'ordinary' is not trusted" in untrusted and "trusted: true" in untrusted


def test_test_callback_is_marked() -> None:
    reservation = dataclasses.replace(RESERVATION, test=True)
    assert is_callback("+15555550900", "us-sbc", True, reservation, 1001.0).test is True


def _invite(*extra: str) -> Request:
    lines = [
        "INVITE sip:+15555550900@gw.example SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
        "From: <sip:+18005550100@carrier.example>;tag=a",
        "To: <sip:+15555550900@gw.example>",
        "Call-ID: cb-1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def test_priority_headers_allowed_only_from_trusted_trunks() -> None:
    assert priority_headers_allowed(True) is True
    assert priority_headers_allowed(False) is False


def test_strip_untrusted_priority_removes_only_emergency_markers() -> None:
    request = _invite(
        "Priority: psap-callback",
        "Resource-Priority: esnet.1, dsn.flash",
        "Resource-Priority: ESNET.0",
        "Subject: hello",
    )
    removed = strip_untrusted_priority(request)
    assert removed == [
        "Priority: psap-callback",
        "Resource-Priority: esnet.1",
        "Resource-Priority: ESNET.0",
    ]
    assert request.get("Priority") is None
    assert request.get_all("Resource-Priority") == ["dsn.flash"]
    assert request.get("Subject") == "hello"
    assert b"esnet" not in request.to_bytes().lower()


def test_strip_untrusted_priority_keeps_other_priorities_and_is_idempotent() -> None:
    request = _invite("Priority: Urgent", "Resource-Priority: esnet.2")
    assert strip_untrusted_priority(request) == ["Resource-Priority: esnet.2"]
    assert request.get("Priority") == "Urgent"
    assert request.get("Resource-Priority") is None
    assert strip_untrusted_priority(request) == []
    clean = _invite()
    before = clean.to_bytes()
    assert strip_untrusted_priority(clean) == [] and clean.to_bytes() == before


# -- E-8 lock-down ---------------------------------------------------------------------------

#: (method, in dialog, hold, from emergency side, another emergency, allowed)
LOCKDOWN_CASES: list[tuple[str, bool, bool, bool, bool, bool]] = [
    # the agent ends the call
    ("BYE", True, False, False, False, True),
    ("CANCEL", True, False, False, False, True),
    ("ACK", True, False, False, False, True),
    ("PRACK", True, False, False, False, True),
    # the session stays healthy
    ("INVITE", True, False, False, False, True),  # session refresh, codec change
    ("UPDATE", True, False, False, False, True),
    ("INFO", True, False, False, False, True),  # DTMF
    ("OPTIONS", True, False, False, False, True),
    # no hold, no transfer from the agent
    ("INVITE", True, True, False, False, False),
    ("UPDATE", True, True, False, False, False),
    ("REFER", True, False, False, False, False),
    ("refer", True, False, False, False, False),
    # the emergency side keeps control (RFC 6881 SP-37/38)
    ("REFER", True, False, True, False, True),
    ("INVITE", True, True, True, False, True),
    ("BYE", True, False, True, False, True),
    # new requests from the agent
    ("INVITE", False, False, False, False, False),
    ("INVITE", False, False, False, True, True),  # another emergency call: never refused
    ("REFER", False, False, False, False, False),
    ("REGISTER", False, False, False, False, True),  # must stay reachable for the callback
    ("OPTIONS", False, False, False, False, True),
    ("SUBSCRIBE", False, False, False, False, True),
]


@pytest.mark.parametrize(
    ("method", "in_dialog", "hold", "emergency_side", "another", "allowed"), LOCKDOWN_CASES
)
def test_lockdown(
    method: str, in_dialog: bool, hold: bool, emergency_side: bool, another: bool, allowed: bool
) -> None:
    verdict = agent_request_allowed(
        method,
        in_dialog=in_dialog,
        is_hold_reinvite=hold,
        from_emergency_side=emergency_side,
        another_emergency=another,
    )
    assert verdict.allowed is allowed
    if allowed:
        assert verdict == Verdict(True)
    else:
        assert verdict.status == 403
        assert verdict.warning is not None and "emergency call" in verdict.warning


def test_lockdown_warnings_say_what_happened() -> None:
    refer = agent_request_allowed("REFER", in_dialog=True)
    hold = agent_request_allowed("INVITE", in_dialog=True, is_hold_reinvite=True)
    new = agent_request_allowed("INVITE", in_dialog=False)
    assert refer.warning is not None and refer.warning.startswith("transfer is not allowed")
    assert hold.warning is not None and hold.warning.startswith("hold is not allowed")
    assert new.warning is not None and "except another emergency call" in new.warning


SDP_HEAD = "v=0\r\no=- 1 2 IN IP4 192.0.2.5\r\ns=-\r\n"

#: (SDP after the o=/s= lines, is a hold)
HOLD_CASES: list[tuple[str, bool]] = [
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n", False),
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n", False),  # default sendrecv
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n", True),
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=inactive\r\n", True),
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=recvonly\r\n", False),
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n", True),  # session
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\n", True),
    # a media-level direction overrides the session-level one (RFC 4566 section 6)
    (
        "c=IN IP4 192.0.2.5\r\nt=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n",
        False,
    ),
    ("c=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n", True),  # RFC 2543 hold
    ("t=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n", True),  # media-level c=
    ("c=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.5\r\n", False),
    # one held stream among several
    (
        "c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"
        "m=video 4002 RTP/AVP 96\r\na=inactive\r\n",
        True,
    ),
    # a disabled stream (port 0) holds nothing
    (
        "c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
        "m=video 0 RTP/AVP 96\r\na=inactive\r\n",
        False,
    ),
    ("c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=SENDONLY\r\n", True),
]


@pytest.mark.parametrize(("sdp", "hold"), HOLD_CASES)
def test_is_hold_offer(sdp: str, hold: bool) -> None:
    assert is_hold_offer((SDP_HEAD + sdp).encode()) is hold
    assert is_hold_offer((SDP_HEAD + sdp).replace("\r\n", "\n").encode()) is hold  # bare LF


@pytest.mark.parametrize("body", [b"", b"not sdp at all", b"\xff\xfe\x00garbage"])
def test_no_sdp_is_not_a_hold(body: bytes) -> None:
    assert is_hold_offer(body) is False


# -- E-11 prerequisites ----------------------------------------------------------------------

FULL_LOCATION = Location(
    street="Main St", house_number="1", city="Springfield", postcode="12345", country="US"
)


def _agent(**changes: object) -> Agent:
    fields: dict[str, object] = {
        "password": "x",
        "identity": "+15555550101",
        "location": FULL_LOCATION,
        "emergency_contacts": "sec@example.com",
        "callback_fallback": "sip:security-desk@192.0.2.20",
    }
    fields.update(changes)
    return Agent.model_validate(fields)


def test_a_ready_agent_has_no_problems() -> None:
    assert (
        check_agent("alice", DIALPLAN.agents["alice"], config(), DIALPLAN, mail_configured=True)
        == []
    )
    assert check_agent("alice", _agent(), config(), DIALPLAN, mail_configured=True) == []


def test_prerequisites_wording() -> None:
    agent = _agent(identity=None, location=None, callback_fallback=None)
    problems = check_agent("bob", agent, config(), DIALPLAN, mail_configured=False)
    assert problems == [
        "agent 'bob' has no outbound identity: set agents.bob.identity to its E.164 caller "
        "number (e.g. +15551230001)",
        "agent 'bob' has no location: set agents.bob.location to the civic address where the "
        "agent sits (street, house_number, city, state, postcode, country, building, floor, "
        "room) so emergency services can be dispatched there",
        "agent 'bob' has emergency contacts (sec@example.com) but no mail server is "
        "configured: set the SMTP settings, or the notification (SPEC E-6) cannot be sent",
        "agent 'bob' has no callback fallback: set agents.bob.callback_fallback to a "
        "supervisor or security desk, so an unanswered emergency callback reaches a person "
        "(SPEC C-3)",
    ]


def test_unsupported_country_and_undispatchable_location() -> None:
    agent = _agent(location=Location(country="FR"))
    problems = check_agent("zoe", agent, config(), DIALPLAN, mail_configured=True)
    assert problems == [
        "agent 'zoe' has a location that is not dispatchable: set agents.zoe.location.street, "
        "agents.zoe.location.city, agents.zoe.location.postcode",
        "agent 'zoe' is in FR, a country without emergency dial strings in this gateway "
        "(supported: CA, DK, GB, PR, US); its calls to any supported emergency number are "
        "still treated as emergency calls",
    ]


def test_no_path_for_the_agents_country() -> None:
    gb = _agent(location=FULL_LOCATION.model_copy(update={"country": "GB"}))
    # only 999 covered, no direct offer: 112 has no path
    rules = (rule("uk-999", "^999$", "uk-sbc", countries=("GB",)),)
    problems = check_agent(
        "gina", gb, config(rules=rules, offer=None), DIALPLAN, mail_configured=True
    )
    assert problems == [
        "agent 'gina' in GB has no emergency path for 112: add an emergency direct_routing "
        "rule (match '^112$', countries [GB]) naming a defined trunk, or enable direct_offer"
    ]
    # direct offer covers every country
    assert check_agent("gina", gb, config(rules=rules), DIALPLAN, mail_configured=True) == []
    # a rule naming an unknown trunk is no path
    typo = (rule("uk", "^(999|112)$", "uk-sbx"),)
    problems = check_agent(
        "gina", gb, config(rules=typo, offer=None), DIALPLAN, mail_configured=True
    )
    assert len(problems) == 2 and all("no emergency path" in p for p in problems)


def test_test_numbers_need_no_path_and_contacts_need_mail_only_when_present() -> None:
    rules = (rule("us", "^911$", "us-sbc"),)  # 933 not covered
    agent = _agent(emergency_contacts="")
    assert (
        check_agent("al", agent, config(rules=rules, offer=None), DIALPLAN, mail_configured=False)
        == []
    )


def test_check_config() -> None:
    assert check_config(config(), DIALPLAN) == []
    # a Dialplan refuses the first two; check_config still reports them if handed them
    bad = EmergencySettings(
        direct_routing=(rule("typo", "^911$", "nowhere"),),
        direct_offer=OFFER.model_copy(update={"gateways": ()}),
        callback=CallbackPoolConfig(dids=()),
    )
    assert check_config(bad, DIALPLAN) == [
        "emergency direct_routing rule 'typo' names trunk 'nowhere', which is not defined "
        "(known: ordinary, uk-sbc, us-sbc)",
        "emergency direct_offer is enabled but lists no gateways: add one",
        "calls to urn:service:sos have no path: add an emergency direct_routing rule with "
        "match '^sos' naming a defined trunk, or enable direct_offer",
        "the emergency callback pool is empty: list callback DIDs under "
        "emergency.callback.dids (SPEC E-4), or emergency services cannot call back",
    ]
