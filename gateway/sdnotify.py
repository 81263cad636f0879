"""systemd's notify protocol (``Type=notify``, sd_notify(3)), in a few lines, no dependency.

Theory of operation
-------------------
When systemd starts the gateway with ``Type=notify`` it sets ``NOTIFY_SOCKET``: a Unix
datagram socket (a path, or an abstract name written with a leading ``@``). Each state is
one datagram of ``KEY=value`` lines: ``READY=1`` once the node serves (the SIP ports, the
metrics and the control socket are open), ``STOPPING=1`` on the first stop signal (the
drain), ``STATUS=...`` free text for ``systemctl status``. With ``WatchdogSec=`` systemd
also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): the node must send ``WATCHDOG=1`` more
often than that, and does so every half period from a task on the event loop, so a loop
that is stuck (the one thing that stops every call) stops the pings and systemd restarts
the node. Without ``NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

from gateway.tasks import stop_task

__all__ = ["SystemdNotifier"]

log = structlog.get_logger("gateway.sdnotify")


class SystemdNotifier:
    """Sends states to systemd's ``NOTIFY_SOCKET`` (see the module docstring)."""

    def __init__(self, address: str | None, watchdog_s: float | None = None):
        #: the socket address (abstract names start with NUL), or None: not under systemd
        self.address = address
        #: systemd's watchdog period, or None: no watchdog asked for
        self.watchdog_s = watchdog_s
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET") or None
        if path is not None and path.startswith("@"):
            path = "\0" + path[1:]  # an abstract socket name
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1_000_000
        return cls(path, watchdog_s)

    def send(self, state: str) -> bool:
        """Send one state datagram; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("sd_notify_failed", state=state.split("\n", 1)[0], error=str(exc))
            return False
        return True

    def ready(self, status: str = "serving") -> None:
        """The node serves: READY=1, and the watchdog pings start when asked for."""
        self.send(f"READY=1\nSTATUS={status}")
        if self.watchdog_s is not None and self._task is None:
            self._task = asyncio.create_task(self._watchdog(self.watchdog_s / 2), name="watchdog")

    def stopping(self, status: str = "draining") -> None:
        self.send(f"STOPPING=1\nSTATUS={status}")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval_s)
