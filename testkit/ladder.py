"""The benchmarks' rising-rate ladder: one step's figures, CPU over a step, the pass rule.

Theory of operation
    A benchmark drives a set-up (the gateway between two SIPp, or SIPp alone) through
    rising call rates. Each step is one SIPp uas started first and one SIPp uac placing
    ``rate * step_seconds`` calls at ``rate`` calls/s (``-trace_rtt``: every call's
    set-up time). Around the uac, ``CpuMeter`` reads the CPU time of the processes
    watched (the gateway, a broker), of this process and of the whole machine; the two
    SIPp report theirs when reaped. ``measure`` turns the SIPp statistics, rtt samples
    and CPU readings into a ``LadderStep``; ``judge`` applies the pass rule: every call
    succeeded on both sides, nothing was killed, the gateway still runs and the set-up
    p99 is below the limit. A set-up's *sustained* rate is its highest passing step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testkit.processes import CLK_TCK, GatewayProcess, busy_ticks, cpu_ticks, rss_mb
from testkit.sipp import (
    SippProcess,
    head_lines,
    percentile,
    read_rtt,
    read_stats,
    scenario_screen,
    stat_int,
)


@dataclass(kw_only=True)
class LadderStep:
    """The figures of one step, as every ladder benchmark reports them (JSON: asdict)."""

    rate: int
    calls: int
    achieved_cps: float = 0.0
    successful: int = 0
    failed: int = 0
    uas_successful: int = 0
    uas_failed: int = 0
    retransmissions: int = 0
    uac_timeouts: int = 0
    unexpected: int = 0
    dead_call_msgs: int = 0
    out_of_call_msgs: int = 0
    samples: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    wall_s: float = 0.0
    gateway_cpu_pct: float | None = None
    gateway_cpu_ms_per_call: float | None = None
    gateway_rss_mb: float | None = None
    gateway_log_lines: int = 0
    uac_cpu_pct: float | None = None
    uas_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    uac_exit: int | None = None
    uas_exit: int | None = None
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    directory: str = ""
    uac_directory: str = ""
    uas_directory: str = ""


class CpuMeter:
    """CPU seconds used over a window by some processes, by this one, by the machine."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._pids = dict(pids)
        self._before = {name: cpu_ticks(pid) for name, pid in self._pids.items() if pid}
        self._after: dict[str, int | None] = {}
        self._self_before = time.process_time()
        self._self_after = self._self_before
        self._busy_before = busy_ticks()
        self._busy_after = self._busy_before

    def stop(self) -> None:
        """End the window."""
        self._after = {name: cpu_ticks(pid) for name, pid in self._pids.items() if pid}
        self._self_after = time.process_time()
        self._busy_after = busy_ticks()

    def seconds(self, name: str) -> float | None:
        """CPU seconds of the process watched as ``name``; None when unknown."""
        before, after = self._before.get(name), self._after.get(name)
        if before is None or after is None:
            return None
        return (after - before) / CLK_TCK

    @property
    def self_seconds(self) -> float:
        """CPU seconds this process used (e.g. a benchmark's subscriber threads)."""
        return self._self_after - self._self_before

    @property
    def busy_seconds(self) -> float:
        """CPU seconds all CPUs were busy, whoever used them."""
        return max(0, self._busy_after - self._busy_before) / CLK_TCK


def _pct(seconds: float | None, wall: float) -> float | None:
    return None if seconds is None or wall <= 0 else round(100.0 * seconds / wall, 1)


