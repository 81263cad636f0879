"""The gateway under systemd's notify protocol (issue 11, SPEC O-7): the test binds the
datagram socket systemd would pass as NOTIFY_SOCKET; the real process says READY=1 once it
serves and STOPPING=1 at SIGTERM, then exits 0."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from harness import GatewayFactory

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
        gw = gateway_factory(DIALPLAN, env={"NOTIFY_SOCKET": str(path), "GATEWAY_MQTT_URL": "off"})
        assert systemd.recv(4096) == b"READY=1\nSTATUS=serving"
        assert (gw.data_dir / "gateway.sock").exists()  # READY comes after the control socket
        gw.popen.send_signal(signal.SIGTERM)
        assert systemd.recv(4096) == b"STOPPING=1\nSTATUS=draining"
        assert gw.popen.wait(timeout=20) == 0, gw.log_tail()
