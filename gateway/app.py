"""Wiring: stores, MQTT, presence, registrar, queues and the SIP stack, as one lifetime.

``async with Gateway.running(dialplan, settings) as gw:`` opens the store, the MQTT
publisher (an embedded broker when none is configured), the presence and registrar
services, the transaction layer, the transport adapter and the B2BUA, and closes them in
reverse order. ``run_gateway`` does that until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.b2bua.admission import Admission
from gateway.b2bua.b2bua import B2BUA, CallObserver
from gateway.b2bua.history import CallHistory
from gateway.b2bua.metrics import CallMetrics, node_metrics, overload_gauges
from gateway.b2bua.queues import QueueManager
from gateway.b2bua.router import ContactCentreRouter
from gateway.b2bua.sessions import SessionTimerConfig
from gateway.b2bua.snapshot import call_rows
from gateway.b2bua.tasks import CallTasks
from gateway.cluster import (
    is_shared_store,
    open_node_stores,
    start_cluster_sync,
    start_reservation_sync,
    store_gauges,
    use_dialplan_for_stores,
)
from gateway.config.dialplan import Dialplan
from gateway.config.settings import Settings
from gateway.control import live_snapshots, start_control
from gateway.emergency.service import EmergencyService
from gateway.events.embedded import EmbeddedBroker
from gateway.events.mqtt import MqttPublisher, MqttSettings
from gateway.events.ports import Publisher, Topics
from gateway.fronts import Fronts
from gateway.health.service import TrunkHealth
from gateway.lifecycle import Lifecycle
from gateway.location.choice import current_registration
from gateway.location.service import AgentLocations
from gateway.metrics import MetricsServer, parse_addr
from gateway.node_sip import (
    make_endpoint,
    start_endpoint,
    start_load_meter,
    start_resolver,
    transaction_layer,
    trunk_queries,
)
from gateway.node_trunks import NodeTrunkRegistrations, start_trunk_registrations
from gateway.notify import Notifier
from gateway.presence.service import PresenceService
from gateway.presence.state import Status
from gateway.registrar.service import RegistrarService
from gateway.reload import Reloader, write_pid_file
from gateway.sdnotify import SystemdNotifier
from gateway.sip.address import Address, IdGenerator, address_text
from gateway.sip.transaction import TransactionLayer
from gateway.stores import Stores
from gateway.stores.outage import guard_of
from gateway.transport.dns import TrunkResolver
from gateway.transport.endpoint import SipEndpoint
from gateway.transport.tls import tls_peers_from
from gateway.web import WebServer, broker_access, start_web, web_users

__all__ = ["Gateway", "NullPublisher", "run_gateway"]

log = structlog.get_logger("gateway")


class NullPublisher:
    """The publisher when MQTT is switched off (``GATEWAY_MQTT_URL=off``)."""

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        pass


@dataclass
class Gateway:
    """A running gateway node; its parts are reachable for tests and benchmarks."""

    dialplan: Dialplan
    settings: Settings
    stores: Stores
    publisher: Publisher
    presence: PresenceService
    registrar: RegistrarService
    queues: QueueManager
    history: CallHistory
    layer: TransactionLayer
    endpoint: SipEndpoint
    b2bua: B2BUA
    mqtt_url: str | None
    #: the call counters and live levels behind ``/metrics`` (SPEC O-3)
    metrics: CallMetrics | None = None
    #: the emergency edge (a reload hands it the new dialplan)
    emergency: EmergencyService | None = None
    #: the wallboard and desktop pages (SPEC W-1), when served
    web: WebServer | None = None
    #: OPTIONS keep-alives to the trunk gateways (SPEC O-3; a reload hands it the new plan)
    trunk_health: TrunkHealth | None = None
    #: REGISTER to the registration-based trunks (a reload hands it the new plan)
    trunk_registrations: NodeTrunkRegistrations | None = None
    #: the trunks' host names (a reload hands it the new ones)
    resolver: TrunkResolver | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, dialplan: Dialplan, settings: Settings) -> AsyncIterator[Gateway]:
        """Start every part in dependency order; stop them in reverse order on exit."""
        loop = asyncio.get_running_loop()
        topics = Topics(settings.mqtt_prefix, dialplan.node.name)
        async with contextlib.AsyncExitStack() as stack:
            desktop = DesktopCommands()
            publisher, mqtt_url, web = await _open_publisher(
                stack, settings, topics, desktop, dialplan.agents
            )
            stores = await open_node_stores(stack, settings, dialplan, publisher, topics)
            presence = await _start_presence(stack, dialplan, stores, publisher, topics, desktop)
            layer, ids = transaction_layer(dialplan)
            pings = TrunkHealth(dialplan, layer, ids, publisher, clock=loop.time)
            tls_peers = tls_peers_from(dialplan, settings)
            resolver = await start_resolver(stack, dialplan, settings, tls_peers)
            endpoint = make_endpoint(dialplan, settings, layer, loop, tls_peers)
            locations = AgentLocations(dialplan, stores.locations, publisher, topics)
            desktop.deliver_locations(locations)
            registrar = await _start_registrar(
                stack, dialplan, layer, stores, presence, locations, settings.nonce_secret_bytes()
            )
            await start_cluster_sync(stack, stores, registrar, presence)
            notifier = await _start_notifier(stack, settings, stores, publisher, topics)
            # fmt: off
            emergency = await _start_emergency(
                stack, dialplan, stores, presence, publisher, topics, registrar, notifier,
                locations, pings,
            )
            history = _start_history(stack, stores, loop, settings)
            call_tasks = await stack.enter_async_context(CallTasks())
            b2bua, queues = _call_layer(
                dialplan, layer, ids, endpoint, registrar, presence, emergency, history,
                call_tasks, resolver, pings,
            )
            metrics, trunk_registrations = await _serve(
                stack, dialplan, settings, endpoint, b2bua, registrar, publisher, stores, pings,
                resolver,
            )
            yield cls(
                dialplan, settings, stores, publisher, presence, registrar, queues, history,
                layer, endpoint, b2bua, mqtt_url, metrics, emergency, web, pings,
                trunk_registrations, resolver,
            )
            # fmt: on

    def use_dialplan(self, dialplan: Dialplan) -> None:
        """A reloaded dialplan (``gateway.reload``): new calls are routed with it; calls in
        progress keep their hops. One step: no SIP event runs in between."""
        if self.resolver is not None:
            self.resolver.use_queries(trunk_queries(dialplan))
        router = self.b2bua.router
        if isinstance(router, ContactCentreRouter):
            self.b2bua.router = router.with_dialplan(dialplan)
        if self.emergency is not None:
            self.emergency.use_dialplan(dialplan)
        use_dialplan_for_stores(self.stores, dialplan)
        if self.trunk_health is not None:
            self.trunk_health.use_dialplan(dialplan)
        if self.trunk_registrations is not None:
            self.trunk_registrations.use_dialplan(dialplan)
        self.dialplan = dialplan


def _start_history(
    stack: contextlib.AsyncExitStack,
    stores: Stores,
    loop: asyncio.AbstractEventLoop,
    settings: Settings,
) -> CallHistory:
    """The call history's writer (SPEC R-5), drained on close; purged past the retention."""
    retention_s = settings.cdr_retention_days * 86400
    history = CallHistory(stores.cdrs, loop.time, retention_s=retention_s)
    history.start()
    stack.push_async_callback(history.close)
    return history


