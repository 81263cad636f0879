"""The keep-alive edge (SPEC O-3): sends the prober's OPTIONS, tells the world its changes.

Theory of operation
-------------------
:class:`TrunkHealth` drives a :class:`~gateway.health.prober.HealthProber` on the loop: one
named task sleeps until the prober's next deadline, runs ``handle_timer(now)`` and sends
each probe as an out-of-dialog OPTIONS through the node's one transaction layer (RFC 3261
section 11: a request any UA answers; Max-Forwards 70, no body). The client transaction's
owner is a :class:`ProbeOwner`, so the B2BUA hands the response, or Timer F / a transport
error, back here; a probe that has its answer never waits for the timer.

Every change of state (and each gateway's first state) is logged (``trunk_gateway_down``
at warning, ``trunk_gateway_up`` at info), published retained on
``<prefix>/nodes/<node>/trunks/<trunk>/<gateway>`` (``docs/mqtt.md``) and shown by the
``gateway_trunk_gateway_up`` gauge, read at scrape time. The route choice reads
:attr:`health` (``gateway_key -> up``): down gateways are skipped for ordinary calls and
tried last for emergency calls (``gateway.emergency.routing``).

A probe is a side task: it never waits on a call and a call never waits on it. Nothing here
raises into the loop: a failed send counts as a failed probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client.registry import CollectorRegistry

from gateway.config.dialplan import Dialplan
from gateway.events.ports import Publisher, check_topic_segment
from gateway.events.schema import rfc3339
from gateway.health.prober import (
    GatewayHealth,
    GatewayState,
    HealthChange,
    HealthProber,
    Probe,
    targets_of,
)
from gateway.metrics import labelled_levels
from gateway.sip.address import Address, IdGenerator
from gateway.sip.headers import Via
from gateway.sip.message import Request, Response
from gateway.sip.owners import ClientOwner
from gateway.sip.transaction import ClientTransaction, TransactionLayer
from gateway.tasks import stop_task

__all__ = ["ProbeOwner", "TrunkHealth", "gateway_status", "trunk_gateway_suffix"]

log = structlog.get_logger("gateway.health")


def trunk_gateway_suffix(node: str, trunk: str, gateway: str) -> str:
    """``nodes/<node>/trunks/<trunk>/<gateway>``: a trunk gateway's health (retained)."""
    return (
        f"nodes/{node}/trunks/{check_topic_segment(trunk, 'trunk name')}/"
        f"{check_topic_segment(gateway, 'gateway')}"
    )


def gateway_status(gateway: GatewayHealth, now: float) -> dict[str, Any]:
    """One gateway's state as the CLI and the control socket show it."""
    target = gateway.target
    return {
        "gateway": target.gateway,
        "trunks": list(target.trunks),
        "state": gateway.state.value,
        "for_s": round(max(0.0, now - gateway.since), 1),
        "last_status": gateway.last_status,
        "last_detail": gateway.last_detail,
        "probes": gateway.probes,
        "failures": gateway.failures,
    }


class ProbeOwner(ClientOwner):
    """The owner of one OPTIONS client transaction: its outcome goes to the prober."""

    __slots__ = ("health", "probe")

    def __init__(self, health: TrunkHealth, probe: Probe):
        self.health = health
        self.probe = probe

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        if response.status >= 200:
            self.health.prober.answered(self.probe, response.status, response.reason, now)
            self.health.changed()

    def on_failure(self, tx: ClientTransaction, detail: str, now: float) -> None:
        self.health.prober.failed(self.probe, detail, now)
        self.health.changed()


