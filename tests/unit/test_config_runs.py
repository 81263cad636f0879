"""A configuration that loads is one that runs (SPEC O-1, issue 8 hole 8).

Each case here used to pass ``gateway check`` and then crash (or misbehave) at run time:
``countries: [USA]``, YAML 1.1 readings of unquoted values
(``NO`` -> False, ``+15555550101`` -> an integer), next-hop URIs the gateway cannot send
to, rewrite templates that build an unusable user part, and bad ``GATEWAY_*`` variables.
"""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import DialplanError, load_dialplan_text
from gateway.config.countries import ISO_3166_ALPHA_2
from gateway.config.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]

TEMPLATE = """\
version: 1
listen: [ { transport: $listen_transport, host: 127.0.0.1, port: 5060 } ]
trunks:
  sbc: { gateways: [ { host: 127.0.0.1, port: 5080, transport: $trunk_transport } ] }
outbound:
  - { name: outside, match: '^9(\\d*)$$', rewrite: $rewrite, trunk: sbc }
emergency:
  direct_routing:
    - { name: sbc-911, match: '^911$$', trunk: sbc, countries: [$countries] }
    - { name: $second_rule, match: '^999$$', trunk: sbc }
  direct_offer:
    gateways: [ { host: 127.0.0.1, port: 5082, transport: $offer_transport } ]
    request_uri: $request_uri
agents:
  alice:
    password: x
    identity: $identity
    callback_fallback: $fallback
    location: { country: $country }
queues:
  q: { overflow: { destination: $destination } }
"""

GOOD = dict(
    listen_transport="udp",
    trunk_transport="tcp",
    rewrite="'\\1'",
    countries="US, CA",
    second_rule="gb-999",
    offer_transport="udp",
    request_uri="'urn:service:sos'",
    identity="'+15555550101'",
    fallback="'sip:security@192.0.2.10:5090'",
    country="US",
    destination="'sip:overflow@192.0.2.11;transport=tcp'",
)


def problems(**changes: str) -> list[str]:
    text = string.Template(TEMPLATE).substitute({**GOOD, **changes})
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "d.yaml")
    return str(caught.value).splitlines()


def test_the_template_loads_and_builds_the_emergency_policy() -> None:
    dialplan = load_dialplan_text(string.Template(TEMPLATE).substitute(GOOD), "d.yaml")
    # the policy reads this very section: this is where countries: [USA] used to crash
    rule = dialplan.emergency.direct_routing[0]
    assert rule.countries == ("US", "CA") and rule.matches("911", "sos")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"countries": "USA"},
            "d.yaml:9: emergency.direct_routing[0].countries[0]: 'USA' is not an ISO 3166 "
            "alpha-2 code such as US or GB",
        ),
        (
            {"countries": "US, us"},
            "d.yaml:9: emergency.direct_routing[0].countries[1]: 'us' is not an ISO 3166 "
            "alpha-2 code such as US or GB (codes are upper case: 'US')",
        ),
        (
            {"countries": "XX"},
            "d.yaml:9: emergency.direct_routing[0].countries[0]: 'XX' is not an ISO 3166 "
            "alpha-2 code such as US or GB (not an assigned code)",
        ),
        (
            {"countries": "FR"},
            "d.yaml:9: emergency.direct_routing[0].countries[0]: 'FR' has no emergency dial "
            "strings in this gateway (supported: CA, DK, GB, PR, US), so a rule limited to it "
            "could never match",
        ),
        (
            {"country": "USA"},
            "d.yaml:19: agents.alice.location.country: 'USA' is not an ISO 3166 alpha-2 code",
        ),
        (
            {"country": "QQ"},
            "d.yaml:19: agents.alice.location.country: 'QQ' is not an ISO 3166 alpha-2 code "
            "such as US or GB (not an assigned code)",
        ),
    ],
)
def test_countries_must_be_iso_and_emergency_rules_supported(
    changes: dict[str, str], expected: str
) -> None:
    assert any(line.startswith(expected) for line in problems(**changes)), problems(**changes)


def test_an_agent_in_a_valid_but_unsupported_country_loads() -> None:
    # SPEC E-11: a shortfall that `gateway check` reports, not an error; the call goes out
    text = string.Template(TEMPLATE).substitute({**GOOD, "country": "FR"})
    dialplan = load_dialplan_text(text, "d.yaml")
    location = dialplan.agents["alice"].location
    assert location is not None and location.country == "FR"


def test_tls_loads_everywhere_and_check_asks_for_the_listener_certificate(
    tmp_path: Path,
) -> None:
    """Issue 13: tls is a transport like the others; what it needs beyond the file (the
    listeners' certificate) is checked by ``gateway check`` against the settings."""
    from gateway.transport.tls import tls_problems

    changes = {
        "listen_transport": "tls",
        "trunk_transport": "tls",
        "offer_transport": "tls",
        "fallback": "'sips:security@192.0.2.10'",
        "destination": "'sip:o@192.0.2.11;transport=tls'",
    }
    dialplan = load_dialplan_text(
        string.Template(TEMPLATE).substitute({**GOOD, **changes}), "d.yaml"
    )
    assert dialplan.listen[0].transport == "tls"
    assert dialplan.trunks["sbc"].gateways[0].transport == "tls"
    settings = load_settings(data_dir=tmp_path)
    assert tls_problems(dialplan, settings) == [
        "listen: a tls listener (127.0.0.1:5060) needs a certificate: set "
        "GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE (PEM files)"
    ]