class DesktopCommands:
    """The desktops' commands (presence, confirmed location) from MQTT, to their services.

    The MQTT adapter is opened before presence and locations (they publish through it), yet
    it is the one that hears the desktops: this port breaks that cycle. A command that
    arrives before its service exists is ignored (and a presence command logged), as
    before; once the service is handed over, commands go straight through.
    """

    def __init__(self) -> None:
        self._presence: PresenceService | None = None
        self._locations: AgentLocations | None = None

    def deliver_presence(self, presence: PresenceService) -> None:
        """Presence commands go to ``presence`` from now on."""
        self._presence = presence

    def deliver_locations(self, locations: AgentLocations) -> None:
        """Location commands go to ``locations`` from now on."""
        self._locations = locations

    def status(self, agent: str, status: str, raw: dict[str, Any]) -> None:
        note = raw.get("reason")  # the desktop's own words, checked by the adapter
        if self._presence is None or not self._presence.choose(agent, Status(status), note=note):
            log.info("presence_command_ignored", agent=agent, status=status)

    def location(self, agent: str, payload: dict[str, Any] | str) -> None:
        if self._locations is not None:
            self._locations.command(agent, payload)


async def _open_publisher(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    topics: Topics,
    desktop: DesktopCommands,
    agents: Collection[str],
) -> tuple[Publisher, str | None, WebServer | None]:
    """The MQTT publisher (an embedded broker when none is configured, with access control
    when there are web users), or none at all; and the web pages (SPEC W-1) on that
    broker, a side task beside it."""
    if settings.mqtt_url.strip().lower() == "off":
        return NullPublisher(), None, None
    users = web_users(settings, agents)
    mqtt_url = settings.mqtt_url
    broker = None
    if not mqtt_url:
        broker = await stack.enter_async_context(
            EmbeddedBroker(
                settings.mqtt_embedded_port,
                # the browsers' listener only for the pages: one port less to race for
                websockets_port=(settings.mqtt_embedded_ws_port or None) if users else None,
                access=broker_access(users, topics.prefix) if users else None,
            )
        )
        mqtt_url = broker.url
        log.info("embedded_mqtt_broker", url=broker.address, backend=broker.backend)
    # a cluster on one broker: each desktop command goes to one node (issue #12)
    group = "gateway" if broker is None and is_shared_store(settings.store) else None
    mqtt = MqttPublisher(
        MqttSettings(
            mqtt_url,
            ca_file=settings.mqtt_ca_file,
            buffer_size=settings.mqtt_buffer,
            command_group=group,
        ),
        topics,
        on_command=desktop.status,
        on_location=desktop.location,
        is_current_agent=agents.__contains__,
    )
    publisher = await stack.enter_async_context(mqtt)
    web = await start_web(stack, settings, users, topics.prefix, broker)
    shown = broker.address if broker is not None else mqtt_url  # no password in the logs
    return publisher, shown, web


