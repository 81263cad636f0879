"""The cost of presence publishing: queued inbound calls with MQTT off, on, and watched.

Three variants, each on a fresh gateway, driven through the same rising call rates:

    off      GATEWAY_MQTT_URL=off: presence changes are published nowhere
    mqtt     presence published (QoS 1, retained) to a Mosquitto with no subscribers
    subs     the same, with K paho clients (one network thread each, in this process)
             subscribed to ``<prefix>/#`` with QoS 1 (--subscriber-qos), counting what
             they receive

    SIPp uac (carrier, 127.0.0.2)  ->  gateway  ->  SIPp uas (N agents' phones, 127.0.0.1)
                                          |
                                          +--> Mosquitto  -->  K subscribers

Each variant: a fresh ``python -m gateway run`` (GATEWAY_LOG_LEVEL=WARNING,
GATEWAY_STORE=sqlite://:memory:, its own GATEWAY_MQTT_PREFIX) on a dialplan with N agents
(``capacity: 1``, all in queue ``support``, ``ring_timeout_s: 5``), an inbound rule for the
DID +15555550100 and a trunk ``carrier`` whose inbound calls come from 127.0.0.2. Every
agent registers with digest MD5 (``sipp-scenarios/agent_register.xml``, one SIPp run each,
all from 127.0.0.1:UAS_PORT), so one SIPp uas on that port (``bench/scenarios/uas_rtd.xml``:
180, 200, ACK required, 1 s timewait) answers every call the queue offers to any agent.

Each step places ``rate * --step-seconds`` calls at ``rate`` calls/s from 127.0.0.2 with
``sipp-scenarios/uac_queued.xml`` to the DID, with ``-d 0``: the SHORTEST possible call
(ACK and BYE right after the 200), so that the N agents of capacity 1 are never the
bottleneck and the limit is the gateway. Longer calls lower the sustainable rate to about
N / call length. The queue offers each call to the longest-idle Available agent; the answer
flips that agent Busy and the BYE flips it back to Available, so every answered call
publishes two retained presence messages. Set-up time is SIPp's response time 1, from the
INVITE to its 200 (``-trace_rtt -rtt_freq 1``): queueing, dispatch, the offer to the agent
and its answer.

A step passes when every call succeeded on both SIPp sides and the set-up p99 is below
--p99-limit-ms (50); a variant stops at its first step that does not pass (and its
gateway is stopped). **Sustained** is a variant's highest passing rate. All gateways are
set up first; then each rate runs on every variant still going, in an order that rotates
from rate to rate, so that on a shared machine the figures compared are taken close
together.

For the subs variant each subscriber's count of live (not retained) presence messages is
compared with 2 x answered calls (after waiting up to 10 s for stragglers), and the delay
from the change's timestamp (the gateway's clock) to its arrival at subscriber 0 (the only
one that decodes the JSON) is the presence lag: it shows the gateway's publishing falling
behind as well as the subscribers' (bench/README.md). The gateway's, Mosquitto's and this
process's (the subscribers') CPU use is read from /proc over each step, with everything
else the machine did ("other"); gateway log lines (all at WARNING or above) are counted
and shown. The subscribers run on the same machine: 20 Python clients at QoS 1 need about
a core at 200 calls/s (8000 deliveries/s), which they take from the gateway.

Everything runs on loopback and is bounded: SIPp runs have -timeout and are killed after
it, the uac has -recv_timeout. Default: 3 to 5 minutes. Files (dialplans, SIPp statistics,
rtt CSVs, gateway and Mosquitto logs) stay under --workdir.

    .venv/bin/python bench/presence_bench.py [--rates 100,200,400,...] [--agents 20]
        [--subscribers 20] [--subscriber-qos 1] [--step-seconds 4]
        [--variants off,mqtt,subs] [--p99-limit-ms 50] [--json out.json] [--workdir DIR]
        [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

# run as `python bench/presence_bench.py`: the project root holds testkit/, the harness
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.ladder import (
    CpuMeter,
    LadderStep,
    fmt_ms,
    fmt_pct,
    judge,
    measure,
    parse_rates,
    render_table,
    sipp_evidence,
    sustained,
)
from testkit.processes import (
    PROJECT_ROOT,
    Child,
    GatewayProcess,
    code_revision,
    find_tool,
    free_port,
    load_average,
    start_gateway,
)
from testkit.sipp import Sipp, percentile

UAC_SCENARIO = PROJECT_ROOT / "sipp-scenarios" / "uac_queued.xml"
REGISTER_SCENARIO = PROJECT_ROOT / "sipp-scenarios" / "agent_register.xml"
UAS_SCENARIO = PROJECT_ROOT / "bench" / "scenarios" / "uas_rtd.xml"
HOST = "127.0.0.1"
CARRIER_HOST = "127.0.0.2"
DID = "+15555550100"
REALM = "bench"

#: uas timewait in uas_rtd.xml (s): the uas ends this long after its last call.
UAS_TIMEWAIT_S = 1.0
#: Pause between steps so that the previous step's retransmissions and timers settle.
SETTLE_S = 1.0
#: Longest wait, after a step, for the subscribers to receive what is still on its way.
DRAIN_MAX_S = 10.0
#: The subscribers are considered drained once nothing arrived for this long.
DRAIN_QUIET_S = 1.0
#: A presence lag p99 below this (ms) counts as keeping up.
LAG_OK_MS = 1000.0
#: "other CPU%" above this in a step: the shared machine was busy with someone else's work.
BUSY_OTHER_PCT = 25.0
#: After the last step, how long every agent's presence may take to read Available.
SETTLE_PRESENCE_S = 10.0
#: A call waiting longer than this for any message fails at the uac (ms).
RECV_TIMEOUT_MS = 5000
#: A SIPp run is killed this many seconds after its own -timeout.
HARD_MARGIN_S = 5.0
#: --quick: one short step at this rate on every variant, fewer agents and subscribers.
QUICK = {"rates": "100", "step_seconds": 2.0, "agents": 5, "subscribers": 2}

VARIANTS: dict[str, str] = {
    "off": "MQTT off",
    "mqtt": "MQTT on, no subscribers",
    "subs": "MQTT on, K subscribers",
}


# --------------------------------------------------------------------------- helpers


_ms, _pct = fmt_ms, fmt_pct


def _f1(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _f2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def log_level_of(line: str) -> str:
    """The ``level`` of a JSON log line ("?" for a line that is not one, e.g. a traceback)."""
    try:
        record = json.loads(line)
    except ValueError:
        return "?"
    return str(record.get("level", "?")) if isinstance(record, dict) else "?"


def log_event_of(line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return line[:80]
    return str(record.get("event", "?")) if isinstance(record, dict) else line[:80]


# --------------------------------------------------------------------------- mosquitto


class Mosquitto:
    """A Mosquitto broker on a free 127.0.0.1 port, for the whole run."""

    def __init__(self, workdir: Path) -> None:
        binary = find_tool("mosquitto")
        if binary is None:
            raise RuntimeError("mosquitto not found (apt-get install mosquitto)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "mosquitto.log"
        config = workdir / "mosquitto.conf"
        config.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n")
        self.child = Child([binary, "-c", str(config)], workdir, self.log)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if not self.child.running:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.child.stop(soft=signal.SIGTERM)
        raise RuntimeError(f"mosquitto did not listen on {HOST}:{self.port}")

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").splitlines()
        return []

    def stop(self) -> int:
        return self.child.stop(soft=signal.SIGTERM, grace=3.0)


# --------------------------------------------------------------------------- subscribers


class Counts:
    """What one subscriber received. Written by its paho thread only; read by main.

    Every subscriber counts; only the one with ``detailed`` decodes the JSON (lag and
    same-status repeats), so that the bench's own CPU use stays low."""

    def __init__(self, detailed: bool) -> None:
        self.detailed = detailed
        self.live = 0  # presence messages not flagged retained: changes as they happen
        self.busy = 0
        self.available = 0
        self.retained = 0  # retained values delivered on subscribing
        self.other = 0  # other topics (node status)
        self.repeats = 0  # a live presence with the same status as the agent's previous one
        self.lags_ms: list[float] = []
        self.last_arrival = 0.0
        self.last_status: dict[str, str] = {}

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        self.last_arrival = time.monotonic()
        if message.retain:
            self.retained += 1
            return
        if not message.topic.endswith("/presence"):
            self.other += 1
            return
        self.live += 1
        payload = message.payload
        # the gateway encodes with separators (",", ":"): the status field reads exactly so
        if b'"status":"Busy"' in payload:
            self.busy += 1
        elif b'"status":"Available"' in payload:
            self.available += 1
        if not self.detailed:
            return
        try:
            decoded = json.loads(payload)
            status = str(decoded["status"])
            agent = str(decoded["agent"])
            stamp = datetime.fromisoformat(str(decoded["timestamp"])).timestamp()
        except (ValueError, KeyError, TypeError):
            return
        if self.last_status.get(agent) == status:
            self.repeats += 1
        self.last_status[agent] = status
        self.lags_ms.append((arrived - stamp) * 1000.0)