def test_an_unknown_transport_is_refused_with_the_ones_that_work() -> None:
    assert (
        "d.yaml:4: trunks.sbc.gateways[0].transport: transport 'sctp' is not supported: "
        "use udp, tcp or tls"
    ) in problems(trunk_transport="sctp")
    assert (
        "d.yaml:18: agents.alice.callback_fallback: 'sip:s@192.0.2.10;transport=sctp': "
        "transport 'sctp' is not supported: use udp, tcp or tls"
    ) in problems(fallback="'sip:s@192.0.2.10;transport=sctp'")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"country": "NO"},
            "d.yaml:19: agents.alice.location.country: Input should be a valid string, "
            "got False from YAML; quote the value: 'NO'",
        ),
        (
            {"countries": "US, NO"},
            "d.yaml:9: emergency.direct_routing[0].countries[1]: Input should be a valid "
            "string, got False from YAML; quote the value: 'NO'",
        ),
        (
            {"identity": "+15555550101"},
            "d.yaml:17: agents.alice.identity: Input should be a valid string, "
            "got 15555550101 from YAML; quote the value: '+15555550101'",
        ),
        (
            {"second_rule": "on"},
            "d.yaml:10: emergency.direct_routing[1].name: Input should be a valid string, "
            "got True from YAML; quote the value: 'on'",
        ),
        (
            {"listen_transport": "yes"},
            "d.yaml:2: listen[0].transport: Input should be 'udp', 'tcp' or 'tls', "
            "got True from YAML; quote the value: 'yes'",
        ),
    ],
)
def test_yaml_1_1_readings_of_unquoted_values_say_how_to_quote(
    changes: dict[str, str], expected: str
) -> None:
    assert expected in problems(**changes)


def test_an_unquoted_numeric_mapping_key_says_how_to_quote() -> None:
    text = string.Template(TEMPLATE).substitute(GOOD).replace("  alice:", "  1001:")
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "d.yaml")
    assert (
        "d.yaml:15: agents[1001]: Input should be a valid string, got 1001 from YAML; "
        "quote the value: '1001'"
    ) in str(caught.value).splitlines()


def test_a_quoted_value_gets_no_yaml_hint() -> None:
    [line] = [p for p in problems(country="'no'") if "country" in p]
    assert "from YAML" not in line and "(codes are upper case: 'NO')" in line


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [
        ("'security-desk'", "is not a SIP URI the gateway can send to"),
        ("'tel:+15555550199'", "is not a SIP URI the gateway can send to"),
        ("'sip:desk@192.0.2.10;transport=sctp'", "transport 'sctp' is not supported"),
        ("'sip:desk@10.0.0.300'", "is neither an IP address nor a valid hostname"),
    ],
)
def test_callback_fallback_must_be_a_sip_uri_the_gateway_can_send_to(
    fallback: str, expected: str
) -> None:
    [line] = [p for p in problems(fallback=fallback) if "callback_fallback" in p]
    assert line.startswith("d.yaml:18: agents.alice.callback_fallback: ") and expected in line


def test_direct_offer_request_uri_must_parse() -> None:
    assert any(
        line.startswith("d.yaml:13: emergency.direct_offer.request_uri: 'not a uri' is not a URI")
        for line in problems(request_uri="'not a uri'")
    )


def test_duplicate_direct_routing_names_are_refused_not_a_crash() -> None:
    # the policy's own config type used to raise ValueError on these at run time
    assert (
        "d.yaml:10: emergency.direct_routing[1].name: duplicate rule name 'sbc-911' "
        "(also emergency.direct_routing[0])"
    ) in problems(second_rule="sbc-911")


@pytest.mark.parametrize(
    ("rewrite", "expected"),
    [
        ("'sip:\\1'", "rewrite template 'sip:\\1' puts ':' into the user part"),
        ("'\\1@carrier'", "puts '@' into the user part"),
        ("'\\1 x'", "puts ' ' into the user part"),
        ("''", "rewrite template '' gives an empty user part"),
    ],
)
def test_rewrite_templates_that_cannot_build_a_user_part(rewrite: str, expected: str) -> None:
    [line] = [p for p in problems(rewrite=rewrite) if "rewrite" in p]
    assert line.startswith("d.yaml:6: outbound[0].rewrite: ") and expected in line


