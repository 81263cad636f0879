"""Wiring: stores, MQTT, presence, registrar, queues and the SIP stack, as one lifetime.

``async with Gateway.running(dialplan, settings) as gw:`` opens the store, the MQTT
publisher (an embedded broker when none is configured), the presence and registrar
services, the transaction layer, the transport adapter and the B2BUA, and closes them in
reverse order. ``run_gateway`` does that until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.b2bua.b2bua import B2BUA, CallObserver
from gateway.b2bua.history import CallHistory
from gateway.b2bua.queues import QueueManager
from gateway.b2bua.router import ContactCentreRouter
from gateway.b2bua.tasks import CallTasks
from gateway.config.dialplan import Dialplan
from gateway.config.settings import Settings
from gateway.emergency.service import EmergencyService
from gateway.events.embedded import EmbeddedBroker
from gateway.events.mqtt import MqttPublisher, MqttSettings
from gateway.events.ports import Publisher, Topics
from gateway.gcpolicy import GcPacer
from gateway.location.choice import current_registration
from gateway.location.service import AgentLocations
from gateway.notify import Notifier
from gateway.presence.service import PresenceService
from gateway.presence.state import Status
from gateway.registrar.service import RegistrarService
from gateway.sip.transaction import IdGenerator, TimerConfig, TransactionLayer
from gateway.stores import Stores, open_stores
from gateway.transport.endpoint import ListenSpec, SipEndpoint

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

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, dialplan: Dialplan, settings: Settings) -> AsyncIterator[Gateway]:
        """Start every part; stop them in reverse order on exit."""
        loop = asyncio.get_running_loop()
        node = dialplan.node.name
        topics = Topics(settings.mqtt_prefix, node)
        async with contextlib.AsyncExitStack() as stack:
            stores = await open_stores(settings.store, settings.data_dir)
            stack.push_async_callback(stores.close)

            presence_ref: list[PresenceService] = []
            locations_ref: list[AgentLocations] = []

            def on_location(agent: str, payload: dict[str, Any] | str) -> None:
                if locations_ref:
                    locations_ref[0].command(agent, payload)

            def on_command(agent: str, status: str, raw: dict[str, Any]) -> None:
                note = raw.get("reason")  # the desktop's own words, checked by the adapter
                if presence_ref and not presence_ref[0].choose(agent, Status(status), note=note):
                    log.info("presence_command_ignored", agent=agent, status=status)

            publisher: Publisher
            mqtt_url: str | None = None
            if settings.mqtt_url.strip().lower() == "off":
                publisher = NullPublisher()
            else:
                mqtt_url = settings.mqtt_url
                if not mqtt_url:
                    broker = await stack.enter_async_context(
                        EmbeddedBroker(settings.mqtt_embedded_port)
                    )
                    mqtt_url = broker.url
                    log.info("embedded_mqtt_broker", url=mqtt_url, backend=broker.backend)
                mqtt = MqttPublisher(
                    MqttSettings(
                        mqtt_url, ca_file=settings.mqtt_ca_file, buffer_size=settings.mqtt_buffer
                    ),
                    topics,
                    on_command=on_command,
                    on_location=on_location,
                )
                publisher = await stack.enter_async_context(mqtt)

            presence = PresenceService(
                {agent_id: agent.capacity for agent_id, agent in dialplan.agents.items()},
                stores.presence,
                publisher,
                topics,
                node,
            )
            presence_ref.append(presence)
            await presence.start()
            stack.push_async_callback(presence.close)

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
            endpoint = SipEndpoint(
                layer, listeners, max_message_bytes=sip.max_message_bytes, loop=loop
            )
            locations = AgentLocations(dialplan, stores.locations, publisher, topics)
            locations_ref.append(locations)
            registrar = RegistrarService(
                dialplan,
                layer,
                stores.registrations,
                presence,
                loop_clock=loop.time,
                on_registered=locations.registered,
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

            notifier: Notifier | None = None
            if settings.smtp_host:
                notifier = Notifier(
                    settings,
                    stores.outbox,
                    publisher,
                    topics,
                    settings.dialplan.parent / "templates",
                )
                await notifier.start()
                stack.push_async_callback(notifier.close)
            else:
                log.warning(
                    "no_mail_server",
                    detail="emergency contacts will not be e-mailed "
                    "(set GATEWAY_SMTP_HOST, SPEC E-6)",
                )
            emergency = EmergencyService(
                dialplan,
                stores.reservations,
                presence,
                publisher,
                topics,
                registrar.contacts,
                notify=notifier.notify if notifier is not None else None,
                desktop_location=locations.desktop,
            )
            await emergency.start()
            router = ContactCentreRouter(
                dialplan,
                registrar.authenticate if dialplan.agents else None,
                emergency,
                registrar.contacts,
                registrar.agent_at,
            )
            history = CallHistory(stores.cdrs, loop.time)
            history.start()
            stack.push_async_callback(history.close)
            call_tasks = await stack.enter_async_context(CallTasks())
            b2bua = B2BUA(
                layer,
                router,
                ids,
                via_for=endpoint.via_for,
                contact_for=endpoint.contact_for,
                clock=loop.time,
                pump=endpoint.pump,
                spawn=call_tasks.spawn,
                user_agent=sip.user_agent,
                emergency=emergency,
                request_handlers={"REGISTER": registrar.handle},
            )
            queues = QueueManager(dialplan, presence, registrar.contacts, b2bua)
            b2bua.queues = queues  # the dispatcher places through the B2BUA: it comes second
            observers: list[CallObserver] = [queues, history, emergency]
            b2bua.observers.extend(observers)

            endpoint.user = b2bua
            await endpoint.start()
            stack.push_async_callback(endpoint.close)
            if settings.gc_pacing:
                pacer = GcPacer(full_interval=settings.gc_full_interval_s)
                pacer.start()
                stack.push_async_callback(pacer.stop)
            yield cls(
                dialplan,
                settings,
                stores,
                publisher,
                presence,
                registrar,
                queues,
                history,
                layer,
                endpoint,
                b2bua,
                mqtt_url,
            )


async def run_gateway(dialplan: Dialplan, settings: Settings) -> None:
    """Run until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    async with Gateway.running(dialplan, settings) as gw:
        log.info(
            "gateway_started",
            node=dialplan.node.name,
            listen=[f"{a.transport}:{a.host}:{a.port}" for a in dialplan.listen],
            mqtt=gw.mqtt_url or "off",
            store=settings.store,
            data_dir=str(settings.data_dir),
            agents=len(dialplan.agents),
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway_stopping", calls_in_progress=len(gw.b2bua.calls))