@dataclass
class Snapshot:
    live: list[int]
    busy: list[int]
    available: list[int]
    repeats: list[int]
    lag_index: list[int]


class Subscribers:
    """K paho clients, each with its own network thread, subscribed to ``topic_filter``."""

    def __init__(
        self, port: int, topic_filter: str, count: int, qos: int, timeout: float = 10.0
    ) -> None:
        self.counts = [Counts(detailed=i == 0) for i in range(count)]
        self.clients: list[mqtt.Client] = []
        subscribed = threading.Semaphore(0)
        token = uuid.uuid4().hex[:8]

        def on_subscribe(*_: Any) -> None:
            subscribed.release()

        for index, counts in enumerate(self.counts):
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"presence-bench-{token}-{index}"
            )
            client.on_message = counts.on_message
            client.on_subscribe = on_subscribe
            client.connect(HOST, port)
            client.subscribe(topic_filter, qos=qos)
            client.loop_start()
            self.clients.append(client)
        deadline = time.monotonic() + timeout
        for _ in range(count):
            if not subscribed.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self.close()
                raise RuntimeError(f"{count} subscribers did not all get their SUBACK")

    def snapshot(self) -> Snapshot:
        return Snapshot(
            live=[c.live for c in self.counts],
            busy=[c.busy for c in self.counts],
            available=[c.available for c in self.counts],
            repeats=[c.repeats for c in self.counts],
            lag_index=[len(c.lags_ms) for c in self.counts],
        )

    def received_since(self, before: Snapshot) -> list[int]:
        return [c.live - n for c, n in zip(self.counts, before.live, strict=True)]

    def wait_drained(self, before: Snapshot, expected: int) -> float:
        """Wait until every subscriber has ``expected`` new messages, or nothing arrived for
        DRAIN_QUIET_S, or DRAIN_MAX_S; return seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < DRAIN_MAX_S:
            if min(self.received_since(before)) >= expected:
                break
            last = max(c.last_arrival for c in self.counts)
            if time.monotonic() - max(last, started) >= DRAIN_QUIET_S:
                break
            time.sleep(0.05)
        return time.monotonic() - started

    def lags_since(self, before: Snapshot) -> list[float]:
        lags: list[float] = []
        for counts, index in zip(self.counts, before.lag_index, strict=True):
            lags += counts.lags_ms[index:]
        return sorted(lags)

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_stop()
        self.clients = []


def settled_presence(
    port: int, prefix: str, agents: int, timeout: float = SETTLE_PRESENCE_S
) -> tuple[dict[str, str], float]:
    """The presence of every agent as a fresh subscriber sees it (retained values, then
    live changes), waiting up to ``timeout`` for all ``agents`` to be Available: after the
    last call every agent should be. Returns ({agent: status}, seconds waited)."""
    found: dict[str, str] = {}
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            payload = json.loads(message.payload)
            with lock:
                found[str(payload["agent"])] = str(payload["status"])

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"presence-bench-check-{uuid.uuid4().hex[:8]}"
    )
    client.on_message = on_message
    client.connect(HOST, port)
    client.subscribe(f"{prefix}/agents/+/presence", qos=1)
    client.loop_start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            with lock:
                available = sum(1 for status in found.values() if status == "Available")
            if available >= agents:
                break
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return dict(found), time.monotonic() - started


# --------------------------------------------------------------------------- gateway


def agent_ids(count: int) -> list[str]:
    return [f"agent{i:03d}" for i in range(1, count + 1)]


def password_of(agent: str) -> str:
    return f"{agent}-pw"


def dialplan_text(port: int, node: str, agents: list[str]) -> str:
    agent_lines = "".join(
        f"  {agent}:\n    password: {password_of(agent)}\n    capacity: 1\n    queues: [support]\n"
        for agent in agents
    )
    return (
        "version: 1\n"
        f"node: {{ name: {node} }}\n"
        "listen:\n"
        f"  - {{ transport: udp, host: {HOST}, port: {port} }}\n"
        "trunks:\n"
        "  carrier:\n"
        f"    gateways: [ {{ host: {CARRIER_HOST}, port: 5999 }} ]\n"
        f"    inbound_from: ['{CARRIER_HOST}']\n"
        f"registrar: {{ realm: {REALM}, algorithms: [MD5] }}\n"
        f"agents:\n{agent_lines}"
        "queues:\n"
        "  support:\n"
        "    ring_timeout_s: 5\n"
        "inbound:\n"
        f"  - {{ name: support-line, match: '^\\+15555550100$', queue: support }}\n"
    )


def start_bench_gateway(
    workdir: Path, node: str, agents: list[str], env: dict[str, str]
) -> GatewayProcess:
    """``python -m gateway run`` on a generated dialplan; ready once OPTIONS gets 200."""
    port = free_port()
    full_env = {
        "GATEWAY_STORE": "sqlite://:memory:",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **env,
    }
    text = dialplan_text(port, node, agents)
    return start_gateway(text, workdir, listen_port=port, env=full_env, ready_timeout=15.0)


def register_agents(
    sipp: str, gateway: GatewayProcess, agents: list[str], uas_port: int, directory: Path
) -> list[str]:
    """REGISTER every agent from 127.0.0.1:uas_port, one SIPp run each; the failures."""
    runs = Sipp(directory, binary=sipp, host=HOST)
    failures: list[str] = []
    for agent in agents:
        result = runs.uac(
            REGISTER_SCENARIO,
            gateway.address,
            1,
            service=agent,
            local_port=uas_port,
            timeout=10.0,
            trace_messages=False,
            extra=["-au", agent, "-ap", password_of(agent), "-key", "expires", "3600"],
        )
        if result.returncode != 0:
            failures.append(f"{agent} (sipp exit {result.returncode})")
    return failures


# --------------------------------------------------------------------------- one step


@dataclass(kw_only=True)
class Step(LadderStep):
    variant: str
    mosquitto_cpu_pct: float | None = None
    bench_cpu_pct: float | None = None
    gateway_log_events: dict[str, int] = field(default_factory=dict)
    mosquitto_log_lines: int = 0
    expected_per_subscriber: int | None = None
    received_min: int | None = None
    received_max: int | None = None
    busy_min: int | None = None
    available_min: int | None = None
    repeats: int | None = None
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_max_ms: float | None = None
    drain_s: float | None = None


@dataclass
class Context:
    """What the steps of one variant share."""

    variant: str
    sipp: str
    gateway: GatewayProcess
    uas_port: int
    mosquitto: Mosquitto | None
    subscribers: Subscribers | None
    args: argparse.Namespace


def run_step(ctx: Context, rate: int, directory: Path) -> Step:
    args = ctx.args
    directory.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * args.step_seconds))
    step = Step(variant=ctx.variant, rate=rate, calls=calls, directory=str(directory))
    uac_timeout = args.step_seconds + 20.0

    phones = Sipp(directory, binary=ctx.sipp, host=HOST)
    carrier = Sipp(directory, binary=ctx.sipp, host=CARRIER_HOST)
    uas = phones.uas(
        UAS_SCENARIO,
        ctx.uas_port,
        calls=calls,
        timeout=uac_timeout + 10.0,
        max_recv_loops=1000,
        trace_messages=False,
    )
    log_before = len(ctx.gateway.log_lines())
    mq_log_before = len(ctx.mosquitto.log_lines()) if ctx.mosquitto is not None else 0
    before = ctx.subscribers.snapshot() if ctx.subscribers is not None else None
    meter = CpuMeter(
        {
            "gateway": ctx.gateway.pid,
            "mosquitto": ctx.mosquitto.child.pid if ctx.mosquitto is not None else None,
        }
    )
    uac = carrier.start_uac(
        UAC_SCENARIO,
        ctx.gateway.address,
        calls,
        rate,
        service=DID,
        local_port=free_port(host=CARRIER_HOST),
        timeout=uac_timeout,
        call_length=0.0,
        recv_timeout=RECV_TIMEOUT_MS / 1000.0,
        max_recv_loops=1000,
        trace_messages=False,
        extra=["-trace_rtt", "-rtt_freq", "1"],
    )
    uac.wait(uac_timeout + HARD_MARGIN_S)
    meter.stop()
    # the uas ends by itself one timewait after its last call; stop it if calls are missing
    uas.wait(UAS_TIMEWAIT_S + 3.0)
    measure(
        step,
        uac,
        uas,
        meter,
        gateway=ctx.gateway,
        also_ours=(meter.seconds("mosquitto"), meter.self_seconds),
    )
    wall = uac.elapsed
    if wall > 0:
        step.mosquitto_cpu_pct = (
            None
            if meter.seconds("mosquitto") is None
            else round(100.0 * (meter.seconds("mosquitto") or 0.0) / wall, 1)
        )
        step.bench_cpu_pct = round(100.0 * meter.self_seconds / wall, 1)

    if ctx.subscribers is not None and before is not None:
        # every answered call: Busy, then Available
        expected = 2 * step.uas_successful
        step.drain_s = round(ctx.subscribers.wait_drained(before, expected), 2)
        received = ctx.subscribers.received_since(before)
        after = ctx.subscribers.snapshot()
        step.expected_per_subscriber = expected
        step.received_min, step.received_max = min(received), max(received)
        step.busy_min = min(a - b for a, b in zip(after.busy, before.busy, strict=True))
        step.available_min = min(
            a - b for a, b in zip(after.available, before.available, strict=True)
        )
        step.repeats = sum(a - b for a, b in zip(after.repeats, before.repeats, strict=True))
        lags = ctx.subscribers.lags_since(before)
        step.lag_p50_ms = None if not lags else round(percentile(lags, 50) or 0.0, 1)
        step.lag_p99_ms = None if not lags else round(percentile(lags, 99) or 0.0, 1)
        step.lag_max_ms = round(lags[-1], 1) if lags else None

    new_lines = ctx.gateway.log_lines()[log_before:]
    step.gateway_log_lines = len(new_lines)
    for line in new_lines:
        key = f"{log_level_of(line)}:{log_event_of(line)}"
        step.gateway_log_events[key] = step.gateway_log_events.get(key, 0) + 1
    if ctx.mosquitto is not None:
        step.mosquitto_log_lines = len(ctx.mosquitto.log_lines()) - mq_log_before

    judge(step, args.p99_limit_ms, uac, ctx.gateway)
    return step


# --------------------------------------------------------------------------- variants


def diagnose(step: Step, ctx: Context) -> str:
    """Evidence for a step that did not pass: slow set-ups, SIPp screens and errors, the
    gateway's and Mosquitto's log lines."""
    parts = [
        f"--- {step.variant} @ {step.rate} cps did not pass: {'; '.join(step.reasons)}",
        f"    files: {step.directory}",
        *sipp_evidence(step, ctx.args.p99_limit_ms / 2, bursts=12, errors=8),
    ]
    lines = ctx.gateway.log_lines()
    parts.append(f"--- gateway log: {len(lines)} lines in this variant (last 10)")
    parts += [line[:300] for line in lines[-10:]]
    return "\n".join(parts)


class VariantRun:
    """One variant: its gateway, registered agents, subscribers (subs) and steps."""

    def __init__(
        self, variant: str, args: argparse.Namespace, workdir: Path, mosquitto: Mosquitto | None
    ) -> None:
        self.variant = variant
        self.args = args
        self.mosquitto = mosquitto
        self.directory = workdir / variant
        self.agents = agent_ids(args.agents)
        self.prefix = f"presence-bench-{variant}-{secrets.token_hex(4)}"
        self.gateway: GatewayProcess | None = None
        self.subscribers: Subscribers | None = None
        self.ctx: Context | None = None
        self.steps: list[Step] = []
        self.active = False
        self.finished = False
        self.result: dict[str, Any] = {
            "variant": variant,
            "label": VARIANTS[variant],
            "subscribers": args.subscribers if variant == "subs" else 0,
            "subscriber_qos": args.subscriber_qos if variant == "subs" else None,
            "prefix": self.prefix,
            "steps": [],
            "sustained_cps": 0,
            "sustained_p99_ms": None,
            "limit_reached": False,
            "problems": [],
            "diagnosis": "",
            "retained_final": None,
            "directory": str(self.directory),
        }

    def start(self) -> None:
        """Fresh gateway, every agent registered, the subscribers attached."""
        args, variant = self.args, self.variant
        env = {
            "GATEWAY_MQTT_URL": "off" if self.mosquitto is None else self.mosquitto.url,
            "GATEWAY_MQTT_PREFIX": self.prefix,
        }
        try:
            self.gateway = start_bench_gateway(self.directory, f"pb-{variant}", self.agents, env)
            self.result["gateway_env"] = self.gateway.env
            uas_port = free_port()
            started = time.monotonic()
            failures = register_agents(
                args.sipp, self.gateway, self.agents, uas_port, self.directory / "register"
            )
            print(
                f"  [{variant}] gateway up on {self.gateway.address}; "
                f"{len(self.agents) - len(failures)}/{len(self.agents)} agents registered "
                f"in {time.monotonic() - started:.1f} s",
                flush=True,
            )
            if failures:
                raise RuntimeError("registration failed: " + ", ".join(failures))
            if variant == "subs" and self.mosquitto is not None and args.subscribers > 0:
                self.subscribers = Subscribers(
                    self.mosquitto.port, f"{self.prefix}/#", args.subscribers, args.subscriber_qos
                )
                print(
                    f"  [{variant}] {args.subscribers} subscribers on {self.prefix}/# "
                    f"(QoS {args.subscriber_qos})",
                    flush=True,
                )
            self.ctx = Context(
                variant, args.sipp, self.gateway, uas_port, self.mosquitto, self.subscribers, args
            )
            self.active = True
        except RuntimeError as exc:
            self.result["problems"].append(str(exc))
            print(f"  [{variant}] {exc}", flush=True)
            self.finish()

    def step(self, rate: int) -> None:
        """One step; the variant ends at its first step that does not pass."""
        if not self.active or self.ctx is None:
            return
        try:
            step = run_step(self.ctx, rate, self.directory / f"{rate:05d}cps")
        except RuntimeError as exc:
            self.result["problems"].append(str(exc))
            print(f"  [{self.variant}] {exc}", flush=True)
            self.finish()
            return
        self.steps.append(step)
        print(format_progress(step), flush=True)
        if not step.passed:
            self.result["diagnosis"] = diagnose(step, self.ctx)
            self.result["limit_reached"] = True
            self.finish()

    def finish(self) -> None:
        """Check that every agent reads Available on MQTT, then stop everything."""
        if self.finished:
            return
        self.finished, self.active = True, False
        gateway = self.gateway
        if self.mosquitto is not None and gateway is not None and gateway.running:
            final, waited = settled_presence(self.mosquitto.port, self.prefix, len(self.agents))
            self.result["retained_final"] = final
            self.result["retained_final_wait_s"] = round(waited, 2)
        if self.subscribers is not None:
            self.subscribers.close()
        if gateway is not None:
            if not gateway.running:
                self.result["problems"].append(
                    f"the gateway exited by itself with code {gateway.popen.returncode}"
                    + (
                        " (a clean shutdown, i.e. it got SIGTERM or SIGINT, which this "
                        "bench had not sent)"
                        if gateway.popen.returncode == 0
                        else ""
                    )
                )
            self.result["gateway_exit"] = gateway.stop()
            lines = gateway.log_lines()
            self.result["gateway_log_lines"] = len(lines)
            self.result["gateway_log_tail"] = [line[:300] for line in lines[-5:]]
        best = sustained(self.steps)
        self.result["steps"] = [asdict(s) for s in self.steps]
        self.result["sustained_cps"] = best.rate if best else 0
        self.result["sustained_p99_ms"] = best.p99_ms if best else None


def run_variants(
    variants: list[str],
    rates: list[int],
    args: argparse.Namespace,
    workdir: Path,
    mosquitto: Mosquitto | None,
) -> list[dict[str, Any]]:
    """Every variant's set-up first, then rate by rate each variant still passing, in an
    order that rotates from one rate to the next: on a shared machine, the variants'
    figures for one rate are taken minutes apart at most, and none is always first."""
    runs = [VariantRun(v, args, workdir, None if v == "off" else mosquitto) for v in variants]
    try:
        for run in runs:
            run.start()
        for index, rate in enumerate(rates):
            active = [run for run in runs if run.active]
            if not active:
                break
            shift = index % len(active)
            for run in active[shift:] + active[:shift]:
                run.step(rate)
                time.sleep(SETTLE_S)
    finally:
        for run in runs:
            run.finish()
    return [run.result for run in runs]


# --------------------------------------------------------------------------- output


def format_progress(step: Step) -> str:
    verdict = "ok" if step.passed else "FAIL: " + "; ".join(step.reasons)
    mqtt_part = ""
    if step.expected_per_subscriber is not None:
        mqtt_part = (
            f", msgs/sub {step.received_min}..{step.received_max}"
            f"/{step.expected_per_subscriber}, lag p99 {_ms(step.lag_p99_ms)} ms"
        )
    return (
        f"  [{step.variant}] {step.rate} cps: {step.successful}/{step.calls} ok, "
        f"p50/p99 {_ms(step.p50_ms)}/{_ms(step.p99_ms)} ms, gw CPU {_pct(step.gateway_cpu_pct)}%"
        f"{mqtt_part}, gw log {step.gateway_log_lines} lines, {verdict}"
    )


# fmt: off
HEADER = ("rate", "achieved", "ok", "failed", "uas-fail", "retrans", "p50", "p99", "max",
          "gw CPU%", "gw ms/call", "mosq CPU%", "bench CPU%", "other CPU%",
          "msgs/sub", "expected", "lag p50", "lag p99", "drain s", "gw log", "verdict")
# fmt: on


def table(result: dict[str, Any]) -> str:
    """One row per step; columns with nothing to show for this variant are left out."""
    rows: list[tuple[str, ...]] = [HEADER]
    for s in result["steps"]:
        if s["received_min"] is None:
            received = "-"
        elif s["received_min"] == s["received_max"]:
            received = str(s["received_min"])
        else:
            received = f"{s['received_min']}..{s['received_max']}"
        expected = (
            "-" if s["expected_per_subscriber"] is None else str(s["expected_per_subscriber"])
        )
        # fmt: off
        rows.append((
            str(s["rate"]), f"{s['achieved_cps']:.1f}", str(s["successful"]), str(s["failed"]),
            str(s["uas_failed"]), str(s["retransmissions"]),
            _ms(s["p50_ms"]), _ms(s["p99_ms"]), _ms(s["max_ms"]),
            _pct(s["gateway_cpu_pct"]), _f2(s["gateway_cpu_ms_per_call"]),
            _pct(s["mosquitto_cpu_pct"]), _pct(s["bench_cpu_pct"]), _pct(s["other_cpu_pct"]),
            received, expected, _f1(s["lag_p50_ms"]), _f1(s["lag_p99_ms"]), _f1(s["drain_s"]),
            str(s["gateway_log_lines"]), "ok" if s["passed"] else "FAIL",
        ))
        # fmt: on
    return render_table(rows, drop_empty=True)


def delivery_summary(steps: list[dict[str, Any]]) -> list[str]:
    """What the subscribers got against 2 messages per answered call, and why not."""
    lines: list[str] = []
    exact, mismatched = [], []
    for s in steps:
        if s["received_min"] is None:
            continue
        expected = s["expected_per_subscriber"]
        if s["received_min"] == expected == s["received_max"]:
            exact.append(str(s["rate"]))
            continue
        text = f"{s['rate']} cps: {s['received_min']}..{s['received_max']} of {expected}"
        if not s["passed"]:
            # calls that failed may still have been answered by an agent (2 messages) or
            # not: the expected count is only approximate
            text += " (step failed: expected count approximate)"
        elif s["received_min"] < expected:
            text += f" ({100.0 * (expected - s['received_min']) / max(expected, 1):.0f}% short"
            if s["drain_s"] is not None and s["drain_s"] >= DRAIN_MAX_S - 0.1:
                text += f", still arriving after {DRAIN_MAX_S:g} s"
            text += ")"
        mismatched.append(text)
    repeats = sum(s["repeats"] or 0 for s in steps)
    if exact:
        lines.append(
            f"presence delivery: every subscriber got exactly 2 messages per answered call "
            f"at {','.join(exact)} cps"
        )
    if mismatched:
        dropped_by_gateway = any(
            "mqtt_buffer_full" in key for s in steps for key in s["gateway_log_events"]
        )
        where = (
            "the gateway dropped events (mqtt_buffer_full_dropping_oldest)"
            if dropped_by_gateway
            else "no drop logged by the gateway: lost or late between Mosquitto and the subscribers"
        )
        lines.append("presence delivery MISMATCH: " + "; ".join(mismatched) + f"; {where}")
    kept_up = [
        s["rate"]
        for s in steps
        if s["passed"] and s["lag_p99_ms"] is not None and s["lag_p99_ms"] < LAG_OK_MS
    ]
    behind = [
        s
        for s in steps
        if s["passed"] and s["lag_p99_ms"] is not None and s["lag_p99_ms"] >= LAG_OK_MS
    ]
    if steps and steps[0]["lag_p99_ms"] is not None:
        lines.append(
            f"presence kept up (lag p99 < {LAG_OK_MS:g} ms at subscriber 0) at: "
            f"{','.join(map(str, kept_up)) or 'no rate'} cps"
        )
    quiet_behind = [s for s in behind if (s["bench_cpu_pct"] or 0.0) < 90.0]
    if quiet_behind:
        lines.append(
            "presence fell behind at "
            + ", ".join(
                f"{s['rate']} cps (lag p99 {s['lag_p99_ms']:.0f} ms, still arriving "
                f"{s['drain_s']:.1f} s after the step)"
                for s in quiet_behind
            )
            + " with the subscribers not CPU-bound: the backlog is on the publishing side"
        )
    busy = [s for s in steps if (s["bench_cpu_pct"] or 0.0) >= 90.0]
    if busy:
        lines.append(
            "subscribers CPU-bound (this process >= 90% of a core at "
            f"{','.join(str(s['rate']) for s in busy)} cps): their lag and losses are the "
            "bench's own Python clients falling behind, and they take CPU from the gateway"
        )
    lines.append(f"same-status repeats seen by subscriber 0 (duplicates/reordering): {repeats}")
    return lines


def summary(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    by_name = {r["variant"]: r for r in results}
    for r in results:
        label = r["label"].replace("K", str(r["subscribers"]))
        text = f"{r['variant']:>4} ({label}): sustained {r['sustained_cps']} calls/s"
        text += f" (p99 set-up {_ms(r['sustained_p99_ms'])} ms)"
        if r["steps"] and not r["limit_reached"]:
            text += f" - limit not reached (highest rate tried: {args.top_rate})"
        if r["problems"]:
            text += " - " + "; ".join(r["problems"])
        lines.append(text)
    base = by_name.get("off")
    for name in ("mqtt", "subs"):
        other = by_name.get(name)
        if base is None or other is None:
            continue
        if base["sustained_cps"]:
            ratio = other["sustained_cps"] / base["sustained_cps"]
            if not base["limit_reached"] and not other["limit_reached"]:
                bound = " (neither reached its limit)"
            elif not base["limit_reached"]:
                bound = " (an upper bound: off did not reach its limit)"
            elif not other["limit_reached"]:
                bound = f" (a lower bound: {name} did not reach its limit)"
            else:
                bound = ""
            lines.append(f"ratio sustained {name} / off: {ratio:.2f}{bound}")
        else:
            lines.append(f"ratio sustained {name} / off: n/a (off sustained no step)")
    # CPU per call at the rates every variant passed: the finer measure of the cost
    passed_by_rate: dict[int, dict[str, float]] = {}
    for r in results:
        for s in r["steps"]:
            if s["passed"] and s["gateway_cpu_ms_per_call"] is not None:
                passed_by_rate.setdefault(s["rate"], {})[r["variant"]] = s[
                    "gateway_cpu_ms_per_call"
                ]
    common = [rate for rate, v in sorted(passed_by_rate.items()) if len(v) == len(results)]
    if common and len(results) > 1:
        means = {
            r["variant"]: sum(passed_by_rate[rate][r["variant"]] for rate in common) / len(common)
            for r in results
        }
        text = ", ".join(f"{name} {value:.3f}" for name, value in means.items())
        lines.append(f"gateway CPU ms per call, mean over the rates all passed ({common}): {text}")
        if "off" in means and means["off"] > 0:
            ratios = ", ".join(
                f"{name}/off {value / means['off']:.2f}"
                for name, value in means.items()
                if name != "off"
            )
            lines.append(f"gateway CPU per call ratios: {ratios}")
    subs = by_name.get("subs")
    if subs is not None and any(s["received_min"] is not None for s in subs["steps"]):
        lines += delivery_summary(subs["steps"])
    for r in results:
        final = r.get("retained_final")
        if final is None:
            continue
        waited = r.get("retained_final_wait_s", 0.0)
        others = sorted(
            f"{agent}={status}" for agent, status in final.items() if status != "Available"
        )
        if len(final) == args.agents and not others:
            lines.append(
                f"{r['variant']}: after the last step every agent read Available on MQTT "
                f"(within {waited:.1f} s)"
            )
        else:
            note = (
                " (the last step overloaded the gateway, which then works through its "
                "backlog for seconds)"
                if r["limit_reached"]
                else ""
            )
            lines.append(
                f"{r['variant']}: after the last step + {waited:.0f} s, MQTT presence of "
                f"{len(final)}/{args.agents} agents, not Available: {', '.join(others) or '-'}"
                + note
            )
    busy = [
        f"{r['variant']}@{s['rate']} ({s['other_cpu_pct']:.0f}%)"
        for r in results
        for s in r["steps"]
        if (s["other_cpu_pct"] or 0.0) > BUSY_OTHER_PCT
    ]
    if busy:
        lines.append(
            f"the machine was busy with other work (other CPU% > {BUSY_OTHER_PCT:g}) at: "
            f"{', '.join(busy)}: those steps are not comparable, run again on a quiet machine"
        )
    for r in results:
        noisy: dict[str, int] = {}
        for s in r["steps"]:
            for key, count in s["gateway_log_events"].items():
                noisy[key] = noisy.get(key, 0) + count
        if noisy:
            lines.append(f"{r['variant']}: gateway log lines during steps: {noisy}")
        if r.get("gateway_exit") not in (0, None):
            lines.append(f"{r['variant']}: gateway exit code {r['gateway_exit']}")
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--rates",
        default="100,200,400,600,800,1000,1200",
        help="comma-separated rates, calls/s (100,200,400,600,800,1000,1200)",
    )
    parser.add_argument("--agents", type=int, default=20, help="agents, capacity 1 each (20)")
    parser.add_argument(
        "--subscribers", type=int, default=20, help="MQTT subscribers in the subs variant (20)"
    )
    parser.add_argument(
        "--subscriber-qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="QoS the subscribers ask for: 1 as desktops do (docs/mqtt.md), or 0 (default 1)",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=4.0, help="rate * this many calls per step (4)"
    )
    parser.add_argument(
        "--variants", default="off,mqtt,subs", help="which variants, in order (off,mqtt,subs)"
    )
    parser.add_argument(
        "--p99-limit-ms", type=float, default=50.0, help="a step passes with p99 below (50)"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--workdir", type=Path, help="run files (default: new dir in /tmp)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run that proves the bench works: rate 100 for 2 s, 5 agents, "
        "2 subscribers (overrides those options)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)

    sipp = find_tool("sipp")
    if sipp is None:
        parser.error("sipp not found (apt-get install sip-tester)")
    args.sipp = sipp
    try:
        rates = parse_rates(args.rates)
    except ValueError:
        parser.error("--rates takes comma-separated positive integers")
    if args.agents < 1 or args.subscribers < 0 or args.step_seconds <= 0:
        parser.error("--agents >= 1, --subscribers >= 0, --step-seconds > 0")
    args.top_rate = rates[-1]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants takes some of {','.join(VARIANTS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="presence_bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((CARRIER_HOST, 0))
    except OSError as exc:
        parser.error(f"cannot bind {CARRIER_HOST} (the carrier's address): {exc}")

    started = time.monotonic()
    revision = code_revision()
    print(
        f"presence bench: gateway code {revision}; {args.agents} agents (capacity 1), "
        f"{args.subscribers} subscribers in 'subs'; queued calls to {DID} with no pause "
        f"(-d 0, the shortest call); {args.step_seconds:g} s per step, rates "
        f"{','.join(map(str, rates))} calls/s; pass = 0 failed and set-up p99 < "
        f"{args.p99_limit_ms:g} ms; {os.cpu_count()} CPUs; load average {load_average()}; "
        f"files in {workdir}",
        flush=True,
    )
    mosquitto: Mosquitto | None = None
    results: list[dict[str, Any]] = []
    try:
        if any(v != "off" for v in variants):
            mosquitto = Mosquitto(workdir / "mosquitto")
            print(f"mosquitto on {mosquitto.url}", flush=True)
        results = run_variants(variants, rates, args, workdir, mosquitto)
    finally:
        if mosquitto is not None:
            mosquitto.stop()
        for child in Child.started_children:  # only on an error or Ctrl-C
            if child.running:
                child.stop(soft=signal.SIGTERM, grace=2.0)

    print()
    for r in results:
        label = r["label"].replace("K", str(r["subscribers"]))
        print(f"{r['variant']}: {label}; set-up times in ms (SIPp response time 1)")
        print(table(r))
        print()
    for r in results:
        if r["diagnosis"]:
            print(r["diagnosis"])
            print()
    lines = summary(results, args)
    for line in lines:
        print(line)
    elapsed = time.monotonic() - started
    print(f"(run took {elapsed:.0f} s; load average now {load_average()}; files in {workdir})")

    if args.json is not None:
        payload = {
            "code": revision,
            "agents": args.agents,
            "subscribers": args.subscribers,
            "step_seconds": args.step_seconds,
            "p99_limit_ms": args.p99_limit_ms,
            "rates": rates,
            "cpus": os.cpu_count(),
            "variants": results,
            "summary": lines,
            "elapsed_s": round(elapsed, 1),
            "workdir": str(workdir),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