def test_a_rewrite_that_leaves_nothing_is_no_match() -> None:
    dialplan = load_dialplan_text(string.Template(TEMPLATE).substitute(GOOD), "d.yaml")
    decision = dialplan.route("95551234")
    assert decision is not None and decision.user == "5551234"
    assert dialplan.route("9") is None  # '\1' of an empty group: no user part to send
    assert dialplan.outbound[0].apply("9") is None


def test_iso_country_list() -> None:
    assert len(ISO_3166_ALPHA_2) == 249
    assert {"US", "CA", "PR", "GB", "DK", "NO", "FR"} <= ISO_3166_ALPHA_2
    assert not {"UK", "EU", "XX", "USA"} & ISO_3166_ALPHA_2
    table = Path("/usr/share/zoneinfo/iso3166.tab")
    if table.exists():  # the system's copy of the standard, where the OS ships one
        codes = {
            line.split("\t")[0]
            for line in table.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")
        }
        assert codes == ISO_3166_ALPHA_2


# --- GATEWAY_* settings -------------------------------------------------------------------


def test_bad_settings_give_one_line_per_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SMTP_PORT", "abc")
    monkeypatch.setenv("gateway_log_level", "loud")
    monkeypatch.setenv("GATEWAY_NOTIFY_RETRY_MAX_S", "1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert sorted(caught.value.problems) == [
        "GATEWAY_LOG_LEVEL='loud': expected 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'",
        "GATEWAY_NOTIFY_RETRY_MAX_S='1': must not be less than GATEWAY_NOTIFY_RETRY_BASE_S "
        "(5.0), the first retry delay",
        "GATEWAY_SMTP_PORT='abc': expected a valid integer, unable to parse string as an integer",
    ]


# --- the real process: `gateway check` / `gateway run` ---------------------------------------


def _gateway(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {
        key: value for key, value in os.environ.items() if not key.upper().startswith("GATEWAY_")
    }
    environ.update(
        GATEWAY_MQTT_URL="off",
        GATEWAY_DATA_DIR=str(tmp_path / "data"),
        GATEWAY_USE_UVLOOP="false",
        **(env or {}),
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _write(tmp_path: Path, **changes: str) -> Path:
    path = tmp_path / "d.yaml"
    path.write_text(string.Template(TEMPLATE).substitute({**GOOD, **changes}))
    return path


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_bad_environment_variable_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    path = _write(tmp_path)
    args = ["check", str(path)] if command == "check" else ["run", "--dialplan", str(path)]
    result = _gateway(tmp_path, *args, env={"GATEWAY_SMTP_PORT": "abc"})
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "gateway: bad setting: GATEWAY_SMTP_PORT='abc': expected a valid integer, "
        "unable to parse string as an integer"
    ]


def test_check_refuses_countries_usa_with_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, countries="USA")
    result = _gateway(tmp_path, "check", str(path))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "OK" not in result.stdout
    assert (
        f"{path}:9: emergency.direct_routing[0].countries[0]: 'USA' is not an ISO 3166 "
        "alpha-2 code such as US or GB"
    ) in result.stderr


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"countries": "USA"}, ":9: emergency.direct_routing[0].countries[0]: 'USA'"),
    ],
)
def test_run_refuses_what_used_to_crash_it(
    tmp_path: Path, changes: dict[str, str], expected: str
) -> None:
    path = _write(tmp_path, **changes)
    result = _gateway(tmp_path, "run", "--dialplan", str(path))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("gateway: dialplan refused:\n")
    assert f"{path}{expected}" in result.stderr


TLS_NEEDS_CERT = (
    "a tls listener (127.0.0.1:5060) needs a certificate: set GATEWAY_TLS_CERT_FILE and "
    "GATEWAY_TLS_KEY_FILE (PEM files)"
)


def test_check_and_run_refuse_a_tls_listener_without_a_certificate(tmp_path: Path) -> None:
    path = _write(tmp_path, listen_transport="tls")
    checked = _gateway(tmp_path, "check", str(path))
    assert checked.returncode == 1, checked
    assert f"{path}: TLS: listen: {TLS_NEEDS_CERT}" in checked.stderr.splitlines()
    ran = _gateway(tmp_path, "run", "--dialplan", str(path))
    assert ran.returncode == 2, ran
    assert "Traceback" not in ran.stderr
    assert ran.stderr.splitlines() == [f"gateway: TLS: listen: {TLS_NEEDS_CERT}"]


def test_check_names_an_unusable_certificate_file(tmp_path: Path) -> None:
    path = _write(tmp_path, listen_transport="tls")
    missing = tmp_path / "missing.pem"
    env = {"GATEWAY_TLS_CERT_FILE": str(missing), "GATEWAY_TLS_KEY_FILE": str(missing)}
    checked = _gateway(tmp_path, "check", str(path), env=env)
    assert checked.returncode == 1, checked
    assert (
        f"{path}: TLS: GATEWAY_TLS_CERT_FILE / GATEWAY_TLS_KEY_FILE ({missing}, {missing}): "
        "cannot be used as the listeners' certificate: [Errno 2] No such file or directory"
    ) in checked.stderr
