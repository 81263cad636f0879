"""Call metrics (SPEC O-3): an observer of the neutral call events, for Prometheus.

:class:`CallMetrics` counts calls by kind and result, set-up latency, emergency calls by
route and result, failed attempts (failovers) and callbacks; it never blocks. The node's
live levels (calls in progress, registrations, MQTT backlog and drops) are gauges read at
scrape time (:func:`node_metrics`). Every metric lives in the node's own
``CollectorRegistry``: two gateways in one process (tests) do not mix. ``gateway.metrics``
serves the registry over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.b2bua.admission import Admission
from gateway.b2bua.call import Call, LegFailure, NextHop
from gateway.b2bua.decisions import CallObserverBase
from gateway.metrics import level_gauge

__all__ = ["CallMetrics", "level_gauge", "node_metrics", "overload_gauges"]


def _kind(call: Call) -> str:
    if call.emergency is None:
        return "ordinary"
    return "callback" if call.emergency.callback else "emergency"


class CallMetrics(CallObserverBase):
    """Call counters from the neutral call events, in the node's registry.

    Each labelled child is looked up once and kept (:meth:`_child`): ``labels()`` checks
    and locks on every call, three times per call (about 12 us of a call on a slow box).
    """

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._children: dict[tuple[object, ...], Any] = {}
        self.calls = Counter(
            "gateway_calls",
            "Calls ended, by kind (ordinary, emergency, callback) and result",
            ["kind", "result"],
            registry=registry,
        )
        self.setup = Histogram(
            "gateway_call_setup_seconds",
            "From the caller's INVITE to the answer relayed back",
            ["kind"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.emergency = Counter(
            "gateway_emergency_calls",
            "Emergency calls and callbacks ended, by the route last tried and result",
            ["route", "result"],
            registry=registry,
        )
        self.failovers = Counter(
            "gateway_failovers",
            "B-leg attempts that failed (a failover follows when a path is left), by path",
            ["kind", "path", "error"],
            registry=registry,
        )
        self.callbacks = Counter(
            "gateway_callbacks", "Emergency callbacks started (SPEC C-1)", registry=registry
        )
        self.started = Counter(
            "gateway_calls_started", "Calls routed, by kind", ["kind"], registry=registry
        )

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def call_started(self, call: Call) -> None:
        kind = _kind(call)
        self._child(self.started, kind).inc()
        if kind == "callback":
            self.callbacks.inc()

    def attempt_tried(self, call: Call, hop: NextHop) -> None:
        pass

    def attempt_failed(self, call: Call, failure: LegFailure) -> None:
        self.failovers.labels(_kind(call), failure.path, failure.kind.value).inc()

    def call_answered(self, call: Call) -> None:
        if call.answered_at is not None:
            self._child(self.setup, _kind(call)).observe(
                max(0.0, call.answered_at - call.started_at)
            )

    def call_ended(self, call: Call) -> None:
        kind = _kind(call)
        result = call.outcome.kind.value if call.outcome is not None else "unknown"
        self._child(self.calls, kind, result).inc()
        if kind != "ordinary":
            hop = call.current_hop
            self.emergency.labels(hop.trunk if hop is not None else "none", result).inc()


def node_metrics(
    calls: Callable[[], int],
    registrations: Callable[[], int],
    mqtt: Callable[[], tuple[int, int]] | None,
) -> CallMetrics:
    """A registry with the call counters and the node's live levels (read at scrape)."""
    registry = CollectorRegistry()
    metrics = CallMetrics(registry)
    level_gauge(registry, "gateway_calls_in_progress", "Calls in progress", calls)
    level_gauge(registry, "gateway_registrations", "Live registered bindings", registrations)
    if mqtt is not None:
        level_gauge(
            registry, "gateway_mqtt_backlog", "MQTT events not yet acknowledged", lambda: mqtt()[0]
        )
        level_gauge(
            registry, "gateway_mqtt_dropped", "MQTT events dropped (buffer full)", lambda: mqtt()[1]
        )
    return metrics


def overload_gauges(registry: CollectorRegistry, admission: Admission) -> None:
    """What overload control (SPEC O-4) sees and does, read at scrape time."""
    level_gauge(
        registry,
        "gateway_calls_shed",
        "New ordinary calls shed with 503 since start",
        lambda: admission.shed_calls,
    )
    level_gauge(
        registry,
        "gateway_overload_shedding",
        "1 while a hard overload signal sheds",
        lambda: admission.shedding is not None,
    )
    level_gauge(
        registry,
        "gateway_overload_read_backlog",
        "Fullest UDP receive queue, share of its buffer",
        lambda: admission.read_backlog,
    )
    level_gauge(
        registry,
        "gateway_overload_admit_limit",
        "Admission rate limit in calls/s, 0 for none",
        lambda: admission.rate.limit or 0.0,
    )
