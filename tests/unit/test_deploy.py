"""What ships in deploy/ (issue 11, SPEC O-7): the systemd unit passes ``systemd-analyze
verify`` and asks for what the gateway does (notify, watchdog, its own user, a state
directory, hardening); the environment file holds only settings the gateway knows, with
values it accepts; the container image is multi-stage, non-root, with a data volume and a
health check; the compose file pairs it with Mosquitto; the wheel's data files exist."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from gateway.config.settings import Settings, load_settings
from testkit.processes import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_systemd_unit_verifies_and_asks_for_notify_watchdog_and_hardening(
    tmp_path: Path,
) -> None:
    text = (DEPLOY / "systemd" / "gateway.service").read_text()
    unit = unit_settings(text)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["User"] == ["gateway"] and unit["StateDirectory"] == ["gateway"]
    assert unit["Environment"] == ["GATEWAY_DATA_DIR=/var/lib/gateway"]
    assert unit["EnvironmentFile"] == ["/etc/gateway/gateway.env"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["TimeoutStopSec"] == ["infinity"]  # the drain waits for emergency calls
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "",
    }.items():  # fmt: skip
        assert unit[key] == [value], key
    # verify it as installed, with ExecStart pointing at this checkout's entry point
    gateway = ROOT / ".venv" / "bin" / "gateway"
    assert gateway.exists(), "the checkout's venv has no gateway entry point"
    local = tmp_path / "gateway.service"
    local.write_text(text.replace("/opt/gateway/bin/gateway", str(gateway)))
    result = subprocess.run(
        [require_tool("systemd-analyze"), "verify", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "gateway.service" in line  # other units' noise on this host is not ours
    ]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


def test_the_environment_file_holds_known_settings_the_gateway_accepts() -> None:
    values = {}
    for line in (DEPLOY / "systemd" / "gateway.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    fields = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    assert set(values) <= fields, set(values) - fields
    overrides = {key.removeprefix("GATEWAY_").lower(): value for key, value in values.items()}
    settings = load_settings(**overrides)
    assert settings.cdr_retention_days == 400 and settings.log_format == "auto"


def test_the_container_image_is_multi_stage_non_root_with_a_volume_and_health_check() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert stages == [("python:3.11", "build"), ("python:3.11-slim", "")]
    assert "pip wheel" in text and "COPY --from=build /wheels /wheels" in text
    assert re.search(r"^USER gateway$", text, re.M)
    assert 'VOLUME ["/var/lib/gateway"]' in text and "GATEWAY_DATA_DIR=/var/lib/gateway" in text
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD python -c .*/healthz", text, re.M)
    assert 'ENTRYPOINT ["gateway"]' in text
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for name in copied.split():
            assert (ROOT / name).exists(), f"the Containerfile copies {name}, which is missing"


def test_the_compose_file_runs_the_image_with_mosquitto() -> None:
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    gateway, broker = compose["services"]["gateway"], compose["services"]["mosquitto"]
    assert broker["image"].startswith("eclipse-mosquitto:")
    assert gateway["build"]["dockerfile"] == "deploy/container/Containerfile"
    assert gateway["environment"]["GATEWAY_MQTT_URL"] == "mqtt://mosquitto:1883"
    assert "gateway-data:/var/lib/gateway" in gateway["volumes"]
    assert gateway["stop_grace_period"] == "10m"
    assert (DEPLOY / "container" / "mosquitto.conf").exists()


def test_the_wheel_data_files_exist() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data_files = project["tool"]["setuptools"]["data-files"]
    files = [name for names in data_files.values() for name in names]
    assert "dialplans/example.yaml" in files
    assert any(name.startswith("dialplans/templates/") for name in files)
    for name in files:
        assert (ROOT / name).is_file(), name
    templates = {p.name for p in (ROOT / "dialplans" / "templates").iterdir()}
    assert {Path(name).name for name in files} >= templates  # every template ships
