"""The load signals of overload control (SPEC O-4), sampled on the event loop.

Theory of operation
-------------------
:class:`LoadMeter` arms one ``loop.call_at`` every ``interval`` seconds. When it fires, how
late it fired is the loop's lag (the time the loop spent on other callbacks past the
deadline: the gateway's one CPU falling behind), the endpoint's datagram counter since
the previous sample is the read burst, and the UDP sockets' receive queues (how full, and
the kernel's drops) are the read backlog: with uvloop reading a few dozen datagrams per
loop turn, the lag stays small while the kernel queue overflows, so the backlog is the
signal that the gateway is behind. All go to ``report(lag, reads, now, backlog)`` (the sans-I/O
:class:`~gateway.b2bua.admission.Admission`). It is a timer, not a task: nothing to await,
:meth:`LoadMeter.close` cancels it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Final

__all__ = ["RECEIVE_BUFFER", "Backlog", "LoadMeter", "read_backlog", "size_receive_buffer"]

_SO_MEMINFO: Final = 55  # Linux: struct of SK_MEMINFO_* counters
_MEMINFO: Final = struct.Struct("9I")
_RMEM_ALLOC, _RCVBUF, _DROPS = 0, 1, 8


RECEIVE_BUFFER: Final = 256 * 1024
"""Bytes asked for each listening UDP socket's receive queue (the kernel doubles it for its
bookkeeping: about 220 datagrams of a loopback INVITE's 2.3 KB). Room for a burst while the
read backlog signal sheds at half of it, and no more: a longer queue is set-up time for the
emergency INVITEs waiting in it. Capped at ``net.core.rmem_max`` unless the process may
force it (CAP_NET_ADMIN); the kernel's default is 208 KB."""
_SO_RCVBUFFORCE: Final = 33


def size_receive_buffer(sock: socket.socket, size: int = RECEIVE_BUFFER) -> int:
    """Ask for a ``size``-byte receive queue on ``sock`` (forced where allowed); the size the
    kernel granted (it doubles the request for its bookkeeping)."""
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
        except OSError:
            continue
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


class Backlog:
    """The read backlog of the listening UDP sockets at one sample."""

    __slots__ = ("drops", "fill")

    def __init__(self, fill: float = 0.0, drops: int = 0) -> None:
        #: the fullest socket's receive queue, as a share of its buffer (0 to 1)
        self.fill = fill
        #: datagrams the kernel dropped on them so far (a full buffer), all sockets
        self.drops = drops


def read_backlog(sockets: list[socket.socket]) -> Backlog:
    """How full the receive queues of ``sockets`` are, and the kernel's drop count
    (``SO_MEMINFO``, Linux 4.6 and later; elsewhere an empty backlog)."""
    backlog = Backlog()
    for sock in sockets:
        try:
            info = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size))
        except (OSError, struct.error):
            continue
        if info[_RCVBUF]:
            backlog.fill = max(backlog.fill, info[_RMEM_ALLOC] / info[_RCVBUF])
        backlog.drops += info[_DROPS]
    return backlog


class LoadMeter:
    """Samples loop lag and datagrams read every ``interval`` seconds into ``report``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        received: Callable[[], int],
        report: Callable[[float, int, float, Backlog], None],
        interval: float = 0.02,
        sockets: Callable[[], list[socket.socket]] = list,
    ) -> None:
        self.loop = loop
        self.received = received
        self.report = report
        self.interval = interval
        self.sockets = sockets
        self._due = 0.0
        self._last_count = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Arm the first sample."""
        self._last_count = self.received()
        self._arm(self.loop.time())

    def close(self) -> None:
        """Stop sampling."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        self._due = now + self.interval
        self._handle = self.loop.call_at(self._due, self._sample)

    def _sample(self) -> None:
        now = self.loop.time()
        count = self.received()
        reads, self._last_count = count - self._last_count, count
        try:
            self.report(now - self._due, reads, now, read_backlog(self.sockets()))
        finally:
            self._arm(now)
