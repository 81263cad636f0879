"""MQTT adapter of the :class:`~gateway.events.ports.Publisher` port (SPEC M-1, E-7, R-4).

Theory of operation
-------------------
``publish()`` serialises the payload, appends it to a bounded in-memory
:class:`~gateway.events.buffer.EventBuffer` and sets an :class:`asyncio.Event`; it never
awaits and never raises, so SIP handling is never held up by the broker (E-7).

Everything else runs in an :class:`asyncio.TaskGroup` owned by the ``async with`` block:

``mqtt-connection``
    connects (client id ``gateway-<node>``, keepalive 30 s, last will = retained
    ``offline`` node status), publishes the retained ``online`` node status (with
    ``dropped_events`` once anything was dropped), learns which retained agent topics the
    broker holds and clears those that should no longer exist (see *Retained state*),
    subscribes to ``<prefix>/agents/+/presence/set``, then runs the two tasks below until
    the connection fails, and reconnects after a jittered exponential delay (0.5 s
    doubling to 30 s).
``mqtt-publish``
    drains the buffer with QoS 1 in small pipelined batches; a batch leaves the buffer only
    once every PUBACK is in, so events raised during an outage are delivered, in order,
    after the broker comes back (at least once). Once that backlog has drained it
    republishes the retained state the broker lacks (below), once per connection.
``mqtt-commands``
    hands location commands (``<prefix>/agents/+/location/set``, subscribed when
    ``on_location`` is given) to ``on_location(agent, payload_or_refusal)``; decodes
    presence commands, checks them (agents may only set Available, Away or
    DoNotDisturb) and calls ``on_command(agent, status, payload)``; bad ones are logged and
    ignored. Its ``async for`` also notices a lost connection while nothing is published.

Retained state
--------------
Every ``publish(..., retain=True)`` is recorded in a
:class:`~gateway.events.retained.RetainedState` (the latest payload per topic; an empty
payload ``{}`` clears the topic on the broker and forgets it). A broker that restarts
without persistence has forgotten all of it, so on every connection the publisher resends
each owned topic whose latest payload has not gone over *this* connection -- after the
outage backlog, so emergency events waiting in it are not held up, and never a topic whose
latest payload was in that backlog (it has just been delivered). Emergency events are not
retained: they are never resent by this.

To know what the broker holds, the publisher subscribes to ``<prefix>/agents/+/+`` (QoS 0)
right after connecting and unsubscribes at once: the broker sends the matching retained
messages before its UNSUBACK, so when the UNSUBACK is in, the snapshot is complete. We ask
the broker rather than keep a persisted list because the broker is the only one that knows
what it really holds (a persistent broker, a broker that lost everything, topics a previous
process or version left behind) and it costs one round trip per connection. The snapshot
lets the publisher skip topics the broker already holds with the same payload (or a newer
one from another node) and clear the topics of agents that are not configured any more
(``is_current_agent``). If the broker refuses that subscription, everything owned is
resent and nothing is cleared.

Leaving the ``async with`` block drains what is buffered (while connected), publishes the
retained ``offline`` status and disconnects cleanly, all within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import aiomqtt

from gateway.events.buffer import Backoff, EventBuffer
from gateway.events.commands import decode_command_object, decode_presence_command
from gateway.events.mqtt_settings import BrokerAddress, MqttSettings, parse_broker_url
from gateway.events.ports import Topics
from gateway.events.retained import Republish, RetainedState, stale_topics
from gateway.events.schema import node_status_payload
from gateway.logs import get_logger

__all__ = [
    "BrokerAddress",
    "CommandCallback",
    "LocationCallback",
    "MqttPublisher",
    "MqttSettings",
    "PublisherStats",
    "parse_broker_url",
]

CommandCallback = Callable[[str, str, dict[str, Any]], None]
"""``on_command(agent_id, status, payload)``: a checked presence command from an agent."""

LocationCallback = Callable[[str, dict[str, Any] | str], None]
"""``on_location(agent_id, payload)``: a location command from a desktop, as a decoded JSON
object, or the reason it could not be read (not JSON, too large, retained) so that the
receiver can answer it (SPEC E-10)."""

QOS: Final = 1
_TOPIC_FORBIDDEN: Final = frozenset("+#\x00")

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot for metrics (O-3 "MQTT backlog")."""

    queued: int
    """Events waiting for a PUBACK (queued plus in flight)."""
    published: int
    """Events acknowledged by the broker since start."""
    dropped: int
    """Events dropped from the full buffer since start."""
    connected: bool
    """Whether a broker connection is up."""


