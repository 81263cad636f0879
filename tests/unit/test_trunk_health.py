"""Trunk gateway health from OPTIONS keep-alives (SPEC O-3): the prober's state machine on a
hand-moved clock, the targets the dialplan gives it, and the route choice that reads it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from gateway.b2bua.b2bua import B2BUA
from gateway.b2bua.decisions import Outbound, RouteRefusal
from gateway.b2bua.router import ContactCentreRouter, DialplanRouter
from gateway.config.keepalive import Keepalive
from gateway.config.loader import DialplanError, load_dialplan_text
from gateway.emergency.numbers import detect
from gateway.emergency.routing import DIRECT_OFFER, choose_route
from gateway.health.prober import GatewayState, HealthProber, ProbeTarget, targets_of
from gateway.health.service import TrunkHealth
from gateway.sip.address import Address, IdGenerator
from gateway.sip.headers import Via
from gateway.sip.message import Request, parse_message
from gateway.sip.transaction import TimerConfig, TransactionLayer
from gateway.sip.uri import parse_uri

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs/schemas/trunk-gateway.v1.json").read_text()
)
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER

KEEPALIVE = Keepalive(interval_s=10, timeout_s=2, down_after=3, up_after=2)


def target(gateway: str = "udp:192.0.2.1:5060", keepalive: Keepalive = KEEPALIVE) -> ProbeTarget:
    transport, host, port = gateway.split(":")
    return ProbeTarget(
        gateway, transport, host, int(port), ("carrier",), keepalive, frozenset({408, 503, 504})
    )


def started(now: float = 0.0, *targets: ProbeTarget) -> HealthProber:
    prober = HealthProber()
    prober.configure(targets or (target(),), now)
    return prober


def test_a_new_gateway_is_up_and_probed_at_once() -> None:
    prober = started()
    assert prober.health == {"udp:192.0.2.1:5060": True}
    assert prober.get_timer() == 0.0
    prober.handle_timer(0.0)
    probe = prober.next_probe()
    assert probe is not None and probe.target.gateway == "udp:192.0.2.1:5060"
    assert prober.next_probe() is None
    assert prober.get_timer() == 2.0  # its answer is due within timeout_s


def test_down_after_three_silent_probes_then_up_after_two_answers() -> None:
    prober = started()
    now = 0.0
    for attempt in range(3):
        prober.handle_timer(now)
        assert prober.next_probe() is not None
        assert prober.next_change() is None
        now = prober.get_timer() or 0.0  # the timeout: no answer
        assert now == attempt * 10 + 2
        prober.handle_timer(now)
        if attempt < 2:
            assert prober.health["udp:192.0.2.1:5060"] is True
            now = prober.get_timer() or 0.0  # the next probe, interval_s after the last
    change = prober.next_change()
    assert change is not None and change.state is GatewayState.DOWN
    assert change.previous is GatewayState.UP and change.at == 22.0
    assert change.reason == "no answer within 2 s"
    assert prober.health["udp:192.0.2.1:5060"] is False
    # a down gateway is still probed every interval; two answers in a row bring it back
    for when in (30.0, 40.0):
        assert prober.get_timer() == when
        prober.handle_timer(when)
        probe = prober.next_probe()
        assert probe is not None
        prober.answered(probe, 200, "OK", when + 0.01)
        assert prober.health["udp:192.0.2.1:5060"] is (when == 40.0)
    change = prober.next_change()
    assert change is not None and change.state is GatewayState.UP
    assert change.reason == "200 OK"


def test_an_answer_breaks_a_run_of_failures() -> None:
    prober = started()
    outcomes = ["fail", "fail", "200", "fail", "fail"]
    now = 0.0
    for outcome in outcomes:
        prober.handle_timer(now)
        probe = prober.next_probe()
        assert probe is not None
        if outcome == "fail":
            prober.failed(probe, "ICMP port unreachable", now + 0.001)
        else:
            prober.answered(probe, 200, "OK", now + 0.001)
        now += 10
    assert prober.health["udp:192.0.2.1:5060"] is True
    assert prober.next_change() is None


@pytest.mark.parametrize(("status", "counts_as_up"), [(503, False), (408, False), (404, True)])
def test_a_failover_code_is_a_failed_probe_any_other_answer_proves_life(
    status: int, counts_as_up: bool
) -> None:
    one = Keepalive(interval_s=10, timeout_s=2, down_after=1, up_after=1)
    prober = started(0.0, target(keepalive=one))
    prober.handle_timer(0.0)
    probe = prober.next_probe()
    assert probe is not None
    prober.answered(probe, status, "Whatever", 0.1)
    assert prober.health["udp:192.0.2.1:5060"] is counts_as_up


def test_a_late_answer_after_the_timeout_is_ignored() -> None:
    one = Keepalive(interval_s=10, timeout_s=2, down_after=1, up_after=1)
    prober = started(0.0, target(keepalive=one))
    prober.handle_timer(0.0)
    probe = prober.next_probe()
    assert probe is not None
    prober.handle_timer(2.0)  # timed out: down
    assert prober.health["udp:192.0.2.1:5060"] is False
    prober.answered(probe, 200, "OK", 2.5)  # the old probe's answer: not evidence
    assert prober.health["udp:192.0.2.1:5060"] is False


def test_a_reload_keeps_known_gateways_state_and_forgets_the_removed() -> None:
    one = Keepalive(interval_s=10, timeout_s=2, down_after=1, up_after=1)
    old, new = target("udp:192.0.2.1:5060", one), target("udp:192.0.2.9:5060", one)
    prober = started(0.0, old)
    prober.handle_timer(0.0)
    prober.handle_timer(2.0)
    assert prober.health == {old.gateway: False}
    prober.configure([old, new], 3.0)
    assert prober.health == {old.gateway: False, new.gateway: True}
    prober.configure([new], 4.0)
    assert prober.health == {new.gateway: True}
    assert list(prober.gateways) == [new.gateway]


DIALPLAN = """\
version: 1
listen: [{ transport: udp, host: 127.0.0.1 }]
trunks:
  carrier:
    gateways: [{ host: 192.0.2.1 }, { host: 192.0.2.2, port: 5070 }]
    keepalive: { interval_s: 5, timeout_s: 1, down_after: 2, up_after: 1 }
  backup:
    gateways: [{ host: 192.0.2.2, port: 5070 }]
    keepalive: {}
  quiet: { gateways: [{ host: 192.0.2.3 }] }
