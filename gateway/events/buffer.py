"""The bounded outage buffer and the reconnect backoff, with no I/O and no clock.

Theory of operation
-------------------
:class:`EventBuffer` holds events between ``publish()`` and the broker's PUBACK. It has two
parts: the *queue* (not yet sent) and the *in-flight* batch (sent, not yet acknowledged).
The sender :meth:`~EventBuffer.take`\\ s a batch, then either :meth:`~EventBuffer.ack`\\ s it
(PUBACKs received) or :meth:`~EventBuffer.requeue`\\ s it at the front (connection lost), so
order is kept and nothing is lost short of overflow. When the queue would exceed
``capacity`` the *oldest* event is dropped and :attr:`~EventBuffer.dropped` grows (M-1);
the in-flight batch (a few events) sits outside that bound until it is acknowledged or
requeued.
Delivery is at-least-once: a batch requeued after a lost connection may already have
reached the broker.

:class:`Backoff` gives jittered exponential reconnect delays ("equal jitter": half the
ceiling fixed, half random), with the random source injected so tests can pin it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from gateway.backoff import jittered_backoff

__all__ = ["Backoff", "EventBuffer", "backoff_delay"]

T = TypeVar("T")


class EventBuffer(Generic[T]):
    """FIFO of at most ``capacity`` unsent events (plus one in-flight batch), oldest dropped."""

    __slots__ = ("_in_flight", "_queue", "capacity", "dropped", "published")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        self.capacity = capacity
        self._queue: deque[T] = deque()
        self._in_flight: list[T] = []
        self.dropped = 0
        """Events dropped because the buffer was full (since creation)."""
        self.published = 0
        """Events acknowledged by the broker (since creation)."""

    def __len__(self) -> int:
        """Events held: queued plus in flight."""
        return len(self._queue) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        """Events taken by the sender and not yet acknowledged."""
        return len(self._in_flight)

    def append(self, item: T) -> bool:
        """Add ``item`` at the back; return ``True`` if an older event had to be dropped."""
        dropped = False
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.dropped += 1
            dropped = True
        self._queue.append(item)
        return dropped

    def take(self, limit: int) -> list[T]:
        """Move up to ``limit`` events from the front of the queue to the in-flight batch.

        Returns the batch (empty when nothing is queued). Call :meth:`ack` or
        :meth:`requeue` before taking again.
        """
        if self._in_flight:
            raise RuntimeError("previous batch is still in flight")
        count = min(limit, len(self._queue))
        self._in_flight = [self._queue.popleft() for _ in range(count)]
        return list(self._in_flight)

    def ack(self) -> None:
        """The in-flight batch was acknowledged: forget it and count it as published."""
        self.published += len(self._in_flight)
        self._in_flight = []

    def requeue(self) -> None:
        """The in-flight batch failed: put it back at the front, in order.

        If the queue filled up meanwhile, the oldest events (now the requeued ones) are
        dropped down to ``capacity`` and counted.
        """
        self._queue.extendleft(reversed(self._in_flight))
        self._in_flight = []
        while len(self._queue) > self.capacity:
            self._queue.popleft()
            self.dropped += 1

    def peek_all(self) -> list[T]:
        """All held events, oldest first (for diagnostics and tests)."""
        return [*self._in_flight, *self._queue]


def backoff_delay(attempt: int, rand: float, *, base: float, cap: float) -> float:
    """Delay before reconnect attempt number ``attempt`` (0 for the first retry).

    The ceiling doubles from ``base`` up to ``cap``; the delay is uniformly spread over
    the upper half of the ceiling by ``rand`` in [0, 1).
    """
    return jittered_backoff(attempt, rand, base=base, cap=cap)


class Backoff:
    """Successive reconnect delays; :meth:`reset` after a successful connection."""

    __slots__ = ("_attempt", "_rand", "base", "cap")

    def __init__(self, *, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float]) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._rand = rand
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays have been handed out since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        """The next delay in seconds (grows until ``cap``)."""
        delay = backoff_delay(self._attempt, self._rand(), base=self.base, cap=self.cap)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``base`` (call once connected)."""
        self._attempt = 0