def measure(
    step: LadderStep,
    uac: SippProcess,
    uas: SippProcess,
    meter: CpuMeter,
    *,
    gateway: GatewayProcess | None = None,
    also_ours: Iterable[float | None] = (),
) -> None:
    """Fill ``step`` from the finished uac and uas and the CPU window around the uac.

    ``also_ours``: CPU seconds of other processes of the set-up (a broker, this process)
    that must not count as "other" load on the machine.
    """
    wall = uac.elapsed
    step.wall_s = round(wall, 3)
    step.uac_directory, step.uas_directory = str(uac.files.directory), str(uas.files.directory)
    step.uac_exit, step.uas_exit = uac.child.returncode, uas.child.returncode
    step.uac_cpu_pct = _pct(uac.cpu_s, wall)
    step.uas_cpu_pct = _pct(uas.cpu_s, uas.elapsed)
    gateway_s = meter.seconds("gateway")
    step.gateway_cpu_pct = _pct(gateway_s, wall)
    ours = (uac.cpu_s or 0.0) + (uas.cpu_s or 0.0) + (gateway_s or 0.0)
    ours += sum(seconds or 0.0 for seconds in also_ours)
    if wall > 0 and meter.busy_seconds > 0:
        # everything else on the machine (other processes, the kernel's softirqs): the
        # bench box is shared, so this says whether a step ran on a quiet machine
        step.other_cpu_pct = round(max(0.0, 100.0 * (meter.busy_seconds - ours) / wall), 1)

    uac_stats, uas_stats = read_stats(uac.files.stats), read_stats(uas.files.stats)
    step.successful = stat_int(uac_stats, "SuccessfulCall(C)")
    # calls never finished (run timed out or was stopped) count as failed too
    step.failed = max(stat_int(uac_stats, "FailedCall(C)"), step.calls - step.successful)
    step.uas_successful = stat_int(uas_stats, "SuccessfulCall(C)")
    step.uas_failed = stat_int(uas_stats, "FailedCall(C)")

    def both(name: str) -> int:
        return stat_int(uac_stats, name) + stat_int(uas_stats, name)

    step.retransmissions = both("Retransmissions(C)")
    step.uac_timeouts = stat_int(uac_stats, "FailedTimeoutOnRecv(C)") + stat_int(
        uac_stats, "FailedMaxUDPRetrans(C)"
    )
    step.unexpected = both("FailedUnexpectedMessage(C)")
    step.dead_call_msgs = both("DeadCallMsgs(C)")
    step.out_of_call_msgs = both("OutOfCallMsgs(C)")
    if gateway_s is not None and step.successful:
        step.gateway_cpu_ms_per_call = round(1000.0 * gateway_s / step.successful, 3)

    samples = read_rtt(uac.files.directory)
    values = sorted(value for _, value in samples)
    step.samples = len(values)
    step.p50_ms = percentile(values, 50)
    step.p99_ms = percentile(values, 99)
    step.max_ms = values[-1] if values else None
    # achieved rate: successful calls over the span in which they were set up (first to
    # last 200 OK, SIPp's clock) plus one call period, so a schedule kept exactly gives
    # the requested rate; falls back to the uac's wall time
    span = (
        (samples[-1][0] - samples[0][0]) / 1000.0 + 1.0 / step.rate if len(samples) >= 2 else wall
    )
    step.achieved_cps = round(step.successful / span, 1) if span > 0 else 0.0
    if gateway is not None:
        step.gateway_rss_mb = rss_mb(gateway.pid)
    if not uac_stats:
        step.reasons.append("uac wrote no statistics")


def judge(
    step: LadderStep, p99_limit_ms: float, uac: SippProcess, gateway: GatewayProcess | None
) -> None:
    """The pass rule: no failed call on either side, p99 set-up below the limit, the uac
    not killed, the gateway still running. Sets ``reasons`` and ``passed``."""
    if step.failed:
        step.reasons.append(f"{step.failed} failed at uac")
    if step.uas_failed:
        step.reasons.append(f"{step.uas_failed} failed at uas")
    if step.p99_ms is None:
        step.reasons.append("no response times")
    elif step.p99_ms >= p99_limit_ms:
        step.reasons.append(f"p99 {step.p99_ms:g} ms >= {p99_limit_ms:g} ms")
    if uac.killed:
        step.reasons.append("uac killed after its timeout")
    if gateway is not None and not gateway.running:
        step.reasons.append(f"gateway exited ({gateway.popen.returncode})")
    step.passed = not step.reasons


