"""The call layer's timers, sans-I/O: one heap, time comes in (aioquic pattern).

Theory of operation
-------------------
The B2BUA arms a :class:`Timer` with :meth:`TimerHeap.at` (absolute deadline, from the
``now`` of the step that arms it) and cancels it with :meth:`Timer.cancel`. The adapter asks
:meth:`TimerHeap.get_timer` for the earliest live deadline, arms one ``loop.call_at`` for it
(together with the transaction layer's), and calls :meth:`TimerHeap.handle_timer` with the
time it fired; every due timer's callback then runs with that ``now``.

Cancelling is lazy, as in the transaction layer: a cancelled entry stays in the heap until
it reaches the top (or a compaction drops it once cancelled entries outnumber live ones
four to one), so cancelling costs O(1) and arming O(log n).
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush

__all__ = ["Timer", "TimerHeap"]


class Timer:
    """One armed timer; :meth:`cancel` makes sure its callback never runs."""

    __slots__ = ("_heap", "callback", "cancelled", "deadline")

    def __init__(self, heap: TimerHeap, deadline: float, callback: Callable[[float], None]):
        self._heap = heap
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._heap.live -= 1


class TimerHeap:
    """Deadlines of the call layer; the adapter arms one loop timer for the earliest."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        #: timers armed and neither fired nor cancelled
        self.live = 0

    def at(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        """Run ``callback(now)`` once ``handle_timer(now)`` sees ``now >= deadline``."""
        timer = Timer(self, deadline, callback)
        self._seq += 1
        self.live += 1
        heap = self._heap
        heappush(heap, (deadline, self._seq, timer))
        if len(heap) > 4 * self.live + 1024:
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapify(heap)
        return timer

    def get_timer(self) -> float | None:
        """The earliest live deadline, or None."""
        heap = self._heap
        while heap:
            timer = heap[0][2]
            if not timer.cancelled:
                return timer.deadline
            heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every live timer whose deadline is ``now`` or earlier, earliest first."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            timer = heappop(heap)[2]
            if timer.cancelled:
                continue
            timer.cancelled = True  # fired: a later cancel() is a no-op
            self.live -= 1
            timer.callback(now)
