"""The SIP side of a node, as the app wires it: the transaction layer, the endpoint with
its listeners (UDP, TCP, TLS), the trunk resolver (RFC 3263), and what runs beside the
sockets: overload control's sampling and gate, the trunk keep-alives, the collector's pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from gateway.b2bua.b2bua import B2BUA
from gateway.b2bua.gate import gate_for
from gateway.config.dialplan import Dialplan
from gateway.config.settings import Settings
from gateway.gcpolicy import GcPacer, MemoryTrimmer, glibc_malloc_trim
from gateway.health.service import TrunkHealth
from gateway.sip.address import Address, IdGenerator
from gateway.sip.transaction import TimerConfig, TransactionLayer
from gateway.transport.dns import DnsQuery, TrunkResolver
from gateway.transport.endpoint import ListenSpec, SipEndpoint
from gateway.transport.inbox import fifo
from gateway.transport.load import Backlog, LoadMeter
from gateway.transport.tls import TlsPeers, server_context

__all__ = [
    "make_endpoint",
    "start_endpoint",
    "start_gc_pacer",
    "start_load_meter",
    "start_resolver",
    "tls_server",
    "transaction_layer",
    "trunk_queries",
]


async def start_endpoint(
    stack: contextlib.AsyncExitStack,
    endpoint: SipEndpoint,
    trunk_health: TrunkHealth,
    resolver: TrunkResolver,
) -> None:
    """The listeners open last, once every part behind them is up; then the keep-alives."""
    await endpoint.start()
    stack.push_async_callback(endpoint.close)
    await trunk_health.start(
        endpoint.via_for, endpoint.contact_for, endpoint.pump, resolver.targets
    )
    stack.push_async_callback(trunk_health.close)


def start_load_meter(
    stack: contextlib.AsyncExitStack,
    dialplan: Dialplan,
    endpoint: SipEndpoint,
    b2bua: B2BUA,
    settings: Settings,
) -> None:
    """The loop lag and read burst, sampled into the B2BUA's overload control (O-4); the
    garbage collector's pacing, which keeps that lag low; freed memory handed back to the
    OS once a load is over (issue 10)."""
    start_gc_pacer(stack, settings)
    start_memory_trimmer(stack, endpoint, b2bua, settings)
    if b2bua.admission is None:
        return
    admission = b2bua.admission

    inbox = endpoint.intake.inbox

    def report(lag: float, reads: int, now: float, backlog: Backlog) -> None:
        # what waits to be handled: in the kernel's queues, or read ahead into the inbox
        admission.observe(lag, reads, now, max(backlog.fill, inbox.fill), backlog.drops)

    meter = LoadMeter(
        endpoint.loop,
        lambda: endpoint.received,
        report,
        dialplan.overload.sample_interval_ms / 1000,
        endpoint.udp_sockets,
    )
    meter.start()
    stack.callback(meter.close)

    gate = gate_for(b2bua, admission, dialplan.overload, dialplan.sip.user_agent)
    endpoint.gate = gate.screen
    stack.callback(setattr, endpoint, "gate", None)
    inbox.classify = gate.classify
    stack.callback(setattr, inbox, "classify", fifo)


def start_memory_trimmer(
    stack: contextlib.AsyncExitStack, endpoint: SipEndpoint, b2bua: B2BUA, settings: Settings
) -> None:
    """``malloc_trim`` when the node goes quiet after a load (glibc only; see gcpolicy)."""
    trim = glibc_malloc_trim() if settings.memory_trim else None
    if trim is None:
        return
    layer = b2bua.layer

    def live() -> int:
        return layer.client_count + layer.server_count + len(b2bua.calls)

    def compact() -> None:
        layer.compact()
        b2bua.core.compact()

    trimmer = MemoryTrimmer(endpoint.loop, trim, lambda: endpoint.received, live, compact=compact)
    trimmer.start()
    stack.callback(trimmer.close)


def start_gc_pacer(stack: contextlib.AsyncExitStack, settings: Settings) -> None:
    if settings.gc_pacing:
        pacer = GcPacer(full_interval=settings.gc_full_interval_s)
        pacer.start()
        stack.push_async_callback(pacer.stop)


def trunk_queries(dialplan: Dialplan) -> list[DnsQuery]:
    """The trunk gateways (and the direct-offer service's) to resolve (RFC 3263)."""
    gateways = [gw for trunk in dialplan.trunks.values() for gw in trunk.gateways]
    if dialplan.emergency.direct_offer is not None:
        gateways += dialplan.emergency.direct_offer.gateways
    return [
        DnsQuery(Address(gw.transport, gw.host, gw.port), "port" in gw.model_fields_set)
        for gw in gateways
    ]


async def start_resolver(
    stack: contextlib.AsyncExitStack, dialplan: Dialplan, settings: Settings, tls: TlsPeers
) -> TrunkResolver:
    """Trunk host names resolved (RFC 3263) before the first call, then kept fresh."""
    resolver = TrunkResolver(
        trunk_queries(dialplan),
        nameserver=settings.dns_server,
        timeout=settings.dns_timeout_s,
        min_ttl=settings.dns_min_ttl_s,
        clock=asyncio.get_running_loop().time,
        on_resolved=tls.alias,
    )
    await resolver.start()
    stack.push_async_callback(resolver.close)
    return resolver


def tls_server(dialplan: Dialplan, settings: Settings) -> ssl.SSLContext | None:
    """The TLS listeners' context, when there is a tls listener (``gateway check`` has
    already said what is missing: see ``gateway.transport.tls.tls_problems``)."""
    if not any(a.transport == "tls" for a in dialplan.listen):
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None  # the endpoint refuses the listener with a clear message
    ca = settings.tls_ca_file if settings.tls_verify_clients else None
    return server_context(settings.tls_cert_file, settings.tls_key_file, ca)


def make_endpoint(
    dialplan: Dialplan,
    settings: Settings,
    layer: TransactionLayer,
    loop: asyncio.AbstractEventLoop,
    tls_peers: TlsPeers,
) -> SipEndpoint:
    """The transport adapter over the listeners of the dialplan (not started yet)."""
    return SipEndpoint(
        layer,
        [ListenSpec(a.transport, a.host, a.port) for a in dialplan.listen],
        max_message_bytes=dialplan.sip.max_message_bytes,
        loop=loop,
        tls_server=tls_server(dialplan, settings),
        tls_peers=tls_peers,
        keepalive_interval=settings.tls_keepalive_s,
        resolve_timeout=settings.dns_timeout_s,
    )


def transaction_layer(dialplan: Dialplan) -> tuple[TransactionLayer, IdGenerator]:
    sip = dialplan.sip
    timers = TimerConfig(
        t1=sip.t1_ms / 1000,
        t2=sip.t2_ms / 1000,
        t4=sip.t4_ms / 1000,
        timer_b=sip.timer_b_ms / 1000,
        timer_f=sip.timer_f_ms / 1000,
    )
    ids = IdGenerator()
    return TransactionLayer(timers, ids), ids
