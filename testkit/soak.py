"""The soak (issue 13): mutated SIP at a running gateway while SIPp places real calls.

Theory of operation
    One gateway (UDP and TCP on one port, logs at WARNING) routes ``5551234`` and ``911``
    to a SIPp carrier (``uas_basic.xml``) and nothing else. Beside it, SIPp places
    ordinary calls (``-s 5551234``) and 911 calls from the open network of a US site
    (so 911 is that site's emergency call, direct routing to the carrier), at a low
    steady rate for as long as the fuzzing lasts. Meanwhile ``testkit.fuzz`` throws
    ``messages`` mutated messages at the gateway, ``tcp_share`` of them over TCP and the
    rest over UDP, paced at ``rate`` per second (0: as fast as the sender goes).

    With ``call_transport="tcp"`` SIPp's calls and the trunk use TCP, so that the UDP
    flood (some 20 MB/s of mostly large datagrams at 4,000/s) does not overflow the
    socket buffer their datagrams share: a flood limit is the transport's work (SPEC O-6),
    not what the soak measures.

    Reported (:class:`SoakResult`): messages sent per transport and the rate achieved;
    whether the gateway still runs (a crash is an exit); escaped exceptions (log lines with
    a traceback, or an ``exception`` field: a handler that failed); the gateway's RSS
    before the fuzzing (after its first calls), right after, and ``settle_s`` later; and
    the SIPp calls placed, completed and failed on both ends. ``passed`` is the pass rule:
    no crash, no escaped exception, every SIPp call completed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from testkit.fuzz import Mutator, TcpSender, UdpSender, load_corpus
from testkit.processes import LOOPBACK, GatewayProcess, free_port, require_tool, start_gateway
from testkit.sipp import Sipp, SippProcess, SippTransport

ORDINARY = "5551234"
EMERGENCY = "911"

DIALPLAN = """\
version: 1
node: {{ name: soak }}
listen:
  - {{ transport: udp, host: {host}, port: {port} }}
  - {{ transport: tcp, host: {host}, port: {port} }}
trunks:
  carrier: {{ gateways: [ {{ host: {host}, port: {carrier}, transport: {call_transport} }} ] }}
registrar: {{ unauthenticated_outbound_from: ['127.0.0.0/8'] }}
sites:
  hq:
    networks: ['127.0.0.0/8']
    location: {{ street: Main St, city: Springfield, state: IL, postcode: '62701', country: US }}
    callback_number: '+15555550180'
outbound:
  - {{ name: service, match: '^{ordinary}$', trunk: carrier }}
emergency:
  direct_routing: [ {{ name: sbc-911, match: '^911$', trunk: carrier }} ]