outbound:
  - { name: all, match: '^\\d+$', trunk: carrier }
emergency:
  direct_routing:
    - { name: sos, match: '^911$', trunk: carrier }
  direct_offer:
    gateways: [{ host: 198.51.100.7 }]
    keepalive: { interval_s: 30 }
"""


def test_the_dialplan_names_the_probed_gateways_once_each() -> None:
    targets = {t.gateway: t for t in targets_of(load_dialplan_text(DIALPLAN))}
    assert sorted(targets) == ["udp:192.0.2.1:5060", "udp:192.0.2.2:5070", "udp:198.51.100.7:5060"]
    shared = targets["udp:192.0.2.2:5070"]
    assert shared.trunks == ("carrier", "backup") and shared.keepalive.interval_s == 5
    assert targets["udp:198.51.100.7:5060"].trunks == (DIRECT_OFFER,)
    assert targets["udp:192.0.2.1:5060"].failing_codes == {408, 503, 504}


def test_a_probe_timeout_not_shorter_than_the_interval_is_refused_with_its_line() -> None:
    bad = DIALPLAN.replace("interval_s: 5, timeout_s: 1", "interval_s: 5, timeout_s: 5")
    with pytest.raises(DialplanError) as error:
        load_dialplan_text(bad, "dp.yaml")
    (problem,) = error.value.problems
    assert "dp.yaml:6" in str(problem) and "trunks.carrier.keepalive" in str(problem)
    assert "must be shorter than interval_s" in str(problem)


def test_ordinary_calls_skip_down_gateways_and_get_503_when_none_is_left() -> None:
    dialplan = load_dialplan_text(DIALPLAN)
    health = {"udp:192.0.2.1:5060": False}
    router = ContactCentreRouter(dialplan, health=health)
    decision = router.outbound("5551234", None)
    assert isinstance(decision, Outbound)
    assert [hop.gateway for hop in decision.hops] == ["udp:192.0.2.2:5070"]
    health["udp:192.0.2.2:5070"] = False  # the live map: no rebuild needed
    refusal = router.outbound("5551234", None)
    assert isinstance(refusal, RouteRefusal) and refusal.status == 503
    assert refusal.warning is not None and "every gateway of trunk carrier is down" in (
        refusal.warning
    )
    assert router.with_dialplan(dialplan).health is health  # a reload keeps reading it


def test_emergency_calls_try_a_down_gateway_after_every_up_path_never_drop_it() -> None:
    dialplan = load_dialplan_text(DIALPLAN)
    detection = detect(parse_uri("sip:911@gw"), "US")
    assert detection is not None
    health = {"udp:192.0.2.1:5060": False}
    plan = choose_route(detection, "US", dialplan.emergency, dialplan.trunks, health)
    assert [(hop.host, hop.port, hop.last_resort) for hop in plan.hops] == [
        ("192.0.2.2", 5070, False),
        ("198.51.100.7", 5060, False),
        ("192.0.2.1", 5060, True),
    ]
    assert plan.notes == ("gateway udp:192.0.2.1:5060 of trunk 'carrier' is down; tried last",)
    everything = dict.fromkeys(["udp:192.0.2.1:5060", "udp:192.0.2.2:5070"], False)
    everything["udp:198.51.100.7:5060"] = False
    plan = choose_route(detection, "US", dialplan.emergency, dialplan.trunks, everything)
    assert [hop.host for hop in plan.hops] == ["192.0.2.1", "192.0.2.2", "198.51.100.7"]
    assert all(hop.last_resort for hop in plan.hops) and not plan.empty


class Recorder:
    """A publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], bool]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        self.published.append((topic_suffix, payload, retain))


