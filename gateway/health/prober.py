"""Trunk gateway health from OPTIONS keep-alives (SPEC O-3): the sans-I/O decisions.

Theory of operation
-------------------
:class:`HealthProber` holds one :class:`GatewayHealth` per probed gateway (the gateways of
every trunk, and of the direct-offer path, that has a ``keepalive`` block in the dialplan;
``gateway.config.keepalive``). It never touches a socket or a clock: time comes in as
``now``, and the adapter (``gateway.health.service``) drives it aioquic-style:

* ``get_timer()`` is the next deadline (a probe due, or a probe's answer overdue);
  ``handle_timer(now)`` fails the overdue probes and starts the due ones;
* each started probe is pulled with ``next_probe()`` (the adapter sends the OPTIONS) and
  its outcome pushed back with ``answered(probe, status, now)`` or ``failed(probe,
  detail, now)``; an outcome for a probe that is no longer pending (late, or after a
  reload) is ignored;
* every change of state is pulled with ``next_change()`` (the adapter logs it, publishes
  it and updates the metrics); ``health`` is the live map the route choice reads
  (``gateway_key -> up``).

A gateway starts *up* (no evidence yet, as Kamailio's dispatcher starts active) and moves
by counting probes in a row, as the table :data:`TRANSITIONS` says: ``down_after`` failed
probes take an up gateway down, ``up_after`` answered probes bring a down one back. A
probe fails when it gets no final response within ``timeout_s``, a transport error, or a
final response whose code is one of the trunk's failover codes (408, 503, 504 by
default: "not now"); any other final response proves the gateway is there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.config.dialplan import Dialplan, GatewayAddress
from gateway.config.keepalive import Keepalive, gateway_key
from gateway.emergency.routing import DIRECT_OFFER

__all__ = [
    "DIRECT_OFFER",
    "TRANSITIONS",
    "GatewayHealth",
    "GatewayState",
    "HealthChange",
    "HealthProber",
    "Probe",
    "ProbeTarget",
    "targets_of",
]


class GatewayState(StrEnum):
    """What the keep-alives say of a gateway."""

    UP = "up"
    DOWN = "down"


class Outcome(StrEnum):
    ANSWERED = "answered"
    FAILED = "failed"


#: (state, outcome of a probe) -> the state reached once the run of such outcomes is as
#: long as the threshold named (None: the outcome confirms the state, no count needed)
TRANSITIONS: dict[tuple[GatewayState, Outcome], tuple[GatewayState, str | None]] = {
    (GatewayState.UP, Outcome.ANSWERED): (GatewayState.UP, None),
    (GatewayState.UP, Outcome.FAILED): (GatewayState.DOWN, "down_after"),
    (GatewayState.DOWN, Outcome.FAILED): (GatewayState.DOWN, None),
    (GatewayState.DOWN, Outcome.ANSWERED): (GatewayState.UP, "up_after"),
}


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A gateway to probe: its address, the trunks it serves, and how to judge it."""

    gateway: str
    transport: str
    host: str
    port: int
    trunks: tuple[str, ...]
    keepalive: Keepalive
    failing_codes: frozenset[int]