class _Outgoing(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    seq: int = 0  # the RetainedState sequence of a retained payload, 0 otherwise


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class MqttPublisher:
    """Publishes gateway events to MQTT and hands presence commands to ``on_command``.

    Use as ``async with MqttPublisher(settings, topics, on_command=cb) as publisher:``;
    :meth:`publish` may be called before, during and after the block (events wait in the
    buffer). ``rand`` (uniform in [0, 1)) jitters reconnect delays and ``clock`` stamps
    node-status payloads; both are injectable for tests. ``is_current_agent(agent_id)``
    says whether an agent is configured: the retained ``<prefix>/agents/<agent>/...``
    topics of an agent that is not are cleared on connect (``None``: nothing is cleared).
    Call from the event-loop thread.
    """

    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        *,
        on_command: CommandCallback | None = None,
        on_location: LocationCallback | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], datetime] = _utc_now,
        is_current_agent: Callable[[str], bool] | None = None,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._on_command = on_command
        self._on_location = on_location
        self._clock = clock
        self._backoff = Backoff(base=settings.reconnect_base, cap=settings.reconnect_max, rand=rand)
        self._buffer: EventBuffer[_Outgoing] = EventBuffer(settings.buffer_size)
        self._retained = RetainedState()
        self._is_current_agent = is_current_agent
        self._held: Mapping[str, bytes] | None = None  # broker's retained agent topics
        self._wakeup = asyncio.Event()
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._reported_dropped = 0
        self._overflowing = False
        self._task_group: asyncio.TaskGroup | None = None
        self._connection_task: asyncio.Task[None] | None = None
        self._log = log.bind(node=topics.node)

    # -- the Publisher port ------------------------------------------------------------------

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        """Queue ``payload`` for ``<prefix>/<topic_suffix>`` (QoS 1); never blocks or raises.

        The payload is serialised now (later changes to the dict do not matter). A bad
        topic or a payload that is not JSON is logged and dropped. When the buffer is full
        the oldest queued event is dropped and counted.

        With ``retain`` the payload becomes the topic's current state, resent after the
        broker lost it (see *Retained state*); an empty ``payload`` (``{}``) with
        ``retain`` clears the topic (a zero-length retained message) and forgets it.
        """
        try:
            if (
                not topic_suffix
                or topic_suffix.startswith("/")
                or any(ch in _TOPIC_FORBIDDEN for ch in topic_suffix)
            ):
                raise ValueError(f"invalid topic suffix {topic_suffix!r}")
            topic = self._topics.full(topic_suffix)
            encoded = b"" if retain and not payload else _encode(payload)
            seq = self._retained.record(topic, encoded) if retain else 0
            item = _Outgoing(topic, encoded, retain, seq)
        except Exception as exc:
            self._log.error("mqtt_event_rejected", topic_suffix=topic_suffix, error=str(exc))
            return
        if self._buffer.append(item) and not self._overflowing:
            self._overflowing = True
            self._log.warning(
                "mqtt_buffer_full_dropping_oldest",
                capacity=self._buffer.capacity,
                dropped=self._buffer.dropped,
            )
        self._wakeup.set()

    # -- observability -----------------------------------------------------------------------

    @property
    def stats(self) -> PublisherStats:
        """Counters for metrics: queued, published, dropped, connected."""
        return PublisherStats(
            queued=len(self._buffer),
            published=self._buffer.published,
            dropped=self._buffer.dropped,
            connected=self._connected.is_set(),
        )

    @property
    def retained_topics(self) -> list[str]:
        """The retained topics (full names) whose current state this publisher owns."""
        return self._retained.topics()

    @property
    def topics(self) -> Topics:
        """The topic layout this publisher uses."""
        return self._topics

    async def wait_connected(self) -> None:
        """Return once connected, ``online`` published and commands subscribed."""
        await self._connected.wait()

    def reconnect_now(self) -> None:
        """Cut the current reconnect delay short and try at once (e.g. broker known back)."""
        self._retry_now.set()

    # -- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the background tasks; does not wait for the broker."""
        if self._task_group is not None:
            raise RuntimeError("MqttPublisher is not reentrant")
        self._closing.clear()
        task_group = asyncio.TaskGroup()
        await task_group.__aenter__()
        self._task_group = task_group
        self._connection_task = task_group.create_task(
            self._connection_loop(), name=f"mqtt-connection[{self._topics.node}]"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Drain, publish ``offline``, disconnect (bounded by ``shutdown_timeout``)."""
        task_group, task = self._task_group, self._connection_task
        if task_group is None or task is None:
            return None
        self._task_group = None
        self._connection_task = None
        self._closing.set()
        self._wakeup.set()
        try:
            _done, pending = await asyncio.wait({task}, timeout=self._settings.shutdown_timeout)
        except asyncio.CancelledError as cancelled:
            # Cancelled while shutting down: stop at once, but still reap the tasks.
            task.cancel()
            await task_group.__aexit__(type(cancelled), cancelled, cancelled.__traceback__)
            raise
        if pending:
            self._log.warning("mqtt_shutdown_timeout")
            task.cancel()
        await task_group.__aexit__(exc_type, exc, tb)
        if self._buffer:
            self._log.warning("mqtt_closed_with_undelivered_events", undelivered=len(self._buffer))
        return None

    # -- background tasks --------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        """Connect, serve, and reconnect with backoff until closing. Never raises."""
        while not self._closing.is_set():
            try:
                await self._serve_one_connection()
            except Exception as exc:  # every failure means "try again later"
                self._log.warning("mqtt_connection_failed", error=_describe(exc))
            finally:
                self._connected.clear()
            if self._closing.is_set():
                break
            delay = self._backoff.next_delay()
            self._log.info(
                "mqtt_reconnect_scheduled",
                delay_s=round(delay, 3),
                attempt=self._backoff.attempt,
                queued=len(self._buffer),
            )
            await self._sleep_unless_woken(delay)

    async def _sleep_unless_woken(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if closing or :meth:`reconnect_now` is called."""
        waiters = {
            asyncio.ensure_future(self._closing.wait()),
            asyncio.ensure_future(self._retry_now.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            self._retry_now.clear()

    def _client(self) -> aiomqtt.Client:
        broker = self._settings.broker
        will = aiomqtt.Will(
            topic=self._topics.node_status_topic,
            payload=_encode(
                node_status_payload(
                    node=self._topics.node,
                    status="offline",
                    timestamp=self._clock(),
                    reason="connection_lost",
                )
            ),
            qos=QOS,
            retain=True,
        )
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password,
            identifier=f"gateway-{self._topics.node}",
            will=will,
            clean_session=True,
            keepalive=self._settings.keepalive,
            timeout=self._settings.operation_timeout,
            tls_context=self._settings.tls_context(),
            # a wide window: every batch waits for its PUBACKs, and with a broker's Nagle
            # and our delayed ACKs each wait costs ~35 ms, so a batch must carry many events
            max_inflight_messages=self._settings.in_flight,
        )
        # aiomqtt warns above this many unacknowledged calls; our batches are bounded.
        client.pending_calls_threshold = self._settings.in_flight + 2
        return client

    async def _serve_one_connection(self) -> None:
        async with self._client() as client:
            self._backoff.reset()
            await self._publish_status(client, "online")
            self._retained.new_connection()
            self._held = await self._learn_retained(client)
            await self._clear_stale(client)
            if self._on_command is not None:
                await client.subscribe(self._commands(self._topics.presence_set_filter), qos=QOS)
            if self._on_location is not None:
                await client.subscribe(self._commands(self._topics.location_set_filter), qos=QOS)
            self._connected.set()
            self._log.info(
                "mqtt_connected",
                host=self._settings.broker.host,
                port=self._settings.broker.port,
                queued=len(self._buffer),
                dropped=self._buffer.dropped,
            )
            async with asyncio.TaskGroup() as connection_tasks:
                receiver = connection_tasks.create_task(
                    self._receive_commands(client), name="mqtt-commands"
                )
                sender = connection_tasks.create_task(
                    self._send_buffered(client), name="mqtt-publish"
                )
                sender.add_done_callback(lambda _: receiver.cancel())
            # Only reached when closing with the buffer drained: say goodbye ourselves, as
            # a clean DISCONNECT discards the last will.
            await self._publish_status(client, "offline", reason="shutdown")
            self._log.info("mqtt_disconnecting", published=self._buffer.published)

    def _commands(self, topic_filter: str) -> str:
        """``topic_filter``, as the cluster's shared subscription when there is one (MQTT 5
        section 4.8.2; Mosquitto offers it to 3.1.1 clients too)."""
        group = self._settings.command_group
        return topic_filter if group is None else f"$share/{group}/{topic_filter}"

    async def _publish_status(
        self, client: aiomqtt.Client, status: str, *, reason: str | None = None
    ) -> None:
        dropped = self._buffer.dropped
        payload = node_status_payload(
            node=self._topics.node,
            status=status,
            timestamp=self._clock(),
            dropped_events=dropped if dropped else None,
            reason=reason,
        )
        await client.publish(self._topics.node_status_topic, _encode(payload), qos=QOS, retain=True)
        self._reported_dropped = dropped

    async def _learn_retained(self, client: aiomqtt.Client) -> dict[str, bytes] | None:
        """The retained ``<prefix>/agents/+/+`` messages the broker holds, or ``None`` when
        it refuses the subscription. Subscribes with QoS 0 (no in-flight window to wait
        for), unsubscribes at once; the UNSUBACK comes after the retained messages."""
        topic_filter = self._topics.full("agents/+/+")
        granted = await client.subscribe(topic_filter, qos=0)
        await client.unsubscribe(topic_filter)
        refused = not granted or any(_refused(code) for code in granted)
        held: dict[str, bytes] = {}
        while len(client.messages):
            message = await anext(client.messages)
            payload = message.payload
            if message.retain and isinstance(payload, bytes | bytearray) and payload:
                held[str(message.topic)] = bytes(payload)
        if refused:
            self._log.warning(
                "mqtt_retained_snapshot_refused",
                filter=topic_filter,
                detail="republishing every retained topic; stale ones are not cleared",
            )
            return None
        return held

    async def _clear_stale(self, client: aiomqtt.Client) -> None:
        """Clear the retained agent topics of agents that are not configured any more."""
        if self._held is None or self._is_current_agent is None:
            return
        stale = stale_topics(
            self._topics.prefix, self._held, self._retained, self._is_current_agent
        )
        for topic in stale:
            await client.publish(topic, b"", qos=QOS, retain=True)
        if stale:
            self._log.info("mqtt_stale_retained_cleared", topics=stale)

    async def _republish_retained(self, client: aiomqtt.Client) -> None:
        """Resend, once, each owned retained topic the broker lacks (see *Retained state*).

        The plan is taken while the buffer is empty, so every payload in it is the latest;
        a newer one published meanwhile waits in the buffer and follows it."""
        plan = self._retained.republish_plan(self._held)
        self._held = None  # what the broker held at connect is stale from here on
        if not plan:
            return
        for start in range(0, len(plan), self._settings.in_flight):
            batch = plan[start : start + self._settings.in_flight]
            async with asyncio.TaskGroup() as batch_tasks:
                for item in batch:
                    batch_tasks.create_task(_republish_one(client, item))
            for item in batch:
                self._retained.delivered(item.topic, item.seq)
        self._log.info("mqtt_retained_republished", topics=len(plan))

    async def _send_buffered(self, client: aiomqtt.Client) -> None:
        """Drain the buffer in pipelined QoS 1 batches; return when closing and empty."""
        republished = False
        while True:
            batch = self._buffer.take(self._settings.in_flight)
            if not batch:
                if self._buffer.dropped != self._reported_dropped:
                    await self._publish_status(client, "online")
                if self._closing.is_set():
                    return
                if not republished:
                    republished = True
                    await self._republish_retained(client)
                    continue
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                if len(batch) == 1:
                    await _publish_one(client, batch[0])
                else:
                    # Tasks start in creation order and each hands its PUBLISH to paho
                    # before its first await, so the wire order is the buffer order.
                    async with asyncio.TaskGroup() as batch_tasks:
                        for item in batch:
                            batch_tasks.create_task(_publish_one(client, item))
            except BaseException:
                self._buffer.requeue()
                raise
            self._buffer.ack()
            for item in batch:
                if item.seq:
                    self._retained.delivered(item.topic, item.seq)
            if not len(self._buffer):
                self._overflowing = False  # warn again only after the backlog has drained

    async def _receive_commands(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if self._topics.agent_from_location_set_topic(topic) is not None:
                self._handle_location(topic, message.payload, retained=message.retain)
                continue
            self._handle_command(topic, message.payload, retained=message.retain)

    def _handle_location(self, topic: str, raw: object, *, retained: bool) -> None:
        """Pass one location command on, decoded or with the reason it is unreadable."""
        agent = self._topics.agent_from_location_set_topic(topic)
        if agent is None or self._on_location is None:
            self._log.warning("mqtt_unexpected_topic", topic=topic)
            return
        payload: dict[str, Any] | str
        if retained:
            # a retained command would be replayed on every reconnect: never act on one
            payload = "retained commands are ignored (publish with retain=false)"
        else:
            payload = decode_command_object(raw)
        try:
            self._on_location(agent, payload)
        except Exception:
            self._log.exception("location_command_handler_failed", agent=agent)

    def _handle_command(self, topic: str, raw: object, *, retained: bool) -> None:
        """Check one presence command and pass it on; log and ignore anything wrong."""
        agent = self._topics.agent_from_set_topic(topic)
        if agent is None:
            self._log.warning("mqtt_unexpected_topic", topic=topic)
            return
        if retained:
            # A retained command would be replayed on every reconnect: never act on one.
            self._log.warning("presence_command_ignored", agent=agent, error="retained")
            return
        payload = decode_presence_command(raw)
        if isinstance(payload, str):
            self._log.warning("presence_command_ignored", agent=agent, error=payload)
            return
        status = payload["status"]
        if self._on_command is None:
            return
        try:
            self._on_command(agent, status, payload)
        except Exception:
            self._log.exception("presence_command_handler_failed", agent=agent, status=status)


async def _publish_one(client: aiomqtt.Client, item: _Outgoing) -> None:
    await client.publish(item.topic, item.payload, qos=QOS, retain=item.retain)


async def _republish_one(client: aiomqtt.Client, item: Republish) -> None:
    await client.publish(item.topic, item.payload, qos=QOS, retain=True)


def _refused(code: object) -> bool:
    """Whether a SUBACK return code refuses the subscription (0x80, MQTT 3.1.1 3.9.3)."""
    is_failure = getattr(code, "is_failure", None)
    if isinstance(is_failure, bool):
        return is_failure
    return code == 0x80


def _describe(exc: BaseException) -> str:
    """One line for the log, flattening exception groups from the task groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
