"""Memory policy for a SIP server: paced garbage collection, and freed memory handed back.

Garbage collection: young generations often, a full pass rarely.

Why: finished SIP transactions linger for 64*T1 (32 s) to absorb retransmissions, so at a
few hundred calls per second hundreds of thousands of objects are alive at any time.
CPython's automatic full collection walks every one of them, and its pause grows with the
call rate (measured: 16 ms at start, 430 ms after 20 s at 300 calls/s). The call path
frees its objects by reference counting (the B2BUA breaks its own cycles when a call ends;
a full collection at steady state finds nothing to free), so those walks buy nothing.

So: the objects that exist after start-up are frozen (never walked again), automatic
collection is switched off, a timer collects the young generations every
``young_interval`` seconds (their cost is proportional to what was allocated since, a few
milliseconds), and a full collection runs every ``full_interval`` seconds to reclaim any
rare cycle (an exception kept with its traceback, a library's internals).

Freed memory handed back (issue 10): after a load, CPython frees the finished calls, but
glibc keeps the freed heap (SIP messages, dict and list storage are malloc'ed) for reuse,
so the resident size stays near its peak for ever. :class:`MemoryTrimmer` calls
a full collection (which also empties CPython's free lists) and ``malloc_trim(0)`` once
the load is over: :class:`IdleTrim` decides, from the live
transactions and calls and the messages received, that a large part of what was alive has
ended and the node is quiet (the trim walks the heap: 0.1-6 ms measured, never while
traffic flows). It first right-sizes the tables the load grew. What it can hand back
depends on the allocator: CPython's keeps small objects in 1 MiB arenas returned only when
empty, so most of a load's memory stays; with ``PYTHONMALLOC=malloc`` every free page goes
back (bench/README.md, memory_bench.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import time
from collections.abc import Callable

import structlog

__all__ = ["GcPacer", "IdleTrim", "MemoryTrimmer", "glibc_malloc_trim"]

log = structlog.get_logger("gateway.gc")


class GcPacer:
    """Owns the collector while the gateway runs (``start()`` / ``stop()``)."""

    def __init__(self, young_interval: float = 0.1, full_interval: float = 600.0):
        self.young_interval = young_interval
        self.full_interval = full_interval
        self._task: asyncio.Task[None] | None = None
        self._was_enabled = gc.isenabled()
        self.longest_young_ms = 0.0
        self.last_full_ms = 0.0

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.disable()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gc-pacer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    async def _run(self) -> None:
        next_full = time.monotonic() + self.full_interval
        while True:
            await asyncio.sleep(self.young_interval)
            now = time.monotonic()
            if now >= next_full:
                next_full = now + self.full_interval
                started = time.perf_counter()
                found = gc.collect(2)
                self.last_full_ms = (time.perf_counter() - started) * 1000
                log.info(
                    "gc_full",
                    ms=round(self.last_full_ms, 1),
                    unreachable=found,
                    tracked=len(gc.get_objects()),
                )
                continue
            started = time.perf_counter()
            gc.collect(1)
            elapsed = (time.perf_counter() - started) * 1000
            if elapsed > self.longest_young_ms:
                self.longest_young_ms = elapsed
                log.debug("gc_young", ms=round(elapsed, 2))


# -- handing freed memory back to the OS ----------------------------------------------------


def glibc_malloc_trim() -> Callable[[], int] | None:
    """``malloc_trim(0)`` of the C library, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def malloc_trim() -> int:
        return int(trim(0))

    return malloc_trim


class IdleTrim:
    """When to trim, sans-I/O: ``observe`` once per interval; True means trim now.

    Trim when all hold: the live work (transactions + calls) fell by at least ``min_drop``
    and to at most half of its high-water mark since the last trim (a load ended), it has
    not fallen further for ``settle`` seconds (what that load left behind has been freed:
    finished transactions linger 64*T1 after their call), fewer than ``quiet_rate``
    messages a second arrived since the previous observation (the node is idle, so a trim
    delays nothing that matters), and the last trim is ``min_interval`` seconds old. The
    high-water mark then restarts from the present.
    """

    def __init__(
        self,
        *,
        min_drop: int = 1000,
        quiet_rate: float = 20.0,
        settle: float = 3.0,
        min_interval: float = 10.0,
    ) -> None:
        self.min_drop = min_drop
        self.quiet_rate = quiet_rate
        self.settle = settle
        self.min_interval = min_interval
        self.high = 0
        self._last_trim = float("-inf")
        self._last: tuple[float, int] | None = None
        self._low = 0  # the lowest live work seen since the high-water mark ...
        self._low_since = 0.0  # ... and since when it has been that low

    def observe(self, now: float, received: int, live: int) -> bool:
        """``received``: messages received so far (a counter); ``live``: work alive now."""
        last, self._last = self._last, (now, received)
        if live > self.high:
            self.high = live
        if live < self._low or live >= self.high:  # still falling, or a new peak
            self._low, self._low_since = live, now
        if last is None or now <= last[0]:
            return False
        rate = (received - last[1]) / (now - last[0])
        if (
            rate < self.quiet_rate
            and self.high - live >= self.min_drop
            and 2 * live <= self.high
            and now - self._low_since >= self.settle
            and now - self._last_trim >= self.min_interval
        ):
            self._last_trim = now
            self.high = self._low = live
            self._low_since = now
            return True
        return False


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


class MemoryTrimmer:
    """Runs :class:`IdleTrim` on a loop timer every ``interval`` seconds (a timer, not a
    task: ``close`` cancels it) and, when it says so, calls ``compact`` (right-size the
    tables a load grew: CPython dicts never shrink) then ``trim``, logging what it freed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        trim: Callable[[], int],
        received: Callable[[], int],
        live: Callable[[], int],
        decide: IdleTrim | None = None,
        interval: float = 1.0,
        compact: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.trim = trim
        self.compact = compact
        self.received = received
        self.live = live
        self.decide = decide if decide is not None else IdleTrim()
        self.interval = interval
        self.trims = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)
        decide = self.decide
        high, live = decide.high, self.live()
        if decide.observe(self.loop.time(), self.received(), live):
            before = _rss_mb()
            started = time.perf_counter()
            # a full collection first: besides any cycle, it empties CPython's free lists
            # (thousands of tuples, floats, dicts and lists the load freed last), whose
            # blocks are scattered over the arenas the load grew and would keep each of
            # them from being handed back (measured: +74 % RSS 60 s after a load without
            # it, +25 % with it; 4 ms when idle, the start-up objects being frozen)
            gc.collect()
            if self.compact is not None:
                self.compact()  # right-sized tables first: their old ones are freed, then
            self.trim()
            self.trims += 1
            log.info(
                "memory_trimmed",
                ms=round((time.perf_counter() - started) * 1000, 1),
                rss_mb_before=round(before, 1),
                rss_mb_after=round(_rss_mb(), 1),
                live=live,
                live_high=high,
            )