@dataclass(frozen=True, slots=True)
class Probe:
    """One OPTIONS to send now (pulled by the adapter)."""

    seq: int
    target: ProbeTarget


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A gateway went up or down (a fact for logs, MQTT and metrics)."""

    target: ProbeTarget
    state: GatewayState
    previous: GatewayState
    reason: str
    at: float


@dataclass(slots=True)
class GatewayHealth:
    """The live state of one probed gateway."""

    target: ProbeTarget
    next_at: float
    state: GatewayState = GatewayState.UP
    run: int = 0  # probes in a row with the same outcome
    last_outcome: Outcome | None = None
    pending: int | None = None
    deadline: float = 0.0
    since: float = 0.0
    last_status: int | None = None
    last_detail: str = ""
    probes: int = 0
    failures: int = 0


def targets_of(dialplan: Dialplan) -> list[ProbeTarget]:
    """Every gateway with keep-alives in ``dialplan``, once each (the first trunk's settings
    win for a gateway listed by several trunks; the others are named in ``trunks``)."""
    found: dict[str, ProbeTarget] = {}
    paths: list[tuple[str, Keepalive | None, Iterable[GatewayAddress], Iterable[int]]] = [
        (name, trunk.keepalive, trunk.gateways, trunk.failover_codes)
        for name, trunk in dialplan.trunks.items()
    ]
    offer = dialplan.emergency.direct_offer
    if offer is not None:
        paths.append((DIRECT_OFFER, offer.keepalive, offer.gateways, (408, 503, 504)))
    for path, keepalive, gateways, codes in paths:
        if keepalive is None:
            continue
        for gw in gateways:
            key = gateway_key(gw)
            known = found.get(key)
            if known is not None:
                if path not in known.trunks:
                    found[key] = ProbeTarget(
                        key, known.transport, known.host, known.port, (*known.trunks, path),
                        known.keepalive, known.failing_codes,
                    )  # fmt: skip
                continue
            found[key] = ProbeTarget(
                key, gw.transport, gw.host, gw.port, (path,), keepalive, frozenset(codes)
            )
    return list(found.values())


@dataclass
class HealthProber:
    """The keep-alive state machines of every probed gateway (see the module docstring)."""

    gateways: dict[str, GatewayHealth] = field(default_factory=dict)
    #: gateway_key -> up, read by the route choice (the same object, updated in place)
    health: dict[str, bool] = field(default_factory=dict)
    _probes: deque[Probe] = field(default_factory=deque)
    _changes: deque[HealthChange] = field(default_factory=deque)
    _seq: int = 0

    def configure(self, targets: Iterable[ProbeTarget], now: float) -> None:
        """Probe ``targets`` from now on (at start and after a reload). A gateway already
        probed keeps its state; a new one starts up and is probed at once; a gateway no
        longer listed is forgotten (and counts as up: nothing says otherwise)."""
        wanted = {target.gateway: target for target in targets}
        for key in list(self.gateways):
            if key not in wanted:
                del self.gateways[key]
                self.health.pop(key, None)
        for key, target in wanted.items():
            current = self.gateways.get(key)
            if current is None:
                self.gateways[key] = GatewayHealth(target, next_at=now, since=now)
                self.health[key] = True
            elif current.target != target:
                current.target = target
                current.next_at = min(current.next_at, now + target.keepalive.interval_s)

    # -- time ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline: a probe due, or a pending probe's answer overdue."""
        deadlines = [
            g.deadline if g.pending is not None else g.next_at for g in self.gateways.values()
        ]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Fail the probes overdue at ``now``; start the probes due."""
        for gateway in self.gateways.values():
            if gateway.pending is not None and gateway.deadline <= now:
                timeout = gateway.target.keepalive.timeout_s
                self._outcome(gateway, Outcome.FAILED, None, f"no answer within {timeout:g} s", now)
            if gateway.pending is None and gateway.next_at <= now:
                self._start(gateway, now)

    def _start(self, gateway: GatewayHealth, now: float) -> None:
        self._seq += 1
        keepalive = gateway.target.keepalive
        gateway.pending = self._seq
        gateway.deadline = now + keepalive.timeout_s
        gateway.next_at = now + keepalive.interval_s
        gateway.probes += 1
        self._probes.append(Probe(self._seq, gateway.target))

    def next_probe(self) -> Probe | None:
        """The next OPTIONS to send, or None."""
        return self._probes.popleft() if self._probes else None

    def next_change(self) -> HealthChange | None:
        """The next change of a gateway's state, or None."""
        return self._changes.popleft() if self._changes else None

    # -- outcomes ------------------------------------------------------------------------

    def answered(self, probe: Probe, status: int, reason: str, now: float) -> None:
        """A final response to ``probe``: up evidence unless the code says "not now"."""
        gateway = self._pending(probe)
        if gateway is None:
            return
        if status in probe.target.failing_codes:
            self._outcome(gateway, Outcome.FAILED, status, f"{status} {reason}".strip(), now)
        else:
            self._outcome(gateway, Outcome.ANSWERED, status, f"{status} {reason}".strip(), now)

    def failed(self, probe: Probe, detail: str, now: float) -> None:
        """``probe`` failed at the transport or transaction level (no response)."""
        gateway = self._pending(probe)
        if gateway is not None:
            self._outcome(gateway, Outcome.FAILED, None, detail, now)

    def _pending(self, probe: Probe) -> GatewayHealth | None:
        gateway = self.gateways.get(probe.target.gateway)
        if gateway is None or gateway.pending != probe.seq:
            return None  # late (already failed by its timeout) or from before a reload
        return gateway

    def _outcome(
        self, gateway: GatewayHealth, outcome: Outcome, status: int | None, detail: str, now: float
    ) -> None:
        gateway.pending = None
        gateway.last_status, gateway.last_detail = status, detail
        if outcome is Outcome.FAILED:
            gateway.failures += 1
        gateway.run = gateway.run + 1 if gateway.last_outcome is outcome else 1
        gateway.last_outcome = outcome
        new_state, threshold = TRANSITIONS[(gateway.state, outcome)]
        if new_state is gateway.state:
            return
        assert threshold is not None
        if gateway.run < getattr(gateway.target.keepalive, threshold):
            return
        change = HealthChange(gateway.target, new_state, gateway.state, detail, now)
        gateway.state, gateway.since = new_state, now
        self.health[gateway.target.gateway] = new_state is GatewayState.UP
        self._changes.append(change)