async def test_the_edge_sends_options_and_publishes_each_change_to_the_schema() -> None:
    """The keep-alive edge over a real transaction layer: an OPTIONS leaves for each probed
    gateway; its failure comes back through the owner; each state is published retained
    (validated against docs/schemas/trunk-gateway.v1.json) and shown by the gauge."""
    dialplan = load_dialplan_text(DIALPLAN)
    layer = TransactionLayer(TimerConfig(), IdGenerator())
    publisher = Recorder()
    clock = [100.0]
    health = TrunkHealth(
        dialplan, layer, IdGenerator(), publisher, clock=lambda: clock[0], wall_clock=lambda: 0.0
    )
    registry = CollectorRegistry()
    health.register_metrics(registry)

    def via_for(address: Address, branch: str) -> Via:
        return Via("UDP", "127.0.0.1", 5060, {"branch": branch, "rport": None})

    await health.start(
        via_for, lambda address: "<sip:gw@127.0.0.1:5060>", lambda: None, lambda a: [a]
    )
    try:
        await asyncio.sleep(0.01)  # the task's first step: every gateway is due
        sent = []
        while (out := layer.next_outgoing()) is not None:
            sent.append((out.destination, parse_message(out.data)))
        assert sorted(f"{d.transport}:{d.host}:{d.port}" for d, _ in sent) == [
            "udp:192.0.2.1:5060", "udp:192.0.2.2:5070", "udp:198.51.100.7:5060"
        ]  # fmt: skip
        request = sent[0][1]
        assert isinstance(request, Request) and request.method == "OPTIONS"
        assert request.get("Max-Forwards") == "70" and request.get("CSeq") == "1 OPTIONS"
        starting = [(topic, p["state"], p["reason"]) for topic, p, _ in publisher.published]
        assert ("nodes/gw1/trunks/backup/udp:192.0.2.2:5070", "up", "not probed yet") in starting
        assert len(starting) == 4  # the shared gateway once per trunk
        # two ICMP errors take the carrier's first gateway down (down_after: 2), handed
        # back by the B2BUA as it hands back any transaction event
        b2bua = B2BUA(
            layer, DialplanRouter(dialplan), IdGenerator(), via_for=via_for,
            contact_for=lambda a: "<sip:gw@127.0.0.1>", clock=lambda: clock[0],
        )  # fmt: skip
        first = Address("udp", "192.0.2.1", 5060)
        for _ in range(2):
            layer.transport_error(first, clock[0], "ICMP port unreachable", refused=True)
            while (event := layer.next_event()) is not None:
                b2bua.handle(event, clock[0])
            clock[0] += 5.0
            health.prober.handle_timer(clock[0])
            health._send_probes(clock[0])
        topic, payload, retain = [
            item for item in publisher.published if "udp:192.0.2.1:5060" in item[0]
        ][-1]
        assert topic == "nodes/gw1/trunks/carrier/udp:192.0.2.1:5060" and retain
        assert payload["state"] == "down" and payload["previous"] == "up"
        assert payload["reason"] == "ICMP port unreachable"
        validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=FORMATS)
        for _, payload, _ in publisher.published:
            validator.validate(payload)
        assert health.health == {
            "udp:192.0.2.1:5060": False,
            "udp:192.0.2.2:5070": False,  # no answer within its 1 s, twice
            "udp:198.51.100.7:5060": True,  # one probe late; down_after is 3
        }
        up = {
            (sample.labels["trunk"], sample.labels["gateway"]): sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "gateway_trunk_gateway_up"
        }
        assert up[("carrier", "udp:192.0.2.1:5060")] == 0.0
        assert up[("backup", "udp:192.0.2.2:5070")] == 0.0
        assert up[("direct-offer", "udp:198.51.100.7:5060")] == 1.0
        (status,) = [s for s in health.statuses() if s["gateway"] == "udp:192.0.2.1:5060"]
        assert status["state"] == "down" and status["failures"] == 2
    finally:
        await health.close()


def test_the_schema_names_the_states_the_prober_has() -> None:
    states = [state.value for state in GatewayState]
    assert SCHEMA["properties"]["state"]["enum"] == states
    assert SCHEMA["properties"]["previous"]["enum"] == states
