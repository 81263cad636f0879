"""The SIP endpoint owns its background work: a name resolution or TCP connect under way
is a named task the endpoint keeps, and close() cancels it and waits for it (issue 9)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.sip.address import Address, IdGenerator
from gateway.sip.transaction import TimerConfig, TransactionLayer
from gateway.transport.endpoint import SipEndpoint

pytestmark = pytest.mark.loopback


async def test_close_awaits_a_resolution_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hanging_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()  # a resolver that never answers
        finally:
            cancelled.set()

    monkeypatch.setattr(loop, "getaddrinfo", hanging_getaddrinfo)
    endpoint = SipEndpoint(TransactionLayer(TimerConfig(), IdGenerator()), [], loop=loop)
    endpoint._send(b"OPTIONS", Address("udp", "sbc.example.invalid", 5060))
    await started.wait()
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert "sip-resolve-udp:sbc.example.invalid:5060" in names
    await endpoint.close()
    assert cancelled.is_set()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("sip-resolve-")]
