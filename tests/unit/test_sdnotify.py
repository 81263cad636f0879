"""systemd's notify protocol (issue 11, SPEC O-7) against a real datagram Unix socket bound
here, as systemd binds NOTIFY_SOCKET: READY/STOPPING/STATUS, the watchdog pings at half
WATCHDOG_USEC, abstract socket names, and silence when not under systemd."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import SystemdNotifier


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5.0)
    try:
        yield sock
    finally:
        sock.close()


def test_ready_and_stopping_reach_the_socket(systemd: socket.socket, tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert notifier.watchdog_s is None
    assert notifier.send("READY=1\nSTATUS=serving")
    assert systemd.recv(4096) == b"READY=1\nSTATUS=serving"
    notifier.stopping()
    assert systemd.recv(4096) == b"STOPPING=1\nSTATUS=draining"


async def test_the_watchdog_pings_at_half_the_period(
    systemd: socket.socket, tmp_path: Path
) -> None:
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    notifier = SystemdNotifier.from_environment(env)
    assert notifier.watchdog_s == 0.2
    notifier.ready()
    try:
        received = [await asyncio.to_thread(systemd.recv, 4096) for _ in range(3)]
    finally:
        await notifier.close()
    assert received == [b"READY=1\nSTATUS=serving", b"WATCHDOG=1", b"WATCHDOG=1"]


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert SystemdNotifier.from_environment(env).watchdog_s is None


def test_an_abstract_socket_name() -> None:
    name = f"gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert sock.recv(64) == b"READY=1"


def test_not_under_systemd_nothing_is_sent_and_a_dead_socket_is_not_an_error(
    tmp_path: Path,
) -> None:
    assert SystemdNotifier.from_environment({}).send("READY=1") is False
    gone = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert gone.send("READY=1") is False  # logged, never raised into the node