class TrunkHealth:
    """OPTIONS keep-alives to the trunk gateways of the dialplan (see the module docstring)."""

    def __init__(
        self,
        dialplan: Dialplan,
        layer: TransactionLayer,
        ids: IdGenerator,
        publisher: Publisher,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ):
        self.node = dialplan.node.name
        self.user_agent = dialplan.sip.user_agent
        self.layer = layer
        self.ids = ids
        self.publisher = publisher
        self.clock = clock
        self.wall_clock = wall_clock
        self.prober = HealthProber()
        self.prober.configure(targets_of(dialplan), clock())
        # set by start(): the endpoint's way out (not there when the health map is built)
        self._via_for: Callable[[Address, str], Via] | None = None
        self._contact_for: Callable[[Address], str] | None = None
        self._pump: Callable[[], None] = lambda: None
        self._targets: Callable[[Address], list[Address]] = lambda address: [address]
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def health(self) -> Mapping[str, bool]:
        """``gateway_key -> up`` for every probed gateway (live; a missing one is up)."""
        return self.prober.health

    def register_metrics(self, registry: CollectorRegistry) -> None:
        prober = self.prober

        def levels() -> Iterator[tuple[tuple[str, str], float]]:
            for gateway in list(prober.gateways.values()):
                up = 1.0 if gateway.state is GatewayState.UP else 0.0
                for trunk in gateway.target.trunks:
                    yield (trunk, gateway.target.gateway), up

        labelled_levels(
            registry,
            "gateway_trunk_gateway_up",
            "Trunk gateway health from OPTIONS keep-alives (1 up, 0 down)",
            ["trunk", "gateway"],
            levels,
        )

    def use_dialplan(self, dialplan: Dialplan) -> None:
        """A reloaded dialplan: probe its gateways (known ones keep their state)."""
        before = set(self.prober.gateways)
        self.prober.configure(targets_of(dialplan), self.clock())
        for key, gateway in self.prober.gateways.items():
            if key not in before:
                self._publish_state(gateway, GatewayState.UP, "not probed yet")
        self._wake.set()

    def statuses(self) -> list[dict[str, Any]]:
        """Every probed gateway's state (``gateway trunks``)."""
        now = self.clock()
        return [gateway_status(g, now) for g in self.prober.gateways.values()]

    # -- lifetime --------------------------------------------------------------------------

    async def start(
        self,
        via_for: Callable[[Address, str], Via],
        contact_for: Callable[[Address], str],
        pump: Callable[[], None],
        targets: Callable[[Address], list[Address]],
    ) -> None:
        """Start probing through the endpoint (once its listeners are open)."""
        self._via_for, self._contact_for = via_for, contact_for
        self._pump, self._targets = pump, targets
        for gateway in self.prober.gateways.values():
            self._publish_state(gateway, GatewayState.UP, "not probed yet")
        self._task = asyncio.create_task(self._run(), name="trunk-keepalives")

    async def close(self) -> None:
        self._closed = True
        await stop_task(self._task)

    async def _run(self) -> None:
        while not self._closed:
            now = self.clock()
            try:
                self.prober.handle_timer(now)
                self._send_probes(now)
                self.changed()
            except Exception:  # a side task: log and go on probing
                log.exception("keepalive_step_failed")
            deadline = self.prober.get_timer()
            delay = 60.0 if deadline is None else max(0.0, deadline - self.clock())
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    # -- probes ----------------------------------------------------------------------------

    def _send_probes(self, now: float) -> None:
        sent = False
        while (probe := self.prober.next_probe()) is not None:
            target = probe.target
            address = self._targets(Address(target.transport, target.host, target.port))[0]
            try:
                tx = self.layer.send_request(self._options(address), address, now)
            except Exception as exc:
                self.prober.failed(probe, f"not sent: {exc}", now)
                continue
            tx.owner = ProbeOwner(self, probe)
            sent = True
        if sent:
            self._pump()

    def _options(self, address: Address) -> Request:
        """An out-of-dialog OPTIONS to ``address`` (RFC 3261 section 11.1)."""
        assert self._via_for is not None and self._contact_for is not None
        host = f"[{address.host}]" if ":" in address.host else address.host
        transport = "" if address.transport == "udp" else f";transport={address.transport}"
        contact = self._contact_for(address)
        headers = [
            ("via", "Via", str(self._via_for(address, self.ids.branch()))),
            ("max-forwards", "Max-Forwards", "70"),
            ("from", "From", f"{contact};tag={self.ids.tag()}"),
            ("to", "To", f"<sip:{host}:{address.port}>"),
            ("call-id", "Call-ID", self.ids.call_id(address.host)),
            ("cseq", "CSeq", "1 OPTIONS"),
            ("contact", "Contact", contact),
            ("accept", "Accept", "application/sdp"),
            ("user-agent", "User-Agent", self.user_agent),
        ]
        return Request("OPTIONS", f"sip:{host}:{address.port}{transport}", headers)

    # -- changes -------------------------------------------------------------------------

    def changed(self) -> None:
        """Log, publish and wake the loop after probe outcomes (called in a SIP step)."""
        while (change := self.prober.next_change()) is not None:
            self._announce(change)
        self._wake.set()

    def _announce(self, change: HealthChange) -> None:
        target = change.target
        fields = {"gateway": target.gateway, "trunks": list(target.trunks), "reason": change.reason}
        if change.state is GatewayState.DOWN:
            log.warning("trunk_gateway_down", **fields)
        else:
            log.info("trunk_gateway_up", **fields)
        gateway = self.prober.gateways.get(target.gateway)
        if gateway is not None:
            self._publish_state(gateway, change.previous, change.reason)

    def _publish_state(self, gateway: GatewayHealth, previous: GatewayState, reason: str) -> None:
        target = gateway.target
        for trunk in target.trunks:
            payload: dict[str, Any] = {
                "version": 1,
                "node": self.node,
                "trunk": trunk,
                "gateway": target.gateway,
                "state": gateway.state.value,
                "previous": previous.value,
                "reason": reason,
                "timestamp": rfc3339(datetime.fromtimestamp(self.wall_clock(), UTC)),
            }
            try:
                suffix = trunk_gateway_suffix(self.node, trunk, target.gateway)
                self.publisher.publish(suffix, payload, retain=True)
            except Exception:
                log.exception("trunk_gateway_publish_failed", gateway=target.gateway)