async def _start_presence(
    stack: contextlib.AsyncExitStack,
    dialplan: Dialplan,
    stores: Stores,
    publisher: Publisher,
    topics: Topics,
    desktop: DesktopCommands,
) -> PresenceService:
    presence = PresenceService(
        {agent_id: agent.capacity for agent_id, agent in dialplan.agents.items()},
        stores.presence,
        publisher,
        topics,
        dialplan.node.name,
    )
    await presence.start()
    stack.push_async_callback(presence.close)
    desktop.deliver_presence(presence)
    return presence


async def _serve(
    stack: contextlib.AsyncExitStack,
    dialplan: Dialplan,
    settings: Settings,
    endpoint: SipEndpoint,
    b2bua: B2BUA,
    registrar: RegistrarService,
    publisher: Publisher,
    stores: Stores,
    trunk_health: TrunkHealth,
    resolver: TrunkResolver,
) -> tuple[CallMetrics, NodeTrunkRegistrations | None]:
    """The metrics, then the sockets open (the trunk keep-alives and registrations),
    overload control and the collector's pacing."""
    metrics = _metrics(b2bua, registrar, publisher, stores, trunk_health)
    await start_endpoint(stack, endpoint, trunk_health, resolver)
    registrations = start_trunk_registrations(
        stack, dialplan, b2bua, endpoint, resolver.targets, metrics
    )
    start_load_meter(stack, dialplan, endpoint, b2bua, settings)
    return metrics, registrations


async def _start_emergency(
    stack: contextlib.AsyncExitStack,
    dialplan: Dialplan,
    stores: Stores,
    presence: PresenceService,
    publisher: Publisher,
    topics: Topics,
    registrar: RegistrarService,
    notifier: Notifier | None,
    locations: AgentLocations,
    trunk_health: TrunkHealth,
) -> EmergencyService:
    """The emergency edge, started (wall clock and tokens of the real world)."""
    emergency = EmergencyService(
        dialplan,
        stores.reservations,
        presence,
        publisher,
        topics,
        registrar.contacts,
        wall_clock=time.time,
        token=secrets.token_hex,
        notify=notifier.notify if notifier is not None else None,
        desktop_location=locations.desktop,
        health=trunk_health.health,
        emergency_elsewhere=lambda agent: presence.emergency_elsewhere(agent) is not None,
    )
    await emergency.start()
    await start_reservation_sync(stack, stores, emergency)
    return emergency