def sustained(steps: Sequence[LadderStep]) -> LadderStep | None:
    """The passing step with the highest rate, if any."""
    passing = [s for s in steps if s.passed]
    return max(passing, key=lambda s: s.rate) if passing else None


# --------------------------------------------------------------------------- rates


def default_rates(max_rate: int) -> list[int]:
    """100..1000 by 100, then 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000, ...: up to
    ``max_rate`` (which is always the last step when it is not on the ladder)."""
    rates = [*range(100, 1001, 100), 1500, 2000, 3000, 4000, 5000, 6000, 8000]
    rate = 10000
    while rate <= max_rate:
        rates.append(rate)
        rate += 5000
    chosen = [r for r in rates if r <= max_rate]
    if not chosen or chosen[-1] != max_rate:
        chosen.append(max_rate)
    return chosen


def parse_rates(text: str) -> list[int]:
    """Comma-separated positive rates, sorted and unique; ValueError otherwise."""
    rates = sorted({int(r) for r in text.split(",") if r.strip()})
    if not rates or rates[0] <= 0:
        raise ValueError(f"no positive rates in {text!r}")
    return rates


# --------------------------------------------------------------------------- output


def fmt_ms(value: float | None) -> str:
    """A time in ms as SIPp gives it, "-" when unknown."""
    return "-" if value is None else f"{value:g}"


def fmt_pct(value: float | None) -> str:
    """A CPU percentage without decimals, "-" when unknown."""
    return "-" if value is None else f"{value:.0f}"


def render_table(rows: Sequence[Sequence[str]], *, drop_empty: bool = False) -> str:
    """Right-aligned columns, a rule under the first row (the header); with
    ``drop_empty`` the columns with nothing but "-" below the header are left out."""
    keep: Sequence[int] = range(len(rows[0]))
    if drop_empty:
        keep = [i for i in keep if any(row[i] != "-" for row in rows[1:])]
    kept = [[row[i] for i in keep] for row in rows]
    widths = [max(len(row[i]) for row in kept) for i in range(len(kept[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in kept]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def slow_bursts(directory: Path, threshold_ms: float, gap_ms: float = 100.0) -> list[str]:
    """Slow set-ups grouped in time: many slow calls in one short window point at a stall
    of the system under test, slow calls spread out at queueing (too little CPU)."""
    bursts: list[list[tuple[float, float]]] = []
    for date, value in read_rtt(directory):
        if value < threshold_ms:
            continue
        if bursts and date - bursts[-1][-1][0] <= gap_ms:
            bursts[-1].append((date, value))
        else:
            bursts.append([(date, value)])
    lines = []
    for burst in bursts:
        worst = max(value for _, value in burst)
        lines.append(f"t={burst[0][0] / 1000.0:6.2f} s: {len(burst):4d} calls, worst {worst:g} ms")
    return lines


def sipp_evidence(
    step: LadderStep, threshold_ms: float, *, bursts: int = 20, errors: int = 12
) -> list[str]:
    """For a step that did not pass: slow set-ups grouped in time, both SIPp scenario
    screens and the first lines of their error logs."""
    parts: list[str] = []
    found = slow_bursts(Path(step.uac_directory), threshold_ms)
    if found:
        parts.append(
            f"--- set-ups >= {threshold_ms:g} ms, grouped in time (t = uac clock): "
            f"{len(found)} groups"
        )
        parts += ["    " + line for line in found[:bursts]]
    for role, directory in (("uac", step.uac_directory), ("uas", step.uas_directory)):
        parts.append(f"--- {role} scenario screen")
        parts.append(scenario_screen(Path(directory) / "screen.log"))
        lines = head_lines(Path(directory) / "errors.log", errors)
        if lines:
            parts.append(f"--- {role} errors.log (first lines)")
            parts += lines
    return parts
