"""The embedded MQTT broker of ``make run`` lives exactly as long as the gateway.

The gateway runs as a process in a session of its own, as ``make run`` does in a terminal
(Mosquitto must be installed, as ``make test`` does). Ctrl-C is SIGINT to the terminal's
whole process group: it must reach the gateway alone, which says ``offline`` and stops the
broker last. A ``kill -9`` of the gateway must not leave the broker behind, holding port
1884 for the next ``make run`` (which would move to 1885, away from the desktops).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, PROJECT_ROOT, free_port, require_tool

DIALPLAN = """\
version: 1
node: {{ name: embedded1 }}
listen:
  - {{ transport: udp, host: {host}, port: {port} }}
"""


class Node:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self.log = process, log

    def events(self) -> list[dict[str, object]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def named(self, event: str) -> list[dict[str, object]]:
        return [e for e in self.events() if e.get("event") == event]

    def broker_pid(self) -> int:
        """The gateway's mosquitto child, once the gateway says it is connected."""
        deadline = time.monotonic() + 15
        while not self.named("mqtt_connected"):
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        brokers = [pid for pid in pids if b"mosquitto" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(brokers) == 1, pids
        return brokers[0]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    require_tool("mosquitto")
    dialplan = tmp_path / "dialplan.yaml"
    dialplan.write_text(DIALPLAN.format(host=LOOPBACK, port=free_port()))
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_METRICS_ADDR": "off",
        "GATEWAY_MQTT_EMBEDDED_PORT": str(free_port("tcp")),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--dialplan", str(dialplan)],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as in a terminal
        )
    try:
        yield Node(process, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _gone(pid: int, timeout: float) -> bool:
    """Has ``pid`` ended (gone, or a zombie waiting for its new parent to reap it)?"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_reaches_the_gateway_alone_which_stops_its_broker_last(node: Node) -> None:
    broker = node.broker_pid()
    os.killpg(node.process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    assert node.process.wait(timeout=20) == 0, node.log.read_text()[-3000:]
    names = [str(e.get("event")) for e in node.events()]
    # the broker was still there when the gateway said goodbye on MQTT, then it stopped
    assert "mqtt_connection_failed" not in names, names
    assert names.index("mqtt_disconnecting") < names.index("embedded_mqtt_broker_stopped")
    assert not [e for e in node.events() if e.get("level") == "error"], names
    assert _gone(broker, 5)


def test_a_killed_gateway_leaves_no_broker_behind(node: Node) -> None:
    broker = node.broker_pid()
    node.process.kill()  # SIGKILL to the gateway alone: no clean-up runs
    node.process.wait(timeout=10)
    assert _gone(broker, 5), f"mosquitto {broker} outlived its gateway"
