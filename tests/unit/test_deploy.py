"""What ships in deploy/ (issue 11, SPEC O-7): the systemd unit passes ``systemd-analyze
verify`` and asks for what the gateway does (notify, watchdog, its own user, a state
directory, hardening); the environment file holds only settings the gateway knows, with
values it accepts; the container image is multi-stage, non-root, with a data volume and a
health check; the compose file pairs it with Mosquitto; the cluster compose file (issue #12)
wires the Kamailio front, two nodes, Redis and Mosquitto together (no Docker engine runs
here, and ``docker compose`` may be missing: the YAML, the dialplans and the dispatcher
list it mounts are read instead); the wheel's data files exist."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from gateway.config.loader import load_dialplan
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


# --------------------------------------------------------------------------- the cluster


CONTAINER = DEPLOY / "container"
NODES = ("gw1", "gw2")


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host file of a service's bind mounts (``./x:/y[:ro]``)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (CONTAINER / source).resolve()
    return mounts


def kamailio_defines(front: dict[str, Any]) -> dict[str, str]:
    """The ``-A NAME=VALUE`` defines of the front's command line, quotes removed."""
    command = [str(arg) for arg in front["command"]]
    pairs = [command[i + 1] for i, arg in enumerate(command) if arg == "-A"]
    return {name: value.strip('"') for name, _, value in (p.partition("=") for p in pairs)}


def test_the_cluster_compose_file_wires_the_front_two_nodes_redis_and_mosquitto() -> None:
    compose = yaml.safe_load((CONTAINER / "compose.cluster.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "mosquitto", "front", *NODES}
    address = {
        name: service["networks"]["cluster"]["ipv4_address"] for name, service in services.items()
    }
    assert len(set(address.values())) == len(address)  # one address per service
    subnet = compose["networks"]["cluster"]["ipam"]["config"][0]["subnet"]
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(subnet) for a in address.values())

    # the nodes: the same Redis, nonce key and broker; each its own data volume and dialplan
    envs = [services[node]["environment"] for node in NODES]
    for env in envs:
        assert env["GATEWAY_STORE"] == f"redis://{address['redis']}:6379/0"
        assert env["GATEWAY_MQTT_URL"] == f"mqtt://{address['mosquitto']}:1883"
        # compose refuses to start without it: never an empty (per-node random) key
        assert env["GATEWAY_NONCE_SECRET"].startswith("${GATEWAY_NONCE_SECRET:?")
        Settings(**{k.removeprefix("GATEWAY_").lower(): v for k, v in env.items()
                    if k != "GATEWAY_NONCE_SECRET"})  # fmt: skip
    assert envs[0] == envs[1]
    data = [
        next(v for v in services[n]["volumes"] if v.endswith(":/var/lib/gateway")) for n in NODES
    ]
    assert len(set(data)) == 2 and all(v.split(":")[0] in compose["volumes"] for v in data)
    for node in NODES:
        assert not any("5060" in port for port in services[node].get("ports", []))

    dialplans = {}
    for node in NODES:
        path = bind_mounts(services[node])["/etc/gateway/dialplan.yaml"]
        dialplan = load_dialplan(path)
        assert dialplan.node.name == node
        listeners = {(lst.transport, lst.host, lst.port) for lst in dialplan.listen}
        assert ("udp", address[node], 5060) in listeners
        dialplans[node] = (dialplan, yaml.safe_load(path.read_text()))
    (plan1, raw1), (plan2, raw2) = dialplans["gw1"], dialplans["gw2"]
    out1 = set(plan1.emergency.callback.outage_dids)
    out2 = set(plan2.emergency.callback.outage_dids)
    assert out1 and out2 and not out1 & out2  # each node its own outage share
    assert not (out1 | out2) & set(plan1.emergency.callback.dids)
    for raw in (raw1, raw2):  # otherwise the very same dialplan
        del raw["node"], raw["listen"], raw["emergency"]["callback"]["outage_dids"]
    assert raw1 == raw2

    # the front: cluster.cfg with the dispatcher list that names the nodes' addresses
    front = services["front"]
    defines = kamailio_defines(front)
    mounts = bind_mounts(front)
    command = [str(arg) for arg in front["command"]]
    config = command[command.index("-f") + 1]
    assert mounts[config] == DEPLOY / "kamailio" / "cluster.cfg"
    cfg = mounts[config].read_text()
    for name in defines:
        assert f"#!ifndef {name}\n" in cfg, f"cluster.cfg has no overridable {name}"
    assert defines["FRONT_IP"] == address["front"]
    dispatcher_path = defines.get("DISPATCHER_LIST", "/etc/kamailio/dispatcher.list")
    entries = [
        line.split()
        for line in mounts[dispatcher_path].read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(entry[1] for entry in entries if entry[0] == "1") == sorted(
        f"sip:{address[node]}:5060" for node in NODES
    )
    trusted = ipaddress.ip_network(defines["TRUSTED_NETS"])
    assert all(ipaddress.ip_address(address[node]) in trusted for node in NODES)
    assert ipaddress.ip_network(subnet).network_address not in trusted  # not every source
    assert {"5060:5060/udp", "5060:5060/tcp"} <= set(front["ports"])
