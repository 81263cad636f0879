"""A Mosquitto broker started by a test on a free port, and a subscriber that records.

The broker is a real ``mosquitto`` process (package ``mosquitto``); the recorder is a paho
client on its own network thread, so synchronous wire tests can read what was published.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

LOOPBACK = "127.0.0.1"


def mosquitto_binary() -> str:
    """The mosquitto binary; the test fails (not skips) naming the package when absent."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        pytest.fail("mosquitto not found: install the Debian package 'mosquitto'", pytrace=False)
    return found


class Mosquitto:
    """A broker on ``port``; ``stop()`` and ``start()`` again keep the port (outage tests)."""

    def __init__(self, workdir: Path, port: int):
        self.binary = mosquitto_binary()
        self.workdir = workdir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {port} {LOOPBACK}\nallow_anonymous true\npersistence false\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)
        self.process = None


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    retain: bool


class Recorder:
    """Subscribes to ``filters`` and keeps every message (JSON payloads)."""

    def __init__(self, port: int, *filters: str, login: tuple[str, str] | None = None):
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"recorder-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        if login is not None:  # a broker with access control (user name, password)
            self.client.username_pw_set(*login)
        self.client.connect(LOOPBACK, port)
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = {"raw": message.payload.decode(errors="replace")}
        with self._lock:
            self.messages.append(Received(message.topic, payload, bool(message.retain)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m.payload for m in self.messages if m.topic == topic]

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        """Poll until ``condition()`` is truthy; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        with self._lock:
            seen = [(m.topic, m.payload) for m in self.messages][-20:]
        raise AssertionError(f"timed out waiting for {what}; last messages: {seen}")

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


#: MQTT recorders that helpers opened for a test (``test_emergency.open_site`` and the
#: like); the ``_close_recorders`` fixture of conftest.py closes them after each test
OPEN_RECORDERS: list[Recorder] = []
