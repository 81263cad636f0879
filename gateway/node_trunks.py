"""The node's registrations at registration-based trunks (issue 13), on its endpoint.

The REGISTER logic is sans-I/O (:mod:`gateway.b2bua.registration`); this module runs it on
the endpoint's loop: started with the sockets, handed each reloaded dialplan (SPEC O-1), and
on a clean stop un-REGISTERed, waiting a moment for the carriers' answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gateway.b2bua.b2bua import B2BUA
from gateway.b2bua.core import log
from gateway.b2bua.metrics import CallMetrics
from gateway.b2bua.registration import TrunkRegistrations, registration_plans
from gateway.b2bua.router import ContactCentreRouter
from gateway.config.dialplan import Dialplan
from gateway.metrics import labelled_levels, level_gauge
from gateway.sip.transaction import Address
from gateway.transport.endpoint import SipEndpoint

__all__ = ["UNREGISTER_WAIT_S", "NodeTrunkRegistrations", "start_trunk_registrations"]

UNREGISTER_WAIT_S = 2.0
"""How long a stopping node waits for its trunks' answers to its un-REGISTERs."""


class NodeTrunkRegistrations:
    """The trunk registrations of a running node: every step on the endpoint's clock, its
    REGISTERs sent at once. No call ever waits for them (an emergency call tries the trunk
    whatever its state)."""

    def __init__(
        self,
        registrations: TrunkRegistrations,
        b2bua: B2BUA,
        endpoint: SipEndpoint,
        targets: Callable[[Address], list[Address]],
    ):
        self.registrations = registrations
        self.b2bua = b2bua
        self.endpoint = endpoint
        self.targets = targets

    def _now(self) -> float:
        now = self.endpoint.loop.time()
        self.b2bua.core.now = now
        return now

    def start(self) -> None:
        self.registrations.start(self._now())
        self.endpoint.pump()

    def describe(self) -> dict[str, str]:
        """trunk -> its registration in one line (``gateway trunks``)."""
        return self.registrations.describe(self.endpoint.loop.time())

    def use_dialplan(self, dialplan: Dialplan) -> None:
        """A reloaded dialplan: its trunks' plans, with the credentials the router (already
        swapped) read afresh; a changed registration is redone at once."""
        router = self.b2bua.router
        if not isinstance(router, ContactCentreRouter):
            return
        plans = registration_plans(dialplan.trunks, self.targets, router.credentials)
        changed = self.registrations.use_plans(plans, self._now())
        if changed:
            log.info("trunk_registrations_reloaded", trunks=changed)
            self.endpoint.pump()

    async def leave(self) -> None:
        """A clean stop removes the bindings: else the carrier's calls (a PSAP's callback
        among them) go to this node until they expire; the answers are waited for briefly."""
        now = self._now()
        if self.registrations.unregister(now) or self.registrations.pending:
            self.endpoint.pump()
            deadline = now + UNREGISTER_WAIT_S
            while self.registrations.pending and self.endpoint.loop.time() < deadline:
                await asyncio.sleep(0.02)
        self.registrations.stop()


def start_trunk_registrations(
    stack: contextlib.AsyncExitStack,
    dialplan: Dialplan,
    b2bua: B2BUA,
    endpoint: SipEndpoint,
    targets: Callable[[Address], list[Address]],
    metrics: CallMetrics,
) -> NodeTrunkRegistrations | None:
    """REGISTER to the registration-based trunks, now and after each reload; None when the
    router is not the contact centre's (no trunks to register)."""
    router = b2bua.router
    if not isinstance(router, ContactCentreRouter):
        return None
    plans = registration_plans(dialplan.trunks, targets, router.credentials)
    registrations = TrunkRegistrations(b2bua.core, plans, targets=targets)
    node = NodeTrunkRegistrations(registrations, b2bua, endpoint, targets)
    node.start()
    stack.push_async_callback(node.leave)
    level_gauge(
        metrics.registry,
        "gateway_trunk_registrations_up",
        "Registration-based trunks with a granted binding now",
        lambda: sum(node.registrations.registered(endpoint.loop.time()).values()),
    )
    labelled_levels(
        metrics.registry,
        "gateway_trunk_registered",
        "Registration-based trunks: 1 registered now, 0 not",
        ["trunk"],
        lambda: (
            ((trunk,), 1.0 if registered else 0.0)
            for trunk, registered in node.registrations.registered(endpoint.loop.time()).items()
        ),
    )
    return node
