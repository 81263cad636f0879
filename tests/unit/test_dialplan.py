"""Dialplan schema, loader error positions, and outbound routing."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import (
    Dialplan,
    DialplanError,
    GatewayAddress,
    RouteDecision,
    load_dialplan,
    load_dialplan_text,
)
from gateway.emergency.numbers import detect_rewritten

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "dialplans"


def problems_of(name: str) -> list[str]:
    """Load tests/data/dialplans/<name>, expect failure, return its problems as strings."""
    path = DATA / name
    with pytest.raises(DialplanError) as caught:
        load_dialplan(path)
    for problem in caught.value.problems:
        assert problem.file == str(path)
    return [str(problem).removeprefix(f"{path}:") for problem in caught.value.problems]


# --- files that load --------------------------------------------------------------------


def test_example_dialplan_loads() -> None:
    dialplan = load_dialplan(ROOT / "dialplans" / "example.yaml")
    assert dialplan.node.name == "gw1"
    assert [(a.transport, a.host, a.port) for a in dialplan.listen] == [
        ("udp", "127.0.0.1", 5060),
        ("tcp", "127.0.0.1", 5060),
    ]
    assert dialplan.trunks["carrier"].gateways == (
        GatewayAddress(host="127.0.0.1", port=5080, transport="udp"),
    )
    assert dialplan.outbound[-1].match == ".*"


def test_example_routes_digits_and_sipp_service_user_to_carrier() -> None:
    dialplan = load_dialplan(ROOT / "dialplans" / "example.yaml")
    for user in ("5551234567", "+15551234567", "4420", "+4420", "service"):
        decision = dialplan.route(user)
        assert decision is not None, user
        assert decision.trunk_name == "carrier"
    assert dialplan.route("service") == RouteDecision(
        "catch-all", "service", "carrier", dialplan.trunks["carrier"]
    )


def test_example_outside_line_prefix() -> None:
    """9 + 911 reaches 911 (an emergency call, SPEC E-1); 9 + a NANP number is E.164; a
    10-digit number that begins with 9 is not mistaken for one dialled behind the prefix."""
    dialplan = load_dialplan(ROOT / "dialplans" / "example.yaml")
    routed = {
        user: (decision.rule, decision.user)
        for user in ("9911", "9933", "92125551234", "912125551234", "9725551234", "999")
        if (decision := dialplan.route(user)) is not None
    }
    assert routed == {
        "9911": ("outside-line-service", "911"),
        "9933": ("outside-line-service", "933"),
        "92125551234": ("outside-line", "+12125551234"),
        "912125551234": ("outside-line", "+12125551234"),
        "9725551234": ("nanp", "+19725551234"),
        "999": ("digits", "999"),
    }
    assert detect_rewritten(routed["9911"][1], "9911", "US") is not None


def test_minimal_file_takes_defaults() -> None:
    dialplan = load_dialplan(DATA / "good-minimal.yaml")
    assert dialplan.node.name == "gw1"
    assert dialplan.listen[0].host == "::1"  # brackets removed
    assert dialplan.listen[0].port == 5060
    assert dialplan.trunks == {}
    assert dialplan.outbound == ()
    assert dialplan.route("5551234567") is None
    sip = dialplan.sip
    assert (sip.t1_ms, sip.t2_ms, sip.t4_ms) == (250, 4000, 5000)
    assert (sip.timer_b_ms, sip.timer_f_ms) == (64 * 250, 64 * 250)  # follow T1
    assert sip.max_message_bytes == 65535
    assert sip.user_agent == "gateway/0.1"


def test_trunk_fields() -> None:
    dialplan = load_dialplan(DATA / "good-routing.yaml")
    carrier = dialplan.trunks["carrier"]
    assert [(g.host, g.port, g.transport) for g in carrier.gateways] == [
        ("127.0.0.1", 5080, "udp"),
        ("127.0.0.1", 5090, "tcp"),
    ]
    assert carrier.failover_codes == (408, 503, 504, 480)
    assert carrier.provisional_timeout_s == 2.5
    assert carrier.trusted is True
    backup = dialplan.trunks["backup"]
    assert backup.gateways == (GatewayAddress(host="sbc.backup.example"),)
    assert backup.failover_codes == (408, 503, 504)
    assert backup.provisional_timeout_s == 10
    assert backup.trusted is False


def test_models_are_frozen() -> None:
    dialplan = load_dialplan(DATA / "good-routing.yaml")
    with pytest.raises(ValidationError):
        dialplan.node.name = "other"


# --- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "rule", "rewritten", "trunk"),
    [
        ("5551234567", "e164", "+15551234567", "carrier"),
        ("15551234567", "e164", "+15551234567", "carrier"),
        ("+15551234567", "e164", "+15551234567", "carrier"),
        ("94420", "outside-line", "4420", "carrier"),
        # 95551234567 is 11 digits: not e164, so the outside-line rule strips the 9.
        ("95551234567", "outside-line", "5551234567", "carrier"),
        ("004420123456", "named-group", "+4420123456", "backup"),
        # 10 digits starting 00: e164 comes first in the file, so it wins.
        ("0044201234", "e164", "+10044201234", "carrier"),
        ("4420", "keep", "4420", "backup"),  # no rewrite: sent as dialled
    ],
)
def test_route_first_match_wins_and_rewrites(
    user: str, rule: str, rewritten: str, trunk: str
) -> None:
    dialplan = load_dialplan(DATA / "good-routing.yaml")
    decision = dialplan.route(user)
    assert decision == RouteDecision(rule, rewritten, trunk, dialplan.trunks[trunk])
    assert decision.gateways == dialplan.trunks[trunk].gateways


def test_route_is_a_full_match() -> None:
    dialplan = load_dialplan(DATA / "good-routing.yaml")
    assert dialplan.route("12") is None  # "keep" needs 3..6 digits
    assert dialplan.route("4420x") is None  # no partial match of '^\d{3,6}$'
    assert dialplan.route("") is None


def test_regex_compiled_once() -> None:
    dialplan = load_dialplan(DATA / "good-routing.yaml")
    rule = dialplan.outbound[0]
    assert rule.pattern is rule.pattern
    assert rule.apply("5551234567") == "+15551234567"
    assert rule.apply("nope") is None


def test_dialplan_built_in_python_is_validated_too() -> None:
    dialplan = Dialplan.model_validate(
        {
            "version": 1,
            "listen": [{"transport": "udp", "host": "127.0.0.1"}],
            "trunks": {"t": {"gateways": [{"host": "127.0.0.1"}]}},
            "outbound": [{"name": "all", "match": ".*", "trunk": "t"}],
        }
    )
    decision = dialplan.route("anything")
    assert decision is not None and decision.trunk_name == "t"
    with pytest.raises(ValidationError, match="unknown trunk 'x'"):
        Dialplan.model_validate(
            {
                "version": 1,
                "listen": [{"transport": "udp", "host": "127.0.0.1"}],
                "outbound": [{"name": "all", "match": ".*", "trunk": "x"}],
            }
        )


# --- refused files: file:line: field: message -------------------------------------------


def test_listen_transport_port_and_host() -> None:
    assert problems_of("bad-listen.yaml") == [
        "3: listen[0].transport: transport 'sctp' is not supported: use udp, tcp or tls",
        "4: listen[1].port: Input should be greater than or equal to 1, got 0",
        "5: listen[2].port: Input should be less than or equal to 65535, got 65536",
        "6: listen[3].host: 'not a host!' is neither an IP address nor a valid hostname",
        "7: listen[4].host: '10.0.0.300' is neither an IP address nor a valid hostname",
    ]


def test_at_least_one_listener() -> None:
    assert problems_of("no-listen.yaml") == ["2: listen: needs at least 1 entry"]
    assert problems_of("missing-listen.yaml") == ["1: listen: required field is missing"]


def test_duplicate_listener() -> None:
    text = (
        "version: 1\n"
        "listen:\n"
        "  - { transport: udp, host: 127.0.0.1 }\n"
        "  - { transport: tcp, host: 127.0.0.1 }\n"
        "  - { transport: udp, host: 127.0.0.1, port: 5060 }\n"
    )
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "x.yaml")
    assert str(caught.value) == (
        "x.yaml:5: listen[2]: duplicate listener udp 127.0.0.1 port 5060 (same as listen[0])"
    )


def test_unsupported_version() -> None:
    assert problems_of("bad-version.yaml") == [
        "2: version: unsupported dialplan format version 2 (this gateway reads version 1)"
    ]


def test_unknown_trunk_names_file_line_and_field() -> None:
    assert problems_of("unknown-trunk.yaml") == [
        "14: outbound[1].trunk: unknown trunk 'carier' (known: carrier)"
    ]


def test_unknown_trunk_reported_even_when_the_rule_has_other_errors() -> None:
    text = (
        "version: 1\n"
        "listen: [{ transport: udp, host: 127.0.0.1 }]\n"
        "trunks: { carrier: { gateways: [{ host: 127.0.0.1 }] } }\n"
        "outbound:\n"
        "  - name: r\n"
        "    match: '(('\n"
        "    trunk: carier\n"
    )
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "x.yaml")
    assert [(p.line, p.field) for p in caught.value.problems] == [
        (6, "outbound[0].match"),
        (7, "outbound[0].trunk"),
    ]


def test_unknown_trunk_reported_even_when_a_trunk_is_invalid() -> None:
    text = (
        "version: 1\n"
        "listen: [{ transport: udp, host: 127.0.0.1 }]\n"
        "trunks: { carrier: { gateways: [{ host: 127.0.0.1, port: 0 }] } }\n"
        "outbound:\n"
        "  - { name: r, match: '.*', trunk: carier }\n"
    )
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "x.yaml")
    assert [str(problem) for problem in caught.value.problems] == [
        "x.yaml:3: trunks.carrier.gateways[0].port: Input should be greater than or equal to "
        "1, got 0",
        "x.yaml:5: outbound[0].trunk: unknown trunk 'carier' (known: carrier)",
    ]


def test_the_model_itself_reports_every_unknown_trunk() -> None:
    # the check lives in Dialplan (one place), not in the loader: a dialplan built in
    # Python gets the same errors, with the same locations
    with pytest.raises(ValidationError) as caught:
        Dialplan.model_validate(
            {
                "version": 1,
                "listen": [{"transport": "udp", "host": "127.0.0.1"}],
                "trunks": {"t": {"gateways": [{"host": "127.0.0.1"}]}},
                "outbound": [
                    {"name": "bad", "match": "((", "trunk": "x"},
                    {"name": "ok", "match": ".*", "trunk": "y"},
                ],
            }
        )
    assert [(error["loc"], error["type"]) for error in caught.value.errors()] == [
        (("outbound", 0, "match"), "regex"),
        (("outbound", 0, "trunk"), "unknown_trunk"),
        (("outbound", 1, "trunk"), "unknown_trunk"),
    ]


def test_regex_must_compile_and_error_shows_why() -> None:
    assert problems_of("bad-regex.yaml") == [
        "9: outbound[0].match: invalid regular expression '^9(\\d+$': "
        "missing ), unterminated subpattern at position 2"
    ]


def test_rewrite_must_fit_the_regex_groups() -> None:
    assert problems_of("bad-rewrite.yaml") == [
        "10: outbound[0].rewrite: rewrite template '\\2' does not fit regex '^9(\\d+)$': "
        "invalid group reference 2 at position 1",
        "14: outbound[1].rewrite: rewrite template '\\g<numbr>' does not fit regex "
        "'^9(?P<number>\\d+)$': unknown group name 'numbr'",
        "18: outbound[2].rewrite: rewrite template '\\q\\1' does not fit regex '^9(\\d+)$': "
        "bad escape \\q at position 0",
    ]


def test_trunk_gateways_codes_timeout_and_name() -> None:
    assert problems_of("bad-trunk.yaml") == [
        "7: trunks.carrier.gateways[0].transport: transport 'sctp' is not supported: "
        "use udp, tcp or tls",
        "8: trunks.carrier.failover_codes[1]: Input should be greater than or equal to 300, "
        "got 299",
        "8: trunks.carrier.failover_codes[2]: Input should be less than or equal to 699, got 700",
        "9: trunks.carrier.provisional_timeout_s: Input should be greater than 0, got 0",
        "11: trunks.empty.gateways: needs at least 1 entry",
        "12: trunks.has space: trunk name 'has space' must be 1-64 letters, digits, '_', "
        "'.' or '-', starting with a letter or digit",
    ]


def test_timers_positive_and_t1_not_above_t2() -> None:
    assert problems_of("bad-timers.yaml") == [
        "6: sip.t2_ms: t2_ms (4000) must not be less than t1_ms (5000)",
        "7: sip.t4_ms: Input should be greater than 0, got 0",
        "8: sip.timer_b_ms: Input should be greater than 0, got -1",
        "9: sip.max_message_bytes: Input should be greater than 0, got 0",
    ]


def test_unknown_fields_refused_with_suggestion() -> None:
    assert problems_of("unknown-field.yaml") == [
        "5: sip.timer_b: unknown field 'timer_b' (did you mean 'timer_b_ms'?)",
        "6: trunk: unknown field 'trunk' (did you mean 'trunks'?)",
    ]


def test_duplicate_yaml_key_refused() -> None:
    assert problems_of("duplicate-key.yaml") == [
        "7: trunks.carrier: duplicate key (first defined on line 5; "
        "YAML would silently keep only this one)"
    ]


def test_duplicate_rule_name_refused() -> None:
    assert problems_of("duplicate-rule.yaml") == [
        "9: outbound[1].name: duplicate rule name 'digits' (also outbound[0])"
    ]


def test_yaml_syntax_error_gives_line() -> None:
    [problem] = problems_of("syntax-error.yaml")
    assert problem.startswith("7: YAML syntax error: ")
    assert "line 5" in problem


def test_empty_and_non_mapping_files() -> None:
    assert problems_of("empty.yaml") == ["1: the file is empty"]
    assert problems_of("not-a-mapping.yaml") == [
        "1: the top level must be a mapping (version: 1, ...)"
    ]


def test_unreadable_file() -> None:
    path = DATA / "does-not-exist.yaml"
    with pytest.raises(DialplanError) as caught:
        load_dialplan(path)
    [problem] = caught.value.problems
    assert problem.line is None
    assert str(problem).startswith(f"{path}: cannot read: ")


def test_error_message_format_one_problem_per_line() -> None:
    text = (DATA / "unknown-trunk.yaml").read_text().replace("'\\d+'", "'(('")
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "dialplans/x.yaml")
    assert str(caught.value).splitlines() == [
        "dialplans/x.yaml:10: outbound[0].match: invalid regular expression '((': "
        "missing ), unterminated subpattern at position 1",
        "dialplans/x.yaml:14: outbound[1].trunk: unknown trunk 'carier' (known: carrier)",
    ]
    first = caught.value.problems[0]
    assert (first.line, first.column, first.field) == (10, 5, "outbound[0].match")


# -- contact centre: agents, queues, inbound rules, registrar ----------------------------------

CONTACT_CENTRE = """\
version: 1
listen:
  - { transport: udp, host: 127.0.0.1, port: 5060 }
