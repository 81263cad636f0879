"""The read backlog of overload control (SPEC O-4), read from a real socket's queue."""

from __future__ import annotations

import socket
import sys

import pytest

from gateway.transport.load import read_backlog

pytestmark = [
    pytest.mark.loopback,
    pytest.mark.skipif(
        sys.platform != "linux",
        reason="SO_MEMINFO is Linux's; elsewhere the backlog reads empty by design and the "
        "signal is off (the kernel-drop and fill figures do not exist there)",
    ),
]


def test_the_read_backlog_of_a_real_socket_is_read_from_the_kernel() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        assert read_backlog([receiver]).fill == 0.0
        for _ in range(40):
            sender.sendto(b"x" * 800, receiver.getsockname())
        backlog = read_backlog([receiver])
        assert 0.0 < backlog.fill <= 1.0 and backlog.drops == 0
        for _ in range(2000):  # far more than the buffer holds: the kernel drops
            sender.sendto(b"x" * 800, receiver.getsockname())
        assert read_backlog([receiver]).drops > 0
    finally:
        receiver.close()
        sender.close()
