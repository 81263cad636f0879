"""The shipped Mosquitto pattern (deploy/mosquitto) enforces SPEC W-1's access control.

A real Mosquitto runs deploy/mosquitto/mosquitto.conf and gateway.acl, with only the file
paths, the ports and the topic prefix changed: a desktop publishes only its own agent's
commands, a wallboard nothing, and a wrong password gets no connection.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import OPEN_RECORDERS, Recorder, mosquitto_binary
from harness import LOOPBACK, PROJECT_ROOT, free_port
from paho.mqtt.enums import CallbackAPIVersion

from gateway.web.users import hash_password

DEPLOY = PROJECT_ROOT / "deploy" / "mosquitto"
LOGINS = {"gateway": "gw-pw", "supervisor": "sup-pw", "alice": "alice-pw", "bob": "bob-pw"}


def deploy_broker(workdir: Path, prefix: str) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on the shipped config; only paths, ports and the prefix replaced."""
    workdir.mkdir(parents=True)
    port, ws_port = free_port("tcp"), free_port("tcp")
    passwords, acl = workdir / "gateway.passwd", workdir / "gateway.acl"
    passwords.write_text("".join(f"{u}:{hash_password(p)}\n" for u, p in LOGINS.items()))
    acl.write_text((DEPLOY / "gateway.acl").read_text().replace("acme/gateway", prefix))
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/gateway.passwd", str(passwords))
    conf = conf.replace("/etc/mosquitto/gateway.acl", str(acl))
    conf = re.sub(r"(?m)^persistence.*$", "", conf) + "persistence false\n"
    conf = conf.replace("listener 1883 127.0.0.1", f"listener {port} {LOOPBACK}")
    conf = conf.replace("listener 9001", f"listener {ws_port} {LOOPBACK}")
    (workdir / "mosquitto.conf").write_text(f"user root\n{conf}")
    log = (workdir / "mosquitto.log").open("ab")
    process = subprocess.Popen(
        [mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")], stdout=log, stderr=log
    )
    return process, port


def publish(port: int, user: str, password: str, topic: str) -> int:
    """Connect as ``user`` and publish one QoS 1 message; the CONNACK reason code (0: in)."""
    answered = threading.Event()
    codes: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}")
    client.username_pw_set(user, password)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        codes.append(code.value)
        answered.set()

    client.on_connect = on_connect
    client.connect(LOOPBACK, port)
    client.loop_start()
    try:
        assert answered.wait(5), f"no CONNACK for {user}"
        if codes[0] == 0:
            client.publish(topic, '{"status": "Away"}', qos=1).wait_for_publish(5)
        return codes[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_deploy_acl_lets_a_desktop_set_only_its_own_agent(tmp_path: Path) -> None:
    prefix = f"acl-{uuid.uuid4().hex[:8]}"
    process, port = deploy_broker(tmp_path / "mosquitto", prefix)
    try:
        deadline = time.monotonic() + 5
        watcher: Recorder | None = None
        while watcher is None:
            try:
                watcher = Recorder(port, f"{prefix}/#", login=("gateway", LOGINS["gateway"]))
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the deploy Mosquitto did not listen", pytrace=False)
                time.sleep(0.05)
        OPEN_RECORDERS.append(watcher)
        alice_set, bob_set = (
            f"{prefix}/agents/alice/presence/set",
            f"{prefix}/agents/bob/presence/set",
        )
        assert publish(port, "bob", LOGINS["bob"], alice_set) == 0  # accepted, then dropped
        assert publish(port, "supervisor", LOGINS["supervisor"], alice_set) == 0
        assert publish(port, "alice", "wrong", alice_set) != 0  # no connection at all
        assert publish(port, "alice", LOGINS["alice"], f"{prefix}/agents/alice/location/set") == 0
        assert publish(port, "bob", LOGINS["bob"], bob_set) == 0  # the last one sent
        watcher.wait_for(lambda: watcher.on(bob_set), "bob's own command", timeout=5)
        seen = [m.topic for m in watcher.messages]
        assert seen == [f"{prefix}/agents/alice/location/set", bob_set]
    finally:
        process.terminate()
        process.wait(timeout=5)
