"""Flood and scanner defence: per-source limits for strangers (SPEC O-6), like Kamailio's pike.

Theory of operation
-------------------
A source that is not a trunk, not a registered agent's phone and not on a network trusted
for unauthenticated phones is a stranger. Each stranger's address (IP, whatever the port:
a scanner walks its ports) gets a token bucket of ``per_source_rate`` requests per second
with a burst of ``per_source_burst``. The overload gate asks :meth:`SourceLimits.allow`
for every request datagram from a stranger before it is parsed; past the limit the
datagram is dropped without an answer: a flood costs the gateway a dictionary lookup, and
a scanner learns nothing (no 404 against 401 to tell extensions apart).

Trusted sources are never limited: emergency calls from identified agents and trusted
trunks pass every limit (SPEC E-3). An unidentified stranger dialling 911 is limited like
any other request from it, after its burst: a phone really dialling sends a handful.

The table of sources is bounded (the least recently seen are forgotten first); drops are
counted per source and summarised in one log line per ``LOG_EVERY_S`` at most.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import structlog

__all__ = ["LOG_EVERY_S", "MAX_SOURCES", "SourceLimits"]

log = structlog.get_logger("gateway.flood")

MAX_SOURCES: Final = 65536
"""Sources remembered at once; the least recently seen are forgotten first."""
LOG_EVERY_S: Final = 10.0
"""At most one ``flood_limited`` log line per this many seconds."""


class SourceLimits:
    """Token buckets per stranger's address. Sans-I/O: the time comes with each call."""

    def __init__(self, rate: float, burst: float, max_sources: int = MAX_SOURCES) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_sources = max_sources
        #: host -> (tokens, time of the last fill)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        #: requests dropped so far, all sources; and since the last log line, per source
        self.dropped = 0
        self._recent: dict[str, int] = {}
        self._logged_at: float | None = None

    def allow(self, host: str, now: float) -> bool:
        """May one more request from ``host`` be handled now? (A refusal is counted.)"""
        entry = self._buckets.get(host)
        if entry is None:
            tokens = self.burst
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
        else:
            tokens = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
            self._buckets.move_to_end(host)
        if tokens >= 1.0:
            self._buckets[host] = (tokens - 1.0, now)
            return True
        self._buckets[host] = (tokens, now)
        self.dropped += 1
        self._recent[host] = self._recent.get(host, 0) + 1
        self._maybe_log(now)
        return False

    def _maybe_log(self, now: float) -> None:
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY_S:
            return
        self._logged_at = now
        top = sorted(self._recent.items(), key=lambda item: -item[1])[:5]
        log.warning(
            "flood_limited",
            sources=len(self._recent),
            dropped=sum(self._recent.values()),
            top=[f"{host}: {count}" for host, count in top],
            limit_per_s=self.rate,
        )
        self._recent = {}
