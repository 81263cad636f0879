"""Stopping a running node safely (SPEC O-7): serving -> draining -> stopped.

Theory of operation
-------------------
The first SIGTERM (or SIGINT) moves the node to *draining*: the B2BUA answers new ordinary
calls 503 + Retry-After (``B2BUA.drain``), the health endpoint says 503, in-dialog requests
and emergency calls and callbacks are still served and admitted. Ordinary calls get
``drain_s`` seconds to end by themselves; then both legs of each get a BYE
(``B2BUA.hang_up``) and the call history its row. Emergency calls are never cut by a
drain: the node waits for them to end. A second signal stops at once, still with BYEs on
every leg (emergency calls included). Last, the BYEs are given a bounded moment to be
answered, and ``run_gateway`` leaves the gateway's lifetime, which flushes the store and
the mail outbox and publishes the node ``offline``.

The B2BUA is sans-I/O: each step here reads the loop clock, calls it, then pumps the
endpoint so that what it queued goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Protocol

import structlog

from gateway.sip.transaction import TransactionLayer

__all__ = ["BYE_WAIT_S", "Drainable", "Lifecycle", "NodeState"]

log = structlog.get_logger("gateway.lifecycle")

#: longest wait for the far ends to answer the BYEs sent on stopping
BYE_WAIT_S = 2.0
#: how often the drain looks at the calls in progress
_POLL_S = 0.05


class Drainable(Protocol):
    """What the stop sequence needs of the call layer (``gateway.b2bua.b2bua.B2BUA``)."""

    @property
    def calls(self) -> Mapping[str, object]: ...

    def drain(self, retry_after: int = 30) -> None: ...

    def ordinary_calls(self) -> int: ...

    def hang_up(self, now: float, *, emergency: bool = False) -> int: ...


class NodeState(StrEnum):
    SERVING = "serving"
    DRAINING = "draining"
    STOPPING = "stopping"


class Lifecycle:
    """The node's stop sequence, driven by signals (``signalled``)."""

    def __init__(
        self,
        b2bua: Drainable,
        layer: TransactionLayer,
        pump: Callable[[], None],
        clock: Callable[[], float],
        *,
        drain_s: float,
        retry_after: int,
        on_stop: Callable[[], None] = lambda: None,
    ):
        self.b2bua = b2bua
        self.layer = layer
        self.pump = pump
        self.clock = clock
        self.drain_s = drain_s
        self.retry_after = retry_after
        #: told once, at the first stop signal (systemd's STOPPING=1)
        self.on_stop = on_stop
        self.state = NodeState.SERVING
        self._first = asyncio.Event()
        self._second = asyncio.Event()

    @property
    def serving(self) -> bool:
        """True until the first stop signal (the health endpoint's 200)."""
        return self.state is NodeState.SERVING

    def signalled(self) -> None:
        """A stop signal: the first drains, the second stops at once."""
        if self.state is NodeState.SERVING:
            self.state = NodeState.DRAINING
            self.b2bua.drain(self.retry_after)
            self.on_stop()
            log.info(
                "gateway_draining",
                drain_s=self.drain_s,
                ordinary_calls=self.b2bua.ordinary_calls(),
                emergency_calls=len(self.b2bua.calls) - self.b2bua.ordinary_calls(),
            )
            self._first.set()
        else:
            log.info("gateway_stop_now", calls_in_progress=len(self.b2bua.calls))
            self._second.set()

    async def run(self) -> None:
        """Wait for a stop signal, then drain: return when the node may close."""
        await self._first.wait()
        b2bua = self.b2bua
        await self._until(lambda: b2bua.ordinary_calls() == 0, self.drain_s)
        if b2bua.ordinary_calls():
            self._hang_up(emergency=False)
        if b2bua.calls:
            log.info("gateway_waiting_for_emergency_calls", calls=len(b2bua.calls))
        await self._until(lambda: not b2bua.calls, None)
        self.state = NodeState.STOPPING
        if b2bua.calls:
            self._hang_up(emergency=True)
        await self._until(lambda: self.layer.awaiting_response == 0, BYE_WAIT_S, anyway=True)

    def _hang_up(self, *, emergency: bool) -> None:
        count = self.b2bua.hang_up(self.clock(), emergency=emergency)
        self.pump()
        log.info("calls_hung_up", calls=count, emergency_included=emergency)

    async def _until(
        self, done: Callable[[], bool], timeout: float | None, *, anyway: bool = False
    ) -> None:
        """Until ``done()``, ``timeout`` seconds, or (unless ``anyway``) a second signal."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if not anyway and self._second.is_set():
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if anyway:
                await asyncio.sleep(_POLL_S)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_POLL_S):
                        await self._second.wait()