trunks:
  carrier:
    gateways: [ { host: 127.0.0.1, port: 5080 } ]
    inbound_from: [$inbound_from]
registrar: { algorithms: [$algorithms] }
agents:
  alice:
    password: secret
    identity: "$identity"
    queues: [support, $extra_queue]
    location: { country: $country }
  bob:
    username: $bob_username
$bob_secret
queues:
  support:
    overflow: { queue: $overflow }
inbound:
  - { name: main, match: '^1$$', queue: $inbound_queue }
"""

GOOD = dict(
    inbound_from="'127.0.0.2'",
    algorithms="SHA-256, MD5",
    identity="+15555550101",
    extra_queue="support",
    country="US",
    bob_username="bob",
    bob_secret="    password: x",
    overflow="support",
    inbound_queue="support",
)


def _cc(**changes: str) -> str:
    return string.Template(CONTACT_CENTRE).substitute({**GOOD, **changes})


def _cc_problems(**changes: str) -> list[str]:
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(_cc(**changes), "cc.yaml")
    return str(caught.value).splitlines()


def test_contact_centre_sections_load() -> None:
    dialplan = load_dialplan_text(_cc(), "cc.yaml")
    alice = dialplan.agents["alice"]
    assert alice.capacity == 1 and alice.location is not None and alice.location.country == "US"
    assert dialplan.queues["support"].overflow.queue == "support"
    assert dialplan.inbound[0].pattern.fullmatch("1")
    assert dialplan.registrar.algorithms == ("SHA-256", "MD5")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"identity": "5551234"}, "cc.yaml:12: agents.alice.identity: '5551234' is not an E.164"),
        ({"country": "us"}, "cc.yaml:14: agents.alice.location.country: 'us' is not an ISO 3166"),
        (
            {"bob_secret": ""},
            "cc.yaml:15: agents.bob: an agent needs password, ha1_md5 or ha1_sha256",
        ),
        (
            {"inbound_from": "'not-a-net'"},
            "cc.yaml:7: trunks.carrier.inbound_from[0]: 'not-a-net' is not an IP",
        ),
        ({"algorithms": "SHA-1"}, "cc.yaml:8: registrar.algorithms[0]: Input should be"),
    ],
)
def test_contact_centre_field_errors(changes: dict[str, str], expected: str) -> None:
    problems = _cc_problems(**changes)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"extra_queue": "sales"},
            "cc.yaml:13: agents.alice.queues[1]: unknown queue 'sales' (known: support)",
        ),
        (
            {"overflow": "nowhere"},
            "cc.yaml:20: queues.support.overflow.queue: unknown queue 'nowhere' (known: support)",
        ),
        (
            {"inbound_queue": "suport"},
            "cc.yaml:22: inbound[0].queue: unknown queue 'suport' (known: support)",
        ),
        (
            {"bob_username": "alice"},
            "cc.yaml:16: agents.bob.username: SIP username 'alice' is also used by agent 'alice'",
        ),
    ],
)
def test_contact_centre_references(changes: dict[str, str], expected: str) -> None:
    assert expected in _cc_problems(**changes)
