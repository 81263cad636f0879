"""The load signals of overload control (SPEC O-4), sampled on the event loop.

Theory of operation
-------------------
:class:`LoadMeter` arms one ``loop.call_at`` every ``interval`` seconds. When it fires, how
late it fired is the loop's lag (the time the loop spent on other callbacks past the
deadline: the gateway's one CPU falling behind), and the endpoint's datagram counter since
the previous sample is the read burst. Both go to ``report(lag, reads, now)`` (the sans-I/O
:class:`~gateway.b2bua.admission.Admission`). It is a timer, not a task: nothing to await,
:meth:`LoadMeter.close` cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["LoadMeter"]


class LoadMeter:
    """Samples loop lag and datagrams read every ``interval`` seconds into ``report``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        received: Callable[[], int],
        report: Callable[[float, int, float], None],
        interval: float = 0.02,
    ) -> None:
        self.loop = loop
        self.received = received
        self.report = report
        self.interval = interval
        self._due = 0.0
        self._last_count = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Arm the first sample."""
        self._last_count = self.received()
        self._arm(self.loop.time())

    def close(self) -> None:
        """Stop sampling."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        self._due = now + self.interval
        self._handle = self.loop.call_at(self._due, self._sample)

    def _sample(self) -> None:
        now = self.loop.time()
        count = self.received()
        reads, self._last_count = count - self._last_count, count
        try:
            self.report(now - self._due, reads, now)
        finally:
            self._arm(now)
