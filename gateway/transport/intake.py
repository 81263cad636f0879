"""Reading UDP ahead of the work, and serving the inbox by lane on the event loop.

Theory of operation
-------------------
uvloop hands over each datagram it reads (:meth:`UdpIntake.on_datagram`). The intake puts
it into the :class:`~gateway.transport.inbox.Inbox`, reads what else waits in that socket's
kernel queue (non-blocking ``recvfrom`` until it is empty or the inbox is full), then serves
the inbox lane by lane through ``handle`` (the endpoint's parse-and-dispatch). Every
``READ_AHEAD_EVERY`` datagrams it reads ahead again, so that an emergency INVITE arriving
meanwhile goes before what waits; after ``SERVE_SLICE_S`` it yields to the loop (timers,
stream connections, the load meter) and goes on at the next turn with ``call_soon``.

It also yields right after a datagram of the priority lane: an emergency call's set-up goes
on in a task of its own (the callback DID, then the B-leg INVITE), which then runs before
the rest of the slice instead of after it (measured under 320 ordinary calls/s on a slow
box: the DID step took 5 ms at the median, a serving slice's remainder).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Final, Protocol

from gateway.sip.address import Address, udp_source
from gateway.transport.inbox import PRIORITY, UNCLASSIFIED, Inbox

__all__ = ["READ_AHEAD_EVERY", "SERVE_SLICE_S", "UNCLASSIFIED", "UdpIntake", "UdpReader"]

SERVE_SLICE_S: Final = 0.004
"""How long the intake serves its inbox before it lets the loop run other callbacks."""
READ_AHEAD_EVERY: Final = 8
"""Datagrams handled between two look-aheads into the kernel's receive queue."""


class UdpReader(Protocol):
    """The endpoint's protocol of one UDP socket: the socket, and what handles its errors
    (an ICMP error pending on the socket fails the intake's read as it fails uvloop's)."""

    sock: socket.socket

    def error_received(self, exc: Exception) -> None: ...


class UdpIntake:
    """The inbox of the endpoint's UDP sockets, filled ahead and served by lane."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handle: Callable[[bytes, Address, int], None],
        max_message_bytes: int = 65535,
    ) -> None:
        self.loop = loop
        self.handle = handle
        self.max_message_bytes = max_message_bytes
        self.inbox = Inbox()
        self._serving = False
        self._resume: asyncio.Handle | None = None

    def close(self) -> None:
        """Stop serving; what waits is dropped (the sockets are closing)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.inbox.clear()

    def on_datagram(self, data: bytes, source: Address, reader: UdpReader) -> None:
        """A datagram uvloop read for ``reader``: into the inbox with what else waits in
        the kernel's queue, then served by lane."""
        now = self.loop.time()
        self.inbox.put(data, source, now)
        if self._serving or self._resume is not None:
            return  # served by the slice under way, or by the one due next turn
        self._read_ahead(reader, now)
        self._serve(reader)

    def _read_ahead(self, reader: UdpReader, now: float) -> None:
        """Move what waits in the socket's receive queue into the inbox, while it has
        room."""
        inbox = self.inbox
        sock = reader.sock
        size = self.max_message_bytes + 1
        while not inbox.full:
            try:
                data, addr = sock.recvfrom(size)
            except BlockingIOError:  # the queue is empty
                return
            except OSError as exc:  # an ICMP error (IP_RECVERR), or the socket closed
                if sock.fileno() >= 0:
                    reader.error_received(exc)
                return
            inbox.put(data, udp_source(addr), now)

    def _serve(self, reader: UdpReader) -> None:
        """Handle the inbox by lane for ``SERVE_SLICE_S`` at most, reading ahead every few
        datagrams; then yield to the loop and go on at the next turn."""
        self._resume = None
        self._serving = True
        loop = self.loop
        inbox = self.inbox
        handle = self.handle
        started = loop.time()
        handled = 0
        try:
            while True:
                item = inbox.pop()
                if item is None:
                    return
                handle(*item)
                handled += 1
                if item[2] == PRIORITY and len(inbox):  # its task first, then the rest
                    self._resume = loop.call_soon(self._serve, reader)
                    return
                if handled % READ_AHEAD_EVERY == 0:
                    now = loop.time()
                    self._read_ahead(reader, now)
                    if now - started > SERVE_SLICE_S and len(inbox):
                        self._resume = loop.call_soon(self._serve, reader)
                        return
        finally:
            self._serving = False
