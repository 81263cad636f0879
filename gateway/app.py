"""Wiring: dialplan + transaction layer + transport adapter + B2BUA, run until a signal."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

import structlog

from gateway.b2bua.b2bua import B2BUA
from gateway.b2bua.router import DialplanRouter
from gateway.config.dialplan import Dialplan
from gateway.sip.transaction import IdGenerator, TimerConfig, TransactionLayer
from gateway.transport.endpoint import ListenSpec, SipEndpoint

__all__ = ["Gateway", "run_gateway"]

log = structlog.get_logger("gateway")


@dataclass
class Gateway:
    """A running gateway node (its parts are reachable for tests and benchmarks)."""

    dialplan: Dialplan
    layer: TransactionLayer
    endpoint: SipEndpoint
    b2bua: B2BUA

    @classmethod
    def build(cls, dialplan: Dialplan, loop: asyncio.AbstractEventLoop) -> Gateway:
        sip = dialplan.sip
        timers = TimerConfig(
            t1=sip.t1_ms / 1000,
            t2=sip.t2_ms / 1000,
            t4=sip.t4_ms / 1000,
            timer_b=sip.timer_b_ms / 1000,
            timer_f=sip.timer_f_ms / 1000,
        )
        ids = IdGenerator()
        layer = TransactionLayer(timers, ids)
        listeners = [ListenSpec(a.transport, a.host, a.port) for a in dialplan.listen]
        endpoint = SipEndpoint(layer, listeners, max_message_bytes=sip.max_message_bytes, loop=loop)
        b2bua = B2BUA(
            layer,
            DialplanRouter(dialplan),
            ids,
            via_for=endpoint.via_for,
            contact_for=endpoint.contact_for,
            clock=loop.time,
            call_later=loop.call_later,
            user_agent=sip.user_agent,
        )
        endpoint.on_event = b2bua.handle
        b2bua.pump = endpoint.pump
        return cls(dialplan, layer, endpoint, b2bua)

    async def start(self) -> None:
        await self.endpoint.start()

    async def close(self) -> None:
        await self.endpoint.close()


async def run_gateway(dialplan: Dialplan) -> None:
    """Run until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    gw = Gateway.build(dialplan, loop)
    await gw.start()
    log.info(
        "gateway_started",
        node=dialplan.node.name,
        listen=[f"{a.transport}:{a.host}:{a.port}" for a in dialplan.listen],
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway_stopping", calls_in_progress=len(gw.b2bua.calls))
    await gw.close()
