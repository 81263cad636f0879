"""The one jittered exponential backoff of the gateway (MQTT reconnects, mail retries).

The ceiling doubles from ``base`` with each attempt up to ``cap``; the delay is spread
uniformly by ``rand`` (in [0, 1), injected) over the upper half of the ceiling, and never
below ``floor`` ("equal jitter": several clients that failed together do not come back in
step, and none comes back sooner than half the ceiling).
"""

from __future__ import annotations

__all__ = ["jittered_backoff"]

#: 2**64 * base is far beyond any cap; keeps the float finite
_MAX_EXPONENT = 64


def jittered_backoff(
    attempt: int, rand: float, *, base: float, cap: float, floor: float = 0.0
) -> float:
    """Seconds to wait before attempt number ``attempt`` (the ceiling is
    ``min(cap, base * 2**attempt)``; the delay lies in ``[max(floor, ceiling/2), ceiling]``)."""
    ceiling = min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))
    low = max(floor, ceiling / 2.0)
    return low + (ceiling - low) * rand