# the soak measures robustness, not the overload policy (bench/overload_bench.py): on a
# loaded shared box the loop-lag signal would shed ordinary calls with 503 (SPEC O-4)
overload: {{ max_loop_lag_ms: 0 }}
"""


@dataclass
class SoakResult:
    messages_udp: int
    #: TCP messages attempted (written whole, or refused by a connection the gateway shut)
    messages_tcp: int
    seconds: float
    rate: float
    gateway_running: bool
    escaped_exceptions: int
    exception_samples: list[str]
    rss_before_kib: int
    rss_after_kib: int
    #: RSS once ``settle_s`` passed after the fuzzing (finished transactions gone, 64*T1)
    rss_settled_kib: int
    #: RSS every 100,000 messages: a plateau, not a slope, is bounded memory
    rss_during_kib: list[int]
    calls_placed: int
    calls_completed: int
    calls_failed: int
    carrier_completed: int
    tcp_reconnects: int
    #: TCP messages not written whole: the gateway had closed that connection
    tcp_refused: int

    @property
    def passed(self) -> bool:
        return (
            self.gateway_running
            and self.escaped_exceptions == 0
            and self.calls_failed == 0
            and self.calls_completed == self.calls_placed
            and self.carrier_completed == self.calls_placed
        )

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2)


def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` in KiB (/proc/PID/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def escaped_exceptions(log_text: str) -> list[str]:
    """Log lines that show an exception escaping a handler (tracebacks, ``exception``)."""
    found = []
    for line in log_text.splitlines():
        if "Traceback" in line:
            found.append(line)
            continue
        if line.startswith("{") and '"exception"' in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "exception" in record:
                found.append(line)
    return found


def _fuzz(
    gw: GatewayProcess,
    messages: int,
    rate: float,
    tcp_share: float,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[UdpSender, TcpSender, float]:
    """Send ``messages`` mutated messages, paced at ``rate``/s (0: unpaced); ``progress``
    hears the count every 100,000."""
    mutator = Mutator(load_corpus(), seed)
    udp, tcp = UdpSender(LOOPBACK, gw.listen_port), TcpSender(LOOPBACK, gw.listen_port)
    every_tcp = max(1, round(1 / tcp_share)) if tcp_share > 0 else 0
    start = time.monotonic()
    try:
        for index in range(messages):
            data = mutator.next()
            if every_tcp and index % every_tcp == 0:
                tcp.send(data)
            else:
                udp.send(data)
            if progress is not None and index and index % 100_000 == 0:
                progress(index)
            if rate > 0 and index % 64 == 0:
                ahead = start + index / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        udp.close()
        tcp.close()
    return udp, tcp, time.monotonic() - start


def call_counts(seconds: float, call_rate: float) -> tuple[int, int]:
    """(ordinary, emergency) calls for about ``seconds`` at ``call_rate`` (2/3, 1/3)."""
    return max(2, math.ceil(seconds * call_rate * 2 / 3)), max(
        1, math.ceil(seconds * call_rate / 3)
    )


def _callers(
    sipp: Sipp,
    gw: GatewayProcess,
    counts: tuple[int, int],
    call_rate: float,
    timeout: float,
    transport: SippTransport,
) -> list[SippProcess]:
    """The ordinary and the 911 callers, started in the background."""
    return [
        sipp.start_uac(
            "uac_basic.xml",
            gw.address,
            count,
            max(call_rate * share, 0.5),
            service=number,
            timeout=timeout,
            trace_messages=False,
            transport=transport,
        )
        for number, count, share in (
            (ORDINARY, counts[0], 2 / 3),
            (EMERGENCY, counts[1], 1 / 3),
        )
    ]


def run_soak(
    workdir: Path,
    *,
    messages: int,
    rate: float = 0.0,
    tcp_share: float = 0.25,
    call_rate: float = 3.0,
    expected_seconds: float | None = None,
    seed: int = 4475,
    log_level: str = "WARNING",
    call_transport: str = "udp",
    progress: Callable[[int], None] | None = None,
    settle_s: float = 0.0,
) -> SoakResult:
    """Run one soak (this module's docstring) and return its figures."""
    sipp = Sipp(workdir / "sipp", binary=require_tool("sipp"))
    seconds = expected_seconds or (messages / rate if rate > 0 else 10.0)
    counts = call_counts(seconds, call_rate)
    placed = sum(counts)
    sipp_transport: SippTransport = "t1" if call_transport == "tcp" else "u1"
    carrier = sipp.uas(
        "uas_basic.xml",
        calls=placed,
        timeout=2 * seconds + 180,
        trace_messages=False,
        transport=sipp_transport,
    )
    port = free_port()
    text = DIALPLAN.format(
        host=LOOPBACK,
        port=port,
        carrier=carrier.port,
        ordinary=ORDINARY,
        call_transport=call_transport,
    )
    try:
        gw = start_gateway(
            text,
            workdir / "gateway",
            listen_port=port,
            env={"GATEWAY_MQTT_URL": "off", "GATEWAY_LOG_LEVEL": log_level},
            ready_timeout=30.0,  # a loaded shared box starts it slowly
        )
    except BaseException:
        sipp.close()
        raise
    try:
        callers = _callers(sipp, gw, counts, call_rate, 2 * seconds + 120, sipp_transport)
        time.sleep(1.0)  # the first calls are up: the gateway's working size
        rss_before = rss_kib(gw.pid)
        during: list[int] = []

        def sample(count: int) -> None:
            during.append(rss_kib(gw.pid))
            if progress is not None:
                progress(count)

        udp, tcp, elapsed = _fuzz(gw, messages, rate, tcp_share, seed, sample)
        results = [caller.wait(timeout=2 * seconds + 150) for caller in callers]
        carrier_result = carrier.wait(timeout=30)
        running = gw.running
        rss_after = rss_kib(gw.pid) if running else 0
        time.sleep(settle_s)
        running = gw.running
        rss_settled = rss_kib(gw.pid) if running else 0
        escaped = escaped_exceptions(gw.log_text())
    finally:
        gw.stop()
        sipp.close()
    return SoakResult(
        messages_udp=udp.sent,
        messages_tcp=tcp.sent + tcp.errors,
        seconds=round(elapsed, 1),
        rate=round((udp.sent + tcp.sent) / elapsed) if elapsed > 0 else 0,
        gateway_running=running,
        escaped_exceptions=len(escaped),
        exception_samples=[line[:400] for line in escaped[:5]],
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        rss_settled_kib=rss_settled,
        rss_during_kib=during,
        calls_placed=placed,
        calls_completed=sum(r.successful_calls for r in results),
        calls_failed=sum(r.failed_calls for r in results),
        carrier_completed=carrier_result.successful_calls,
        tcp_reconnects=tcp.reconnects,
        tcp_refused=tcp.errors,
    )
