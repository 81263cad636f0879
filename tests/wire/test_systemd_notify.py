"""The gateway under systemd's notify protocol (issue 11, SPEC O-7): the test binds the
datagram socket systemd would pass as NOTIFY_SOCKET; the real process says READY=1 once it
serves and STOPPING=1 at SIGTERM, then exits 0. Meanwhile the container image's
HEALTHCHECK command line, taken from deploy/container/Containerfile, passes against it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from harness import PROJECT_ROOT, GatewayFactory, free_port

DIALPLAN = (
    "version: 1\n"
    "node: { name: sd1 }\n"
    "listen:\n"
    "  - { transport: udp, host: ${listen_host}, port: ${listen_port} }\n"
)


def test_ready_then_stopping_reach_notify_socket(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        path = tmp_path / "notify"
        systemd.bind(str(path))
        systemd.settimeout(15.0)
        metrics = f"0.0.0.0:{free_port('tcp')}"  # as in the image; the check asks 127.0.0.1
        env = {"NOTIFY_SOCKET": str(path), "GATEWAY_MQTT_URL": "off"}
        gw = gateway_factory(DIALPLAN, env={**env, "GATEWAY_METRICS_ADDR": metrics})
        assert systemd.recv(4096) == b"READY=1\nSTATUS=serving"
        assert (gw.data_dir / "gateway.sock").exists()  # READY comes after the control socket
        assert health_check(metrics) == 0
        assert health_check(f"127.0.0.1:{free_port('tcp')}") != 0  # nothing there: unhealthy
        gw.popen.send_signal(signal.SIGTERM)
        assert systemd.recv(4096) == b"STOPPING=1\nSTATUS=draining"
        assert gw.popen.wait(timeout=20) == 0, gw.log_tail()


def health_check(metrics_addr: str) -> int:
    """The exit status of the image's HEALTHCHECK command, run here."""
    text = (PROJECT_ROOT / "deploy" / "container" / "Containerfile").read_text()
    match = re.search(r'CMD python -c "(.+)"$', text, re.M)
    assert match is not None, "no HEALTHCHECK CMD in the Containerfile"
    env = {**os.environ, "GATEWAY_METRICS_ADDR": metrics_addr}
    done = subprocess.run(
        [sys.executable, "-c", match.group(1)], env=env, capture_output=True, timeout=30
    )
    return done.returncode
