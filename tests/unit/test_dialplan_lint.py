"""Warnings about dialplan rules that meet emergency dial strings (issue 8, hole 3)."""

from __future__ import annotations

from gateway.config import load_dialplan_text
from gateway.emergency.dialplan_lint import LintWarning, candidate_strings, lint_dialplan

HEAD = """\
version: 1
listen: [ { transport: udp, host: 127.0.0.1 } ]
trunks:
  carrier: { gateways: [ { host: 127.0.0.1, port: 5080 } ] }
  sbc: { gateways: [ { host: 127.0.0.1, port: 5081 } ] }
"""


def lint(body: str) -> list[LintWarning]:
    dialplan = load_dialplan_text(HEAD + body, "d.yaml")
    return lint_dialplan(dialplan, dialplan.emergency)


def test_candidates_cover_bare_strings_and_common_prefixes() -> None:
    candidates = {candidate for _prefix, candidate in candidate_strings()}
    for expected in ("911", "+911", "9911", "1911", "0112", "99999", "+1911", "9-911", "*112"):
        assert expected in candidates


def test_an_outside_line_rule_that_produces_911_warns() -> None:
    dialled, warning = lint(
        "outbound:\n  - { name: outside, match: '^9(\\d+)$', rewrite: '\\1', trunk: carrier }\n"
    )
    # '9' is also the first digit of 911 and 999: the rule would send 11 and 99
    assert dialled.message.startswith(
        "outbound rule 'outside' matches emergency dial strings as dialled: "
        "911 (CA, PR, US) -> 11, 933 (US) -> 33, 999 (GB) -> 99."
    )
    assert warning.field == ("outbound", 0)
    assert warning.message.startswith(
        "outbound rule 'outside' rewrites dialled strings into emergency dial strings: "
    )
    for example in ("9112 -> 112", "9911 -> 911"):
        assert example in warning.message
    assert "treated as emergency calls of the agent's country" in warning.message
    assert "not sent to trunk 'carrier'" in warning.message


def test_prefix_stripping_rules_for_1_and_0_warn_too() -> None:
    warnings = lint(
        "outbound:\n"
        "  - { name: national, match: '^1(\\d{3})$', rewrite: '\\1', trunk: carrier }\n"
        "  - { name: trunk-code, match: '^0(\\d+)$', rewrite: '\\1', trunk: carrier }\n"
    )
    assert [w.field for w in warnings] == [("outbound", 0), ("outbound", 1)]
    assert "1911 -> 911" in warnings[0].message
    assert "0112 -> 112" in warnings[1].message


def test_a_rule_matching_emergency_strings_as_dialled_warns() -> None:
    [warning] = lint("outbound:\n  - { name: digits, match: '^\\+?\\d+$', trunk: carrier }\n")
    assert warning.message.startswith(
        "outbound rule 'digits' matches emergency dial strings as dialled: "
        "112 (DK, GB), 911 (CA, PR, US), 933 (US), 999 (GB)."
    )
    assert "a GB agent dialling 911" in warning.message


def test_an_outside_line_rule_that_mangles_9_911_warns() -> None:
    _dialled, warning = lint(
        "outbound:\n  - { name: to-e164, match: '^9(\\d+)$', rewrite: '+1\\1', trunk: carrier }\n"
    )
    assert warning.message.startswith(
        "outbound rule 'to-e164' turns an outside-line prefix and an emergency dial string "
        "into something that is not one: 9112 -> +1112"
    )
    assert "9911 -> +1911" in warning.message


def test_rules_that_never_meet_an_emergency_string_are_quiet() -> None:
    assert (
        lint(
            "outbound:\n"
            "  - { name: nanp, match: '^\\+?1?(\\d{10})$', rewrite: '+1\\1', trunk: carrier }\n"
            "  - { name: intl, match: '^00(\\d{6,})$', rewrite: '+\\1', trunk: carrier }\n"
            "emergency:\n"
            "  direct_routing:\n"
            "    - { name: us, match: '^(911|933)$', trunk: sbc, countries: [US] }\n"
            "    - { name: gb, match: '^(999|112)$', trunk: sbc, countries: [GB] }\n"
        )
        == []
    )


def test_a_shadowed_direct_routing_rule_warns() -> None:
    warnings = lint(
        "emergency:\n"
        "  direct_routing:\n"
        "    - { name: all, match: '^sos', trunk: sbc }\n"
        "    - { name: us-911, match: '^911$', trunk: carrier, countries: [US] }\n"
        "    - { name: nothing, match: '^000$', trunk: carrier }\n"
    )
    assert [w.field for w in warnings] == [
        ("emergency", "direct_routing", 1),
        ("emergency", "direct_routing", 2),
    ]
    assert warnings[0].message.startswith(
        "emergency direct_routing rule 'us-911' can never match: every emergency call it "
        "matches (911 for US, 911 for an agent of unknown country) is taken first by the "
        "earlier rule 'all' "
        "(emergency.direct_routing[0])"
    )
    assert warnings[1].message == (
        "emergency direct_routing rule 'nothing' (match '^000$') matches no emergency dial "
        "string or service the gateway detects, so it never routes a call"
    )


def test_a_country_limited_rule_before_a_general_one_shadows_nothing() -> None:
    assert (
        lint(
            "emergency:\n"
            "  direct_routing:\n"
            "    - { name: us, match: '^911$', trunk: sbc, countries: [US] }\n"
            "    - { name: rest, match: '^911$', trunk: carrier }\n"
        )
        == []
    )


SITE = """\
sites:
  lobby:
    networks: ['10.1.0.0/16']
    location: { city: Springfield, country: US }
"""


def test_a_trusted_network_without_a_site_warns() -> None:
    (warning,) = lint("registrar: { unauthenticated_outbound_from: ['10.2.0.0/16'] }\n" + SITE)
    assert warning.field == ("registrar", "unauthenticated_outbound_from", 0)
    assert "no site covers" in warning.message and "10.2.0.0/16" in warning.message


def test_a_site_without_a_callback_number_for_a_trusted_network_warns() -> None:
    (warning,) = lint("registrar: { unauthenticated_outbound_from: ['10.1.2.0/24'] }\n" + SITE)
    assert warning.field == ("sites", "lobby")
    assert "no callback_number" in warning.message
    numbered = SITE + "    callback_number: '+15555550180'\n"
    assert lint("registrar: { unauthenticated_outbound_from: ['10.1.2.0/24'] }\n" + numbered) == []