async def _start_registrar(
    stack: contextlib.AsyncExitStack,
    dialplan: Dialplan,
    layer: TransactionLayer,
    stores: Stores,
    presence: PresenceService,
    locations: AgentLocations,
    nonce_secret: bytes | None,
) -> RegistrarService:
    """The registrar, then the locations it feeds (restored from the live registrations)."""
    registrar = RegistrarService(
        dialplan,
        layer,
        stores.registrations,
        presence,
        loop_clock=asyncio.get_running_loop().time,
        secret=nonce_secret,
        on_registered=locations.registered,
        fronts=Fronts(dialplan.node.fronts),
        claim_expiry=guard_of(stores) is not None,  # a cluster: one node acts on expiry
    )
    await registrar.start()
    stack.push_async_callback(registrar.close)
    restored = {
        agent_id: binding.source
        for agent_id in dialplan.agents
        if (binding := current_registration(registrar.contacts(agent_id))) is not None
    }
    await locations.start(restored)
    stack.push_async_callback(locations.close)
    presence.announce()
    return registrar


async def _start_notifier(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    stores: Stores,
    publisher: Publisher,
    topics: Topics,
) -> Notifier | None:
    """The e-mail notifier of SPEC E-6, when a mail server is configured."""
    if not settings.smtp_host:
        log.warning(
            "no_mail_server",
            detail="emergency contacts will not be e-mailed (set GATEWAY_SMTP_HOST, SPEC E-6)",
        )
        return None
    notifier = Notifier(
        settings, stores.outbox, publisher, topics, settings.dialplan.parent / "templates"
    )
    await notifier.start()
    stack.push_async_callback(notifier.close)
    return notifier


def _call_layer(
    dialplan: Dialplan,
    layer: TransactionLayer,
    ids: IdGenerator,
    endpoint: SipEndpoint,
    registrar: RegistrarService,
    presence: PresenceService,
    emergency: EmergencyService,
    history: CallHistory,
    call_tasks: CallTasks,
    resolver: TrunkResolver,
    trunk_health: TrunkHealth,
) -> tuple[B2BUA, QueueManager]:
    """The router, the B2BUA and the queues, wired to the endpoint."""
    loop = asyncio.get_running_loop()
    router = ContactCentreRouter(
        dialplan,
        registrar.authenticate if dialplan.agents else None,
        emergency,
        registrar.contacts,
        registrar.agent_at,
        resolver.targets,
        trunk_health.health,
        registrar.fronts,  # one log budget for the front's unusable headers
    )
    b2bua = B2BUA(
        layer,
        router,
        ids,
        via_for=endpoint.via_for,
        contact_for=endpoint.contact_for,
        clock=loop.time,
        pump=endpoint.pump,
        spawn=call_tasks.spawn,
        user_agent=dialplan.sip.user_agent,
        emergency=emergency,
        request_handlers={"REGISTER": registrar.handle},
        admission=Admission(dialplan.overload),
        session_timer=SessionTimerConfig(dialplan.sip.session_expires_s, dialplan.sip.min_se_s),
    )
    # the queue manager places offers through the B2BUA, so it comes second; the B2BUA
    # reaches it through this one port
    queues = QueueManager(dialplan, presence, registrar.contacts, b2bua)
    b2bua.queues = queues
    observers: list[CallObserver] = [queues, history, emergency]
    b2bua.observers.extend(observers)
    endpoint.user = b2bua
    return b2bua, queues


def _metrics(
    b2bua: B2BUA,
    registrar: RegistrarService,
    publisher: Publisher,
    stores: Stores,
    trunk_health: TrunkHealth,
) -> CallMetrics:
    """The node's metrics: a call observer, and gauges read at scrape time."""
    stats = getattr(publisher, "stats", None)
    metrics = node_metrics(
        lambda: len(b2bua.calls),
        lambda: sum(len(bindings) for bindings in registrar.bindings.values()),
        (lambda: (stats.queued, stats.dropped)) if stats is not None else None,
    )
    store_gauges(metrics.registry, stores)
    b2bua.observers.append(metrics)
    if b2bua.admission is not None:
        overload_gauges(metrics.registry, b2bua.admission)
    trunk_health.register_metrics(metrics.registry)
    return metrics


