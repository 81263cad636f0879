"""The UDP inbox: datagrams read ahead of the work, served emergency first (SPEC O-4, E-3).

Theory of operation
-------------------
A datagram used to be handled to the end (parsed, through the transaction layer and the
call layer, its answers sent) as soon as uvloop handed it over, in the order the kernel
queued it. Under load the kernel's receive queue then holds tens of milliseconds of work,
and a 911 INVITE waits behind every ordinary datagram that arrived before it.

The endpoint now reads what waits in the kernel ahead of the work (``recvfrom`` until the
queue is empty, or the inbox is full), sorts it into three lanes and serves them in order,
a few milliseconds at a time between loop turns:

=====  ========================================================================
lane   what
=====  ========================================================================
0      a new INVITE that may be an emergency call or an emergency callback, from a
       source that is not a stranger (the overload gate's cheap classification:
       Request-URI and source, as it sheds; the call layer decides on identity)
1      responses and in-dialog requests: the calls already admitted
2      everything else: new ordinary calls, REGISTER, OPTIONS, SUBSCRIBE, ...
=====  ========================================================================

Within a lane, arrival order. An emergency INVITE thus waits for at most one serving slice
and the datagrams that are being handled, not for the queue in front of it. The bytes
waiting are the read backlog of overload control (``fill``): the shedding of lane 2's new
INVITEs (503 + Retry-After, by the overload gate) starts from it as it did from the
kernel's queue. Sans-I/O: the endpoint reads and serves; this only keeps the lanes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from gateway.sip.address import Address

__all__ = ["ADMITTED", "INBOX_BYTES", "NEW", "ORDINARY", "PRIORITY", "UNCLASSIFIED", "Inbox"]

UNCLASSIFIED: Final = -1
"""The lane of a message that did not come through the inbox (a stream's)."""
PRIORITY: Final = 0
ADMITTED: Final = 1
NEW: Final = 2
ORDINARY: Final = 3
"""Lane 2, and known to be no emergency call nor callback (the gate need not look again)."""

INBOX_BYTES: Final = 256 * 1024
"""Bytes of datagrams the inbox holds before the endpoint stops reading ahead (the rest
then waits, or is dropped, in the kernel's queue, as before the inbox). ``fill`` is the
share of it in use."""

#: (data, source, lane) of one datagram
Item = tuple[bytes, Address, int]


def fifo(data: bytes, source: Address, now: float) -> int:
    """The classification without an overload gate: one lane, arrival order."""
    return ADMITTED


class Inbox:
    """Datagrams waiting to be handled, in three lanes (see the table above)."""

    __slots__ = ("_lanes", "bytes", "classify", "limit", "served_out_of_order")

    def __init__(
        self,
        classify: Callable[[bytes, Address, float], int] = fifo,
        limit: int = INBOX_BYTES,
    ) -> None:
        self.classify = classify
        self.limit = limit
        self._lanes: tuple[deque[Item], deque[Item], deque[Item]] = (deque(), deque(), deque())
        #: bytes of the datagrams waiting
        self.bytes = 0
        #: datagrams served ahead of one that arrived before them (lane 0 over lanes 1-2)
        self.served_out_of_order = 0

    def __len__(self) -> int:
        lanes = self._lanes
        return len(lanes[0]) + len(lanes[1]) + len(lanes[2])

    @property
    def full(self) -> bool:
        return self.bytes >= self.limit

    @property
    def fill(self) -> float:
        """The share of the inbox in use (the read backlog signal, like a kernel queue's)."""
        return min(self.bytes / self.limit, 1.0) if self.limit else 0.0

    def put(self, data: bytes, source: Address, now: float) -> int:
        """Queue one datagram; the lane it went to."""
        lane = self.classify(data, source, now)
        self._lanes[min(lane, NEW)].append((data, source, lane))
        self.bytes += len(data)
        return lane

    def pop(self) -> Item | None:
        """The next datagram to handle: the first of the highest lane, or None."""
        lanes = self._lanes
        for index, lane in enumerate(lanes):
            if lane:
                item = lane.popleft()
                self.bytes -= len(item[0])
                if index == PRIORITY and (lanes[1] or lanes[2]):
                    self.served_out_of_order += 1
                return item
        return None

    def clear(self) -> None:
        for lane in self._lanes:
            lane.clear()
        self.bytes = 0