async def run_gateway(dialplan: Dialplan, settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then drain (``gateway.lifecycle``) and close."""
    loop = asyncio.get_running_loop()
    async with Gateway.running(dialplan, settings) as gw:
        log.info(
            "gateway_started",
            node=dialplan.node.name,
            listen=[address_text(Address(a.transport, a.host, a.port)) for a in dialplan.listen],
            mqtt=gw.mqtt_url or "off",
            store=settings.store,
            data_dir=str(settings.data_dir),
            agents=len(dialplan.agents),
        )
        systemd = SystemdNotifier.from_environment()
        lifecycle = Lifecycle(
            gw.b2bua,
            gw.layer,
            gw.endpoint.pump,
            loop.time,
            drain_s=settings.drain_s,
            retry_after=settings.retry_after_s,
            on_stop=systemd.stopping,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lifecycle.signalled)
        reloader = Reloader(settings.dialplan, dialplan, gw.use_dialplan, gw.publisher)
        loop.add_signal_handler(signal.SIGHUP, reloader.reload)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):  # else they end the process, 911 and all
            loop.add_signal_handler(sig, _log_status, gw, sig)
        pid_file = write_pid_file(settings.data_dir)
        async with contextlib.AsyncExitStack() as side:
            await _start_side_services(side, settings, gw, lifecycle, systemd)
            try:
                await lifecycle.run()
            finally:
                pid_file.unlink(missing_ok=True)
        log.info("gateway_stopping", calls_in_progress=len(gw.b2bua.calls))


def _log_status(gw: Gateway, sig: signal.Signals) -> None:
    """SIGUSR1 or SIGUSR2: one ``status`` line (a signal's default action would kill the
    node, cutting every call, emergency calls included)."""
    calls = list(gw.b2bua.calls.values())
    log.info(
        "status",
        signal=sig.name,
        calls_in_progress=len(calls),
        emergency_calls=sum(1 for call in calls if call.emergency is not None),
        registrations=sum(len(bindings) for bindings in gw.registrar.bindings.values()),
        draining=gw.b2bua.draining,
    )


async def _start_side_services(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    gw: Gateway,
    lifecycle: Lifecycle,
    systemd: SystemdNotifier,
) -> None:
    """Metrics, the control socket, then READY=1 to systemd; closed in reverse order."""
    server = await _start_metrics_server(settings, gw, lifecycle)
    if server is not None:
        stack.push_async_callback(server.close)
    clock = asyncio.get_running_loop().time
    calls = lambda: call_rows(list(gw.b2bua.calls.values()), clock())  # noqa: E731
    trunks = gw.trunk_registrations
    live = live_snapshots(
        gw.registrar, gw.presence, gw.trunk_health, lambda: gw.dialplan, calls,
        trunk_registrations=trunks.describe if trunks is not None else dict,
    )  # fmt: skip
    control = await start_control(settings.data_dir, live)
    if control is not None:
        stack.push_async_callback(control.close)
    systemd.ready()
    stack.push_async_callback(systemd.close)


async def _start_metrics_server(
    settings: Settings, gw: Gateway, lifecycle: Lifecycle
) -> MetricsServer | None:
    """``/metrics`` and ``/healthz`` on ``GATEWAY_METRICS_ADDR`` (``off``: none)."""
    if gw.metrics is None or settings.metrics_addr.strip().lower() == "off":
        return None
    host, port = parse_addr(settings.metrics_addr)
    server = MetricsServer(
        gw.metrics.registry,
        host,
        port,
        health=lambda: None if lifecycle.serving else lifecycle.state.value,
    )
    try:
        await server.start()
    except OSError as exc:  # metrics are a side task: the calls go on without them
        log.error("metrics_not_listening", address=settings.metrics_addr, error=str(exc))
        return None
    return server
